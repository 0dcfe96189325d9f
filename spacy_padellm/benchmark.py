"""PaDeLLM against autoregressive NER on the same base model, side by side in one process.

Methods run interleaved on the same document batches (the order rotates per batch) after a warm-up, so
ratios hold on a noisy machine. Quality is scored twice: the paper's micro-F1 over per-document sets of
(label, string), and spaCy's span F1 after alignment.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from spacy.tokens import Doc
from spacy.training import Example

from .errors import Errors, PaDeLLMError
from .evaluation import gold_copy, metrics
from .scoring import predicted_strings
from .settings import METHODS, PRESETS
from .types import STAGES

PACKAGE = Path(__file__).resolve().parent
ADAPTERS = {**{name: PACKAGE / "default_adapter" for name in (*PRESETS, "padellm_reference")},
            "autoreg_struct": PACKAGE / "baseline_adapters" / "autoreg_struct",
            "autoreg_aug": PACKAGE / "baseline_adapters" / "autoreg_aug"}
PER_DOC = ("forward_passes", "prompt_tokens", "generated_tokens")  # reported as means per document
STATS = (*PER_DOC, "sequences", "sequence_tokens")
Run = Callable[[List[Doc]], List[Tuple[Doc, Set[Tuple[str, str]], Dict[str, int]]]]


def build_methods(names: Sequence[str], model: str, adapters: Dict[str, str], dtype: str, threads: int = 0
                  ) -> Dict[str, Run]:
    """One runner per method: docs in, (predicted doc, predicted strings, counters) out. `threads`: torch
    threads of every method (0: the cores this process may use), set once here and by each pipe."""
    import spacy

    from .baselines.autoreg import AutoregNER, set_pairs
    from .baselines.reference import ReferencePaDeLLM
    from .engine.loading import (apply_adapter, load_base, read_adapter_meta, resolve_device, resolve_dtype,
                                 resolve_model)

    from .engine.forking import set_threads

    set_threads(threads)
    runners: Dict[str, Run] = {}
    device = resolve_device("auto")
    for name in names:
        if name not in METHODS:
            raise PaDeLLMError(Errors.E010.format(key="methods", value=name, why=f"use some of {list(METHODS)}"))
        path = str(adapters.get(name) or ADAPTERS[name])
        if not (Path(path) / "adapter_config.json").is_file():
            raise PaDeLLMError(Errors.E017.format(method=name, path=path))
        meta = read_adapter_meta(path)
        if name.startswith("padellm"):
            nlp = spacy.blank("en")
            pipe = nlp.add_pipe("padellm_ner", config={"model": model, "adapter": path, "dtype": dtype,
                                                       "threads": threads, **PRESETS.get(name, {})})
            meter = None
            if name == "padellm_reference":  # the paper's procedure, through the same pipe (chunking, alignment)
                pipe.set_engine(ReferencePaDeLLM(pipe.decoder.model, pipe.decoder.tokenizer, pipe.labels,
                                                 pipe.template, pipe.cfg["max_new_tokens"], pipe.count_bias))
            else:
                meter = pipe.decoder.meter  # per-stage timings

            def run(docs: List[Doc], nlp: Any = nlp) -> List[Tuple[Doc, Set[Tuple[str, str]], Dict[str, int]]]:
                out = list(nlp.pipe([gold_copy(d) for d in docs], batch_size=len(docs)))
                return [(d, predicted_strings(d), {k: d.user_data["padellm"][k] for k in STATS}) for d in out]
            run.meter = meter  # type: ignore[attr-defined]
            run.model = pipe.decoder.model  # type: ignore[attr-defined]  # the floor's shapes
            run.extras = pipe.decoder.extras if meter is not None else None  # type: ignore[attr-defined]
        else:
            base, tokenizer = load_base(resolve_model(model), resolve_dtype(dtype, device), device)
            ner = AutoregNER(apply_adapter(base, path, model), tokenizer, meta["labels"], name)

            def run(docs: List[Doc], ner: Any = ner) -> List[Tuple[Doc, Set[Tuple[str, str]], Dict[str, int]]]:
                return [(set_pairs(gold_copy(g), pairs), {(lab, s.strip()) for lab, s in pairs}, stats)
                        for g, (pairs, stats) in zip(docs, ner.predict([d.text for d in docs]))]
            # its passes too: the prompt's prefill ("mention_prompt") and the greedy tokens ("mention")
            run.meter, run.model, run.extras = ner.runner.meter, ner.runner.model, None  # type: ignore[attr-defined]
        runners[name] = run
    return runners


def benchmark(gold: List[Doc], runners: Dict[str, Run], batch_sizes: Sequence[int], warmup: int = 2,
              log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    names = list(runners)
    for name in names:  # warm-up: allocator, oneDNN kernels, lazy loading
        runners[name](gold[:warmup])
    result: Dict[str, Any] = {"device": device_description(), "n_docs": len(gold), "methods": {}}
    model = next((r.model for r in runners.values() if getattr(r, "model", None) is not None), None)
    if model is not None:  # the machine's matmul rate at this model's shapes, measured in this run
        from .engine.floor import calibrate

        result["floor"] = calibrate(model)
    for name in names:
        result["methods"][name] = {"by_batch_size": {}}
    for bs in batch_sizes:
        for name in names:
            meter = getattr(runners[name], "meter", None)
            if meter is not None:
                meter.clear()
        batches = [gold[i:i + bs] for i in range(0, len(gold), bs)]
        times: Dict[str, List[float]] = {n: [] for n in names}
        outputs: Dict[str, List[Any]] = {n: [] for n in names}
        for b, batch in enumerate(batches):
            for name in names[b % len(names):] + names[:b % len(names)]:
                t0 = time.perf_counter()
                out = runners[name](batch)
                times[name].append(time.perf_counter() - t0)
                outputs[name].extend(out)
            if log and (b + 1) % max(1, len(batches) // 10) == 0:
                log(f"batch size {bs}: {b + 1}/{len(batches)} batches")
        for name in names:
            lat = [1000 * t for t in times[name]]
            stats = [s for _, _, s in outputs[name]]
            entry = {"latency_ms_p50": statistics.median(lat), "latency_ms_p90": _quantile(lat, 0.9),
                     "docs_per_s": len(gold) / sum(times[name]),
                     **{f"{k}_mean": statistics.fmean(s[k] for s in stats)
                        for k in PER_DOC},
                     # the paper's "sequence length": tokens per output sequence, over all sequences
                     "sequence_tokens_mean": sum(s["sequence_tokens"] for s in stats)
                     / max(1, sum(s["sequences"] for s in stats))}
            meter = getattr(runners[name], "meter", None)
            if meter is not None:  # where the time goes: per stage, ms per doc and passes per batch
                entry["stages"] = stage_entries(meter, runners[name].model, result.get("floor"), len(gold),
                                                len(batches))
                entry["extras"] = dict(meter.choices)  # what engine/extras.py chose, per call or pass
                if getattr(runners[name], "extras", None) is not None:
                    result["methods"][name]["pass_cost"] = runners[name].extras.describe()
            result["methods"][name]["by_batch_size"][str(bs)] = entry
            if "f1_string" not in result["methods"][name]:
                scores = metrics([Example(d, g) for (d, _, _), g in zip(outputs[name], gold)])
                result["methods"][name].update({k: scores[k] for k in ("f1_string", "f1_span", "p_string",
                                                                       "r_string", "f1_string_by_label")})
                for other in ("padellm", "padellm_plain"):  # F1 hides flips that cancel: count the
                    if other in names:  # documents whose output differs (padellm_plain: plain greedy too)
                        pairs = zip(outputs[name], outputs[other])
                        same = sum(mine == theirs for (_, mine, _), (_, theirs, _) in pairs)
                        result["methods"][name][f"docs_same_as_{other}"] = same / len(gold)
    if "padellm" in names:
        base = result["methods"]["padellm"]["by_batch_size"]
        result["speedup_vs"] = {}
        for name in names:
            if name == "padellm":
                continue
            other = result["methods"][name]["by_batch_size"]
            result["speedup_vs"][name] = {
                str(bs): (other[str(bs)]["latency_ms_p50"] / base[str(bs)]["latency_ms_p50"] if bs == 1
                          else base[str(bs)]["docs_per_s"] / other[str(bs)]["docs_per_s"]) for bs in batch_sizes}
    return result


def stage_entries(meter: Any, model: Any, floor: Optional[Dict[str, Any]], n_docs: int, n_batches: int
                  ) -> Dict[str, Dict[str, float]]:
    """Per stage: ms per doc, passes per batch, ms and tokens per pass, and the achieved GFLOP/s with its
    share of the calibrated rate of the model's dtype (the floor)."""
    import torch

    from .engine.floor import flops

    bf16 = next(model.parameters()).dtype == torch.bfloat16
    rate = (floor or {}).get("gflops_bf16" if bf16 else "gflops_fp32")
    out = {}
    for stage, sec in meter.seconds.items():
        passes = max(1, meter.passes.get(stage, 0))
        gflops = flops(model, meter.tokens.get(stage, 0), meter.logits.get(stage, 0),
                       meter.attended.get(stage, 0.0)) / max(sec, 1e-9) / 1e9
        out[stage] = {"ms_per_doc": 1000 * sec / n_docs, "passes_per_batch": meter.passes.get(stage, 0) / n_batches,
                      "ms_per_pass": 1000 * sec / passes, "tokens_per_pass": meter.tokens.get(stage, 0) / passes,
                      "gflops": gflops, "floor_share": gflops / rate if rate else float("nan")}
    return out


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def device_description() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def floor_share(entry: Dict[str, Any]) -> float:
    """The share of the calibrated matmul rate over all of a call's passes (time-weighted over stages)."""
    stages = entry.get("stages") or {}
    ms = sum(st["ms_per_doc"] for st in stages.values())
    if not ms:
        return float("nan")
    return sum(st.get("floor_share", float("nan")) * st["ms_per_doc"] for st in stages.values()) / ms


