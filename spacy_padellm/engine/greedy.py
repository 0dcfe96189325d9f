"""Greedy decoding of many rows at once: finished rows leave the batch, together with their cache.

Optionally copy-speculative: a row whose last tokens occur in its source (the prompt, which holds the text
a mention is copied from) also feeds the source's next tokens; one pass verifies them all, the tokens
greedy decoding agrees with are kept and the rest are cut from the cache. The output is greedy decoding's;
only passes are saved. A row may carry a constraint (substring.py): its logits transform picks the token.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..prompts import encode
from ..types import DocStats
from .extras import Extras, clock
from .kv import KVState
from .rows import Row, RowBatch
from .runner import Runner
from .substring import Substrings

Decoded = Tuple[List[int], float, bool]  # (token ids, summed log-probability, ended on EOS)


class CopyProposer:
    """Proposes the source's continuation after its first occurrence of a row's last tokens (2-gram, then
    1-gram, then the last token with a leading space: a mention's first token has none, the same word
    inside the text has one)."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self._spaced: Dict[int, Optional[int]] = {}

    def propose(self, decoded: List[int], source: Sequence[int], n: int) -> List[int]:
        if n <= 0 or not decoded:
            return []
        patterns = [decoded[-2:]] if len(decoded) >= 2 else []
        patterns.append(decoded[-1:])
        spaced = self.spaced(decoded[-1])
        if spaced is not None:
            patterns.append([spaced])
        for pattern in patterns:
            width = len(pattern)
            for j in range(len(source) - width):
                if list(source[j:j + width]) == pattern:
                    return list(source[j + width: j + width + n])
        return []

    def spaced(self, token: int) -> Optional[int]:
        if token not in self._spaced:
            ids = encode(self.tokenizer, " " + self.tokenizer.decode([token]))
            self._spaced[token] = ids[0] if len(ids) == 1 else None
        return self._spaced[token]


class Greedy:
    """Greedy decoding with one model: `prefill_and_decode` from prompts, `decode` from cached prompts."""

    def __init__(self, runner: Runner, max_new_tokens: int, substrings: bool = False) -> None:
        self.runner = runner
        self.max_new_tokens = max_new_tokens
        self.proposer = CopyProposer(runner.tokenizer)
        self.substrings = Substrings(runner.tokenizer) if substrings else None
        self.extras: Optional[Extras] = None  # set: speculation is chosen per pass from the pass cost

    def prefill_and_decode(self, state: Optional[KVState], suffixes: List[List[int]], docs: List[int],
                           stats: List[DocStats], sources: Optional[List[Sequence[int]]] = None,
                           texts: Optional[List[str]] = None, speculate: int = 0) -> List[Decoded]:
        """Each row's greedy continuation of state + suffix, until EOS or max_new_tokens."""
        if not suffixes:
            return []
        logits, state = self.runner.forward(state, suffixes, docs, stats, stage="mention_prompt", prompt=True)
        return self.decode(state, logits, docs, stats, sources, texts, speculate)

    def decode(self, state: KVState, logits: torch.Tensor, docs: List[int], stats: List[DocStats],
               sources: Optional[List[Sequence[int]]] = None, texts: Optional[List[str]] = None,
               speculate: int = 0) -> List[Decoded]:
        """Rows whose prompts are in `state` and whose next-token logits are `logits` [rows, vocab];
        `sources` enable copy-speculation (`speculate` tokens per pass), `texts` the substring constraint."""
        rows = [Row(d, sources[i] if sources is not None else (),
                    self.substrings.for_text(texts[i]) if self.substrings and texts is not None else None)
                for i, d in enumerate(docs)]
        batch = RowBatch(list(rows), state)
        pending = logits[:, None, :]  # [rows, positions, vocab]: next-token logits after each fed token
        propose = speculate
        while batch.rows:
            logprobs = torch.log_softmax(pending, dim=-1)
            best = logprobs.max(dim=-1)
            tokens, scores = best.indices.tolist(), best.values.tolist()
            lengths = batch.state.lengths().tolist()
            keep, segments, cached = [], [], []
            for pos, row in enumerate(batch.rows):
                offset = pending.shape[1] - (len(row.proposal) + 1)  # the row's segment is right-aligned
                alive, accepted = self._accept(row, tokens[pos], scores[pos], logprobs[pos], offset, stats)
                if row.proposal and self.extras is not None:
                    self.extras.saw_proposal(accepted)
                if alive:
                    keep.append(pos)
                    cached.append(lengths[pos] - (len(row.proposal) - accepted))  # rejected proposals leave
                    row.proposal = []
            if not keep:
                break
            if sources is not None and self.extras is not None:
                propose = self.extras.speculate(speculate, len(keep))
            for pos in keep:
                row = batch.rows[pos]
                row.proposal = self.proposer.propose(row.ids, row.source, propose) if sources is not None else []
                segments.append([row.ids[-1]] + row.proposal)
            batch = batch.select(keep, cached)
            width = max(len(seg) for seg in segments)
            timed = sources is not None and self.extras is not None and speculate > 0  # corrects the estimate
            start = clock(self.runner.model) if timed else 0.0
            pending, state = self.runner.forward(batch.state, segments, batch.docs, stats, stage="mention",
                                                 n_logits=width)
            if timed:
                self.extras.saw_pass(len(segments), propose if width > 1 else 0, clock(self.runner.model) - start)
            batch = RowBatch(batch.rows, state)
            if width == 1:
                pending = pending[:, None, :]
        return [(r.ids, r.logprob, r.done) for r in rows]

    def _accept(self, row: Row, tokens: List[int], scores: List[float], logprobs: torch.Tensor, offset: int,
                stats: List[DocStats]) -> Tuple[bool, int]:
        """Take the row's greedy tokens at positions offset, offset+1, ... while they agree with what it
        fed (its last token, then its proposal). Returns (still going, proposed tokens accepted)."""
        accepted = 0
        eos = self.runner.eos_ids
        for i in range(len(row.proposal) + 1):
            if row.constraint is None:
                tok, lp = tokens[offset + i], scores[offset + i]
            else:
                tok, lp = row.constraint.pick(logprobs[offset + i], eos, self.runner.pad_id)
            stats[row.doc].generated_tokens += 1
            if tok in eos:
                row.done = True
                return False, accepted
            row.ids.append(tok)
            if row.constraint is not None:
                row.constraint.advance(tok)
            row.logprob += lp
            if len(row.ids) >= self.max_new_tokens:
                return False, accepted
            if i < len(row.proposal) and row.proposal[i] == tok:
                accepted += 1  # the cache already holds this token: its logits are valid
                continue
            break
        return True, accepted
