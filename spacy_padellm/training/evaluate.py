"""Score the model being trained through the real component (same chunking, dedup and alignment as users
get), with the one evaluator (evaluation.py)."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import torch
from spacy.language import Language

from ..engine.decoder import Decoder
from ..evaluation import evaluate, pipeline_annotate
from ..prompts import Template, as_template


def evaluate_model(model: Any, tokenizer: Any, labels: Sequence[str], template: Union[str, Template],
                   gold_docs: Sequence[Any], nlp: Language, batch_size: int = 64, max_new_tokens: int = 24,
                   bf16: bool = False) -> Dict[str, Any]:
    """evaluation.metrics of `model` (plugged into a padellm_ner pipe) over `gold_docs`."""
    template = as_template(template)
    pipeline = Language(nlp.vocab)
    # adapter=None: the model being trained is plugged in below; the shipped adapter (the default) knows
    # only its own labels and would reject a user's new ones (E014)
    # threads: the training's own (the pipe's default, the cores this process may use, would switch the
    # rest of a 1-thread run to 2 threads beside another job: 4-5x slower steps, measured)
    pipe = pipeline.add_pipe("padellm_ner", config={"labels": list(labels), "template": template.name,
                                                    "label_words": dict(template.label_words), "adapter": None,
                                                    "max_new_tokens": max_new_tokens, "device": "cpu",
                                                    "threads": torch.get_num_threads()})
    pipe.set_engine(Decoder(model, tokenizer, pipe.template, settings=pipe.decode_settings))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return evaluate(pipeline_annotate(pipeline, batch_size), gold_docs, batch_size)
