"""Every training default in one place, each with the reason for its value."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union


@dataclass
class TrainConfig:
    train: str = ""  # training data (CoNLL, .spacy, .jsonl, BMES)
    dev: str = ""  # dev data: model selection only
    output: str = "training"  # checkpoint/, best/, train_log.jsonl, curves.png
    model: str = "smollm2-135m"  # base model: packaged name, HF folder or .gguf
    labels: Optional[List[str]] = None  # None: every label in the training data, sorted
    template: str = "en"
    format: str = "padellm"  # or a baseline: "autoreg_struct", "autoreg_aug" (same data, steps and LoRA)
    lang: str = "en"  # spaCy language of the tokenizer used for alignment in dev evaluation
    # warm start: a PaDeLLM adapter folder whose LoRA weights a NEW run starts from (ignored on resume); the
    # optimizer and schedule start fresh. Same LoRA shape (r, target modules, layers) as this run.
    init_adapter: str = ""
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Union[str, List[str]] = "all-linear"
    # LoRA only on layers >= this index: backward stops there. 0 = every layer, the default: on SmolLM2
    # (30 layers) the top 15 alone trained ~1.45x faster per step but learned far slower per step (dev F1
    # 81.4 after 2,019 steps vs 89.9 after 1,250 on all layers; README).
    lora_first_layer: int = 0
    # optimisation
    lr: float = 5e-4  # LoRA on a 135M model tolerates a high rate; warmup keeps the start stable
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decay to 10% of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm per step (LoRA at lr 5e-4 spikes without it)
    # loss weight per target part (count, marker `\n<mention k>`, mention, EOS); saved with the adapter.
    # The marker is ~45% of the supervised tokens and fully predictable from the count, the count decides
    # recall (issue 14: given the right count, mention decoding beats AutoReg_Aug).
    count_weight: float = 1.0
    marker_weight: float = 1.0
    mention_weight: float = 1.0
    eos_weight: float = 1.0
    epochs: float = 1.0  # may be fractional; max_steps wins when set
    max_steps: Optional[int] = None
    row_tokens: int = 512  # packed row length: documents' tries end to end (1024 ran 25% slower: L^2 masks)
    rows_per_step: int = 2  # rows per optimizer step (~1k tokens, ~12 CoNLL sentences)
    bf16: str = "auto"  # "auto": bf16 autocast where the CPU has AVX512-BF16/AMX (2.9x faster steps)
    threads: int = 0  # torch threads; 0 = the cores this process may use (more than free cores is 7x slower)
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 50  # a killed run loses at most this many steps ...
    checkpoint_minutes: float = 5.0  # ... or this many minutes, whichever comes first
    eval_every: int = 200
    # dev docs scored during training, spread evenly over dev (every len(dev)/eval_docs-th document: dev
    # files are topic-contiguous, so the first N documents are a biased sample)
    eval_docs: int = 400
    final_eval: bool = True  # score the best adapter on ALL of dev at the end (best/padellm.json "dev_full")
    eval_batch_size: int = 64
    max_new_tokens: int = 24
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)
