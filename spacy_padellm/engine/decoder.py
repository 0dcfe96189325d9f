"""Batched count-then-mention decoding with the document prefix encoded once.

    docs ─prefill─▶ doc rows ─select×labels + label suffix─▶ label rows ─greedy digits─▶ counts
    label rows (prompt only) ─select×mentions + "{count}\\n<mention k>"─▶ mention rows ─greedy─▶ strings

Every stage is one batched forward pass over all rows of all docs; finished rows leave the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..prompts import Template, common_prefix_len, encode, special_prefix
from .kv import KVState, extend

MAX_COUNT_DIGITS = 3  # a count never exceeds the tokens of a sentence; 3 digits bound a babbling model
MAX_ROWS_PER_PASS = 512  # mention rows decoded together; bounds memory when a model babbles high counts


@dataclass(frozen=True)
class MentionPrediction:
    label: str
    k: int  # 1-based position among the label's mentions
    text: str
    logprob: float  # sum over the mention's tokens, EOS and padding excluded
    n_tokens: int
    finished: bool  # ended on EOS (False: cut at max_new_tokens)


@dataclass
class DocStats:
    forward_passes: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


@dataclass(frozen=True)
class DocPrediction:
    counts: Dict[str, int]
    raw_counts: Dict[str, str]  # what the model wrote for each count, for debugging babble
    mentions: Tuple[MentionPrediction, ...]
    stats: Dict[str, int] = field(default_factory=dict)


class Decoder:
    """Greedy PaDeLLM decoding for one loaded model/tokenizer/template."""

    def __init__(self, model: Any, tokenizer: Any, template: Template, max_new_tokens: int = 32,
                 speculate: int = 0) -> None:
        self.model = model
        self.speculate = speculate  # copy-speculation: source tokens proposed per pass (0 = plain greedy)
        self._space_variant: Dict[int, Optional[int]] = {}
        self.tokenizer = tokenizer
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.bos = special_prefix(tokenizer)
        self.eos_ids: Set[int] = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        self.digit_ids, self.count_allowed = self._count_vocabulary()

    def _count_vocabulary(self) -> Tuple[Dict[int, str], torch.Tensor]:
        """Digit tokens, and the tokens a count may consist of: digits, EOS (after "0") and the token that
        follows the digits in a training target (the newline before the mention marker)."""
        vocab = len(self.tokenizer)
        size = max(vocab, self.model.get_output_embeddings().weight.shape[0])
        pieces = self.tokenizer.batch_decode([[i] for i in range(vocab)])
        digits = {i: p for i, p in enumerate(pieces) if p and p.isascii() and p.isdigit()}
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[list(digits)] = True
        target = encode(self.tokenizer, self.template.target(1, 1, "x"))
        allowed[next(t for t in target if t not in digits)] = True
        allowed[list(self.eos_ids)] = True
        return digits, allowed.to(self.model.device)

    def encode(self, text: str) -> List[int]:
        return encode(self.tokenizer, text, self.bos)

    # ---- stages -----------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int]
                ) -> List[DocPrediction]:
        """Entities of every text under every label; `max_counts[i]` caps the mentions per label."""
        stats = [DocStats() for _ in texts]
        if not texts:
            return []
        prompts = [[self.encode(self.template.prompt(t, lab)) for lab in labels] for t in texts]
        counts, raw, label_state, label_rows = self.count_step(prompts, stats)
        requests = []  # (doc, label index, count, k)
        for row, (d, j) in enumerate(label_rows):
            c = min(counts[row], max_counts[d])
            requests.extend((d, j, c, k) for k in range(1, c + 1))
        mentions = self.mention_step(texts, labels, prompts, label_state, requests, stats)
        out = []
        for d in range(len(texts)):
            rows = [r for r, (dd, _) in enumerate(label_rows) if dd == d]
            out.append(DocPrediction(
                counts={labels[label_rows[r][1]]: min(counts[r], max_counts[d]) for r in rows},
                raw_counts={labels[label_rows[r][1]]: raw[r] for r in rows},
                mentions=tuple(mentions[d]),
                stats=dict(forward_passes=stats[d].forward_passes, prompt_tokens=stats[d].prompt_tokens,
                           generated_tokens=stats[d].generated_tokens)))
        return out

    def count_step(self, prompts: List[List[List[int]]], stats: List[DocStats]
                   ) -> Tuple[List[int], List[str], KVState, List[Tuple[int, int]]]:
        """Prefill each doc prefix once, branch it into one row per label, decode the counts greedily.

        Returns counts and raw count strings per label row, the label rows' state holding exactly the
        prompt tokens (the mention rows start from it), and (doc, label) per row.
        """
        n_labels = len(prompts[0])
        prefix_lens = []
        for ids in prompts:  # the doc prefix: what all of a doc's label prompts share, token for token
            n = min(len(p) for p in ids) - 1
            for p in ids[1:]:
                n = min(n, common_prefix_len(ids[0], p))
            prefix_lens.append(n)
        docs = list(range(len(prompts)))
        _, doc_state = self._forward(None, [prompts[d][0][: prefix_lens[d]] for d in docs], docs, stats,
                                     prompt=True)
        label_rows = [(d, j) for d in docs for j in range(n_labels)]
        row_docs = [d for d, _ in label_rows]
        suffixes = [prompts[d][j][prefix_lens[d]:] for d, j in label_rows]
        logits, prompt_state = self._forward(doc_state.select(row_docs), suffixes, row_docs, stats, prompt=True)

        digits: List[List[int]] = [[] for _ in label_rows]
        active = list(range(len(label_rows)))
        state = prompt_state
        while active:
            masked = logits.masked_fill(~self.count_allowed[: logits.shape[1]], float("-inf"))
            tokens = masked.argmax(dim=-1).tolist()
            keep, fed = [], []
            for pos, (row, tok) in enumerate(zip(active, tokens)):
                stats[row_docs[row]].generated_tokens += 1
                if tok in self.digit_ids:
                    digits[row].append(tok)
                    if len(digits[row]) < MAX_COUNT_DIGITS:
                        keep.append(pos)
                        fed.append(tok)
            if not keep:
                break
            active = [active[p] for p in keep]
            logits, state = self._forward(state.select(keep), [[t] for t in fed], [row_docs[r] for r in active],
                                          stats, prompt=False)
        raw = ["".join(self.digit_ids[t] for t in ds) for ds in digits]
        counts = [int(s) if s else 0 for s in raw]
        return counts, raw, prompt_state, label_rows

    def mention_step(self, texts: Sequence[str], labels: Sequence[str], prompts: List[List[List[int]]],
                     label_state: KVState, requests: List[Tuple[int, int, int, int]], stats: List[DocStats]
                     ) -> List[List[MentionPrediction]]:
        """Decode every requested (doc, label, count, k) mention greedily, in chunks of rows."""
        n_labels = len(labels)
        out: List[List[MentionPrediction]] = [[] for _ in texts]
        for start in range(0, len(requests), MAX_ROWS_PER_PASS):
            chunk = requests[start: start + MAX_ROWS_PER_PASS]
            sources, keeps, suffixes = [], [], []
            for d, j, c, k in chunk:
                full = self.encode(self.template.mention_prompt(texts[d], labels[j], c, k))
                keep = min(common_prefix_len(full, prompts[d][j]), len(full) - 1)
                sources.append(d * n_labels + j)
                keeps.append(keep)
                suffixes.append(full[keep:])
            decoded = self.greedy(label_state.select(sources, keeps), suffixes, [r[0] for r in chunk], stats,
                                  [prompts[d][j] for d, j, _, _ in chunk])
            for (d, j, c, k), (ids, logprob, done) in zip(chunk, decoded):
                text = self.tokenizer.decode(ids, skip_special_tokens=False)
                out[d].append(MentionPrediction(labels[j], k, text, logprob, len(ids), done))
        for preds in out:
            preds.sort(key=lambda m: (labels.index(m.label), m.k))
        return out

    def greedy(self, state: Optional[KVState], suffixes: List[List[int]], row_docs: List[int],
               stats: List[DocStats], sources: Optional[List[Sequence[int]]] = None
               ) -> List[Tuple[List[int], float, bool]]:
        """Greedy decoding of each row's continuation of state + suffix, until EOS or max_new_tokens;
        finished rows leave the batch. Returns (token ids, summed log-probability, ended on EOS) per row.

        With `sources` and self.speculate > 0 (copy-speculative decoding): a row whose last tokens occur in
        its source (the prompt, which holds the text a mention is copied from) also feeds the source's
        next tokens; one pass then verifies them all, and the tokens greedy decoding agrees with are kept
        (the rest are masked out of the cache). The output is greedy decoding's; only passes are saved.
        """
        n = len(suffixes)
        ids: List[List[int]] = [[] for _ in range(n)]
        logprob = [0.0] * n
        done = [False] * n
        if n == 0:
            return []
        logits, state = self._forward(state, suffixes, row_docs, stats, prompt=True)
        pending = logits[:, None, :]  # [rows, positions, vocab]: next-token logits after each fed token
        proposals: List[List[int]] = [[] for _ in range(n)]  # what each active row fed beyond its token
        active = list(range(n))
        while active:
            best = torch.log_softmax(pending, dim=-1).max(dim=-1)
            tokens, scores = best.indices.tolist(), best.values.tolist()
            keep, segments, real = [], [], []
            lengths = state.lengths().tolist()
            for pos, row in enumerate(active):
                proposal = proposals[row]
                offset = pending.shape[1] - (len(proposal) + 1)  # the row's segment is right-aligned
                accepted, alive = 0, True
                for i in range(len(proposal) + 1):
                    tok, lp = tokens[pos][offset + i], scores[pos][offset + i]
                    stats[row_docs[row]].generated_tokens += 1
                    if tok in self.eos_ids:
                        done[row], alive = True, False
                        break
                    ids[row].append(tok)
                    logprob[row] += lp
                    if len(ids[row]) >= self.max_new_tokens:
                        alive = False
                        break
                    if i < len(proposal) and proposal[i] == tok:
                        accepted += 1  # the cache already holds this token: its logits are valid
                        continue
                    break
                if alive:
                    keep.append(pos)
                    real.append(lengths[pos] - (len(proposal) - accepted))
                    proposals[row] = self._propose(ids[row], sources[row]) if sources is not None else []
                    segments.append([ids[row][-1]] + proposals[row])
            if not keep:
                break
            active = [active[p] for p in keep]
            width = max(len(seg) for seg in segments)
            pending, state = self._forward(state.select(keep, real), segments, [row_docs[r] for r in active],
                                           stats, prompt=False, n_logits=width)
            if width == 1:
                pending = pending[:, None, :]
        return [(ids[r], logprob[r], done[r]) for r in range(n)]

    def _propose(self, decoded: List[int], source: Sequence[int]) -> List[int]:
        """The source's continuation after its first occurrence of the row's last tokens (2-gram, then
        1-gram, then the last token with a leading space: a mention's first token has none, the same word
        inside the text has one)."""
        if self.speculate <= 0 or not decoded:
            return []
        patterns = [decoded[-2:]] if len(decoded) >= 2 else []
        patterns.append(decoded[-1:])
        spaced = self._spaced(decoded[-1])
        if spaced is not None:
            patterns.append([spaced])
        for pattern in patterns:
            n = len(pattern)
            for j in range(len(source) - n):
                if list(source[j:j + n]) == pattern:
                    return list(source[j + n: j + n + self.speculate])
        return []

    def _spaced(self, token: int) -> Optional[int]:
        if token not in self._space_variant:
            ids = encode(self.tokenizer, " " + self.tokenizer.decode([token]))
            self._space_variant[token] = ids[0] if len(ids) == 1 else None
        return self._space_variant[token]

    def _forward(self, state: Optional[KVState], segments: List[List[int]], row_docs: List[int],
                 stats: List[DocStats], prompt: bool, n_logits: int = 1) -> Tuple[torch.Tensor, KVState]:
        for d in set(row_docs):
            stats[d].forward_passes += 1
        if prompt:
            for d, seg in zip(row_docs, segments):
                stats[d].prompt_tokens += len(seg)
        return extend(self.model, state, segments, self.pad_id, n_logits)
