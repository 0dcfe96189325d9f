"""The linear layers of a pass on the CPU: float32 weights left of short inputs, or weights prepacked once.

`F.linear(x, w)` is x @ w.T. For a few rows of x (a mention pass, a batch-1 count pass) the CPU's float32
GEMM ran up to 3.5x slower that way than as (w @ x.T).T, the same products with the weight on the left:
`python project/scripts/linear_orientation.py --threads 2` on a 2-core AMD EPYC with AVX2 only (MKL,
torch 2.13; benchmarks/linear_orientation.json): the 120 decoder linears of SmolLM2-135M for 2 rows took
85 against 38 ms, 8 rows 91 against 76, 32 rows 123 against 104, 96 rows 225 against 205, 256 rows 656
against 630; its 49k-word output layer for 4 rows 72 against 24 ms, for 96 rows 204 against 160. One row
(a matrix-vector product) ran the same either way. The two orders add the same products in another
order (a last-bit difference, ~2e-6); the decoded output stays greedy's (tests compare it with the
reference). The rule is fixed, not timed per machine, so that two runs give the same numbers.

Both dtypes can instead go through oneDNN with each weight reordered once into its blocked layout
(`prepacked`, then `packed_linear`), which the engine does where it was measured to pay (`prepacks`):

- float32 on the CPU, up to 256 rows for the decoder linears and at any height for the output layer
  (measured on the AVX2-only AMD EPYC above, `python project/scripts/prepacked_linears.py --dtype float32
  --threads 2`, benchmarks/fp32_linears.json; the baseline is `linear` below, weight-left included): the
  120 decoder linears for 1 row 32.6 ms against 21.1 prepacked, 8 rows 37.7 against 30.5, 32 rows 68.4
  against 61.5, 96 rows 153.0 against 148.9, 2-4 and 128-256 rows alike, 512 and 768 rows 0.94-0.95x (so
  MKL keeps those); the output layer for 1 row 9.1 against 4.7 ms, 16 rows 15.7 against 9.6, 96 rows 63.5
  against 37.2, 768 rows alike. oneDNN sums in another order than MKL (~3e-6 of an output); the decoded
  output stays greedy's (tests).
- bf16, where the CPU has AMX: `F.linear` reorders a bf16 weight again in every call. On a 2-core Intel Xeon
  with AMX (`prepacked_linears.py --dtype bf16 --threads 2`, benchmarks/bf16_linears.json) the 120 decoder
  linears took 1.12-1.92x as long with `F.linear` as prepacked for 1 to 256 rows (1 row: 33.0 against 24.7
  ms, 96 rows: 88.4 against 46.0), the output layer 1.26-1.87x; at 512 and 768 rows the two traded places
  (0.81x, 1.34x); a bf16 output's last bit can round differently. Without AVX512 torch's oneDNN refuses to
  prepack bf16; AVX512-BF16 without AMX was not measured, so the rule leaves it to `F.linear`.

The copies cost memory: the weights once more (SmolLM2-135M: ~540 MB in float32, ~270 MB in bf16).
`PREPACK = False` (or `SPACY_PADELLM_PREPACK=0` in the environment) turns them off. Every device but the CPU
keeps `F.linear`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

# Rows of x that take the weight-left order: on one thread it paid less and lost from ~96 rows on
# (`--threads 1`, beside a training run: 2 rows 1.23x, 8 rows 1.46x, 32 rows 1.07x, 96 rows 0.96x,
# 256 rows 0.89x), on two it paid up to 128 and more.
LEFT_ROWS = {1: (2, 48), 2: (2, 128)}


def left_rows() -> tuple:
    """The row range of the weight-left order at this process's torch threads."""
    return LEFT_ROWS[1] if torch.get_num_threads() <= 1 else LEFT_ROWS[2]


def weight_left(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight.T should run as (weight @ x.T).T: float32 on the CPU, a 2D x of a few rows."""
    if x.dim() != 2 or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu":
        return False
    low, high = left_rows()
    return low <= x.shape[0] <= high


def linear(x: torch.Tensor, weight: torch.Tensor, left: bool = True) -> torch.Tensor:
    """x @ weight.T (no bias) for a 2D x, in the faster order for its shape (module docstring); `left`
    False: always F.linear's order."""
    if left and weight_left(x, weight):
        return torch.mm(weight, x.t()).t().contiguous()
    return F.linear(x, weight)


# The rule's switch (a script that measures it turns it off; the engine's own switch is LeanLlama.prepack)
PREPACK = os.environ.get("SPACY_PADELLM_PREPACK", "1") != "0"


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (where prepacked bf16 weights were measured to pay)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def prepacks(weight: torch.Tensor) -> bool:
    """Whether the rule prepacks this weight (module docstring): float32 on the CPU, bf16 on a CPU with AMX,
    where this torch build has oneDNN's linear."""
    if not PREPACK or weight.device.type != "cpu" or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and cpu_has_amx())


# float32 inputs of more rows than this take `linear` below even where the weight is prepacked (module docstring)
FLOAT32_PACKED_ROWS = 256


def takes_packed(x: torch.Tensor) -> bool:
    """Whether a decoder linear's 2D x goes through the prepacked copy of its weight rather than `linear`:
    bf16 always, float32 up to FLOAT32_PACKED_ROWS rows (the output layer's copy takes any height)."""
    return x.dtype != torch.float32 or x.shape[0] <= FLOAT32_PACKED_ROWS


def prepacked(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """oneDNN's blocked copy of a 2D float32 or bf16 weight [out, in], for `packed_linear`; None where oneDNN
    cannot make one (a torch built without it, bf16 on a CPU without AVX512)."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())
    except (AttributeError, RuntimeError):
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a 2D x of the weight's dtype, with the weight's `prepacked` copy."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