def table(result: Dict[str, Any]) -> str:
    """The summary: per method and batch size, latency, docs/s, passes, tokens, % of the floor, F1."""
    lines = [f"{'method':<20} {'bs':>3} {'p50 ms':>9} {'p90 ms':>9} {'docs/s':>8} {'passes':>7} {'prompt':>7} "
             f"{'gen':>6} {'seq':>5} {'floor':>6} {'F1 str':>7} {'F1 span':>7} {'same %':>6}"]
    for name, m in result["methods"].items():
        for bs, e in m["by_batch_size"].items():
            share = floor_share(e)
            floor = f"{100 * share:5.0f}%" if share == share else f"{'-':>6}"
            lines.append(f"{name:<20} {bs:>3} {e['latency_ms_p50']:9.1f} {e['latency_ms_p90']:9.1f} "
                         f"{e['docs_per_s']:8.2f} {e['forward_passes_mean']:7.1f} {e['prompt_tokens_mean']:7.1f} "
                         f"{e['generated_tokens_mean']:6.1f} {e['sequence_tokens_mean']:5.1f} {floor} "
                         f"{100 * m['f1_string']:7.2f} {100 * m['f1_span']:7.2f} "
                         f"{100 * m.get('docs_same_as_padellm', float('nan')):6.1f}")
    if "docs_same_as_padellm_plain" in result["methods"].get("padellm_reference", {}):
        same = result["methods"]["padellm_reference"]["docs_same_as_padellm_plain"]
        lines.append(f"padellm_reference vs padellm_plain (both plain greedy): {100 * same:.1f}% of docs the same")
    for name, by in result.get("speedup_vs", {}).items():
        lines.append(f"padellm vs {name}: " + ", ".join(f"bs {bs}: {x:.2f}x" for bs, x in by.items()))
    return "\n".join(lines)


