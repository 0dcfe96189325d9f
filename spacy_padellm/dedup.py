"""The paper's duplicate removal: a string predicted under several labels keeps only its most probable
label (the product of its token probabilities, i.e. the highest summed log-probability; a tie goes to
the label listed first)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, TypeVar

from .types import MentionLike

M = TypeVar("M", bound=MentionLike)


def dedup_mentions(mentions: Sequence[M], labels: Sequence[str]) -> Tuple[List[M], List[M]]:
    """(kept, dropped). Strings are compared after stripping surrounding whitespace, case-sensitively;
    every occurrence under the winning label is kept."""
    order = {label: i for i, label in enumerate(labels)}
    best: Dict[str, M] = {}
    for m in mentions:
        cur = best.get(m.text.strip())
        if cur is None or (m.logprob, -order[m.label]) > (cur.logprob, -order[cur.label]):
            best[m.text.strip()] = m
    kept = [m for m in mentions if best[m.text.strip()].label == m.label]
    dropped = [m for m in mentions if best[m.text.strip()].label != m.label]
    return kept, dropped
