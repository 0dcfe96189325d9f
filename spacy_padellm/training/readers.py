"""Read NER data from the formats it ships in, as spaCy Docs with `doc.ents` set.

Every reader returns `list[Doc]` built on the caller's `Vocab`, so the docs can go straight into the
pipeline that will be trained or evaluated. Token-per-line formats become one Doc per sentence;
their text is the tokens joined by single spaces (CoNLL, WNUT) or by nothing (character-level
Chinese BMES). Malformed input raises `ValueError` naming the file and the 1-based line, because a
silently skipped line shifts every later label and is very hard to notice in the scores.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import spacy
from spacy.tokens import Doc, DocBin, Span
from spacy.vocab import Vocab

PathLike = Union[str, "os.PathLike[str]"]
Tag = Tuple[str, Optional[str]]  # (normalised prefix B/I/E/S/O, label)

# Prefix -> normalised prefix. IOB1 and IOB2 share one decoder (see `decode_tags`), so the scheme only
# decides which prefixes are allowed: "auto" also takes BIOES/BILOU.
_SCHEMES: Dict[str, Dict[str, str]] = {
    "auto": {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"},
    "iob1": {"B": "B", "I": "I"},
    "iob2": {"B": "B", "I": "I"},
}
_BMES = {"B": "B", "M": "I", "I": "I", "E": "E", "S": "S"}
_TAG = re.compile(r"([A-Z])-(.+)")
_COLUMNS = re.compile(r"[ \t]+")
_JSONL_EXPECTED = ('one JSON object per line: {"text": "...", "entities": [[start_char, end_char, "LABEL"], ...]} '
                   '(or "spans": [{"start": 0, "end": 5, "label": "LABEL"}, ...])')


def decode_tags(tags: Sequence[Tag]) -> List[Tuple[int, int, str]]:
    """Token tags -> (start, end, label) token spans, leniently, so one decoder reads IOB1, IOB2 and BIOES.

    An I-/E- tag continues an open entity of the same label and otherwise starts one (IOB1, and
    sloppy IOB2); B- always starts one (in IOB1 it only separates adjacent same-label entities);
    E- closes the entity after its token, S- is a one-token entity, O closes.
    """
    spans: List[Tuple[int, int, str]] = []
    current: Optional[Tuple[int, str]] = None  # (start, label) of the open entity
    for i, (prefix, label) in enumerate(tags):
        if not (current is not None and current[1] == label and prefix in "IE"):
            if current is not None:
                spans.append((current[0], i, current[1]))
            current = (i, label) if prefix != "O" and label else None
        if prefix in "ES" and current is not None:
            spans.append((current[0], i + 1, current[1]))
            current = None
    if current is not None:
        spans.append((current[0], len(tags), current[1]))
    return spans


def read_conll(path: PathLike, vocab: Vocab, *, scheme: str = "auto") -> List[Doc]:
    """CoNLL-style files (CoNLL-2003, WNUT-17, ...): token first, NER tag last, blank line between sentences.

    Middle columns (POS, chunk) are ignored and `-DOCSTART-` lines are skipped. `scheme` is "auto"
    (IOB1, IOB2, BIOES, BILOU), "iob1" or "iob2" (only B-/I-/O allowed, to catch a mislabelled file).
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"Unknown tag scheme {scheme!r}. Use one of {sorted(_SCHEMES)}.")
    return _read_token_lines(path, vocab, _SCHEMES[scheme], space=True)


def read_bmes(path: PathLike, vocab: Vocab) -> List[Doc]:
    """Character-level BMES files (MSRA, Weibo, Resume): `char TAG` per line, blank line between sentences.

    Tags are B-/M-/E-/S- (I- is read as M-) and O. Characters are joined without spaces, so the Doc
    text is the original Chinese sentence and each character is one token.
    """
    return _read_token_lines(path, vocab, _BMES, space=False)


def read_jsonl(path: PathLike, vocab: Vocab, *, tokenizer: Optional[Callable[[str], Doc]] = None) -> List[Doc]:
    """JSON lines with raw text and character-offset entities (the usual export of annotation tools).

    The text is tokenized by `tokenizer` (it must build Docs on `vocab`); by default by a blank
    pipeline of the vocab's language ("en" if it has none) built on `vocab`. We take the vocab
    rather than an `nlp` so that every reader has the same signature. Offsets inside a token expand
    to whole tokens. Every record needs "text" and "entities" (or "spans"), since a record without
    annotations would otherwise teach the model that the text has no entities.
    """
    p = _file(path)
    if tokenizer is None:
        tokenizer = spacy.blank(vocab.lang or "en", vocab=vocab).tokenizer
    docs = []
    with p.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise _line_error(p, lineno, line, f"invalid JSON ({err.msg})", _JSONL_EXPECTED) from None
            docs.append(_jsonl_doc(record, tokenizer, p, lineno, line))
    return docs


