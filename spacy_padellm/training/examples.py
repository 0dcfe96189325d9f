"""Docs -> the paper's training examples, tokenized with the same prompt code the component uses.

Per document and label: `0<eos>` when the label has no mention, else one example per mention
`{count}\n<mention {k}>{mention}<eos>`, mentions in text order. Loss is on the target only (count, marker,
mention, EOS). Prompt and target are tokenized as one string; the target starts where the ids of the
prompt alone stop agreeing with the ids of the whole (so a merge at the seam is never half-supervised).

Every supervised token also carries its PART, found the same way: a part starts at the first token where
the ids of the text up to that part stop agreeing with the whole, so a token that straddles two parts
belongs to the later one. The parts: COUNT (the digits and the newline that ends them: the decoder reads
both), MARKER (`<mention k>`: inference writes it into the prompt, the model never generates it), MENTION,
EOS. The loss weighs each part separately (TrainConfig's `*_weight`): the marker is almost half of the
supervised tokens, the count is the step that decides recall.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from spacy.tokens import Doc

from ..prompts import Template, common_prefix_len, encode

COUNT, MARKER, MENTION, EOS = 0, 1, 2, 3
PART_NAMES = ("count", "marker", "mention", "eos")


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # without EOS
    # character offsets in `target` where the marker and the mention begin; None: the whole target is one
    # part (MENTION), as for the autoregressive baselines' single sequence
    parts_at: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class EncodedExample:
    ids: Tuple[int, ...]  # prompt + target + EOS
    n_prompt: int  # ids[n_prompt:] are supervised
    parts: Tuple[int, ...] = ()  # one part per id in ids[n_prompt:]; empty: all MENTION


def doc_examples(doc: Doc, labels: Sequence[str], template: Template) -> List[Example]:
    out: List[Example] = []
    for label in labels:
        mentions = [e.text for e in sorted(doc.ents, key=lambda e: e.start) if e.label_ == label]
        prompt = template.prompt(doc.text, label)
        if not mentions:
            target = template.target(0, 1, "")
            out.append(Example(prompt, target, (len(target), len(target))))
        for k, mention in enumerate(mentions, start=1):
            target = template.target(len(mentions), k, mention)
            count_end = len(str(len(mentions))) + 1  # the newline that ends the count is read by the decoder
            out.append(Example(prompt, target, (count_end, len(target) - len(mention))))
    return out


def encode_example(tokenizer: Any, example: Example, bos: Sequence[int] = ()) -> EncodedExample:
    full = encode(tokenizer, example.prompt + example.target, bos) + [tokenizer.eos_token_id]
    prompt = encode(tokenizer, example.prompt, bos)
    n_prompt = common_prefix_len(prompt, full)
    if example.parts_at is None:
        return EncodedExample(tuple(full), n_prompt)
    cuts = [common_prefix_len(encode(tokenizer, example.prompt + example.target[:at], bos), full)
            for at in example.parts_at]
    parts = [sum(i >= c for c in cuts) for i in range(n_prompt, len(full) - 1)] + [EOS]
    return EncodedExample(tuple(full), n_prompt, tuple(parts))


def part_weights(cfg: Any) -> Tuple[float, float, float, float]:
    """The loss weight of each part, in part order, from a TrainConfig (or anything with its fields)."""
    return (float(cfg.count_weight), float(cfg.marker_weight), float(cfg.mention_weight), float(cfg.eos_weight))
