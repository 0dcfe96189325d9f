"""Cut long documents into chunks the model can take, and group chunks into bounded batches.

The model is trained on sentences (CoNLL: 14.5 tokens on average, 99% under 46), so a document is cut at
its own sentence boundaries (set by a sentencizer or parser), else at the built-in splitter's, one sentence
per chunk by default (`pack_tokens` packs short ones together), and a sentence longer than `max_tokens` is
cut at whitespace. Sentence chunks keep each label's count in the range the model learned (counts of 5+
are 0.1% of CoNLL train's): on 20,000 words of CoNLL lines, packing sentences into chunks of up to 40
tokens lost 4.0 points of span recall against sentence by sentence (issue 19, BENCHMARKS.md). Batches
are bounded by a total token budget as well as a chunk count, so a batch of long documents cannot exhaust
memory.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from spacy.tokens import Doc

from .types import DocPrediction, DocStats

SENTENCE_END = {".", "!", "?", "。", "！", "？", "…", "؟", "।"}


def builtin_sentences(doc: Doc) -> List[Tuple[int, int]]:
    """Sentence-ending punctuation, a blank line, or a line break before a capital or a digit ends a
    sentence (a fallback, not a parser). The last rule is for a document's lines that carry no end
    punctuation (a headline, a dateline, a table row): glued to the next sentence they cost a quarter of
    the recall on CoNLL lines (issue 19), while prose wrapped over lines mostly continues in lower case."""
    bounds, start = [], 0
    for tok in doc:
        if (tok.i + 1 < len(doc) and _line_break_ends_sentence(tok, doc[tok.i + 1])
                and not all(doc[j].is_space for j in range(start, tok.i + 1))):  # never a sentence of spaces
            bounds.append((start, tok.i + 1))
            start = tok.i + 1
        elif tok.text in SENTENCE_END or (tok.is_space and "\n\n" in tok.text):
            bounds.append((start, tok.i + 1))
            start = tok.i + 1
    if start < len(doc):
        bounds.append((start, len(doc)))
    return bounds


def _line_break_ends_sentence(tok: Any, nxt: Any) -> bool:
    """`tok` ends its line (a newline after it, or it is one) and the next line starts with a capital or digit."""
    if tok.is_space and "\n\n" in tok.text:
        return False  # a blank line: the punctuation rule's case
    broken = "\n" in tok.whitespace_ or (tok.is_space and "\n" in tok.text)
    return broken and not nxt.is_space and (nxt.text[:1].isupper() or nxt.text[:1].isdigit())


def sentence_bounds(doc: Doc) -> List[Tuple[int, int]]:
    if doc.has_annotation("SENT_START"):
        return [(s.start, s.end) for s in doc.sents]
    return builtin_sentences(doc)


def split_long(start: int, end: int, doc: Doc, max_tokens: int) -> List[Tuple[int, int]]:
    """Windows of at most max_tokens, cut after a token followed by whitespace where one is near the limit."""
    out = []
    while end - start > max_tokens:
        cut = start + max_tokens
        for i in range(cut, start + max_tokens * 3 // 4, -1):
            if doc[i - 1].whitespace_:
                cut = i
                break
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


def chunk_doc(doc: Doc, max_tokens: int, bounds: Optional[Sequence[Tuple[int, int]]] = None,
              pack_tokens: Optional[int] = None) -> List[Tuple[int, int]]:
    """Token ranges covering the doc: its sentences, each cut at whitespace if it exceeds max_tokens, and
    packed while a chunk stays within `pack_tokens` (0: one sentence per chunk; None: max_tokens). A doc
    of at most pack_tokens tokens is one chunk."""
    pack = max_tokens if pack_tokens is None else min(pack_tokens, max_tokens)
    if not len(doc):
        return []
    if len(doc) <= pack:
        return [(0, len(doc))]
    pieces: List[Tuple[int, int]] = []
    for s, e in (bounds if bounds is not None else sentence_bounds(doc)):
        pieces.extend(split_long(s, e, doc, max_tokens))
    chunks: List[Tuple[int, int]] = []
    for s, e in pieces:
        if chunks and e - chunks[-1][0] <= pack and chunks[-1][1] == s:
            chunks[-1] = (chunks[-1][0], e)
        else:
            chunks.append((s, e))
    return chunks


def split_in_two(doc: Doc, start: int, end: int) -> Optional[List[Tuple[int, int]]]:
    """Two halves of doc[start:end], cut at the sentence end nearest the middle, else at the whitespace
    nearest it; None for a chunk too short to cut. Used when a chunk's count saturates."""
    if end - start < MIN_SPLIT_TOKENS:
        return None
    middle = (start + end) // 2
    ends = [e for _, e in sentence_bounds(doc[start:end].as_doc()) if 0 < e < end - start]
    if ends:
        cut = start + min(ends, key=lambda e: abs(start + e - middle))
    else:
        spaced = [i for i in range(start + 1, end) if doc[i - 1].whitespace_]
        cut = min(spaced, key=lambda i: abs(i - middle)) if spaced else middle
    return [(start, cut), (cut, end)]


MIN_SPLIT_TOKENS = 8  # a chunk this short is never cut further (a babbling model's counts stop here)


def span_getter_bounds(getter: Any, docs: Sequence[Doc]) -> List[List[Tuple[int, int]]]:
    """Chunk bounds from a registered spacy-transformers span getter (e.g. sent_spans.v1)."""
    return [[(s.start, s.end) for s in spans] for spans in getter(list(docs))]


def group(sizes: Sequence[int], max_items: int, max_tokens: int) -> Iterable[List[int]]:
    """Indices in order, grouped so no group exceeds max_items items or max_tokens tokens (one oversized
    item still forms its own group)."""
    current: List[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if current and (len(current) >= max_items or total + n > max_tokens):
            yield current
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        yield current


def merge(doc: Doc, chunks: Sequence[Tuple[int, int, DocPrediction]], passes: int) -> DocPrediction:
    """One prediction for a doc decoded in chunks (token ranges [start, end), in order).

    Each mention keeps its chunk's character window (dedup and alignment work per window: the unit the
    model saw); counts add up and raw counts are joined with spaces; counters add up except the forward
    passes, which chunks decoded in the same engine call share, so the caller counts them (`passes`)."""
    mentions: List[Any] = []
    counts: Dict[str, int] = {}
    raw: Dict[str, List[str]] = {}
    stats = DocStats()
    for start, end, pred in chunks:
        span = doc[start:end]
        mentions += [replace(m, window=(span.start_char, span.end_char)) for m in pred.mentions]
        for label, n in pred.counts.items():
            counts[label] = counts.get(label, 0) + n
            raw.setdefault(label, []).append(pred.raw_counts[label])
        stats = stats.merge(pred.stats)
    stats.forward_passes = passes
    return DocPrediction(counts, {label: " ".join(v) for label, v in raw.items()}, tuple(mentions), stats,
                         chunks=len(chunks))
