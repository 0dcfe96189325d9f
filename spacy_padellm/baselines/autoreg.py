"""Autoregressive NER baselines: one greedy sequence per document holding every entity, decoded in a
batched loop with a KV cache (the same loop PaDeLLM's mentions use), then parsed and aligned."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example

from ..align import align_mentions, choose_entities
from ..engine.decoder import Decoder, DocStats
from ..prompts import get_template
from ..scoring import gold_strings, string_prf
from .formats import FORMATS, Pair


@dataclass(frozen=True)
class _Mention:
    label: str
    k: int
    text: str
    logprob: float


def set_pairs(doc: Doc, pairs: Sequence[Pair]) -> Doc:
    """Put (label, string) pairs on the doc the way the component does: k-th of a label after the
    (k-1)-th, non-overlapping entities (earlier first: baselines have no per-mention score)."""
    seen: Dict[str, int] = {}
    mentions = []
    for label, text in pairs:
        seen[label] = seen.get(label, 0) + 1
        mentions.append(_Mention(label, seen[label], text, 0.0))
    aligned, _ = align_mentions(doc, mentions)
    doc.set_ents([Span(doc, a.start, a.end, label=a.label) for a in choose_entities(aligned)], default="outside")
    return doc


class AutoregNER:
    """AutoReg_Struct or AutoReg_Aug with a fine-tuned (merged) model."""

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], fmt: str, max_new_tokens: int = 256):
        self.labels = list(labels)
        self.prompt, _, self.parse = FORMATS[fmt]
        self.decoder = Decoder(model, tokenizer, get_template("en"), max_new_tokens=max_new_tokens)

    def predict(self, texts: Sequence[str]) -> List[Tuple[List[Pair], Dict[str, int]]]:
        stats = [DocStats() for _ in texts]
        prompts = [self.decoder.encode(self.prompt.format(text=t)) for t in texts]
        rows = self.decoder.greedy(None, prompts, list(range(len(texts))), stats)
        out = []
        for (ids, _, _), st in zip(rows, stats):
            text = self.decoder.text_of(ids, skip_special_tokens=True)
            out.append((self.parse(text, self.labels), dict(forward_passes=st.forward_passes,
                                                            prompt_tokens=st.prompt_tokens,
                                                            generated_tokens=st.generated_tokens, sequences=1,
                                                            sequence_tokens=st.generated_tokens)))
        return out


def evaluate_autoreg(model: Any, tokenizer: Any, labels: Sequence[str], fmt: str, gold_docs: Sequence[Doc],
                     batch_size: int = 64, bf16: bool = False) -> Dict[str, Any]:
    """The same two metrics evaluate_model reports, for a baseline."""
    ner = AutoregNER(model, tokenizer, labels, fmt)
    t0 = time.time()
    examples, pairs = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(gold_docs), batch_size):
            batch = gold_docs[i:i + batch_size]
            for gold, (found, _) in zip(batch, ner.predict([d.text for d in batch])):
                pred = Doc(gold.vocab, words=[t.text for t in gold], spaces=[bool(t.whitespace_) for t in gold])
                examples.append(Example(set_pairs(pred, found), gold))
                pairs.append(({(lab, s.strip()) for lab, s in found}, gold_strings(gold)))
    span = get_ner_prf(examples)
    prf = string_prf(pairs)
    return {"f1_string": prf.fscore, "p_string": prf.precision, "r_string": prf.recall, "f1_span": span["ents_f"],
            "p_span": span["ents_p"], "r_span": span["ents_r"], "per_type": span.get("ents_per_type"),
            "n_docs": len(examples), "seconds": time.time() - t0}
