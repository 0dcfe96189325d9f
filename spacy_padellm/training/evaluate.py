"""Score a model on gold docs through the real component (same engine, alignment and dedup as users get)."""
from __future__ import annotations

import time
from typing import Any, Dict, Sequence

import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example

from ..engine.decoder import Decoder
from ..prompts import get_template


def evaluate_model(model: Any, tokenizer: Any, labels: Sequence[str], template: str, gold_docs: Sequence[Any],
                   nlp: Language, batch_size: int = 64, max_new_tokens: int = 24, bf16: bool = False
                   ) -> Dict[str, Any]:
    """String-level micro-F1 (the paper's metric) and spaCy's span P/R/F over `gold_docs`."""
    pipeline = Language(nlp.vocab)
    # adapter=None: the model being trained is plugged in below; the shipped adapter (the default) knows
    # only its own labels and would reject a user's new ones (E014)
    pipe = pipeline.add_pipe("padellm_ner", config={"labels": list(labels), "template": template, "adapter": None,
                                                    "max_new_tokens": max_new_tokens, "device": "cpu"})
    pipe._decoder = Decoder(model, tokenizer, get_template(template), max_new_tokens)
    # predict on the gold tokenization, as CoNLL scoring does
    examples = [Example(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]), d)
                for d in gold_docs]
    t0 = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        scores = pipeline.evaluate(examples, batch_size=batch_size)
    return {"f1_string": scores["ents_string_f"], "p_string": scores["ents_string_p"],
            "r_string": scores["ents_string_r"], "f1_span": scores["ents_f"], "p_span": scores["ents_p"],
            "r_span": scores["ents_r"], "per_type": scores.get("ents_per_type"), "n_docs": len(examples),
            "count_exact": scores.get("ents_count_exact"), "count_low": scores.get("ents_count_low"),
            "count_high": scores.get("ents_count_high"),
            "seconds": time.time() - t0}
