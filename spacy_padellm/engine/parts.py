"""What the decoding stages share: the tools of one decoder (`Parts`) and the inputs of one call (`Call`).

Stages are plain functions of these two (row_path.py, tree_path.py), so nothing about a call lives on the
decoder between calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from ..prompts import Template
from ..settings import DecodeSettings
from ..types import DocStats
from .counts import CountVocabulary
from .greedy import Greedy
from .rows import kv_batches
from .runner import Runner


@dataclass(frozen=True)
class Parts:
    runner: Runner
    counts: CountVocabulary
    greedy: Greedy
    template: Template
    settings: DecodeSettings
    kv_per_token: int  # bytes of cache per token (family.kv_bytes_per_token)

    def batches(self, tokens: Sequence[int]) -> List[List[int]]:
        """Row indices in batches whose materialised cache fits the settings' KV budget."""
        return kv_batches(tokens, self.settings.kv_budget_mb * 2 ** 20, self.kv_per_token)

    def mention_prompt(self, text: str, label: str, count: int, k: int) -> List[int]:
        return self.runner.encode(self.template.mention_prompt(text, label, count, k))


@dataclass(frozen=True)
class Call:
    """One batch of texts: their label prompts, caps, counters, and this call's extras (count guesses, and
    the most proposal tokens a greedy pass may carry: engine/extras.py decides per pass)."""
    texts: Sequence[str]
    labels: Sequence[str]
    prompts: List[List[List[int]]]  # [text][label] prompt ids
    max_counts: Sequence[int]  # mentions per label, at most
    stats: List[DocStats]
    guesses: int
    speculate: int

    def cap(self, doc: int, count: int) -> int:
        return min(count, self.max_counts[doc])
