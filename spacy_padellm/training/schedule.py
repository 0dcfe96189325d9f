"""The order and the rate of training steps: pure functions of the config (and seed), so a resumed run
redoes exactly the steps a killed one would have taken.
"""
from __future__ import annotations

import math
import random
from typing import Any, List, Sequence

from .config import TrainConfig
from .packing import PackedTree


def plan_rows(trees: Sequence[PackedTree], order: Sequence[int], row_tokens: int) -> List[List[int]]:
    """Greedy first-fit of documents (in `order`) into rows of at most row_tokens tokens."""
    rows: List[List[int]] = []
    sizes: List[int] = []
    for i in order:
        n = min(len(trees[i]), row_tokens)
        for r, size in enumerate(sizes[-8:], start=max(0, len(sizes) - 8)):  # look back a little: O(n)
            if size + n <= row_tokens:
                rows[r].append(i)
                sizes[r] += n
                break
        else:
            rows.append([i])
            sizes.append(n)
    return rows


def epoch_steps(trees: Sequence[PackedTree], cfg: TrainConfig, epoch: int) -> List[List[List[int]]]:
    order = list(range(len(trees)))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    rows = plan_rows(trees, order, cfg.row_tokens)
    return [rows[i:i + cfg.rows_per_step] for i in range(0, len(rows), cfg.rows_per_step)]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def spread(docs: Sequence[Any], n: int) -> List[Any]:
    """`n` documents spread evenly over `docs`, the middle one of each of n equal blocks: dev files are
    topic-contiguous, so the first n documents would select a checkpoint on one topic. Taking the middle
    keeps the sample mostly apart from a benchmark's every-k-th sample, which starts at document 0 (400 of
    CoNLL dev's 3,250: 48 documents in common with every 8th)."""
    if n <= 0 or n >= len(docs):
        return list(docs)
    return [docs[(2 * i + 1) * len(docs) // (2 * n)] for i in range(n)]
