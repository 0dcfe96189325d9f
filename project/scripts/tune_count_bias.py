"""Tune the count_bias decoding knob on dev and store the best value with the adapter.

A model trained on the paper's targets sees "0" for most (document, label) pairs and learns to under-count:
precision beats recall. Taking a constant off the logits of a 0 count at the first count token trades them
back. This evaluates the pipeline on the first N dev documents for each value, prints a table, and with
--write stores the best (by string micro-F1) in the adapter's padellm.json as decode.count_bias, which the
component uses when its own count_bias is null.

    python project/scripts/tune_count_bias.py DEV --adapter spacy_padellm/default_adapter --limit 300 \
        --values 0,0.5,1,1.5,2,3 [--write]
"""
import argparse
import json
from pathlib import Path

import spacy

from spacy_padellm.engine.loading import ADAPTER_META
from spacy_padellm.evaluation import evaluate, pipeline_annotate
from spacy_padellm.training.readers import read_any

parser = argparse.ArgumentParser()
parser.add_argument("dev")
parser.add_argument("--adapter", default="spacy_padellm/default_adapter")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--limit", type=int, default=300)
parser.add_argument("--values", default="0,0.5,1,1.5,2,3")
parser.add_argument("--write", action="store_true")
args = parser.parse_args()

gold = [d for d in read_any(args.dev, spacy.blank("en").vocab) if d.text.strip()][: args.limit]
rows = []
for value in [float(v) for v in args.values.split(",")]:
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": args.model, "adapter": args.adapter, "count_bias": value})
    scores = evaluate(pipeline_annotate(nlp, 32), gold, 32)
    rows.append((value, scores["f1_string"], scores["p_string"], scores["r_string"], scores["f1_span"]))
    print(f"count_bias {value:4.1f}: string F1 {100 * rows[-1][1]:.2f} (P {100 * rows[-1][2]:.2f} "
          f"R {100 * rows[-1][3]:.2f}), span F1 {100 * rows[-1][4]:.2f}  [{scores['seconds']:.0f} s]", flush=True)
best = max(rows, key=lambda r: r[1])
print(f"best on {len(gold)} dev docs: count_bias {best[0]} (string F1 {100 * best[1]:.2f})")
if args.write:
    meta_path = Path(args.adapter) / ADAPTER_META
    meta = json.loads(meta_path.read_text(encoding="utf8"))
    meta["decode"] = {"count_bias": best[0], "tuned_on": f"first {len(gold)} docs of {Path(args.dev).name}",
                      "table": [{"count_bias": r[0], "f1_string": r[1], "f1_span": r[4]} for r in rows]}
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf8")
    print(f"-> {meta_path}")
