"""The typed shape of a predicted mention, shared by the torch-free modules (dedup, align)."""
from __future__ import annotations

from typing import Protocol


class MentionLike(Protocol):
    label: str
    k: int
    text: str
    logprob: float
