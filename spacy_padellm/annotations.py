"""What one document's prediction becomes on the Doc: spans, entities and the debugging record.

Dedup and alignment run per window (a chunk: the unit the model saw), the record in user_data keeps what
was dropped and why, so nothing is lost silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Dict, List, Sequence

from spacy.tokens import Doc, Span

from .align import AlignedMention, align_mentions
from .dedup import dedup_mentions
from .types import DocPrediction, MentionPrediction


@dataclass
class Placed:
    """A doc's mentions sorted into what happened to them."""
    aligned: List[AlignedMention] = field(default_factory=list)  # every placed (label, span), best score kept
    kept: List[MentionPrediction] = field(default_factory=list)  # after dedup, aligned or not
    unaligned: List[MentionPrediction] = field(default_factory=list)
    dropped: List[MentionPrediction] = field(default_factory=list)  # dedup gave their string another label
    unfinished: List[MentionPrediction] = field(default_factory=list)  # cut at max_new_tokens


def place(doc: Doc, pred: DocPrediction, labels: Sequence[str], dedup: bool, all_occurrences: bool) -> Placed:
    """Dedup and align each window's mentions; one aligned mention per (label, span), its best score."""
    out = Placed()
    for window, group in groupby(pred.mentions, key=lambda m: m.window):
        mentions = list(group)
        out.unfinished += [m for m in mentions if not m.finished]
        if dedup:
            mentions, gone = dedup_mentions(mentions, labels)
            out.dropped += gone
        lo, hi = window if window is not None else (0, len(doc.text))
        found, lost = align_mentions(doc, mentions, lo, hi, all_occurrences)
        out.aligned += found
        out.unaligned += lost
        out.kept += mentions
    unique = {(a.label, a.start, a.end): a for a in sorted(out.aligned, key=lambda a: a.logprob)}
    out.aligned = sorted(unique.values(), key=lambda a: (a.start, a.end, a.label))
    return out


def record(pred: DocPrediction, placed: Placed) -> Dict[str, Any]:
    """doc.user_data["padellm"]: counters, counts, every mention and what became of it."""
    return {
        **pred.stats.to_dict(),
        "chunks": pred.chunks,
        "counts": dict(pred.counts),
        "raw_counts": dict(pred.raw_counts),
        "mentions": [[m.label, m.text, m.logprob] for m in placed.kept],
        "unaligned": [[m.label, m.text] for m in placed.unaligned],
        "dropped_duplicates": [[m.label, m.text] for m in placed.dropped],
        "unfinished": [[m.label, m.text] for m in placed.unfinished],
    }


def keep_existing(existing: List[Span], ours: List[Span]) -> List[Span]:
    """`existing` plus those of `ours` that share no token with any of them (both non-overlapping)."""
    taken = {i for span in existing for i in range(span.start, span.end)}
    new = [span for span in ours if not any(i in taken for i in range(span.start, span.end))]
    return sorted(existing + new, key=lambda span: span.start)
