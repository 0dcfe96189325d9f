"""The LoRA training loop, readable top to bottom: data -> packed rows -> steps -> eval -> checkpoints.

A killed run resumes from its last checkpoint: the data order is a pure function of (seed, epoch), so a
checkpoint needs only the step number beside the adapter, optimizer and scheduler states. Every file is
written to a temporary folder and moved into place, so a kill never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..prompts import get_template, special_prefix
from .config import TrainConfig
from .examples import Example, doc_examples, encode_example, part_weights
from .packing import PackedTree, collate, pack_examples, packed_loss

CHECKPOINT = "checkpoint"
BEST = "best"
LOG = "train_log.jsonl"


def atomic_dir_write(target: Path, write: Any) -> None:
    """Call write(tmp_folder), then swap tmp_folder into `target` (rename is atomic on one filesystem)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(target: Path) -> None:
    """After a kill between the two renames of atomic_dir_write, the last complete copy is `.old`."""
    old = target.parent / f".{target.name}.old"
    if not target.exists() and old.exists():
        os.replace(old, target)


def plan_rows(trees: Sequence[PackedTree], order: Sequence[int], row_tokens: int) -> List[List[int]]:
    """Greedy first-fit of documents (in `order`) into rows of at most row_tokens tokens."""
    rows: List[List[int]] = []
    sizes: List[int] = []
    for i in order:
        n = min(len(trees[i]), row_tokens)
        for r, size in enumerate(sizes[-8:], start=max(0, len(sizes) - 8)):  # look back a little: O(n)
            if size + n <= row_tokens:
                rows[r].append(i)
                sizes[r] += n
                break
        else:
            rows.append([i])
            sizes.append(n)
    return rows


def epoch_steps(trees: Sequence[PackedTree], cfg: TrainConfig, epoch: int) -> List[List[List[int]]]:
    order = list(range(len(trees)))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    rows = plan_rows(trees, order, cfg.row_tokens)
    return [rows[i:i + cfg.rows_per_step] for i in range(0, len(rows), cfg.rows_per_step)]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint a resumed run restarts from (they will be redone)."""
    if not path.is_file():
        return
    lines = [x for x in path.read_text(encoding="utf8").splitlines() if x.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut by the kill
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf8")
    os.replace(tmp, path)


def log(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf8") as f:
        f.write(json.dumps(record) + "\n")


def build_trees(docs: Sequence[Any], labels: Sequence[str], tokenizer: Any, template_name: str,
                row_tokens: int, fmt: str = "padellm", weights: Optional[Sequence[float]] = None
                ) -> List[PackedTree]:
    """One trie per document: PaDeLLM's label/mention branches, or a baseline's single sequence.
    `weights`: the loss weight per target part (examples.PART_NAMES order); None: all 1."""
    from ..baselines.formats import FORMATS

    template = get_template(template_name)
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


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) a PaDeLLM LoRA adapter; returns the best dev scores."""
    import spacy
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm

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
    model, tokenizer = load_base(resolve_model(cfg.model), torch.float32, "cpu")
    t0 = time.time()
    trees = build_trees(train_docs, labels, tokenizer, cfg.template, cfg.row_tokens, cfg.format,
                        part_weights(cfg))
    print(f"[train] {len(trees)} documents packed in {time.time() - t0:.1f}s; labels {labels}", flush=True)

    lora = lora_config(model, cfg)
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    steps_per_epoch = len(epoch_steps(trees, cfg, 0))
    total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs))
    step, best = 0, {"score": -1.0}
    ckpt = out / CHECKPOINT
    if (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, {k: v.float() for k, v in
                                          load_file(str(ckpt / "adapter_model.safetensors")).items()})
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:  # a slim checkpoint (slim_checkpoint): same weights, step and schedule; Adam's moments restart
            print("[train] slim checkpoint: the optimizer state starts afresh", flush=True)
        step, best = state["step"], state["best"]
        torch.set_rng_state(state["rng"])
        total = resumed_total(state, total)
        print(f"[train] resumed from step {step} of {total}", flush=True)
        truncate_log(out / LOG, step)
    elif cfg.init_adapter:
        warm_start(model, cfg.init_adapter)
        print(f"[train] LoRA weights initialised from {cfg.init_adapter}", flush=True)
    meta = {"labels": labels, "template": cfg.template, "format": cfg.format, "base_model": cfg.model,
            "config": cfg.to_dict()}

    def save_checkpoint() -> None:
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            torch.save({"optimizer": optimizer.state_dict(), "step": step, "best": best,
                        "rng": torch.get_rng_state(), "total": total}, tmp / "state.pt")
        atomic_dir_write(ckpt, write)

    def evaluate(docs: Sequence[Any]) -> Dict[str, Any]:
        from .evaluate import evaluate_model

        model.eval()
        try:
            if cfg.format != "padellm":
                from ..baselines.autoreg import evaluate_autoreg

                return evaluate_autoreg(model.get_base_model(), tokenizer, labels, cfg.format, docs,
                                        batch_size=cfg.eval_batch_size, bf16=use_bf16)
            return evaluate_model(model.get_base_model(), tokenizer, labels, cfg.template, docs, nlp,
                                  batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                  bf16=use_bf16)
        finally:
            model.train()

    log_path = out / LOG
    model.train()
    bar = tqdm(total=total, initial=step, mininterval=5, dynamic_ncols=False, ncols=110)
    tokens_seen, t_start = 0, time.time()
    last_checkpoint = t_start
    plan: Dict[int, List[List[List[int]]]] = {}
    while step < total:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in plan:
            plan = {epoch: epoch_steps(trees, cfg, epoch)}
        batch_rows = plan[epoch][index]
        batch = collate([[trees[i] for i in row] for row in batch_rows], pad_id=tokenizer.eos_token_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = packed_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += batch.n_tokens
        elapsed = time.time() - t_start
        tps = tokens_seen / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:.0f}", epoch=f"{step / steps_per_epoch:.2f}")
        if step % cfg.log_every == 0 or step == total:
            log(log_path, {"step": step, "loss": loss.item(), "lr": lr_at(step - 1, total, cfg),
                           "tokens_per_s": tps, "epoch": step / steps_per_epoch, "time": time.time()})
        if dev_docs and (step % cfg.eval_every == 0 or step == total):
            scores = evaluate(spread(dev_docs, cfg.eval_docs))
            log(log_path, {"step": step, "eval": scores, "time": time.time()})
            print(f"\n[eval] step {step}: string F1 {scores['f1_string']:.4f} span F1 {scores['f1_span']:.4f}",
                  flush=True)
            if scores["f1_string"] > best["score"]:
                best = {"score": scores["f1_string"], "step": step, "scores": scores}
                atomic_dir_write(out / BEST, lambda tmp: save_adapter(model, tmp, {**meta, "dev": best}))
        if (step % cfg.checkpoint_every == 0 or step == total
                or time.time() - last_checkpoint >= 60 * cfg.checkpoint_minutes):
            save_checkpoint()
            last_checkpoint = time.time()
    bar.close()
    if not (out / BEST).exists():  # no dev set (or no evaluation yet): the last step is the result
        atomic_dir_write(out / BEST, lambda tmp: save_adapter(model, tmp, {**meta, "step": step}))
    if dev_docs and cfg.final_eval and "dev_full" not in best:
        best = final_evaluation(model, out / BEST, dev_docs, evaluate, best)
        log(log_path, {"step": step, "final_eval": best["dev_full"], "time": time.time()})
        save_checkpoint()  # a resumed finished run does not evaluate again
    return {**best, "adapter": str(out / BEST), "steps": step}