def read_docbin(path: PathLike, vocab: Vocab) -> List[Doc]:
    """A spaCy `.spacy` file (DocBin), as written by `DocBin.to_disk` or `spacy convert`."""
    p = _file(path)
    try:
        return list(DocBin().from_disk(p).get_docs(vocab))
    except Exception as err:  # zlib, msgpack and KeyError all mean the same thing here
        raise ValueError(f"{p} is not a .spacy DocBin ({type(err).__name__}: {err}). Give a file written by "
                         f"DocBin.to_disk or `spacy convert`, or rename it to its real format "
                         f"(.conll, .jsonl, .bmes).") from err


def read_any(path: PathLike, vocab: Vocab) -> List[Doc]:
    """Pick the reader by file extension: .spacy, .jsonl/.json, .bmes; anything else is read as CoNLL."""
    p = _file(path)
    name = p.name.lower()
    if name.endswith(".spacy"):
        return read_docbin(p, vocab)
    if name.endswith((".jsonl", ".json")):
        return read_jsonl(p, vocab)
    if name.endswith(".bmes"):
        return read_bmes(p, vocab)
    return read_conll(p, vocab)


def _file(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give one data file inside it (e.g. {p / 'dev.conll'}).")
    if not p.is_file():
        raise FileNotFoundError(f"No such data file: {p}")
    return p


def _line_error(path: Path, lineno: int, line: str, why: str, expected: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {why}: {line.rstrip(chr(10) + chr(13))!r}. Expected {expected}.")


def _read_token_lines(path: PathLike, vocab: Vocab, prefixes: Dict[str, str], *, space: bool) -> List[Doc]:
    p = _file(path)
    expected_tag = (f"the tag 'O' or one of {'/'.join(prefixes)} followed by '-' and a label, "
                    f"e.g. '{next(iter(prefixes))}-LOC'")
    docs: List[Doc] = []
    words: List[str] = []
    tags: List[Tag] = []

    def end_sentence() -> None:
        if words:
            spaces = [space] * (len(words) - 1) + [False]
            docs.append(_make_doc(vocab, words, spaces, decode_tags(tags)))
            words.clear()
            tags.clear()

    with p.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            stripped = line.strip(" \t\r\n")
            if not stripped:
                end_sentence()
                continue
            columns = _COLUMNS.split(stripped)
            if columns[0] == "-DOCSTART-":
                end_sentence()
                continue
            if len(columns) < 2:
                raise _line_error(p, lineno, line, "only one column",
                                  "a token and its tag (tag in the last column) separated by spaces or tabs")
            tag = columns[-1]
            match = _TAG.fullmatch(tag)
            if tag == "O":
                tags.append(("O", None))
            elif match and match.group(1) in prefixes:
                tags.append((prefixes[match.group(1)], match.group(2)))
            else:
                raise _line_error(p, lineno, line, f"bad tag {tag!r}", expected_tag)
            words.append(columns[0])
    end_sentence()
    return docs


def _make_doc(vocab: Vocab, words: List[str], spaces: List[bool], spans: List[Tuple[int, int, str]]) -> Doc:
    doc = Doc(vocab, words=words, spaces=spaces)
    doc.ents = [Span(doc, start, end, label=label) for start, end, label in spans]
    return doc


def _jsonl_doc(record: object, tokenizer: Callable[[str], Doc], p: Path, lineno: int, line: str) -> Doc:
    def fail(why: str) -> ValueError:
        return _line_error(p, lineno, line, why, _JSONL_EXPECTED)

    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise fail('missing "text" (a string)')
    raw = record.get("entities", record.get("spans"))
    if not isinstance(raw, list):
        raise fail('missing "entities" (or "spans") list')
    text = record["text"]
    doc = tokenizer(text)
    spans: List[Span] = []
    for ent in raw:
        if isinstance(ent, dict) and {"start", "end", "label"} <= ent.keys():
            start, end, label = ent["start"], ent["end"], ent["label"]
        elif isinstance(ent, (list, tuple)) and len(ent) == 3:
            start, end, label = ent
        else:
            raise fail(f"bad entity {ent!r}")
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(label, str) and label):
            raise fail(f"bad entity {ent!r} (start and end must be integers, label a non-empty string)")
        if not 0 <= start < end <= len(text):
            raise fail(f"entity {ent!r} is outside the text (0..{len(text)}) or empty")
        span = doc.char_span(start, end, label=label, alignment_mode="expand")
        if span is None or not len(span):
            raise fail(f"entity {ent!r} covers no token")
        spans.append(span)
    spans.sort(key=lambda s: (s.start, s.end))
    for a, b in zip(spans, spans[1:]):
        if b.start < a.end:
            raise fail(f"overlapping entities {a.text!r} ({a.label_}) and {b.text!r} ({b.label_})")
    doc.ents = spans
    return doc
