"""Docs -> the paper's training examples, tokenized with the same prompt code the component uses.

Per document and label: `0<eos>` when the label has no mention, else one example per mention
`{count}\n<mention {k}>{mention}<eos>`, mentions in text order. Loss is on the target only (count, marker,
mention, EOS). Prompt and target are tokenized as one string; the target starts where the ids of the
prompt alone stop agreeing with the ids of the whole (so a merge at the seam is never half-supervised).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from spacy.tokens import Doc

from ..prompts import Template, common_prefix_len, encode


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # without EOS


@dataclass(frozen=True)
class EncodedExample:
    ids: Tuple[int, ...]  # prompt + target + EOS
    n_prompt: int  # ids[n_prompt:] are supervised


def doc_examples(doc: Doc, labels: Sequence[str], template: Template) -> List[Example]:
    out: List[Example] = []
    for label in labels:
        mentions = [e.text for e in sorted(doc.ents, key=lambda e: e.start) if e.label_ == label]
        prompt = template.prompt(doc.text, label)
        if not mentions:
            out.append(Example(prompt, template.target(0, 1, "")))
        for k, mention in enumerate(mentions, start=1):
            out.append(Example(prompt, template.target(len(mentions), k, mention)))
    return out


def encode_example(tokenizer: Any, example: Example, bos: Sequence[int] = ()) -> EncodedExample:
    full = encode(tokenizer, example.prompt + example.target, bos) + [tokenizer.eos_token_id]
    prompt = encode(tokenizer, example.prompt, bos)
    return EncodedExample(tuple(full), common_prefix_len(prompt, full))
