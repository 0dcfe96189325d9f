"""One counted, timed forward pass: the only place the decoding stages call the model.

A `Runner` holds the model and tokenizer (encoding, decoding, the special ids); every pass it runs is
added to the per-text `DocStats` of the rows it fed and to a `Meter` the caller owns (the benchmark reads
and clears its own meter; nothing outside reaches into the decoder for timings).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..prompts import encode, special_prefix
from ..types import DocStats
from .kv import KVState, TreeState, extend, extend_tree
from .int8 import is_int8, quantize_modules
from .lean import lean_forward
from .tree import Trie

@dataclass
class Meter:
    """Per stage, summed over calls until `clear()`: wall time, passes, and the work done (real tokens
    fed, query-key pairs attended, positions given logits: floor.flops turns them into FLOPs)."""
    seconds: Dict[str, float] = field(default_factory=dict)
    passes: Dict[str, int] = field(default_factory=dict)
    tokens: Dict[str, int] = field(default_factory=dict)
    attended: Dict[str, float] = field(default_factory=dict)
    logits: Dict[str, int] = field(default_factory=dict)
    choices: Dict[str, int] = field(default_factory=dict)  # extras chosen per call or pass (engine/extras.py)

    def add(self, stage: str, seconds: float, tokens: int = 0, attended: float = 0.0, logits: int = 0) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.passes[stage] = self.passes.get(stage, 0) + 1
        self.tokens[stage] = self.tokens.get(stage, 0) + tokens
        self.attended[stage] = self.attended.get(stage, 0.0) + attended
        self.logits[stage] = self.logits.get(stage, 0) + logits

    def clear(self) -> None:
        for counter in (self.seconds, self.passes, self.tokens, self.attended, self.logits, self.choices):
            counter.clear()


class Runner:
    """A model and its tokenizer: encode and decode text, run one pass of rows (or of tries).

    `lean`: run Llama models through our own forward pass (engine/lean.py; same output, less overhead)."""

    def __init__(self, model: Any, tokenizer: Any, meter: Optional[Meter] = None, lean: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lean = lean_forward(model) if lean else None
        if self.lean is None and is_int8(model):  # transformers' forward calls the modules: quantize them
            quantize_modules(model)
        self.meter = meter if meter is not None else Meter()
        self.bos = special_prefix(tokenizer)
        self.eos_ids: Set[int] = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)

    def encode(self, text: str) -> List[int]:
        return encode(self.tokenizer, text, self.bos)

    def text_of(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The string of generated ids, exactly: no clean-up of spaces (which turns "Lord 's" into
        "Lord's" and "Salomon Bros ." into "Salomon Bros.", strings the text does not hold)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def forward(self, state: Optional[KVState], segments: List[List[int]], row_docs: Sequence[int],
                stats: List[DocStats], stage: str, prompt: bool = False, n_logits: int = 1
                ) -> Tuple[torch.Tensor, KVState]:
        """kv.extend of one segment per row; row i's tokens count for text row_docs[i] (as prompt tokens
        when `prompt`), the pass once for each text it served."""
        self._count(row_docs, stats)
        if prompt:
            for d, seg in zip(row_docs, segments):
                stats[d].prompt_tokens += len(seg)
        start = time.perf_counter()
        try:
            return extend(self.model, state, segments, self.pad_id, n_logits, self.lean)
        finally:
            self._record(stage, start, state, [len(s) for s in segments],
                         [n * (n + 1) / 2 for n in map(len, segments)], len(segments) * n_logits)

    def forward_tree(self, state: Optional[KVState], tries: List[Trie], want: List[List[int]],
                     row_docs: Sequence[int], stats: List[DocStats], stage: str
                     ) -> Tuple[List[torch.Tensor], TreeState]:
        """kv.extend_tree of one trie per row; every trie node counts as a prompt token."""
        self._count(row_docs, stats)
        for d, trie in zip(row_docs, tries):
            stats[d].prompt_tokens += len(trie.tokens)
        start = time.perf_counter()
        try:
            return extend_tree(self.model, state, tries, self.pad_id, want, self.lean)
        finally:
            self._record(stage, start, state, [len(t.tokens) for t in tries],
                         [sum(t.depth) + len(t.tokens) for t in tries], sum(len(w) for w in want))

    def _record(self, stage: str, start: float, state: Optional[KVState], fed: List[int], within: List[float],
                logits: int) -> None:
        """Time and work of the pass begun at `start`: row i fed fed[i] tokens, which attend to the row's
        cached tokens and to `within[i]` pairs among themselves."""
        elapsed = time.perf_counter() - start
        past = state.lengths().tolist() if state is not None else [0] * len(fed)
        attended = sum(n * p + w for n, p, w in zip(fed, past, within))
        self.meter.add(stage, elapsed, sum(fed), attended, logits)

    @staticmethod
    def _count(row_docs: Sequence[int], stats: List[DocStats]) -> None:
        for d in set(row_docs):
            stats[d].forward_passes += 1
