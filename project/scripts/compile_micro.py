"""Does torch.compile pay on the engine's passes? An experiment for issue 17.

The shipped default's passes through the engine's own forward (`engine/lean.py`), three shapes the decoder
runs: one row of 96 tokens from nothing (a batch-1 first pass), 8 rows of one token after 90 cached (a
batch-1 mention pass), 128 rows of one token after 80 cached (a batch-32 mention pass). Each is timed eager
and with the elementwise pieces of every layer compiled by inductor (`dynamic=True`: the rows, widths and
cache lengths change from pass to pass): the RMSNorms and the rotary embeddings. The matmuls and attention
stay as they are. The compiled pass's hidden states are compared with the eager ones (max |difference|): a
last-bit change can flip a greedy choice.

    python project/scripts/compile_micro.py --threads 2 --out benchmarks/compile_micro.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from default_lean import load_default_lean  # this folder
from prepacked_linears import timed  # this folder: median ms of repeats after a warm-up

SHAPES = {"1 row x 96 tokens": (1, 96, 0), "8 rows x 1 token, 90 cached": (8, 1, 90),
          "128 rows x 1 token, 80 cached": (128, 1, 80)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import torch

    from spacy_padellm.engine.floor import cpu_description
    from spacy_padellm.engine.kv import extend
    from spacy_padellm.engine.lean import LeanLlama

    runner, model, lean = load_default_lean(args.threads)

    def inputs(rows: int, width: int, cached: int) -> Dict[str, Any]:
        past = None
        if cached:
            _, past = extend(model, None, [[200 + i for i in range(cached)]] * rows, runner.pad_id, 1, lean)
        return {"past": past, "segments": [[300 + r % 50 + i for i in range(width)] for r in range(rows)]}

    def run(case: Dict[str, Any]) -> Any:
        return extend(model, case["past"], case["segments"], runner.pad_id, 1, lean)[0]

    with torch.inference_mode():
        cases = {name: inputs(*shape) for name, shape in SHAPES.items()}
        eager = {name: timed(lambda c=c: run(c), args.repeats) for name, c in cases.items()}
        reference = {name: run(c).float() for name, c in cases.items()}
        # the engine's own elementwise pieces, compiled on this instance: every RMSNorm and rotary embedding
        started = time.perf_counter()
        lean._norm = torch.compile(lean._norm, dynamic=True)  # type: ignore[method-assign]
        lean._rotate = torch.compile(LeanLlama._rotate, dynamic=True)  # type: ignore[method-assign]
        for c in cases.values():
            run(c)  # compiles (and recompiles for dynamic shapes)
        compile_s = time.perf_counter() - started
        compiled = {name: timed(lambda c=c: run(c), args.repeats) for name, c in cases.items()}
        diff = {name: float((run(c).float() - reference[name]).abs().max()) for name, c in cases.items()}

    rows: List[Dict[str, Any]] = []
    for name in SHAPES:
        rows.append({"shape": name, "eager_ms": eager[name], "compiled_ms": compiled[name],
                     "speedup": eager[name] / compiled[name], "max_abs_diff": diff[name]})
        r = rows[-1]
        print(f"{name:>32}: eager {r['eager_ms']:.1f} ms, compiled pieces {r['compiled_ms']:.1f} ms "
              f"({r['speedup']:.2f}x), max |diff| {r['max_abs_diff']:.2e}")
    print(f"compile time {compile_s:.0f} s; {cpu_description()}, {args.threads} threads, {lean.dtype}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "cpu": cpu_description(),
                                              "dtype": str(lean.dtype), "compile_s": compile_s, "rows": rows},
                                             indent=1))


if __name__ == "__main__":
    main()
