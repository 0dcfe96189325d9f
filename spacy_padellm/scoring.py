"""spaCy's entity P/R/F plus the paper's string metric (micro-F1 over per-document sets of
(label, mention string)), so our numbers compare with spaCy tables and with the paper's."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Sequence, Set, Tuple

from spacy.scorer import PRFScore, get_ner_prf
from spacy.tokens import Doc
from spacy.training import Example

USER_DATA_KEY = "padellm"


def predicted_strings(doc: Doc) -> Set[Tuple[str, str]]:
    """The (label, string) pairs the component predicted after dedup (aligned or not)."""
    data = doc.user_data.get(USER_DATA_KEY)
    if data and "mentions" in data:
        return {(label, text.strip()) for label, text, _ in data["mentions"] if text.strip()}
    return {(e.label_, e.text) for e in doc.ents}


def gold_strings(doc: Doc) -> Set[Tuple[str, str]]:
    return {(e.label_, e.text) for e in doc.ents}


def string_prf(pairs: Iterable[Tuple[Set[Tuple[str, str]], Set[Tuple[str, str]]]]) -> PRFScore:
    """Micro P/R/F over (predicted set, gold set) per document."""
    prf = PRFScore()
    for pred, gold in pairs:
        prf.tp += len(pred & gold)
        prf.fp += len(pred - gold)
        prf.fn += len(gold - pred)
    return prf


def string_f1_by_label(pairs: Sequence[Tuple[Set[Tuple[str, str]], Set[Tuple[str, str]]]]) -> Dict[str, float]:
    """The paper's string F1 per label (over gold and predicted labels): where a quality gap comes from."""
    labels = sorted({label for pred, ref in pairs for label, _ in pred | ref})
    return {label: string_prf(({p for p in pred if p[0] == label}, {r for r in ref if r[0] == label})
                              for pred, ref in pairs).fscore for label in labels}


def count_errors(examples: Iterable[Example]) -> Dict[str, float]:
    """How often the step-1 count of a (doc, label) equals the gold number of mentions, and how often it
    is too low or too high: the count decides how many mentions are decoded at all, so it bounds recall."""
    exact = low = high = 0
    for eg in examples:
        counts = (eg.predicted.user_data.get(USER_DATA_KEY) or {}).get("counts") or {}
        for label, n in counts.items():
            gold = sum(e.label_ == label for e in eg.reference.ents)
            exact += n == gold
            low += n < gold
            high += n > gold
    total = exact + low + high
    if not total:
        return {}
    return {"ents_count_exact": exact / total, "ents_count_low": low / total, "ents_count_high": high / total}


def score(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    examples = list(examples)
    scores = get_ner_prf(examples)
    prf = string_prf((predicted_strings(eg.predicted), gold_strings(eg.reference)) for eg in examples)
    scores.update(ents_string_p=prf.precision, ents_string_r=prf.recall, ents_string_f=prf.fscore)
    scores.update(count_errors(examples))
    return scores
