"""The linear layers of a float32 pass on the CPU: the weight as the left operand for short inputs.

`F.linear(x, w)` is x @ w.T. For a few rows of x (a mention pass, a batch-1 count pass) the CPU's float32
GEMM ran up to 3.5x slower that way than as (w @ x.T).T, the same products with the weight on the left:
`python project/scripts/linear_orientation.py --threads 2` on a 2-core AMD EPYC with AVX2 only (MKL,
torch 2.13; benchmarks/linear_orientation.json): the 120 decoder linears of SmolLM2-135M for 2 rows took
85 against 38 ms, 8 rows 91 against 76, 32 rows 123 against 104, 96 rows 225 against 205, 256 rows 656
against 630; its 49k-word output layer for 4 rows 72 against 24 ms, for 96 rows 204 against 160. One row
(a matrix-vector product) ran the same either way. The two orders add the same products in another
order (a last-bit difference, ~2e-6); the decoded output stays greedy's (tests compare it with the
reference). The rule is fixed, not timed per machine, so that two runs give the same numbers.

bf16 weights go through another library's kernels (oneDNN). Where the CPU has AMX, each bf16 weight is
reordered once into oneDNN's blocked layout (`prepacked`) and the linear layers call oneDNN with it: `F.linear`
reorders the weight again in every call. On a 2-core Intel Xeon with AMX (torch 2.13, `python
project/scripts/bf16_linears.py --threads 2`, benchmarks/bf16_linears.json) the 120 decoder linears of
SmolLM2-135M took 1.12-1.92x as long with `F.linear` as prepacked for 1 to 256 rows (1 row: 33.0 against
24.7 ms, 96 rows: 88.4 against 46.0), the output layer 1.26-1.87x; at 512 and 768 rows the two traded
places (0.81x, 1.34x). The blocked copy costs memory (the weights once more: ~270 MB for SmolLM2-135M) and
can round the last bit of a bf16 output differently; the decoded output stays greedy's (tests, and the
benchmark's `same %`). Without AMX the rule is off: it was not measured there. Every device but the CPU
keeps `F.linear`.
"""
from __future__ import annotations

import functools
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
PREPACK_BF16 = True


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (where prepacked bf16 weights were measured to pay)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def prepacks(weight: torch.Tensor) -> bool:
    """Whether the rule prepacks this weight: bf16 on a CPU with AMX, and this torch build has the op."""
    return (PREPACK_BF16 and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and cpu_has_amx()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def prepacked(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """oneDNN's blocked copy of a 2D bf16 weight [out, in], for `packed_linear`; None where oneDNN cannot
    make one (a torch built without it)."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())
    except (AttributeError, RuntimeError):
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a 2D bf16 x, with the weight's `prepacked` copy."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
