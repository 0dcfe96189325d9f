"""Autoregressive NER baselines: one greedy sequence per document holding every entity, decoded in a
batched loop with a KV cache (the same loop PaDeLLM's mentions use), then parsed and aligned."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from spacy.tokens import Doc, Span

from ..align import align_mentions, choose_entities
from ..engine.greedy import Greedy
from ..engine.runner import Runner
from ..evaluation import evaluate
from ..scoring import USER_DATA_KEY
from ..types import DocStats
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
    doc.user_data[USER_DATA_KEY] = {"mentions": [[label, text, 0.0] for label, text in pairs]}  # as the pipe's
    return doc


class AutoregNER:
    """AutoReg_Struct or AutoReg_Aug with a fine-tuned (merged) model."""

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], fmt: str, max_new_tokens: int = 256):
        self.labels = list(labels)
        self.prompt, _, self.parse = FORMATS[fmt]
        self.runner = Runner(model, tokenizer)
        self.greedy = Greedy(self.runner, max_new_tokens)

    def predict(self, texts: Sequence[str]) -> List[Tuple[List[Pair], Dict[str, int]]]:
        stats = [DocStats() for _ in texts]
        prompts = [self.runner.encode(self.prompt.format(text=t)) for t in texts]
        rows = self.greedy.prefill_and_decode(None, prompts, list(range(len(texts))), stats)
        out = []
        for (ids, _, _), st in zip(rows, stats):
            text = self.runner.text_of(ids, skip_special_tokens=True)
            out.append((self.parse(text, self.labels), dict(forward_passes=st.forward_passes,
                                                            prompt_tokens=st.prompt_tokens,
                                                            generated_tokens=st.generated_tokens, sequences=1,
                                                            sequence_tokens=st.generated_tokens)))
        return out


def evaluate_autoreg(model: Any, tokenizer: Any, labels: Sequence[str], fmt: str, gold_docs: Sequence[Doc],
                     batch_size: int = 64, bf16: bool = False) -> Dict[str, Any]:
    """evaluation.metrics of a baseline, the numbers the PaDeLLM evaluator reports."""
    ner = AutoregNER(model, tokenizer, labels, fmt)

    def annotate(docs: List[Doc]) -> List[Doc]:
        return [set_pairs(d, pairs) for d, (pairs, _) in zip(docs, ner.predict([d.text for d in docs]))]

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return evaluate(annotate, gold_docs, batch_size)
