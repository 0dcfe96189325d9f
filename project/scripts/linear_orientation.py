"""float32 linears of SmolLM2-135M's shapes as F.linear (x @ w.T) and with the weight left ((w @ x.T).T),
by rows of x: engine/matmul.py's rule rests on this.

    python project/scripts/linear_orientation.py --threads 2 [--out benchmarks/linear_orientation.json]

Each case runs the 120 decoder linears of the model (30 layers of fused q/k/v, o, fused gate/up, down;
distinct weights, so they are read from memory as in a real pass, not from the cache), or the output
layer twice, alternating the two orders; the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

DECODER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = [(49152, 576)]
ROWS = [1, 2, 3, 4, 8, 16, 32, 64, 96, 256]


def one_order(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def weight_left(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.mm(w, x.t()).t().contiguous()


def case(weights: Sequence[torch.Tensor], rows: int, repeats: int) -> Tuple[float, float]:
    """Median ms over `repeats` of all `weights` applied to `rows` rows, in each order (alternated)."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    times: Dict[Callable[..., Any], List[float]] = {one_order: [], weight_left: []}
    for _ in range(repeats + 1):
        for fn in (one_order, weight_left):
            start = time.perf_counter()
            for w in weights:
                fn(inputs[w.shape[1]], w)
            times[fn].append(1000 * (time.perf_counter() - start))
    med = [sorted(t[1:])[len(t[1:]) // 2] for t in times.values()]  # the first call: warm-up
    return med[0], med[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with torch.inference_mode():
        for name, shapes, copies in (("decoder", DECODER, 30), ("head", HEAD, 2)):
            weights = [torch.randn(o, i) * 0.05 for _ in range(copies) for o, i in shapes]
            for rows in ROWS:
                linear_ms, left_ms = case(weights, rows, args.repeats)
                results.append({"part": name, "rows": rows, "linear_ms": round(linear_ms, 2),
                                "weight_left_ms": round(left_ms, 2), "ratio": round(linear_ms / left_ms, 2)})
                print(f"{name:7s} rows {rows:4d}: F.linear {linear_ms:7.1f} ms  weight left {left_ms:7.1f} ms  "
                      f"{linear_ms / left_ms:5.2f}x", flush=True)
    if args.out:
        from spacy_padellm.engine.floor import cpu_description

        Path(args.out).write_text(json.dumps({"torch": torch.__version__, **cpu_description(),
                                              "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
