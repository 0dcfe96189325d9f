"""The CPU attention kernel with the query heads of one key head called per head or side by side: time and
equality, for the pass shapes the engine runs (engine/lean.py `LeanLlama.grouped` rests on this).

    python project/scripts/attention_micro.py --threads 2 [--out benchmarks/attention_micro.json]

SmolLM2-135M's shapes: 9 query heads, 3 key/value heads, 64 dims. Each case is (rows, new tokens, cached
columns): greedy steps of many rows, a few speculated tokens, a small call's prompt pass.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

CASES = [(128, 1, 100), (128, 4, 104), (32, 8, 90), (4, 60, 60)]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Mean ms of `repeats` calls after two warm-up calls."""
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def case(dtype: torch.dtype, rows: int, width: int, cached: int, repeats: int,
         heads: int = 9, kv_heads: int = 3, dim: int = 64) -> Dict[str, Any]:
    group = heads // kv_heads
    q = torch.randn(rows, heads, width, dim, dtype=dtype)
    k = torch.randn(rows, kv_heads, cached, dim, dtype=dtype)
    v = torch.randn(rows, kv_heads, cached, dim, dtype=dtype)
    mask = torch.rand(rows, 1, width, cached) > 0.2
    mask[..., -1] = True  # no query sees nothing

    def per_head() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim ** -0.5, enable_gqa=True)

    def side_by_side() -> torch.Tensor:
        m = mask if width == 1 else mask.expand(rows, group, width, cached).reshape(rows, 1, group * width, cached)
        out = F.scaled_dot_product_attention(q.reshape(rows, kv_heads, group * width, dim), k, v, attn_mask=m,
                                             scale=dim ** -0.5)
        return out.view(rows, heads, width, dim)

    a, b = per_head(), side_by_side()
    ms_a, ms_b = timed(per_head, repeats), timed(side_by_side, repeats)
    ms_a, ms_b = (ms_a + timed(per_head, repeats)) / 2, (ms_b + timed(side_by_side, repeats)) / 2
    return {"dtype": str(dtype).replace("torch.", ""), "rows": rows, "width": width, "cached": cached,
            "equal": bool(torch.equal(a, b)), "max_diff": float((a.float() - b.float()).abs().max()),
            "per_head_ms": round(ms_a, 3), "side_by_side_ms": round(ms_b, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: List[Dict[str, Any]] = []
    for dtype in (torch.bfloat16, torch.float32):
        for rows, width, cached in CASES:
            r = case(dtype, rows, width, cached, args.repeats)
            results.append(r)
            print(f"{r['dtype']:>8} rows {rows:>3} width {width:>2} cached {cached:>3}: per head "
                  f"{r['per_head_ms']:.2f} ms, side by side {r['side_by_side_ms']:.2f} ms "
                  f"({r['per_head_ms'] / r['side_by_side_ms']:.2f}x), equal {r['equal']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results}, indent=1), encoding="utf8")


if __name__ == "__main__":
    main()
