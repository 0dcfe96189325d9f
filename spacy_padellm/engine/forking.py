"""Forked workers and torch's thread pool.

`nlp.pipe(texts, n_process=N)` forks the process on Linux. When the parent already ran a parallel torch op,
the child inherits an OpenMP runtime whose worker threads did not survive the fork, and its first parallel
op waits for them forever (a silent hang, reproduced in tests/test_robustness.py). A forked child that runs
torch with one thread never enters an OpenMP parallel region, and N workers with one thread each is also the
right use of N cores, so every forked child switches torch to one thread before its first op.
"""
from __future__ import annotations

import os

_forked = False


def _mark_forked() -> None:
    # runs in the child right after fork(): only set a flag, touch nothing else
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def guard_after_fork() -> bool:
    """Call before running torch: in a forked child, the first call switches torch to one thread.

    Returns whether it switched (so callers and tests can tell).
    """
    global _forked
    if not _forked:
        return False
    _forked = False
    import torch

    torch.set_num_threads(1)
    return True
