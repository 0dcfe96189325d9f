"""Where the time of one engine call goes: torch.profiler over the default pipe on dev documents.

Runs a warm-up, then profiles `--batch-size` documents in one call (1: a batch-1 document; 32: a batch),
and prints per stage (the engine's Meter) and per operator group: matmuls (linear/addmm/mm/bmm),
attention (scaled_dot_product_attention and its parts), cache copies (cat/index_select/gather/copy_),
precision casts (to/_to_copy), the output layer's top-8 rescoring (topk/scatter), and the rest; the time
not inside any torch operator is Python. Then the same groups within each stage's forward passes (the
engine's Runner.forward and forward_tree, wrapped in a profiler label here), per pass.

    python project/scripts/profile_decode.py ../shared/data/conll2003/dev.conll --batch-size 1 --threads 1
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List

GROUPS = {
    "matmul": ("aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "mkldnn::_linear_pointwise"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::softmax", "aten::_softmax"),
    "cache copies": ("aten::cat", "aten::index_select", "aten::gather", "aten::copy_", "aten::index",
                     "aten::masked_fill", "aten::expand"),
    "precision casts": ("aten::to", "aten::_to_copy"),
    "top-8 rescoring": ("aten::topk", "aten::scatter"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow", "aten::mean", "aten::neg",
                    "aten::sum", "aten::cumsum", "aten::embedding", "aten::log_softmax", "aten::max", "aten::argmax"),
}


def _labelled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a Runner pass, whose 6th argument or `stage` keyword is its stage) inside a profiler label."""
    from torch.profiler import record_function

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        stage = kwargs.get("stage", args[5] if len(args) > 5 else "?")
        with record_function(f"stage:{stage}"):
            return fn(*args, **kwargs)
    return run


def group_of(name: str) -> str:
    return next((g for g, names in GROUPS.items() if name in names), "other torch ops")


def stage_groups(events: Any) -> Dict[str, Dict[str, float]]:
    """Self ms per operator group inside each `stage:` label (nested ops counted once, by their own self
    time); the label's time outside any op is "python"."""
    out: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def walk(event: Any, into: Dict[str, float]) -> float:
        total = 0.0
        for child in event.cpu_children:
            ms = child.self_cpu_time_total / 1000
            into[group_of(child.name)] += ms
            total += ms + walk(child, into)
        return total

    for event in events:
        if event.name.startswith("stage:") and not any(p.name.startswith("stage:") for p in _parents(event)):
            into = out[event.name[len("stage:"):]]
            inside = walk(event, into)
            into["python"] += max(0.0, event.cpu_time_total / 1000 - inside)
    return {k: dict(v) for k, v in out.items()}


def _parents(event: Any) -> List[Any]:
    found = []
    while getattr(event, "cpu_parent", None) is not None:
        event = event.cpu_parent
        found.append(event)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import spacy
    import torch
    from torch.profiler import ProfilerActivity, profile

    from spacy_padellm.evaluation import gold_copy
    from spacy_padellm.training.readers import read_any

    gold = [d for d in read_any(args.data, spacy.blank("en").vocab) if d.text.strip()][:: args.stride]
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"threads": args.threads})
    docs = [gold_copy(g) for g in gold[: args.batch_size * (args.repeats + 1)]]
    list(nlp.pipe(docs[: args.batch_size], batch_size=args.batch_size))  # warm-up
    meter = pipe.decoder.meter
    meter.clear()
    batches = [docs[i:i + args.batch_size] for i in range(args.batch_size, len(docs), args.batch_size)]
    runner = pipe.decoder.runner
    for name in ("forward", "forward_tree"):  # a label around each pass, named after its stage
        setattr(runner, name, _labelled(getattr(runner, name)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for batch in batches:
            list(nlp.pipe(batch, batch_size=args.batch_size))
        wall = time.perf_counter() - start
    groups: Dict[str, float] = defaultdict(float)
    top = 0.0
    for event in prof.key_averages():
        name = event.key
        group = next((g for g, names in GROUPS.items() if name in names), None)
        self_ms = event.self_cpu_time_total / 1000
        top += self_ms
        groups[group or "other torch ops"] += self_ms
    per_call = 1000 * wall / len(batches)
    print(f"{len(batches)} calls of {args.batch_size} docs, {torch.get_num_threads()} threads: "
          f"{per_call:.1f} ms per call")
    print("per stage (ms per call, passes per call):")
    for stage, sec in meter.seconds.items():
        print(f"  {stage:<15} {1000 * sec / len(batches):8.1f} ms {meter.passes[stage] / len(batches):6.2f}")
    print("per operator group (self time, ms per call, share of the call):")
    rows = sorted(groups.items(), key=lambda kv: -kv[1])
    python_ms = max(0.0, 1000 * wall - top)
    for group, ms in rows + [("python (outside torch ops)", python_ms)]:
        print(f"  {group:<27} {ms / len(batches):8.1f} ms {100 * ms / (1000 * wall):5.1f}%")
    by_stage = stage_groups(prof.events())
    print("per stage and operator group (self time, ms per pass):")
    for stage, found in by_stage.items():
        n = meter.passes.get(stage, 0) or 1
        print(f"  {stage:<15} " + ", ".join(f"{g} {ms / n:.1f}" for g, ms in sorted(found.items(), key=lambda kv: -kv[1])))
    if args.out:
        with open(args.out, "w", encoding="utf8") as f:
            json.dump({"batch_size": args.batch_size, "threads": torch.get_num_threads(), "ms_per_call": per_call,
                       "stages": {s: {"ms": 1000 * v / len(batches), "passes": meter.passes[s] / len(batches)}
                                  for s, v in meter.seconds.items()},
                       "groups_ms": {g: ms / len(batches) for g, ms in rows},
                       "python_ms": python_ms / len(batches),
                       "stage_groups_ms_per_pass": {st: {g: ms / (meter.passes.get(st, 0) or 1) for g, ms in found.items()}
                                                    for st, found in by_stage.items()}}, f, indent=1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