def stage_table(result: Dict[str, Any]) -> str:
    """Where the time goes, per engine variant, batch size and stage: ms per doc, passes per batch, ms and
    tokens per pass, achieved GFLOP/s and its share of the floor (the calibrated matmul rate)."""
    floor = result.get("floor")
    lines = []
    if floor:
        lines.append(f"floor: {floor['cpu']} [{' '.join(floor['flags'])}], {floor['threads']} threads: GEMMs of the "
                     f"model's shapes ({floor['tokens']} tokens) at {floor['gflops_fp32']:.0f} GFLOP/s fp32, "
                     f"{floor['gflops_bf16']:.0f} bf16")
        one = floor.get("one_token_ms")
        if one:
            lines.append(f"one-token pass of the model: {one['transformers']:.1f} ms (transformers), "
                         f"{one['engine']:.1f} ms (the engine's pass); x1tok = ms/pass over the engine's")
    one_ms = ((floor or {}).get("one_token_ms") or {}).get("engine")
    lines.append(f"{'method':<20} {'bs':>3} {'stage':<15} {'ms/doc':>8} {'passes':>7} {'ms/pass':>8} {'tok/pass':>8} "
                 f"{'x1tok':>6} {'GFLOP/s':>8} {'floor':>6}")
    for name, m in result["methods"].items():
        for bs, e in m["by_batch_size"].items():
            for stage in STAGES:
                st = e.get("stages", {}).get(stage)
                if st is None:
                    continue
                ratio = st.get("ms_per_pass", 0) / one_ms if one_ms else float("nan")
                lines.append(f"{name:<20} {bs:>3} {stage:<15} {st['ms_per_doc']:8.1f} {st['passes_per_batch']:7.2f} "
                             f"{st.get('ms_per_pass', 0):8.1f} {st.get('tokens_per_pass', 0):8.1f} {ratio:6.2f} "
                             f"{st.get('gflops', 0):8.1f} {100 * st.get('floor_share', float('nan')):5.0f}%")
            if e.get("extras"):
                lines.append(f"{name:<20} {bs:>3} extras: " + extras_line(e["extras"]))
        if m.get("pass_cost"):
            lines.append(f"{name:<20}     pass costs measured: " + "; ".join(f"{k}: {v}" for k, v in m["pass_cost"].items()))
    return "\n".join(lines)


