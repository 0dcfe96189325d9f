"""One evaluator: gold documents in, one metrics dict out, for the CLI, training, the benchmark and the
count-bias tuning script alike (so a number in a log, a table and BENCHMARKS.md means the same thing).

Predictions are made on a copy of each gold doc's tokenization (as CoNLL scoring does) and scored twice:
spaCy's span P/R/F after alignment, and the paper's micro-F1 over per-document sets of (label, string).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Sequence

from spacy.tokens import Doc
from spacy.training import Example

from .scoring import gold_strings, predicted_strings, score, string_f1_by_label

Annotate = Callable[[List[Doc]], Iterable[Doc]]  # e.g. lambda docs: nlp.pipe(docs, batch_size=32)


def gold_copy(gold: Doc) -> Doc:
    """An unannotated doc with the gold doc's words and spaces (its tokenization, nothing else)."""
    return Doc(gold.vocab, words=[t.text for t in gold], spaces=[bool(t.whitespace_) for t in gold])


def metrics(examples: Sequence[Example]) -> Dict[str, Any]:
    """f1/p/r for strings and spans, spaCy's per_type, string F1 per label, count exact/low/high (where
    the predictions carry counts), and n_docs."""
    s = score(examples)
    pairs = [(predicted_strings(eg.predicted), gold_strings(eg.reference)) for eg in examples]
    return {"f1_string": s["ents_string_f"], "p_string": s["ents_string_p"], "r_string": s["ents_string_r"],
            "f1_span": s["ents_f"], "p_span": s["ents_p"], "r_span": s["ents_r"],
            "per_type": s.get("ents_per_type"), "f1_string_by_label": string_f1_by_label(pairs),
            "count_exact": s.get("ents_count_exact"), "count_low": s.get("ents_count_low"),
            "count_high": s.get("ents_count_high"), "n_docs": len(examples)}


def evaluate(annotate: Annotate, gold: Sequence[Doc], batch_size: int = 32) -> Dict[str, Any]:
    """`metrics` of `annotate` over gold copies of `gold` (in batches of `batch_size`), plus the seconds
    it took."""
    start = time.perf_counter()
    examples = []
    for i in range(0, len(gold), batch_size):
        batch = list(gold[i:i + batch_size])
        examples += [Example(pred, ref) for pred, ref in zip(annotate([gold_copy(g) for g in batch]), batch)]
    return {**metrics(examples), "seconds": time.perf_counter() - start}


def pipeline_annotate(nlp: Any, batch_size: int = 32) -> Annotate:
    """`annotate` for a spaCy pipeline."""
    return lambda docs: nlp.pipe(docs, batch_size=batch_size)
