"""Empty slots: a count checked by its own slots (issue 14), for adapters trained with them.

Training (training/examples.py) adds, per document and label, the prompt of a count one too high whose
slot beyond the last mention must end at once (EOS). Such a model answers two questions a count alone
cannot: a slot of its own count that comes out empty says the count was one too high (it drops out), and
slot c + 1 decoded under count c + 1 says whether the count c was too low (kept if it is not empty). The
second costs a mention row, so it is decoded only where the count step nearly said c + 1
(p(c + 1) / p(c) >= `beyond_ratio` at the first count token: CountVocabulary.next_ratios).
"""
from __future__ import annotations

from typing import List, Sequence

from ..settings import MAX_GUESSED_COUNT
from ..types import MentionPrediction
from .parts import Call
from .row_path import LabelRow, Request, sort_mentions


def beyond_requests(call: Call, label_rows: Sequence[LabelRow], counts: Sequence[int], ratios: Sequence[float],
                    threshold: float) -> List[Request]:
    """Slot c + 1 under count c + 1 for the label rows whose count step nearly said c + 1 (one-digit counts,
    below the doc's cap)."""
    out: List[Request] = []
    for r, ratio in enumerate(ratios):
        d, j = label_rows[r]
        beyond = counts[r] + 1
        if ratio >= threshold and beyond <= min(call.max_counts[d], MAX_GUESSED_COUNT):
            out.append((d, j, beyond, beyond))
    return out


def settle(call: Call, counts: Sequence[int], mentions: List[List[MentionPrediction]]) -> List[int]:
    """Drop empty slots; keep a label's non-empty slot beyond its count where none of its own slots was
    empty. `mentions` is changed in place; returns the counts of the slots kept (label rows doc-major)."""
    n = len(call.labels)
    settled = list(counts)
    for d, preds in enumerate(mentions):
        kept: List[MentionPrediction] = []
        for j, label in enumerate(call.labels):
            c = call.cap(d, counts[d * n + j])
            own = [m for m in preds if m.label == label and m.k <= c]
            full = [m for m in own if m.text.strip()]
            if len(full) == len(own):
                full += [m for m in preds if m.label == label and m.k > c and m.text.strip()]
            kept += full
            settled[d * n + j] = len(full)
        sort_mentions(kept, call.labels)
        mentions[d] = kept
    return settled
