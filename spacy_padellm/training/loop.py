"""The LoRA training loop, readable top to bottom: data -> packed rows -> steps -> eval -> checkpoints.

A killed run resumes from its last checkpoint: the data order is a pure function of (seed, epoch)
(schedule.py), so a checkpoint needs only the step number beside the adapter, optimizer and RNG states
(checkpoints.py).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import Errors, PaDeLLMError
from ..prompts import Template, as_template, get_template, special_prefix
from .checkpoints import atomic_dir_write, log, recover_dir, resumed_total, save_adapter, truncate_log, warm_start
from .config import TrainConfig
from .examples import Example, doc_examples, encode_example, part_weights
from .packing import PackedTree, collate, pack_examples, packed_loss
from .schedule import epoch_steps, lr_at, spread

CHECKPOINT = "checkpoint"
BEST = "best"
LOG = "train_log.jsonl"


def build_trees(docs: Sequence[Any], labels: Sequence[str], tokenizer: Any, template: Union[str, Template],
                row_tokens: int, fmt: str = "padellm", weights: Optional[Sequence[float]] = None
                ) -> List[PackedTree]:
    """One trie per document: PaDeLLM's label/mention branches, or a baseline's single sequence.
    `weights`: the loss weight per target part (examples.PART_NAMES order); None: all 1."""
    from ..baselines.formats import FORMATS

    template = as_template(template)
    bos = special_prefix(tokenizer)
    trees = []
    for doc in docs:
        if not doc.text.strip():
            continue
        if fmt == "padellm":
            examples = doc_examples(doc, labels, template)
        else:
            prompt, build, _ = FORMATS[fmt]
            ents = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
            examples = [Example(prompt.format(text=doc.text), build(doc.text, ents, labels))]
        tree = pack_examples([encode_example(tokenizer, e, bos) for e in examples], weights)
        if len(tree) <= row_tokens:  # a document longer than a row is skipped, never truncated mid-target
            trees.append(tree)
    return trees


@dataclass
class Run:
    """Everything one training run holds between steps."""
    cfg: TrainConfig
    out: Path
    model: Any
    tokenizer: Any
    optimizer: Any
    params: List[Any]
    trees: List[PackedTree]
    dev_docs: List[Any]
    labels: List[str]
    nlp: Any
    use_bf16: bool
    steps_per_epoch: int
    total: int
    meta: Dict[str, Any]
    step: int = 0
    best: Dict[str, Any] = field(default_factory=lambda: {"score": -1.0})

    @property
    def log_path(self) -> Path:
        return self.out / LOG


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) a PaDeLLM LoRA adapter; returns the best dev scores."""
    run = start(cfg)
    run_steps(run)
    return finish(run)


def start(cfg: TrainConfig) -> Run:
    """Data, model, optimizer; then the checkpoint's state, or the warm start's weights."""
    import spacy
    from peft import get_peft_model

    from ..engine.loading import cpu_has_fast_bf16, load_base, resolve_model
    from .readers import read_any

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    recover_dir(out / CHECKPOINT)
    recover_dir(out / BEST)
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(cfg.seed)
    use_bf16 = cfg.bf16 == "true" or (cfg.bf16 == "auto" and cpu_has_fast_bf16())

    nlp = spacy.blank(cfg.lang)
    train_docs = read_any(cfg.train, nlp.vocab)
    dev_docs = read_any(cfg.dev, nlp.vocab) if cfg.dev else []
    labels = cfg.labels or sorted({e.label_ for d in train_docs for e in d.ents})
    if cfg.label_words and cfg.format != "padellm":
        raise PaDeLLMError(Errors.E022.format(format=cfg.format))
    template = get_template(cfg.template, cfg.label_words)
    written = [template.word(label) for label in labels]
    if len(set(written)) != len(written):  # e.g. PER=ORG beside ORG: two labels, one prompt
        raise PaDeLLMError(Errors.E021.format(words=cfg.label_words, why=f"labels {labels} would be written "
                                              f"{written}, two of them alike"))
    model, tokenizer = load_base(resolve_model(cfg.model), torch.float32, "cpu")
    t0 = time.time()
    trees = build_trees(train_docs, labels, tokenizer, template, cfg.row_tokens, cfg.format,
                        part_weights(cfg))
    print(f"[train] {len(trees)} documents packed in {time.time() - t0:.1f}s; labels {labels}", flush=True)

    model = get_peft_model(model, lora_config(model, cfg))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(epoch_steps(trees, cfg, 0))
    meta = {"labels": labels, "template": cfg.template, "label_words": dict(template.label_words),
            "format": cfg.format, "base_model": cfg.model, "config": cfg.to_dict()}
    run = Run(cfg, out, model, tokenizer, optimizer, params, trees, dev_docs, labels, nlp, use_bf16,
              steps_per_epoch, cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs)), meta)
    if (out / CHECKPOINT / "state.pt").is_file():
        resume(run)
    elif cfg.init_adapter:
        warm_start(model, cfg.init_adapter)
        print(f"[train] LoRA weights initialised from {cfg.init_adapter}", flush=True)
    return run


