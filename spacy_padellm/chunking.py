"""Cut long documents into chunks the model can take, and group chunks into bounded batches.

The model is trained on sentences, so a document over the token budget is cut at its own sentence
boundaries (set by a sentencizer or parser), else at the built-in splitter's, else at whitespace; whole
sentences are packed into a chunk up to the budget. Batches are bounded by a total token budget as well
as a chunk count, so a batch of long documents cannot exhaust memory.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple

from spacy.tokens import Doc

SENTENCE_END = {".", "!", "?", "。", "！", "？", "…", "؟", "।"}


def builtin_sentences(doc: Doc) -> List[Tuple[int, int]]:
    """Sentence-ending punctuation or a blank line ends a sentence (a fallback, not a parser)."""
    bounds, start = [], 0
    for tok in doc:
        if tok.text in SENTENCE_END or (tok.is_space and "\n\n" in tok.text):
            bounds.append((start, tok.i + 1))
            start = tok.i + 1
    if start < len(doc):
        bounds.append((start, len(doc)))
    return bounds


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


def chunk_doc(doc: Doc, max_tokens: int, bounds: Optional[Sequence[Tuple[int, int]]] = None
              ) -> List[Tuple[int, int]]:
    """Token ranges covering the doc: the whole doc when it fits, else packed sentences."""
    if len(doc) <= max_tokens:
        return [(0, len(doc))] if len(doc) else []
    pieces: List[Tuple[int, int]] = []
    for s, e in (bounds if bounds is not None else sentence_bounds(doc)):
        pieces.extend(split_long(s, e, doc, max_tokens))
    chunks: List[Tuple[int, int]] = []
    for s, e in pieces:
        if chunks and e - chunks[-1][0] <= max_tokens and chunks[-1][1] == s:
            chunks[-1] = (chunks[-1][0], e)
        else:
            chunks.append((s, e))
    return chunks


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
