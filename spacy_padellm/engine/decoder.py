"""Batched count-then-mention decoding with the document prefix encoded once: `Decoder.predict`.

The decoder picks the path (tree_path.py where the model family takes a 4D mask, else row_path.py) and
the extras of the call (count guesses and copy-speculation, where engine/extras.py says they pay), and
assembles one DocPrediction per text. Every path gives the tokens plain greedy decoding of each sequence would; a
count is a canonical number, so a leading "0" ends it. Where each stage lives:

    runner.py  one counted, timed pass       counts.py  the count vocabulary and loop
    greedy.py  greedy rows, copy proposals   rows.py    rows with their cache, KV-sized batches
    kv.py      caches and the extend passes  tree.py    tries (shared with training's packing)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set

import torch

from ..prompts import Template, common_prefix_len
from ..settings import DecodeSettings
from ..types import DocPrediction, DocStats, MentionPrediction, output_sequences
from .counts import CountVocabulary
from .extras import Extras
from .family import kv_bytes_per_token, takes_4d_mask
from .greedy import Greedy
from .parts import Call, Parts
from .row_path import count_step, mention_step, requests_of
from .runner import Meter, Runner
from .tree_path import tree_step

__all__ = ["Decoder", "DocPrediction", "DocStats", "MentionPrediction", "output_sequences", "kv_bytes_per_token"]


class Decoder:
    """Greedy PaDeLLM decoding for one loaded model, tokenizer and template.

    Settings come from `settings` (default: DecodeSettings()), with `max_new_tokens` and keyword
    `overrides` replacing single fields; `meter` collects per-stage time and passes (the caller's)."""

    def __init__(self, model: Any, tokenizer: Any, template: Template, max_new_tokens: Optional[int] = None, *,
                 settings: Optional[DecodeSettings] = None, meter: Optional[Meter] = None, **overrides: Any) -> None:
        if max_new_tokens is not None:
            overrides["max_new_tokens"] = max_new_tokens
        self.settings = (settings or DecodeSettings()).replace(**overrides)
        self.runner = Runner(model, tokenizer, meter, lean=self.settings.lean_forward)
        self.counts = CountVocabulary(self.runner, template)
        self.tree = self.settings.tree and takes_4d_mask(model)  # tree-shaped passes where the family allows
        greedy = Greedy(self.runner, self.settings.max_new_tokens, self.settings.mentions_from_text)
        self.extras = Extras(model, self.runner.lean, self.settings.small_batch, self.settings.speculate,
                             self.runner.meter)
        if not self.settings.small_batch:
            greedy.extras = self.extras  # speculation chosen per pass
        self.parts = Parts(self.runner, self.counts, greedy, template, self.settings, kv_bytes_per_token(model))
        self._guess_tokens: Dict[str, int] = {}

    # ---- what callers read ------------------------------------------------------------------------
    model = property(lambda self: self.runner.model)
    tokenizer = property(lambda self: self.runner.tokenizer)
    meter = property(lambda self: self.runner.meter)
    template = property(lambda self: self.parts.template)
    max_new_tokens = property(lambda self: self.settings.max_new_tokens)
    count_bias = property(lambda self: self.settings.count_bias)
    pad_id = property(lambda self: self.runner.pad_id)
    eos_ids: Set[int] = property(lambda self: self.runner.eos_ids)  # type: ignore[assignment]
    digit_ids: Dict[int, str] = property(lambda self: self.counts.digit_ids)  # type: ignore[assignment]
    count_allowed: torch.Tensor = property(lambda self: self.counts.allowed)  # type: ignore[assignment]

    def encode(self, text: str) -> List[int]:
        return self.runner.encode(text)

    def text_of(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.runner.text_of(ids, skip_special_tokens)

    # ---- decoding ---------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int]
                ) -> List[DocPrediction]:
        """Entities of every text under every label; `max_counts[i]` caps the mentions per label.

        Texts are decoded in groups whose label prompts' cache fits the KV budget (every label row holds
        a copy of its text's prompt), so memory does not grow with the number or length of texts."""
        if not texts:
            return []
        prompts = [[self.runner.encode(self.template.prompt(t, lab)) for lab in labels] for t in texts]
        out: List[DocPrediction] = []
        for rows in self.parts.batches([sum(len(p) for p in ps) for ps in prompts]):
            fixed = self.settings.small_batch
            call = Call([texts[r] for r in rows], list(labels), [prompts[r] for r in rows],
                        [max_counts[r] for r in rows], [DocStats() for _ in rows],
                        guesses=self._guesses([prompts[r] for r in rows], labels) if self.tree else 0,
                        speculate=self.settings.speculate if not fixed or len(rows) <= fixed else 0)
            out += self._predict(call)
        return out

    def _guesses(self, prompts: List[List[List[int]]], labels: Sequence[str]) -> int:
        """Count guesses for a call of these label prompts, if their tokens pay (engine/extras.py). The
        fixed rule needs no token counts: they are only worked out for the measured choice."""
        if self.settings.small_batch:
            return self.extras.guesses(self.settings.count_guesses, len(prompts), len(labels), 0, 0)
        for lab in labels:
            if lab not in self._guess_tokens:  # the nodes one guess adds to a label's branch
                plain = self.runner.encode(self.template.prompt("x", lab))
                guessed = self.runner.encode(self.template.mention_prompt("x", lab, 1, 1))
                self._guess_tokens[lab] = len(guessed) - common_prefix_len(plain, guessed)
        first = sum(len(ps[0]) + sum(len(p) - common_prefix_len(ps[0], p) for p in ps[1:]) for ps in prompts)
        extra = len(prompts) * sum(self._guess_tokens[lab] for lab in labels)
        return self.extras.guesses(self.settings.count_guesses, len(prompts), len(labels), first, extra)

    def _predict(self, call: Call) -> List[DocPrediction]:
        if self.tree:
            counts, raw, mentions = tree_step(self.parts, call)
        else:
            counts, raw, label_state, label_rows = count_step(self.parts, call)
            requests = requests_of(call, label_rows, counts, list(range(len(label_rows))))
            mentions = mention_step(self.parts, call, label_state, requests)
        self.extras.saw_counts(counts)
        n = len(call.labels)
        out = []
        for d, stats in enumerate(call.stats):  # label rows are doc-major: row d * n + j
            raw_counts = {lab: raw[d * n + j] for j, lab in enumerate(call.labels)}
            stats.sequences, stats.sequence_tokens = output_sequences(raw_counts, mentions[d])
            out.append(DocPrediction({lab: call.cap(d, counts[d * n + j]) for j, lab in enumerate(call.labels)},
                                     raw_counts, tuple(mentions[d]), stats))
        return out