def slim_checkpoint(folder: Path) -> None:
    """Shrink a checkpoint to what travels in git between sessions: the adapter in bf16 and the step,
    schedule, best score and RNG state, without Adam's moments (twice the adapter's size in float32). A run
    resumed from it keeps its schedule; only the optimizer's running averages start again."""
    from safetensors.torch import load_file, save_file

    state = torch.load(folder / "state.pt", weights_only=False)
    weights = folder / "adapter_model.safetensors"
    slim = {k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}

    def write(tmp: Path) -> None:
        for f in folder.iterdir():
            if f.name not in ("state.pt", weights.name):
                shutil.copy2(f, tmp / f.name)
        save_file(slim, str(tmp / weights.name))
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp / "state.pt")
    atomic_dir_write(folder, write)


def spread(docs: Sequence[Any], n: int) -> List[Any]:
    """`n` documents spread evenly over `docs`, the middle one of each of n equal blocks: dev files are
    topic-contiguous, so the first n documents would select a checkpoint on one topic. Taking the middle
    keeps the sample mostly apart from a benchmark's every-k-th sample, which starts at document 0 (400 of
    CoNLL dev's 3,250: 48 documents in common with every 8th)."""
    if n <= 0 or n >= len(docs):
        return list(docs)
    return [docs[(2 * i + 1) * len(docs) // (2 * n)] for i in range(n)]


def resumed_total(state: Dict[str, Any], asked: int) -> int:
    """A resumed run keeps the schedule it started with: its total step count decides the learning rate
    of every step, so recomputing it from changed flags would make the rate jump (issue 14)."""
    total = int(state.get("total") or asked)
    if total != asked:
        print(f"[train] keeping the original schedule of {total} steps (these flags give {asked}); "
              "start a new --output folder for a new schedule", flush=True)
    return total


def warm_start(model: Any, folder: str) -> None:
    """Load a saved adapter's LoRA weights into the fresh peft model (a new schedule from a trained start)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..errors import Errors, PaDeLLMError

    weights = Path(folder) / "adapter_model.safetensors"
    if not weights.is_file():
        raise PaDeLLMError(Errors.E009.format(path=folder))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise PaDeLLMError(Errors.E010.format(key="--init-adapter", value=folder,
                                              why=f"its LoRA shape differs from this run's ({unexpected[:2]} ...)"))


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


def save_adapter(model: Any, folder: Path, meta: Dict[str, Any]) -> None:
    """The adapter in bf16 (half the bytes; LoRA deltas lose nothing measurable) plus padellm.json."""
    model.save_pretrained(folder)
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    (folder / "padellm.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf8")
