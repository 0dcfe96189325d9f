"""Linear layers on this CPU: the engine's call without prepacking against oneDNN with the weight prepacked
once (engine/matmul.py), in float32 or bf16.

bf16: `F.linear` on CPU tensors reorders the weight into oneDNN's blocked layout in every call; the prepacked
call does it once. float32: the baseline is the engine's `linear` (MKL, weight-left for a few rows). This
times both on the decoder linears of SmolLM2-135M (30 layers of the engine's fused shapes: q/k/v 960 x 576,
o 576 x 576, gate/up 3072 x 576, down 576 x 1536, each layer its own weights so nothing stays in cache) and
its 49k x 576 output layer, for the row counts the engine's passes have, alternating the two calls, and
reports the largest difference between their outputs.

    python project/scripts/prepacked_linears.py --dtype bf16 --threads 2 --out benchmarks/bf16_linears.json
    python project/scripts/prepacked_linears.py --dtype float32 --threads 2 --out benchmarks/fp32_linears.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

LAYERS = 30
DECODER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = (49152, 576)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median ms of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["bf16", "float32"], default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,96,128,256,512,768")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from spacy_padellm.engine.floor import cpu_description
    from spacy_padellm.engine.matmul import linear, packed_linear, prepacked

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    weights = [[(torch.randn(o, i) * 0.02).to(dtype) for o, i in DECODER] for _ in range(LAYERS)]
    head = (torch.randn(*HEAD) * 0.02).to(dtype)
    packed = [[prepacked(w) for w in layer] for layer in weights]
    packed_head = prepacked(head)
    if packed_head is None or any(p is None for layer in packed for p in layer):
        raise SystemExit(f"oneDNN cannot prepack {args.dtype} weights here (no oneDNN, or bf16 without AVX512)")
    results: List[Dict[str, float]] = []
    for rows in [int(r) for r in args.rows.split(",")]:
        inputs = {i: torch.randn(rows, i).to(dtype) for _, i in DECODER}

        def plain() -> None:
            for layer in weights:
                for w in layer:
                    linear(inputs[w.shape[1]], w)

        def oned() -> None:
            for layer in packed:
                for (_, i), p in zip(DECODER, layer):
                    packed_linear(inputs[i], p)

        x = inputs[576]
        diff = max((linear(inputs[w.shape[1]], w).float() - packed_linear(inputs[w.shape[1]], p).float()).abs().max().item()
                   for w, p in zip(weights[0], packed[0]))
        runs: Dict[str, List[float]] = {"linear": [], "prepacked": [], "head_linear": [], "head_prepacked": []}
        for _ in range(2):  # alternate, so that a slow moment of the machine hits both
            runs["linear"].append(timed(plain, args.repeats))
            runs["prepacked"].append(timed(oned, args.repeats))
            runs["head_linear"].append(timed(lambda: linear(x, head), args.repeats))
            runs["head_prepacked"].append(timed(lambda: packed_linear(x, packed_head), args.repeats))
        row = {"rows": rows, **{k: round(min(v), 2) for k, v in runs.items()}, "max_abs_diff": diff}
        row["ratio"] = round(row["linear"] / row["prepacked"], 2)
        row["head_ratio"] = round(row["head_linear"] / row["head_prepacked"], 2)
        results.append(row)
        print(f"rows {rows:4d}: 120 decoder linears {row['linear']:7.2f} ms, prepacked {row['prepacked']:7.2f} ms "
              f"({row['ratio']:.2f}x); output layer {row['head_linear']:6.2f} vs {row['head_prepacked']:6.2f} ms "
              f"({row['head_ratio']:.2f}x); largest difference {diff:.2g}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({**cpu_description(), "dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()