def resume(run: Run) -> None:
    """The checkpoint's weights, optimizer (absent in a slim one), step, best score, RNG and schedule."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = run.out / CHECKPOINT
    state = torch.load(ckpt / "state.pt", weights_only=False)
    set_peft_model_state_dict(run.model, {k: v.float() for k, v in
                                          load_file(str(ckpt / "adapter_model.safetensors")).items()})
    if "optimizer" in state:
        run.optimizer.load_state_dict(state["optimizer"])
    else:  # a slim checkpoint (slim_checkpoint): same weights, step and schedule; Adam's moments restart
        print("[train] slim checkpoint: the optimizer state starts afresh", flush=True)
    run.step, run.best = state["step"], state["best"]
    torch.set_rng_state(state["rng"])
    run.total = resumed_total(state, run.total)
    print(f"[train] resumed from step {run.step} of {run.total}", flush=True)
    truncate_log(run.log_path, run.step)


def save_checkpoint(run: Run) -> None:
    def write(tmp: Path) -> None:
        run.model.save_pretrained(tmp)
        torch.save({"optimizer": run.optimizer.state_dict(), "step": run.step, "best": run.best,
                    "rng": torch.get_rng_state(), "total": run.total}, tmp / "state.pt")
    atomic_dir_write(run.out / CHECKPOINT, write)


def evaluate(run: Run, docs: Sequence[Any]) -> Dict[str, Any]:
    """evaluation.metrics of the model as it is now (PaDeLLM through the component, or a baseline)."""
    from .evaluate import evaluate_model

    cfg, model = run.cfg, run.model
    model.eval()
    try:
        if cfg.format != "padellm":
            from ..baselines.autoreg import evaluate_autoreg

            return evaluate_autoreg(model.get_base_model(), run.tokenizer, run.labels, cfg.format, docs,
                                    batch_size=cfg.eval_batch_size, bf16=run.use_bf16)
        return evaluate_model(model.get_base_model(), run.tokenizer, run.labels,
                              get_template(cfg.template, cfg.label_words), docs, run.nlp,
                              batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens, bf16=run.use_bf16)
    finally:
        model.train()


def run_steps(run: Run) -> None:
    """Steps until the schedule's total, logging, evaluating and checkpointing as the config asks."""
    from tqdm import tqdm

    cfg = run.cfg
    run.model.train()
    bar = tqdm(total=run.total, initial=run.step, mininterval=5, dynamic_ncols=False, ncols=110)
    tokens_seen, t_start = 0, time.time()
    last_checkpoint = t_start
    plan: Dict[int, List[List[List[int]]]] = {}
    while run.step < run.total:
        epoch, index = divmod(run.step, run.steps_per_epoch)
        if epoch not in plan:
            plan = {epoch: epoch_steps(run.trees, cfg, epoch)}
        loss, n_tokens = train_step(run, plan[epoch][index])
        tokens_seen += n_tokens
        tps = tokens_seen / max(time.time() - t_start, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}", epoch=f"{run.step / run.steps_per_epoch:.2f}")
        if run.step % cfg.log_every == 0 or run.step == run.total:
            log(run.log_path, {"step": run.step, "loss": loss, "lr": lr_at(run.step - 1, run.total, cfg),
                               "tokens_per_s": tps, "epoch": run.step / run.steps_per_epoch, "time": time.time()})
        if run.dev_docs and (run.step % cfg.eval_every == 0 or run.step == run.total):
            select(run)
        if (run.step % cfg.checkpoint_every == 0 or run.step == run.total
                or time.time() - last_checkpoint >= 60 * cfg.checkpoint_minutes):
            save_checkpoint(run)
            last_checkpoint = time.time()
    bar.close()


