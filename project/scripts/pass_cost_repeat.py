"""How repeatable engine/extras.py's calibration of greedy passes is, and how it compares with the passes
the decoder really runs: builds the calibration N times, then times rows of 1 and 5 tokens on a 100-token
cache with the logits of every fed column (the decoder's shape), 7 times each.

    python project/scripts/pass_cost_repeat.py --repeats 4 --threads 2
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_lean import load_default_lean  # noqa: E402

from spacy_padellm.engine.extras import PassCost  # noqa: E402
from spacy_padellm.engine.kv import extend  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--repeats", type=int, default=4, help="calibrations to build")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

runner, model, lean = load_default_lean(args.threads)
for _ in range(args.repeats):
    with torch.inference_mode():
        costs = PassCost.greedy_passes(model, lean, [1, 5])
    print("calibration:", "; ".join(f"{w} token(s): {c.describe('rows')}" for w, c in costs.items()), flush=True)
with torch.inference_mode():
    _, state = extend(model, None, [[100 + i for i in range(100)]], 0, lean=lean)
    for rows in (1, 8, 32):
        rows_state = state.select([0] * rows)
        for width in (1, 5):
            times = []
            for _ in range(7):
                start = time.perf_counter()
                extend(model, rows_state, [[7] * width] * rows, 0, n_logits=width, lean=lean)
                times.append(time.perf_counter() - start)
            print(f"decoder's shape, {rows} rows of {width} token(s): min {1000 * min(times):.1f} ms, "
                  f"median {1000 * statistics.median(times):.1f} ms", flush=True)