def extras_line(choices: Dict[str, int]) -> str:
    """'count guesses in 100 of 100 calls, speculation in 90 of 130 passes' from the meter's choices."""
    parts = []
    for what, unit in (("count guesses", "calls"), ("speculation", "passes")):
        yes, no = choices.get(what, 0), choices.get(f"no {what}", 0)
        measure, plain = choices.get(f"{what} to measure it", 0), choices.get(f"no {what} to measure it", 0)
        if yes or no or measure or plain:
            notes = [f"+{measure} to measure it"] * bool(measure)
            notes += [f"{plain} without, to measure that"] * bool(plain)
            parts.append(f"{what} in {yes} of {yes + no + measure + plain} {unit}"
                         + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(parts) or "none chosen"


def quality_table(result: Dict[str, Any]) -> str:
    """String precision, recall and F1 per method, and string F1 per label."""
    labels = sorted({label for m in result["methods"].values() for label in m.get("f1_string_by_label", {})})
    lines = [f"{'method':<20} {'P str':>7} {'R str':>7} {'F1 str':>7} " + " ".join(f"{label:>7}" for label in labels)]
    for name, m in result["methods"].items():
        by_label = m.get("f1_string_by_label", {})
        lines.append(f"{name:<20} {100 * m['p_string']:7.2f} {100 * m['r_string']:7.2f} {100 * m['f1_string']:7.2f} "
                     + " ".join(f"{100 * by_label.get(label, 0.0):7.2f}" for label in labels))
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["methods"])
    sizes = list(next(iter(result["methods"].values()))["by_batch_size"])
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(4.5 * (len(sizes) + 1), 4))
    for ax, bs in zip(axes, sizes):
        key = "latency_ms_p50" if bs == "1" else "docs_per_s"
        ax.bar(names, [result["methods"][n]["by_batch_size"][bs][key] for n in names], color="tab:blue")
        ax.set_title(f"batch size {bs}: {'p50 latency (ms)' if bs == '1' else 'docs/s'}")
        ax.tick_params(axis="x", rotation=30)
    axes[-1].bar(names, [result["methods"][n]["by_batch_size"][sizes[0]]["generated_tokens_mean"] for n in names],
                 color="tab:orange")
    axes[-1].set_title("generated tokens / doc")
    axes[-1].tick_params(axis="x", rotation=30)
    fig.suptitle(f"{result['n_docs']} docs; {result['device']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save(result: Dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1), encoding="utf8")
