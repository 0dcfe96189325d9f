"""Map predicted mention strings back to token spans of the document.

The k-th mention of a label is searched after the (k-1)-th, on the ORIGINAL text (lower-casing a copy
changes the length of some strings, e.g. 'İ'.lower() has two code points, and shifts every offset after
it). Case-insensitive matching uses the regex engine's per-character folding, which keeps offsets.
Token-aligned matches are preferred; a match inside a token expands to whole tokens.

The search never moves backwards: the model writes a label's mentions in text order, so a mention that
has no occurrence after the previous one is a repeat the text does not hold (or out of order), and is
placed nowhere. Falling back to "anywhere" would steal an earlier span and drag the search position
back, so every later mention of the label would land one occurrence too early (issue 19).

`all_occurrences`: a spaCy user expects every occurrence of an entity tagged, while the paper's format
names each occurrence once and a chunk's count may stop short. With it on, every token-aligned, same-case
occurrence of a predicted string in the chunk is tagged too, with the string's score.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from spacy.tokens import Doc, Span

from .types import MentionLike


@dataclass(frozen=True)
class AlignedMention:
    label: str
    k: int
    text: str  # the predicted string
    logprob: float
    start: int  # token offsets in the doc
    end: int


def mention_pattern(mention: str) -> Optional[str]:
    """A regex for the mention that lets any run of whitespace stand for any other."""
    parts = mention.split()
    if not parts:
        return None
    return r"\s+".join(re.escape(p) for p in parts)


def _token_span(doc: Doc, start: int, end: int, strict: bool) -> Optional[Span]:
    return doc.char_span(start, end, alignment_mode="strict" if strict else "expand")


def find_span(doc: Doc, mention: str, cursor: int, lo: int = 0, hi: Optional[int] = None
              ) -> Optional[Tuple[int, int, int]]:
    """(token start, token end, char end) of the best occurrence of `mention` in doc.text[max(lo, cursor):hi],
    or None: never before `cursor`.

    Order of preference: exact case, then any case; within each, the first token-aligned match, else the
    first match expanded to tokens.
    """
    pattern = mention_pattern(mention)
    if pattern is None:
        return None
    text = doc.text
    hi = len(text) if hi is None else hi
    begin = max(cursor, lo)
    for flags in (0, re.IGNORECASE):
        matches = list(re.compile(pattern, flags).finditer(text, begin, hi))
        for strict in (True, False):
            for m in matches:
                span = _token_span(doc, m.start(), m.end(), strict)
                if span is not None and len(span) > 0 and span.start_char >= begin:
                    return span.start, span.end, m.end()
    return None


def occurrences(doc: Doc, mention: str, lo: int = 0, hi: Optional[int] = None) -> List[Tuple[int, int]]:
    """(token start, token end) of every token-aligned, same-case occurrence of `mention` in doc.text[lo:hi]."""
    pattern = mention_pattern(mention)
    if pattern is None:
        return []
    hi = len(doc.text) if hi is None else hi
    out = []
    for m in re.compile(pattern).finditer(doc.text, lo, hi):
        span = _token_span(doc, m.start(), m.end(), True)
        if span is not None and len(span) > 0:
            out.append((span.start, span.end))
    return out


def align_mentions(doc: Doc, mentions: Sequence[MentionLike], lo: int = 0, hi: Optional[int] = None,
                   all_occurrences: bool = False) -> Tuple[List[AlignedMention], List[MentionLike]]:
    """Aligned mentions and the ones that could not be placed (empty, or not in doc.text[lo:hi] after the
    label's previous mention). With `all_occurrences`, every same-case token-aligned occurrence of a
    placed string in doc.text[lo:hi] is added (once per label and span)."""
    aligned: List[AlignedMention] = []
    missing: List[MentionLike] = []
    cursors: dict = {}
    for m in sorted(mentions, key=lambda m: m.k):
        found = find_span(doc, m.text.strip(), cursors.get(m.label, lo), lo, hi)
        if found is None:
            missing.append(m)
            continue
        start, end, char_end = found
        cursors[m.label] = char_end  # only ever forward: find_span never returns a match before the cursor
        aligned.append(AlignedMention(m.label, m.k, m.text, m.logprob, start, end))
    if all_occurrences:
        seen = {(a.label, a.start, a.end) for a in aligned}
        for a in list(aligned):
            for start, end in occurrences(doc, doc[a.start:a.end].text, lo, hi):
                if (a.label, start, end) not in seen:
                    seen.add((a.label, start, end))
                    aligned.append(AlignedMention(a.label, a.k, a.text, a.logprob, start, end))
    aligned.sort(key=lambda a: (a.start, a.end, a.label))
    return aligned, missing


def choose_entities(aligned: Iterable[AlignedMention]) -> List[AlignedMention]:
    """A non-overlapping subset for doc.ents: most probable first (tie: earlier, then longer)."""
    chosen: List[AlignedMention] = []
    taken: set = set()
    for a in sorted(aligned, key=lambda a: (-a.logprob, a.start, -(a.end - a.start))):
        tokens = set(range(a.start, a.end))
        if tokens & taken:
            continue
        taken |= tokens
        chosen.append(a)
    return sorted(chosen, key=lambda a: a.start)
