"""The hardware's floor for this model: how fast this machine multiplies the model's own matrices.

A benchmark that says "x times faster than a baseline" cannot tell how far the engine is from what the
machine allows. This calibrates, in the same run, the matmul rate (GFLOP/s) of a forward pass's GEMMs at
the model's shapes (every linear layer of every decoder layer, plus the output layer on the rows' last
tokens), in bf16 and fp32, and counts the FLOPs a pass of T tokens must do, so each stage's achieved
GFLOP/s can be set against it.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> Dict[str, Any]:
    """CPU model name and the flags that decide the fast paths ("AMD EPYC" names several chips)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "flags": [f for f in FLAGS if f in flags]}


def linear_shapes(model: Any) -> List[Tuple[int, int]]:
    """(in, out) of every linear layer one decoder layer runs, from the config (Llama-like naming)."""
    c = model.config
    hidden = c.hidden_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    inter = getattr(c, "intermediate_size", None) or 4 * hidden
    return [(hidden, heads * head_dim), (hidden, kv * head_dim), (hidden, kv * head_dim), (heads * head_dim, hidden),
            (hidden, inter), (hidden, inter), (inter, hidden)]


def flops(model: Any, tokens: float, logits_rows: float, attended: float = 0.0) -> float:
    """FLOPs of feeding `tokens` tokens (whose query-key pairs number `attended` in all) with the output
    layer on `logits_rows` positions: 2 per multiply-add of every GEMM, plus attention's two products
    (scores and weighted values). Padding is not counted: this is the work the answer needs."""
    c = model.config
    layers = c.num_hidden_layers
    per_token = sum(2 * i * o for i, o in linear_shapes(model)) * layers
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    vocab = model.get_output_embeddings().weight.shape[0]
    attention = 4 * heads * head_dim * layers
    return float(tokens * per_token + attended * attention + logits_rows * 2 * c.hidden_size * vocab)


def gemm_rate(model: Any, dtype: torch.dtype, tokens: int = 96, seconds: float = 1.0,
              layers: Optional[int] = None) -> float:
    """GFLOP/s of this machine on the model's decoder GEMMs for a `tokens`-token pass, in `dtype` (random
    weights of the same shapes, so it runs for a model loaded in any dtype), at the current thread count:
    the faster of `F.linear` and oneDNN with the weights prepacked (engine/matmul.py), where it can prepack
    them, since the engine may take either (a floor below what the engine reaches is no floor).

    Every one of the model's `layers` (default: all) gets weights of its own, as in a real pass: one layer's
    seven weights (7 MB in bf16 for SmolLM2-135M) stay in the CPU's caches when called over and over, and
    measured 1,136 GFLOP/s in bf16 on a 2-core AMX Xeon (session 17), a rate no pass reaches that must read
    all 30 layers' weights (212 MB) from memory, so the floor must read them too."""
    from .matmul import packed_linear, prepacked

    device = next(model.parameters()).device
    count = layers or getattr(model.config, "num_hidden_layers", 1)
    weights = [torch.randn(o, i, dtype=dtype, device=device) for _ in range(count) for i, o in linear_shapes(model)]
    inputs = {i: torch.randn(tokens, i, dtype=dtype, device=device) for i, _ in linear_shapes(model)}
    flops = sum(2 * tokens * w.shape[0] * w.shape[1] for w in weights)
    calls = [lambda x, w=w: torch.nn.functional.linear(x, w) for w in weights]
    packed = [prepacked(w) for w in weights] if device.type == "cpu" else []
    kernels = [calls]
    if packed and all(p is not None for p in packed):
        kernels.append([lambda x, p=p: packed_linear(x, p) for p in packed])
    rates = []
    with torch.inference_mode():
        for kernel in kernels:
            for w, call in zip(weights, kernel):  # warm-up: oneDNN picks and caches its kernels
                call(inputs[w.shape[1]])
            runs, start = 0, time.perf_counter()
            while runs < 3 or time.perf_counter() - start < seconds:
                for w, call in zip(weights, kernel):
                    call(inputs[w.shape[1]])
                runs += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(flops * runs / (time.perf_counter() - start) / 1e9)
    return max(rates)


def one_token_ms(model: Any, repeats: int = 9) -> Dict[str, float]:
    """Median ms of a one-token pass from nothing: the model's own forward (transformers) and the engine's
    (engine/lean.py where it applies, with the float32 scoring of the output layer). A small pass of the
    engine is judged against the second: the weights are read once per pass either way."""
    from .kv import extend
    from .lean import lean_forward

    ids = torch.tensor([[100]], device=next(model.parameters()).device)
    lean = lean_forward(model)
    runs = {"transformers": lambda: model(input_ids=ids), "engine": lambda: extend(model, None, [[100]], 0, lean=lean)}
    out = {}
    with torch.inference_mode():
        for name, run in runs.items():
            run()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                if ids.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            out[name] = 1000 * sorted(times)[repeats // 2]
    return out


def calibrate(model: Any, tokens: int = 96) -> Dict[str, Any]:
    """The floor of this run: CPU, threads, the GEMM rate in fp32 and bf16 at the model's shapes, and what
    a one-token pass of the model costs."""
    return {**cpu_description(), "threads": torch.get_num_threads(), "tokens": tokens,
            "gflops_fp32": gemm_rate(model, torch.float32, tokens),
            "gflops_bf16": gemm_rate(model, torch.bfloat16, tokens), "one_token_ms": one_token_ms(model)}
