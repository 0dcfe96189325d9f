"""Every training default in one place, each with the one line of help the CLI shows for it.

The help sits beside the default (`opt(default, help)`), so `python -m spacy_padellm train --help` can
never disagree with the values the loop uses. The longer reasons stay in comments.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Union


def opt(default: Any, help: str) -> Any:
    """A dataclass field with its CLI help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    train: str = opt("", "training data: CoNLL, .spacy, .jsonl or BMES")
    dev: str = opt("", "dev data, for checkpoint selection and the final full-dev score (optional)")
    output: str = opt("training", "output folder: checkpoint/, best/, train_log.jsonl")
    model: str = opt("smollm2-135m", "base model: a packaged name, a Hugging Face folder or a .gguf file")
    labels: Optional[List[str]] = opt(None, "comma-separated labels (default: every label in the training data)")
    template: str = opt("en", "prompt template: en (the paper's) or zh")
    # The paper writes the label itself ("PER"); a word ("person") may tell the model more (issue 14).
    label_words: Dict[str, str] = opt({}, "how the prompt writes each label, e.g. PER=person,ORG=organisation "
                                          "(default: the labels themselves); kept with the adapter")
    format: str = opt("padellm", "target format: padellm, or a baseline: autoreg_struct, autoreg_aug")
    lang: str = opt("en", "spaCy language of the tokenizer used for alignment in dev evaluation")
    # A warm start: LoRA weights only; the optimizer and schedule start fresh. The same LoRA layers; a lower
    # rank grows into --lora-r with the same output at step 0 (training/checkpoints.py warm_start).
    init_adapter: str = opt("", "adapter folder whose LoRA weights a NEW run starts from (ignored on resume; "
                                "a lower rank grows into --lora-r)")
    # LoRA
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    target_modules: Union[str, List[str]] = opt("all-linear", "LoRA target modules: all-linear or comma-separated names")
    # On SmolLM2 (30 layers) the top 15 alone trained ~1.45x faster per step but learned far slower per step
    # (dev F1 81.4 after 2,019 steps vs 89.9 after 1,250 on all layers; README).
    lora_first_layer: int = opt(0, "LoRA only on layers >= this index (0: every layer)")
    # optimisation: LoRA on a 135M model tolerates a high rate; warmup keeps the start stable
    lr: float = opt(5e-4, "peak learning rate")
    warmup_steps: int = opt(30, "linear warmup steps")
    min_lr_ratio: float = opt(0.1, "cosine decay ends at this fraction of lr")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "max gradient norm per step (LoRA at lr 5e-4 spikes without it)")
    # The marker is ~45% of the supervised tokens and never generated at inference (it is written into the
    # prompt); the count decides recall (issue 14: given the right count, mention decoding beats AutoReg_Aug).
    count_weight: float = opt(1.0, "loss weight of the count tokens (digits and the newline ending them)")
    marker_weight: float = opt(1.0, "loss weight of the '<mention k>' marker tokens")
    mention_weight: float = opt(1.0, "loss weight of the mention tokens")
    eos_weight: float = opt(1.0, "loss weight of the EOS token")
    epochs: float = opt(1.0, "epochs of training data, may be fractional (max_steps wins when set)")
    max_steps: Optional[int] = opt(None, "total optimizer steps (0 or unset: from epochs)")
    # 1024 ran 25% slower than 512: the masks are L^2
    row_tokens: int = opt(512, "packed row length: documents' tries end to end")
    rows_per_step: int = opt(2, "rows per optimizer step (~1k tokens, ~12 CoNLL sentences)")
    bf16: str = opt("auto", "bf16 autocast: auto (where the CPU has AVX512-BF16/AMX: 2.9x faster), true, false")
    # more threads than free cores made steps 7x slower
    threads: int = opt(0, "torch threads (0: the cores this process may use)")
    seed: int = opt(0, "seed of the LoRA init and the data order")
    # bookkeeping
    log_every: int = opt(10, "write a loss record every N steps")
    checkpoint_every: int = opt(50, "checkpoint every N steps ...")
    checkpoint_minutes: float = opt(5.0, "... or every N minutes, whichever comes first")
    eval_every: int = opt(200, "score the dev sample every N steps")
    # dev files are topic-contiguous, so the first N documents are a biased sample
    eval_docs: int = opt(400, "dev documents in the selection sample, spread evenly over dev (0: all)")
    final_eval: bool = opt(True, "score the selected adapter on ALL of dev at the end (best/padellm.json)")
    eval_batch_size: int = opt(64, "documents per batch in dev evaluation")
    max_new_tokens: int = opt(24, "longest mention in dev evaluation, in tokens")
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def field_help() -> Dict[str, str]:
    """name -> the one line of help for every CLI-settable field."""
    return {f.name: f.metadata["help"] for f in fields(TrainConfig) if "help" in f.metadata}
