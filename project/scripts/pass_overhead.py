"""What a forward pass of the shipped default costs beyond its decoder linears, by the tokens it feeds.

A pass of T tokens (one row, from nothing: `engine/kv.py` `extend`, the engine's own forward) is timed
against the same 120 decoder linears alone, called the way the engine calls them (`LeanLlama._linear`:
prepacked copies where the rule takes them, else `linear`) on inputs of T rows, in the same process,
alternating. The difference is the output layer (one row), attention, norms, rotary embeddings, the
cache and Python. It tells whether a pass is bound by its matmuls (then only fewer tokens make it
cheaper) or by the rest.

    python project/scripts/pass_overhead.py --threads 2 --out benchmarks/pass_overhead.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

from default_lean import load_default_lean  # this folder
from prepacked_linears import timed  # this folder: the same median-of-repeats timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", default="1,8,32,96")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import torch

    from spacy_padellm.engine.floor import cpu_description, flops
    from spacy_padellm.engine.kv import extend

    runner, model, lean = load_default_lean(args.threads)
    hidden = model.config.hidden_size
    results: List[Dict[str, float]] = []
    with torch.inference_mode():
        for n in [int(t) for t in args.tokens.split(",")]:
            seg = [[100 + i for i in range(n)]]
            ins = {which: torch.randn(n, layer_in).to(lean.dtype) for which, layer_in in
                   enumerate((hidden, hidden, hidden, lean.layers[0].down.shape[1]))}

            def linears() -> None:
                for layer in lean.layers:
                    for which in range(4):
                        lean._linear(ins[which], layer, which)

            runs: Dict[str, List[float]] = {"pass": [], "linears": []}
            for _ in range(2):  # alternate, so that a slow moment of the machine hits both
                runs["pass"].append(timed(lambda: extend(model, None, seg, runner.pad_id, 1, lean), args.repeats))
                runs["linears"].append(timed(linears, args.repeats))
            row = {"tokens": n, "pass_ms": round(min(runs["pass"]), 2), "linears_ms": round(min(runs["linears"]), 2)}
            row["rest_ms"] = round(row["pass_ms"] - row["linears_ms"], 2)
            row["linears_gflops"] = round(flops(model, n, 0) / row["linears_ms"] / 1e6, 1)
            results.append(row)
            print(f"{n:4d} tokens: pass {row['pass_ms']:7.1f} ms, its decoder linears {row['linears_ms']:7.1f} ms "
                  f"({row['linears_gflops']:.0f} GFLOP/s), the rest {row['rest_ms']:6.1f} ms", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({**cpu_description(), "dtype": str(lean.dtype), "prepack": lean.prepack,
                                              "threads": args.threads, "torch": torch.__version__,
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()
