"""Step 1 of PaDeLLM: how many mentions each label has, read as digits of the base vocabulary.

A count is greedy over the tokens a count may consist of (digits, the newline that ends a training target's
count, EOS after "0"); it ends at a non-digit, after a leading "0" (counts are canonical numbers), or at
MAX_COUNT_DIGITS digits, which bounds a babbling model. `count_bias` takes a constant off the ways of
saying 0 at the first count token only: a recall knob tuned on dev.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from ..prompts import Template, encode
from ..types import DocStats
from .kv import KVState
from .runner import Runner

MAX_COUNT_DIGITS = 3  # a count never exceeds the tokens of a sentence; 3 digits bound a babbling model


class CountVocabulary:
    """The digit tokens of one tokenizer and the masks the count step needs."""

    def __init__(self, runner: Runner, template: Template) -> None:
        tokenizer, model = runner.tokenizer, runner.model
        vocab = len(tokenizer)
        size = max(vocab, model.get_output_embeddings().weight.shape[0])
        pieces = tokenizer.batch_decode([[i] for i in range(vocab)])
        self.digit_ids: Dict[int, str] = {i: p for i, p in enumerate(pieces) if p and p.isascii() and p.isdigit()}
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[list(self.digit_ids)] = True
        target = encode(tokenizer, template.target(1, 1, "x"))  # the token after the digits: a newline
        allowed[next(t for t in target if t not in self.digit_ids)] = True
        allowed[list(runner.eos_ids)] = True
        self.allowed = allowed.to(model.device)  # [vocab] the tokens a count may consist of
        self.zero_id = next((i for i, p in self.digit_ids.items() if p == "0"), None)
        # "1".."9" as single tokens (the lowest id where a tokenizer has several)
        self.digit_token = {p: i for i, p in sorted(self.digit_ids.items(), reverse=True) if len(p) == 1}
        self.zero_count = self.allowed.clone()  # tokens that end a count at 0: "0", EOS, newline
        self.zero_count[list(self.digit_ids)] = False
        if self.zero_id is not None:
            self.zero_count[self.zero_id] = True

    def next_tokens(self, logits: torch.Tensor) -> List[int]:
        """Greedy count token of each row of logits [rows, vocab]."""
        masked = logits.masked_fill(~self.allowed[: logits.shape[1]], float("-inf"))
        return masked.argmax(dim=-1).tolist()

    def bias_first(self, logits: torch.Tensor, bias: float) -> torch.Tensor:
        """The first count token's logits with `bias` taken off the ways of saying 0."""
        if bias == 0.0:
            return logits
        return logits - bias * self.zero_count[: logits.shape[1]].to(logits.dtype)

    def goes_on(self, digits: Sequence[int]) -> bool:
        """Whether a count of these digits may take another one."""
        return len(digits) < MAX_COUNT_DIGITS and digits[0] != self.zero_id

    def parse(self, digits: Sequence[Sequence[int]]) -> Tuple[List[int], List[str]]:
        """(counts, raw strings) of each row's digit tokens; no digits is a count of 0, raw ""."""
        raw = ["".join(self.digit_ids[t] for t in ds) for ds in digits]
        return [int(s) if s else 0 for s in raw], raw

    def value(self, token: int) -> int:
        return int(self.digit_ids[token])


def count_loop(runner: Runner, vocab: CountVocabulary, logits: torch.Tensor, state: KVState, active: List[int],
               digits: List[List[int]], row_docs: List[int], stats: List[DocStats]) -> None:
    """Greedy count digits of rows `active` (whose next-token logits [rows, vocab] are `logits` and whose
    cache is `state`), appended to `digits[row]`; one pass per further digit, finished rows leave."""
    while active:
        keep, fed = [], []
        for pos, (row, tok) in enumerate(zip(active, vocab.next_tokens(logits))):
            stats[row_docs[row]].generated_tokens += 1
            if tok in vocab.digit_ids:
                digits[row].append(tok)
                if vocab.goes_on(digits[row]):
                    keep.append(pos)
                    fed.append(tok)
        if not keep:
            return
        active = [active[p] for p in keep]
        logits, state = runner.forward(state.select(keep), [[t] for t in fed], [row_docs[r] for r in active],
                                       stats, stage="count")


def continue_count(runner: Runner, vocab: CountVocabulary, state: KVState, rows: List[int],
                   digits: List[List[int]], row_docs: List[int], stats: List[DocStats]) -> None:
    """Rows whose cache ends in their first count digit and whose second digit is decided: feed it and go
    on digit by digit (counts of 10+; MAX_COUNT_DIGITS is at least 3, so a third digit may follow)."""
    logits, state = runner.forward(state, [[digits[r][-1]] for r in rows], [row_docs[r] for r in rows], stats,
                                   stage="count")
    count_loop(runner, vocab, logits, state, rows, digits, row_docs, stats)
