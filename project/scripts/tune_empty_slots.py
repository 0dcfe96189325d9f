"""Measure empty slots on dev and tune `beyond_ratio` for an adapter trained with them (issue 14).

Each setting decodes the same dev documents through the component: empty slots off (the plain count),
empty slots on without any slot beyond the count (`beyond_ratio` 2: a ratio never exceeds 1, so only empty
slots act), then each `--ratios` value (slot c + 1 under count c + 1 where p(c + 1) / p(c) >= it). It prints
string and span F1, exact counts and time per setting; `--write` stores the best ratio (string F1) in the
adapter's padellm.json (`decode.empty_slots`, `decode.beyond_ratio`), which the component reads where its
config leaves them null.

    python project/scripts/tune_empty_slots.py ../shared/data/conll2003/dev.conll \
        --adapter training_runs/empty-slot-cont/best --sample 400 --threads 2 \
        --out benchmarks/empty_slots_tuning.json [--write]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

NEVER = 2.0  # beyond_ratio above any ratio: empty slots only


def setting_rows(ratios: List[float]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = [{"name": "off", "empty_slots": False},
                                  {"name": "empty slots only", "empty_slots": True, "beyond_ratio": NEVER}]
    rows += [{"name": f"beyond_ratio {r:g}", "empty_slots": True, "beyond_ratio": r} for r in ratios]
    return rows


def run(dev: str, adapter: str, sample: int, ratios: List[float], threads: int, batch_size: int,
        model: str) -> List[Dict[str, Any]]:
    import spacy

    from spacy_padellm.evaluation import evaluate, pipeline_annotate
    from spacy_padellm.training.readers import read_any
    from spacy_padellm.training.schedule import spread

    gold = spread([d for d in read_any(dev, spacy.blank("en").vocab) if d.text.strip()], sample)
    out = []
    for row in setting_rows(ratios):
        nlp = spacy.blank("en")
        config = {k: v for k, v in row.items() if k != "name"}
        nlp.add_pipe("padellm_ner", config={"model": model, "adapter": adapter, "threads": threads, **config})
        scores = evaluate(pipeline_annotate(nlp, batch_size), gold, batch_size)
        out.append({**row, "f1_string": scores["f1_string"], "p_string": scores["p_string"],
                    "r_string": scores["r_string"], "f1_span": scores["f1_span"],
                    "count_exact": scores["count_exact"], "count_low": scores["count_low"],
                    "count_high": scores["count_high"], "seconds": scores["seconds"], "n_docs": len(gold)})
        r = out[-1]
        print(f"{r['name']:>18}: string F1 {100 * r['f1_string']:.2f} (P {100 * r['p_string']:.2f} R "
              f"{100 * r['r_string']:.2f}) span F1 {100 * r['f1_span']:.2f} counts exact "
              f"{100 * r['count_exact']:.1f}% low {100 * r['count_low']:.1f}% high {100 * r['count_high']:.1f}% "
              f"[{r['seconds']:.0f} s]", flush=True)
    return out


def write_choice(adapter: str, rows: List[Dict[str, Any]], sample: int, dev: str) -> Dict[str, Any]:
    """The best `beyond_ratio` row by string F1 (empty slots only counts as a ratio of NEVER), into the
    adapter's padellm.json."""
    from spacy_padellm.engine.loading import ADAPTER_META

    best = max((r for r in rows if r["empty_slots"]), key=lambda r: r["f1_string"])
    path = Path(adapter) / ADAPTER_META
    meta = json.loads(path.read_text(encoding="utf8"))
    meta["decode"] = {**meta.get("decode", {}), "empty_slots": True, "beyond_ratio": best["beyond_ratio"],
                      "tuned_on": f"{sample} documents spread over {Path(dev).name} (training's selection sample)",
                      "table": [{k: r[k] for k in ("name", "f1_string", "f1_span", "count_exact")} for r in rows]}
    path.write_text(json.dumps(meta, indent=1), encoding="utf8")
    print(f"-> {path}: beyond_ratio {best['beyond_ratio']}")
    return best


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sample", type=int, default=400, help="documents spread over dev (0: all)")
    parser.add_argument("--ratios", default="0.5,0.2,0.1,0.05")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.dev, args.adapter, args.sample, [float(x) for x in args.ratios.split(",")], args.threads,
               args.batch_size, args.model)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows}, indent=1))
    if args.write:
        write_choice(args.adapter, rows, args.sample, args.dev)


if __name__ == "__main__":
    main()
