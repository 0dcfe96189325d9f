"""Tune the count_bias decoding knob on dev and store the best value with the adapter.

A model trained on the paper's targets sees "0" for most (document, label) pairs and learns to under-count:
precision beats recall. Taking a constant off the logits of a 0 count at the first count token trades them
back. This evaluates the pipeline on the first N dev documents for each value, prints a table, and with
--write stores the best (by string micro-F1) in the adapter's padellm.json as decode.count_bias, which the
component uses when its own count_bias is null.

    python project/scripts/tune_count_bias.py DEV --adapter spacy_padellm/default_adapter --sample 400 \
        --values 0,0.5,1,1.5,2,3 [--write]

--sample N tunes on the training's selection sample (N documents spread over dev; the first N of --limit
are one topic-contiguous block), and --held-out also scores the best value and 0 on the rest of dev.
"""
import argparse
import json
from pathlib import Path

import spacy

from spacy_padellm.engine.loading import ADAPTER_META
from spacy_padellm.evaluation import evaluate, pipeline_annotate
from spacy_padellm.training.readers import read_any
from spacy_padellm.training.schedule import spread

parser = argparse.ArgumentParser()
parser.add_argument("dev")
parser.add_argument("--adapter", default="spacy_padellm/default_adapter")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--limit", type=int, default=300, help="the first N dev documents (without --sample)")
parser.add_argument("--sample", type=int, default=0, help="N documents spread over dev instead")
parser.add_argument("--held-out", action="store_true", help="also score the best value and 0 on the other docs")
parser.add_argument("--threads", type=int, default=0)
parser.add_argument("--values", default="0,0.5,1,1.5,2,3")
parser.add_argument("--write", action="store_true")
args = parser.parse_args()

docs = [d for d in read_any(args.dev, spacy.blank("en").vocab) if d.text.strip()]
gold = spread(docs, args.sample) if args.sample else docs[: args.limit]
chosen = {id(d) for d in gold}
rest = [d for d in docs if id(d) not in chosen]
described = f"{len(gold)} docs spread over {Path(args.dev).name}" if args.sample else \
    f"first {len(gold)} docs of {Path(args.dev).name}"


def scored(value: float, docs: list) -> dict:
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": args.model, "adapter": args.adapter, "count_bias": value,
                                        "threads": args.threads})
    return evaluate(pipeline_annotate(nlp, 32), docs, 32)


def line(value: float, scores: dict) -> str:
    return (f"count_bias {value:4.1f}: string F1 {100 * scores['f1_string']:.2f} (P {100 * scores['p_string']:.2f} "
            f"R {100 * scores['r_string']:.2f}), span F1 {100 * scores['f1_span']:.2f}, counts exact "
            f"{100 * (scores['count_exact'] or 0):.1f}%  [{scores['seconds']:.0f} s]")


rows = []
for value in [float(v) for v in args.values.split(",")]:
    scores = scored(value, gold)
    rows.append((value, scores["f1_string"], scores["p_string"], scores["r_string"], scores["f1_span"]))
    print(line(value, scores), flush=True)
best = max(rows, key=lambda r: r[1])
print(f"best on {described}: count_bias {best[0]} (string F1 {100 * best[1]:.2f})")
if args.held_out and rest:
    print(f"the other {len(rest)} docs:")
    for value in sorted({0.0, best[0]}):
        print("  " + line(value, scored(value, rest)), flush=True)
if args.write:
    meta_path = Path(args.adapter) / ADAPTER_META
    meta = json.loads(meta_path.read_text(encoding="utf8"))
    meta["decode"] = {"count_bias": best[0], "tuned_on": described,
                      "table": [{"count_bias": r[0], "f1_string": r[1], "f1_span": r[4]} for r in rows]}
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf8")
    print(f"-> {meta_path}")