def train_step(run: Run, batch_rows: List[List[int]]) -> Tuple[float, int]:
    """One optimizer step on one planned batch: (loss, tokens fed)."""
    batch = collate([[run.trees[i] for i in row] for row in batch_rows], pad_id=run.tokenizer.eos_token_id)
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step, run.total, run.cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.use_bf16):
        loss = packed_loss(run.model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return loss.item(), batch.n_tokens


def select(run: Run) -> None:
    """Score the selection sample of dev; a new best string F1 becomes OUTPUT/best."""
    scores = evaluate(run, spread(run.dev_docs, run.cfg.eval_docs))
    log(run.log_path, {"step": run.step, "eval": scores, "time": time.time()})
    print(f"\n[eval] step {run.step}: string F1 {scores['f1_string']:.4f} span F1 {scores['f1_span']:.4f}", flush=True)
    if scores["f1_string"] > run.best["score"]:
        run.best = {"score": scores["f1_string"], "step": run.step, "scores": scores}
        atomic_dir_write(run.out / BEST, lambda tmp: save_adapter(run.model, tmp, {**run.meta, "dev": run.best}))


def finish(run: Run) -> Dict[str, Any]:
    """OUTPUT/best (the last step where nothing was evaluated), then the selected adapter on all of dev."""
    if not (run.out / BEST).exists():  # no dev set (or no evaluation yet): the last step is the result
        atomic_dir_write(run.out / BEST, lambda tmp: save_adapter(run.model, tmp, {**run.meta, "step": run.step}))
    if run.dev_docs and run.cfg.final_eval and "dev_full" not in run.best:
        run.best = final_evaluation(run.model, run.out / BEST, run.dev_docs, lambda docs: evaluate(run, docs),
                                    run.best)
        log(run.log_path, {"step": run.step, "final_eval": run.best["dev_full"], "time": time.time()})
        save_checkpoint(run)  # a resumed finished run does not evaluate again
    return {**run.best, "adapter": str(run.out / BEST), "steps": run.step}


def final_evaluation(model: Any, best_dir: Path, dev_docs: Sequence[Any], evaluate: Any,
                     best: Dict[str, Any]) -> Dict[str, Any]:
    """Score the selected adapter on ALL of dev and write it into best/padellm.json as "dev_full".

    The selection score is on a sample, and the sample chose the checkpoint, so it is optimistic; the full
    dev score is the honest number to report. The current weights are saved and restored around it."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    current = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, {k: v.float() for k, v in
                                      load_file(str(best_dir / "adapter_model.safetensors")).items()})
    try:
        scores = evaluate(dev_docs)
    finally:
        set_peft_model_state_dict(model, current)
    print(f"\n[eval] all {len(dev_docs)} dev docs, selected adapter: string F1 {scores['f1_string']:.4f} "
          f"span F1 {scores['f1_span']:.4f}", flush=True)
    best = {**best, "dev_full": scores}
    meta_path = best_dir / "padellm.json"
    meta = json.loads(meta_path.read_text(encoding="utf8"))
    meta["dev_full"] = scores
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str), encoding="utf8")
    os.replace(tmp, meta_path)
    return best


def lora_config(model: Any, cfg: TrainConfig) -> Any:
    """peft's LoraConfig; with lora_first_layer > 0 the linear layers are named explicitly (peft cannot
    combine "all-linear" with layers_to_transform)."""
    from peft import LoraConfig

    kwargs: Dict[str, Any] = dict(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  task_type="CAUSAL_LM", target_modules=cfg.target_modules)
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", 0)
    if cfg.lora_first_layer > 0 and n_layers > cfg.lora_first_layer:
        if cfg.target_modules == "all-linear":
            out_layer = model.get_output_embeddings()
            kwargs["target_modules"] = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                                               if isinstance(mod, torch.nn.Linear) and mod is not out_layer})
        kwargs["layers_to_transform"] = list(range(cfg.lora_first_layer, n_layers))
    return LoraConfig(**kwargs)
