"""The rows of a greedy loop, kept together with their cache, and batches of rows sized by memory.

Each `Row` carries what one sequence needs (the text it belongs to, its copy source, its constraint, what it
has decoded); a `RowBatch` filters its rows and its KVState in one `select`, so the two can never disagree
(curated-transformers' generator state does the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from .kv import KVState
from .substring import SubstringConstraint

MAX_ROWS_PER_PASS = 512  # rows decoded together, at most (the KV budget usually binds first)


@dataclass
class Row:
    doc: int  # index of the text whose counters this row adds to
    source: Sequence[int] = ()  # tokens a mention is copied from (its prompt): copy-speculation proposes them
    constraint: Optional[SubstringConstraint] = None
    ids: List[int] = field(default_factory=list)  # decoded tokens, EOS excluded
    logprob: float = 0.0
    done: bool = False  # ended on EOS
    proposal: List[int] = field(default_factory=list)  # tokens fed after the row's last decoded one


@dataclass
class RowBatch:
    rows: List[Row]  # the active rows, in the order of the cache's rows
    state: KVState

    def select(self, keep: Sequence[int], tokens: Sequence[int]) -> "RowBatch":
        """Rows at positions `keep`, each cache cut back to its first `tokens[i]` real tokens."""
        return RowBatch([self.rows[p] for p in keep], self.state.select(list(keep), list(tokens)))

    @property
    def docs(self) -> List[int]:
        return [r.doc for r in self.rows]


def kv_batches(tokens: Sequence[int], budget_bytes: int, bytes_per_token: int) -> List[List[int]]:
    """Consecutive row indices in batches whose cache fits the budget: rows sit side by side padded to the
    widest, so a batch costs rows x widest x bytes per token (`tokens[r]`: row r's cached tokens). At most
    MAX_ROWS_PER_PASS rows; a row too big for the budget alone is a batch."""
    batches: List[List[int]] = []
    widest = 0
    for r, n in enumerate(tokens):
        grown = max(widest, n)
        if (not batches or (len(batches[-1]) + 1) * grown * bytes_per_token > budget_bytes
                or len(batches[-1]) >= MAX_ROWS_PER_PASS):
            batches.append([])
            grown = n
        batches[-1].append(r)
        widest = grown
    return batches
