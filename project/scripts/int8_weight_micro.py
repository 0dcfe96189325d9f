"""Weight-only int8 linears against float32 ones, at SmolLM2-135M's shapes: time and error.

    python project/scripts/int8_weight_micro.py --threads 2 [--out benchmarks/int8_weight_micro.json]

On a CPU without fast bf16 a small pass is bound by reading the float32 weights (540 MB per pass for
135M parameters). Dynamic int8 (torch.ao) also rounds the activations, and SmolLM2's activation outliers
cost 2-42 string F1 (benchmarks/NOTES.md). Weight-only int8 (`torch._weight_int8pack_mm`: int8 weights
with one float scale per output channel, float32 activations and accumulation) reads a quarter of the
bytes and leaves the activations alone. This measures what it pays per shape and token count.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from attention_micro import timed  # the scripts' folder is on sys.path when run as a file

# (name, out, in) of SmolLM2-135M's fused projections (engine/lean.py) and its output layer
SHAPES = [("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536), ("head", 49152, 576)]
TOKENS = [1, 8, 32, 96, 736]


def quantize(weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Symmetric per-output-channel int8: w ~ q * scale, |q| <= 127."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"q": q.contiguous(), "scale": scale.float()}


def case(name: str, out: int, inp: int, tokens: int, repeats: int) -> Dict[str, Any]:
    weight = torch.randn(out, inp) * 0.05
    x = torch.randn(tokens, inp)
    packed = quantize(weight)
    ref = F.linear(x, weight)
    got = torch._weight_int8pack_mm(x, packed["q"], packed["scale"])
    n = max(1, repeats if tokens <= 32 else repeats // 4)
    fp32 = timed(lambda: F.linear(x, weight), n)
    int8 = timed(lambda: torch._weight_int8pack_mm(x, packed["q"], packed["scale"]), n)
    fp32 = (fp32 + timed(lambda: F.linear(x, weight), n)) / 2
    int8 = (int8 + timed(lambda: torch._weight_int8pack_mm(x, packed["q"], packed["scale"]), n)) / 2
    return {"shape": name, "out": out, "in": inp, "tokens": tokens, "fp32_ms": round(fp32, 4),
            "int8_ms": round(int8, 4), "speedup": round(fp32 / int8, 2),
            "rel_err": float((got - ref).norm() / ref.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: List[Dict[str, Any]] = []
    with torch.inference_mode():
        for name, out, inp in SHAPES:
            for tokens in TOKENS:
                r = case(name, out, inp, tokens, args.repeats)
                results.append(r)
                print(f"{name:8s} {out:6d}x{inp:<5d} tokens {tokens:4d}: fp32 {r['fp32_ms']:8.3f} ms  "
                      f"int8 {r['int8_ms']:8.3f} ms  {r['speedup']:5.2f}x  rel err {r['rel_err']:.2e}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "cpu": platform.processor(),
                                              "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
