"""Give freed tensor memory back to the operating system.

glibc serves a large allocation with mmap and unmaps it when freed, but after the first free it raises
that threshold to the freed size (up to 32 MB), so later key/value caches of the same size come from the
heap, and a fragmented heap does not shrink. Decoding allocates and frees caches of ever-different sizes
(rows x columns change every pass), so the resident size kept growing from batch to batch: 10 batches of
32 CoNLL sentences ended at 2,319 MB resident and peaked there; with the threshold fixed at 1 MB they ended
at 1,212 MB and peaked at 2,037 MB (same process, same texts). Tensors of 1 MB and more are then always
mapped and unmapped. The setting is process-wide and only applies where glibc is the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20
_done = False


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (once per process); False where glibc is not the allocator."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
    return _done
