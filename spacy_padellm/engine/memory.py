"""glibc's allocator, tuned for decoding: freed tensors are reused, and the heap is trimmed when it grows.

Decoding allocates and frees key/value caches and activations of ever-different sizes (rows x columns
change every pass). Measured with `python project/scripts/malloc_policy.py -n 352` (one process per policy;
11 batches of 32 CoNLL dev sentences through `nlp.pipe`, 2-core AMD EPYC with AVX512-BF16, bf16, 2 threads;
session 12, `benchmarks/malloc_policy.json`):

- glibc's default: a large allocation is mmapped, and after the first free glibc raises that threshold to
  the freed size, so later caches come from the heap, which fragments and does not shrink: 12.6 docs/s,
  1,835 MB resident at the end (2,319 MB after 10 batches in an earlier measurement).
- a fixed 1 MB threshold (what this module did before session 12, for memory): every tensor of 1 MB or
  more is mapped and unmapped, and its pages fault in again on every pass: 40,622 page faults per document,
  37 of 102 CPU-seconds in the kernel, **6.8 docs/s**; 1,123 MB at the end, 1,716 MB at the peak.

So the threshold is fixed at glibc's largest (32 MB; fixing it also stops the dynamic adjustment) and the
heap's top is not given back on every free (trim threshold 1 GB): freed chunks are reused, 82 faults per
document, **13.9 docs/s**, peak 1,923 MB. What that keeps resident is bounded by `trim_if_grown`, called
after each engine batch: when the resident size has grown by more than GROWTH_BYTES since the last trim,
`malloc_trim(0)` returns every free page to the system (trimming after every batch instead: 10.7 docs/s).
The settings are process-wide and only apply where glibc is the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Optional

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD_BYTES = 1 << 30
GROWTH_BYTES = 512 << 20  # resident growth since the last trim that triggers the next one
PAGE_BYTES = 4096

_libc: Any = None  # glibc, once looked up; False where it is not the allocator
_floor: Optional[int] = None  # the resident size after the last trim (or at the first check)


def _glibc() -> Optional[Any]:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.mallopt, _libc.malloc_trim  # noqa: B018 - AttributeError where glibc is not the allocator
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def reuse_freed_memory() -> bool:
    """Set the mmap and trim thresholds (idempotent); False where glibc is not the allocator."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def resident_bytes() -> Optional[int]:
    """This process's resident set size (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def trim_if_grown(growth: int = GROWTH_BYTES) -> bool:
    """`malloc_trim(0)` when the resident size grew by more than `growth` since the last trim; True if it
    trimmed. The first call only records where the process stands."""
    global _floor
    libc, rss = _glibc(), resident_bytes()
    if libc is None or rss is None:
        return False
    if _floor is None or rss < _floor:
        _floor = rss
        return False
    if rss - _floor <= growth:
        return False
    libc.malloc_trim(0)
    _floor = resident_bytes() or rss
    return True
