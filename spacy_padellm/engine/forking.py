"""Forked workers and torch's thread pool.

`nlp.pipe(texts, n_process=N)` forks the process on Linux. When the parent already ran a parallel torch op,
the child inherits an OpenMP runtime whose worker threads did not survive the fork, and its first parallel
op waits for them forever (a silent hang, reproduced in tests/test_robustness.py). A forked child that runs
torch with one thread never enters an OpenMP parallel region, and N workers with one thread each is also the
right use of N cores, so every forked child switches torch to one thread before its first op.
"""
from __future__ import annotations

import os

_forked = False  # a fork happened and the guard has not acted yet
_child = False  # this process is a forked child (stays set)
_TOKENIZERS_ENV = "TOKENIZERS_PARALLELISM"
_saved_env: list = []


def _before_fork() -> None:
    # Hugging Face tokenizers warns in every child forked after its thread pool ran, unless this variable is
    # set when fork() runs (its own at-fork handler reads it, before any Python code runs in the child).
    # Set it for the fork only; the parent gets its own value back right after.
    _saved_env.append(os.environ.get(_TOKENIZERS_ENV))
    os.environ.setdefault(_TOKENIZERS_ENV, "false")


def _after_fork_in_parent() -> None:
    old = _saved_env.pop() if _saved_env else None
    if old is None:
        os.environ.pop(_TOKENIZERS_ENV, None)


def _mark_forked() -> None:
    # runs in the child right after fork(): set flags and the variable (one thread pool is plenty there)
    global _forked, _child
    _forked = _child = True
    _saved_env.clear()
    os.environ.setdefault(_TOKENIZERS_ENV, "false")


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_mark_forked)


def in_forked_child() -> bool:
    return _child


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), as training uses."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int) -> int:
    """torch's intra-op threads: `threads`, or default_threads() for 0. Returns the number set."""
    import torch

    wanted = threads or default_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


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
