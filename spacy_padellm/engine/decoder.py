"""Batched count-then-mention decoding with the document prefix encoded once.

Tree path (models whose attention takes a 4D mask, see kv.TREE_MODEL_TYPES), the fewest sequential passes:

    pass 1  one row per doc: the trie of all its label prompts (text once, labels as branches)
            -> each label's first count digit
    pass 2  one row per label: the trie of [digit] and every "{count}\\n<mention k>" for k = 1..digit
            -> verifies the count ended after one digit, and gives each mention's first token
    pass 3+ one row per mention, greedy (optionally copy-speculative) until EOS

A count that goes on past one digit (rare: 10+ mentions in a sentence) falls back to the row path for its
label only. Row path (every model): prefill doc prefixes, branch them into label rows, decode counts
digit by digit, then prefill each mention prompt from its label row and decode greedily.

Both paths give the same tokens as plain greedy decoding of each sequence on its own; a count is a
canonical number, so a leading "0" ends it. Finished rows leave the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..prompts import Template, common_prefix_len, encode, special_prefix
from .kv import KVState, Trie, extend, extend_tree, supports_tree
from .substring import SubstringConstraint, TokenBytes

MAX_COUNT_DIGITS = 3  # a count never exceeds the tokens of a sentence; 3 digits bound a babbling model
MAX_ROWS_PER_PASS = 512  # mention rows decoded together, at most (the KV budget usually binds first)
KV_BUDGET_MB = 256  # the key/value cache one batch of rows may hold, materialised (see _row_batches)
# count guesses and copy-speculation feed extra tokens to save passes: a win while a pass is bound by
# reading the weights (few rows), a loss once it is bound by compute (at 32 docs per call the engine with
# both ran at 0.85x the docs/s of the one without, BENCHMARKS.md); they apply to calls of at most this
# many docs
SMALL_BATCH = 4


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


def output_sequences(raw_counts: Dict[str, str], mentions: Sequence[MentionPrediction]) -> Tuple[int, int]:
    """The paper's output sequences of one text, and their tokens in all: one sequence per (label,
    mention), or one per label without mentions, each `{count}\n<mention k>{mention}<eos>` less the
    template's `\n<mention k>` (count digits and the token ending them, mention tokens, EOS). The paper
    compares the mean length of these with autoregressive NER's single sequence (~13% on its data)."""
    lengths: Dict[str, List[int]] = {}
    for m in mentions:
        lengths.setdefault(m.label, []).append(m.n_tokens + int(m.finished))
    n = tokens = 0
    for label, raw in raw_counts.items():
        per_mention = lengths.get(label) or [0]
        n += len(per_mention)
        tokens += sum(len(raw) + 1 + t for t in per_mention)
    return n, tokens


@dataclass(frozen=True)
class DocPrediction:
    counts: Dict[str, int]
    raw_counts: Dict[str, str]  # what the model wrote for each count, for debugging babble
    mentions: Tuple[MentionPrediction, ...]
    stats: Dict[str, int] = field(default_factory=dict)


class Decoder:
    """Greedy PaDeLLM decoding for one loaded model/tokenizer/template."""

    def __init__(self, model: Any, tokenizer: Any, template: Template, max_new_tokens: int = 32,
                 speculate: int = 0, tree: bool = True, count_guesses: int = 1, count_bias: float = 0.0,
                 small_batch: int = SMALL_BATCH, mentions_from_text: bool = False,
                 kv_budget_mb: int = KV_BUDGET_MB) -> None:
        self.model = model
        # mention rows are materialised (each a copy of its prompt's cache) in batches of at most this many
        # bytes of cache, so memory does not grow with the number of mentions in a call
        self.kv_budget = int(kv_budget_mb) * 2 ** 20
        self.kv_per_token = kv_bytes_per_token(model)
        self.speculate = speculate  # copy-speculation: source tokens proposed per pass (0 = plain greedy)
        self.tree = tree and supports_tree(model)  # tree-shaped passes where the model family allows
        self.count_guesses = count_guesses  # counts 1..N whose mention prompts ride along in pass 1
        self._guesses_now, self._speculate_now = count_guesses, speculate  # this call's (see SMALL_BATCH)
        self.small_batch = small_batch
        # subtracted from the logits that make a count 0 (first count token only): a recall knob tuned on
        # dev for models that learned "0" too well; 0.0 = plain greedy
        self.count_bias = float(count_bias)
        # opt-in: each mention token chosen among those that keep it a substring of the text (substring.py)
        self.mentions_from_text = mentions_from_text
        self._token_bytes: Optional[TokenBytes] = None
        self.stage_seconds: Dict[str, float] = {}  # wall time per stage, summed over calls (benchmarks)
        self.stage_passes: Dict[str, int] = {}
        self._space_variant: Dict[int, Optional[int]] = {}
        self.tokenizer = tokenizer
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.bos = special_prefix(tokenizer)
        self.eos_ids: Set[int] = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        self.digit_ids, self.count_allowed = self._count_vocabulary()
        self.zero_id = next((i for i, p in self.digit_ids.items() if p == "0"), None)
        self.digit_token = {p: i for i, p in sorted(self.digit_ids.items(), reverse=True) if len(p) == 1}
        self.zero_count = self.count_allowed.clone()  # tokens that end a count at 0: "0", EOS, newline
        self.zero_count[list(self.digit_ids)] = False
        if self.zero_id is not None:
            self.zero_count[self.zero_id] = True

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

    def text_of(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The string of generated ids, exactly: no clean-up of spaces (which turns "Lord 's" into
        "Lord's" and "Salomon Bros ." into "Salomon Bros.", strings the text does not hold)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    # ---- stages -----------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int]
                ) -> List[DocPrediction]:
        """Entities of every text under every label; `max_counts[i]` caps the mentions per label.

        Texts are decoded in groups whose label prompts' cache fits the KV budget (every label row holds
        a copy of its text's prompt), so memory does not grow with the number or length of texts."""
        if not texts:
            return []
        prompts = [[self.encode(self.template.prompt(t, lab)) for lab in labels] for t in texts]
        out: List[DocPrediction] = []
        for rows in self._row_batches([sum(len(p) for p in ps) for ps in prompts]):
            out += self._predict([texts[r] for r in rows], labels, [max_counts[r] for r in rows],
                                 [prompts[r] for r in rows])
        return out

    def _predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int],
                 prompts: List[List[List[int]]]) -> List[DocPrediction]:
        stats = [DocStats() for _ in texts]
        small = len(texts) <= self.small_batch
        self._guesses_now = self.count_guesses if small else 0
        self._speculate_now = self.speculate if small else 0
        if self.tree:
            counts, raw, mentions = self.tree_step(texts, labels, prompts, max_counts, stats)
            label_rows = [(d, j) for d in range(len(texts)) for j in range(len(labels))]
        else:
            counts, raw, label_state, label_rows = self.count_step(prompts, stats)
            requests = []  # (doc, label index, count, k)
            for row, (d, j) in enumerate(label_rows):
                c = min(counts[row], max_counts[d])
                requests.extend((d, j, c, k) for k in range(1, c + 1))
            mentions = self.mention_step(texts, labels, prompts, label_state, requests, stats)
        out = []
        for d in range(len(texts)):
            rows = [r for r, (dd, _) in enumerate(label_rows) if dd == d]
            raw_counts = {labels[label_rows[r][1]]: raw[r] for r in rows}
            sequences, sequence_tokens = output_sequences(raw_counts, mentions[d])
            out.append(DocPrediction(
                counts={labels[label_rows[r][1]]: min(counts[r], max_counts[d]) for r in rows},
                raw_counts=raw_counts, mentions=tuple(mentions[d]),
                stats=dict(forward_passes=stats[d].forward_passes, prompt_tokens=stats[d].prompt_tokens,
                           generated_tokens=stats[d].generated_tokens, sequences=sequences,
                           sequence_tokens=sequence_tokens)))
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
                                     prompt=True, stage="prompt")
        label_rows = [(d, j) for d in docs for j in range(n_labels)]
        row_docs = [d for d, _ in label_rows]
        suffixes = [prompts[d][j][prefix_lens[d]:] for d, j in label_rows]
        logits, prompt_state = self._forward(doc_state.select(row_docs), suffixes, row_docs, stats, prompt=True,
                                             stage="prompt")
        counts, raw = self._count_loop(self._bias_first(logits), prompt_state, list(range(len(label_rows))),
                                       [[] for _ in label_rows], row_docs, stats)
        return counts, raw, prompt_state, label_rows

    def _count_loop(self, logits: torch.Tensor, state: KVState, active: List[int], digits: List[List[int]],
                    row_docs: List[int], stats: List[DocStats]) -> Tuple[List[int], List[str]]:
        """Greedy count digits of rows `active` (whose next-token logits are `logits`), appended to
        `digits`; a count ends at a non-digit, at MAX_COUNT_DIGITS, or after a leading "0"."""
        while active:
            tokens = self._count_token(logits)
            keep, fed = [], []
            for pos, (row, tok) in enumerate(zip(active, tokens)):
                stats[row_docs[row]].generated_tokens += 1
                if tok in self.digit_ids:
                    digits[row].append(tok)
                    if len(digits[row]) < MAX_COUNT_DIGITS and digits[row][0] != self.zero_id:
                        keep.append(pos)
                        fed.append(tok)
            if not keep:
                break
            active = [active[p] for p in keep]
            logits, state = self._forward(state.select(keep), [[t] for t in fed], [row_docs[r] for r in active],
                                          stats, prompt=False, stage="count")
        raw = ["".join(self.digit_ids[t] for t in ds) for ds in digits]
        return [int(s) if s else 0 for s in raw], raw

    def tree_step(self, texts: Sequence[str], labels: Sequence[str], prompts: List[List[List[int]]],
                  max_counts: Sequence[int], stats: List[DocStats]
                  ) -> Tuple[List[int], List[str], List[List[MentionPrediction]]]:
        """Counts (and raw count strings) per (doc, label) row, doc-major, and mentions per doc, through
        the tree passes of the module docstring."""
        n_labels = len(labels)
        docs = list(range(len(texts)))
        label_rows = [(d, j) for d in docs for j in range(n_labels)]
        row_docs = [d for d, _ in label_rows]
        # pass 1: per doc, the trie of every label prompt, and of the mention prompts of guessed counts
        doc_tries, layouts = [], []
        for d in docs:
            seqs: List[List[int]] = []
            layout: Dict[Tuple[int, ...], int] = {}
            for j in range(n_labels):
                layout[(j,)] = len(seqs)
                seqs.append(prompts[d][j])
                for c in range(1, min(self._guesses_now, max_counts[d], 9) + 1):
                    layout[(j, c)] = len(seqs)
                    seqs.append(prompts[d][j] + [self.digit_token[str(c)]])
                    for k in range(1, c + 1):
                        layout[(j, c, k)] = len(seqs)
                        seqs.append(self.encode(self.template.mention_prompt(texts[d], labels[j], c, k)))
            doc_tries.append(Trie.of(seqs))
            layouts.append(layout)
        logits, doc_tree = self._tree_forward(None, doc_tries, [t.ends for t in doc_tries], docs, stats, "prompt")
        first = self._count_token(self._bias_first(torch.stack([logits[d][layouts[d][(j,)]] for d, j in label_rows])))
        digits: List[List[int]] = [[] for _ in label_rows]
        ready = _Ready()
        open_rows, verified = [], []
        for r, tok in enumerate(first):
            d, j = label_rows[r]
            stats[d].generated_tokens += 1
            if tok not in self.digit_ids:
                continue
            digits[r].append(tok)
            if tok == self.zero_id or MAX_COUNT_DIGITS == 1:
                continue
            guessed = (j, int(self.digit_ids[tok])) in layouts[d] and self.digit_token.get(self.digit_ids[tok]) == tok
            (verified if guessed else open_rows).append(r)
        # rows whose count was guessed: their count's end and mentions' first tokens are already known
        if verified:
            guessed_logits = [logits[row_docs[r]][layouts[row_docs[r]][self._guess(r, label_rows, digits)]]
                              for r in verified]
            ends = self._count_token(torch.stack(guessed_logits))
            going_on, going_paths = [], []
            for r, tok in zip(verified, ends):
                d, j = label_rows[r]
                stats[d].generated_tokens += 1
                key = self._guess(r, label_rows, digits)
                trie, layout = doc_tries[d], layouts[d]
                if tok in self.digit_ids:
                    digits[r].append(tok)
                    going_on.append(r)
                    going_paths.append(trie.path(trie.ends[layout[key]]))
                    continue
                for k in range(1, key[1] + 1):
                    ready.add(d, j, k, logits[d][layout[key + (k,)]], prompts[d][j],
                              (doc_tree, d, 0, trie.path(trie.ends[layout[key + (k,)]])))
            if going_on:
                state = doc_tree.branch([row_docs[r] for r in going_on], [0] * len(going_on), going_paths)
                self._continue_count(state, going_on, digits, row_docs, stats)
        fallback = [r for r in verified if len(digits[r]) > 1]
        label_state = None
        if open_rows or fallback:  # each label row's cache is cut out of the doc tree when a pass needs it
            paths = [doc_tries[d].path(doc_tries[d].ends[layouts[d][(j,)]]) for d, j in label_rows]
            label_state = _LabelRows(doc_tree, row_docs, paths)
        for group in self._groups(open_rows, digits, row_docs, max_counts):
            fallback += self._mention_tree(group, texts, labels, prompts, label_rows, label_state, digits,
                                           max_counts, stats, ready)
        mentions: List[List[MentionPrediction]] = [[] for _ in texts]
        ready.decode(self, texts, labels, stats, mentions)
        raw = ["".join(self.digit_ids[t] for t in ds) for ds in digits]
        counts = [int(x) if x else 0 for x in raw]
        requests = [(label_rows[r][0], label_rows[r][1], c, k) for r in fallback
                    for c in [min(counts[r], max_counts[label_rows[r][0]])] for k in range(1, c + 1)]
        if requests:
            for d, preds in enumerate(self.mention_step(texts, labels, prompts, label_state, requests, stats)):
                mentions[d].extend(preds)
        for preds in mentions:
            preds.sort(key=lambda m: (labels.index(m.label), m.k))
        return counts, raw, mentions

    def _guess(self, r: int, label_rows: List[Tuple[int, int]], digits: List[List[int]]) -> Tuple[int, int]:
        return (label_rows[r][1], int(self.digit_ids[digits[r][0]]))

    def _bias_first(self, logits: torch.Tensor) -> torch.Tensor:
        """The first count token's logits with count_bias taken off the ways of saying 0."""
        if self.count_bias == 0.0:
            return logits
        return logits - self.count_bias * self.zero_count[: logits.shape[1]].to(logits.dtype)

    def _count_token(self, logits: torch.Tensor) -> List[int]:
        masked = logits.masked_fill(~self.count_allowed[: logits.shape[1]], float("-inf"))
        return masked.argmax(dim=-1).tolist()

    def _continue_count(self, state: KVState, rows: List[int], digits: List[List[int]], row_docs: List[int],
                        stats: List[DocStats]) -> None:
        """Rows whose state ends in their first count digit and whose second digit is decided: feed it and
        go on digit by digit (counts of 10+; mentions then take the row path)."""
        if MAX_COUNT_DIGITS <= 2:
            return
        logits, state = self._forward(state, [[digits[r][-1]] for r in rows], [row_docs[r] for r in rows], stats,
                                      prompt=False, stage="count")
        self._count_loop(logits, state, rows, digits, row_docs, stats)

    def _groups(self, rows: List[int], digits: List[List[int]], row_docs: List[int], max_counts: Sequence[int]
                ) -> List[List[int]]:
        """Rows in groups of at most MAX_ROWS_PER_PASS speculated mentions (memory bound for babble)."""
        groups: List[List[int]] = []
        size = 0
        for r in rows:
            n = min(int(self.digit_ids[digits[r][0]]), max_counts[row_docs[r]])
            if not groups or size + n > MAX_ROWS_PER_PASS:
                groups.append([])
                size = 0
            groups[-1].append(r)
            size += n
        return groups

    def _mention_tree(self, group: List[int], texts: Sequence[str], labels: Sequence[str],
                      prompts: List[List[List[int]]], label_rows: List[Tuple[int, int]], label_state: KVState,
                      digits: List[List[int]], max_counts: Sequence[int], stats: List[DocStats],
                      ready: "_Ready") -> List[int]:
        """Pass 2 for label rows `group` (one-digit counts so far): one trie per row holding the count digit
        (to verify the count ends there) and every mention prompt. Confirmed rows' mentions join `ready`;
        rows whose count goes on are continued digit by digit and returned (their mentions take the row
        path)."""
        tries, bases, counts = [], [], []
        for r in group:
            d, j = label_rows[r]
            c = min(int(self.digit_ids[digits[r][0]]), max_counts[d])
            seqs = [prompts[d][j] + [digits[r][0]]]
            seqs += [self.encode(self.template.mention_prompt(texts[d], labels[j], c, k)) for k in range(1, c + 1)]
            base = min(min(common_prefix_len(q, prompts[d][j]) for q in seqs), min(len(q) for q in seqs) - 1)
            tries.append(Trie.of([q[base:] for q in seqs]))
            bases.append(base)
            counts.append(c)
        group_docs = [label_rows[r][0] for r in group]
        logits, tree = self._tree_forward(label_state.select(group, bases), tries, [t.ends for t in tries],
                                          group_docs, stats, "mention_prompt")
        ends = self._count_token(torch.stack([lg[0] for lg in logits]))
        going_on = []
        for i, (r, tok) in enumerate(zip(group, ends)):
            stats[group_docs[i]].generated_tokens += 1
            if tok in self.digit_ids:
                digits[r].append(tok)
                going_on.append(i)
                continue
            d, j = label_rows[r]
            for k in range(1, counts[i] + 1):
                ready.add(d, j, k, logits[i][k], prompts[d][j], (tree, i, bases[i], tries[i].path(tries[i].ends[k])))
        if not going_on:
            return []
        rows = [group[i] for i in going_on]
        state = tree.branch(going_on, [bases[i] for i in going_on], [tries[i].path(tries[i].ends[0]) for i in going_on])
        self._continue_count(state, rows, digits, [d for d, _ in label_rows], stats)
        return rows

    def mention_step(self, texts: Sequence[str], labels: Sequence[str], prompts: List[List[List[int]]],
                     label_state: KVState, requests: List[Tuple[int, int, int, int]], stats: List[DocStats]
                     ) -> List[List[MentionPrediction]]:
        """Decode every requested (doc, label, count, k) mention greedily, in chunks of rows."""
        n_labels = len(labels)
        out: List[List[MentionPrediction]] = [[] for _ in texts]
        fulls = [self.encode(self.template.mention_prompt(texts[d], labels[j], c, k)) for d, j, c, k in requests]
        for rows in self._row_batches([len(f) + self.max_new_tokens for f in fulls]):
            chunk = [requests[r] for r in rows]
            sources, keeps, suffixes = [], [], []
            for r, (d, j, c, k) in zip(rows, chunk):
                keep = min(common_prefix_len(fulls[r], prompts[d][j]), len(fulls[r]) - 1)
                sources.append(d * n_labels + j)
                keeps.append(keep)
                suffixes.append(fulls[r][keep:])
            decoded = self.greedy(label_state.select(sources, keeps), suffixes, [r[0] for r in chunk], stats,
                                  [prompts[d][j] for d, j, _, _ in chunk], [texts[d] for d, _, _, _ in chunk])
            for (d, j, c, k), (ids, logprob, done) in zip(chunk, decoded):
                text = self.text_of(ids)
                out[d].append(MentionPrediction(labels[j], k, text, logprob, len(ids), done))
        for preds in out:
            preds.sort(key=lambda m: (labels.index(m.label), m.k))
        return out

    def greedy(self, state: Optional[KVState], suffixes: List[List[int]], row_docs: List[int],
               stats: List[DocStats], sources: Optional[List[Sequence[int]]] = None,
               texts: Optional[List[str]] = None) -> List[Tuple[List[int], float, bool]]:
        """Greedy decoding of each row's continuation of state + suffix, until EOS or max_new_tokens;
        finished rows leave the batch. Returns (token ids, summed log-probability, ended on EOS) per row.

        With `sources` and speculation on (copy-speculative decoding, see SMALL_BATCH): a row whose last
        tokens occur in its source (the prompt, which holds the text a mention is copied from) also feeds
        the source's next tokens; one pass then verifies them all, and the tokens greedy decoding agrees with are kept
        (the rest are masked out of the cache). The output is greedy decoding's; only passes are saved.
        """
        if not suffixes:
            return []
        logits, state = self._forward(state, suffixes, row_docs, stats, prompt=True, stage="mention_prompt")
        return self.continue_greedy(state, logits, row_docs, stats, sources, texts)

    def continue_greedy(self, state: KVState, logits: torch.Tensor, row_docs: List[int], stats: List[DocStats],
                        sources: Optional[List[Sequence[int]]] = None, texts: Optional[List[str]] = None
                        ) -> List[Tuple[List[int], float, bool]]:
        """`greedy` from rows whose prompts are in `state` and whose next-token logits are `logits`; with
        `mentions_from_text`, each row's tokens are constrained to substrings of its entry in `texts`."""
        n = logits.shape[0]
        constraints = self._constraints(texts, n)
        ids: List[List[int]] = [[] for _ in range(n)]
        logprob = [0.0] * n
        done = [False] * n
        pending = logits[:, None, :]  # [rows, positions, vocab]: next-token logits after each fed token
        proposals: List[List[int]] = [[] for _ in range(n)]  # what each active row fed beyond its token
        active = list(range(n))
        while active:
            logprobs = torch.log_softmax(pending, dim=-1)
            best = logprobs.max(dim=-1)
            tokens, scores = best.indices.tolist(), best.values.tolist()
            keep, segments, real = [], [], []
            lengths = state.lengths().tolist()
            for pos, row in enumerate(active):
                proposal = proposals[row]
                offset = pending.shape[1] - (len(proposal) + 1)  # the row's segment is right-aligned
                accepted, alive = 0, True
                for i in range(len(proposal) + 1):
                    if constraints[row] is None:
                        tok, lp = tokens[pos][offset + i], scores[pos][offset + i]
                    else:
                        tok, lp = self._constrained(logprobs[pos, offset + i], constraints[row])
                    stats[row_docs[row]].generated_tokens += 1
                    if tok in self.eos_ids:
                        done[row], alive = True, False
                        break
                    ids[row].append(tok)
                    if constraints[row] is not None:
                        constraints[row].advance(tok)
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
                                           stats, prompt=False, n_logits=width, stage="mention")
            if width == 1:
                pending = pending[:, None, :]
        return [(ids[r], logprob[r], done[r]) for r in range(n)]

    def _row_batches(self, tokens: Sequence[int]) -> List[List[int]]:
        """Consecutive row indices in batches whose cache fits the KV budget: rows sit side by side padded
        to the widest, so a batch costs rows x widest x this model's bytes per token (`tokens[r]`: row r's
        cached tokens). At most MAX_ROWS_PER_PASS rows; a row too big for the budget alone is a batch."""
        batches: List[List[int]] = []
        widest = 0
        for r, n in enumerate(tokens):
            grown = max(widest, n)
            if (not batches or (len(batches[-1]) + 1) * grown * self.kv_per_token > self.kv_budget
                    or len(batches[-1]) >= MAX_ROWS_PER_PASS):
                batches.append([])
                grown = n
            batches[-1].append(r)
            widest = grown
        return batches

    def _constraints(self, texts: Optional[List[str]], n: int) -> List[Optional[SubstringConstraint]]:
        if not self.mentions_from_text or texts is None:
            return [None] * n
        if self._token_bytes is None:
            self._token_bytes = TokenBytes(self.tokenizer)  # ~1 s once per decoder
        return [SubstringConstraint(self._token_bytes, t) for t in texts]

    def _constrained(self, logprobs: torch.Tensor, constraint: SubstringConstraint) -> Tuple[int, float]:
        """The most probable allowed token (ties to the lowest id, as argmax) and its log-probability;
        EOS when nothing is allowed, so a row always ends."""
        tokens, eos = constraint.allowed()
        if eos:
            tokens = sorted(set(tokens) | self.eos_ids)
        tokens = [t for t in tokens if t < logprobs.shape[0]]
        if not tokens:
            return next(iter(self.eos_ids), self.pad_id), 0.0
        values = logprobs[torch.as_tensor(tokens, device=logprobs.device)]
        best = int(values.argmax())
        return tokens[best], float(values[best])

    def _propose(self, decoded: List[int], source: Sequence[int]) -> List[int]:
        """The source's continuation after its first occurrence of the row's last tokens (2-gram, then
        1-gram, then the last token with a leading space: a mention's first token has none, the same word
        inside the text has one)."""
        if self._speculate_now <= 0 or not decoded:
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
                    return list(source[j + n: j + n + self._speculate_now])
        return []

    def _spaced(self, token: int) -> Optional[int]:
        if token not in self._space_variant:
            ids = encode(self.tokenizer, " " + self.tokenizer.decode([token]))
            self._space_variant[token] = ids[0] if len(ids) == 1 else None
        return self._space_variant[token]

    def _forward(self, state: Optional[KVState], segments: List[List[int]], row_docs: List[int],
                 stats: List[DocStats], prompt: bool, n_logits: int = 1, stage: str = "mention"
                 ) -> Tuple[torch.Tensor, KVState]:
        self._count_pass(row_docs, stats, stage)
        if prompt:
            for d, seg in zip(row_docs, segments):
                stats[d].prompt_tokens += len(seg)
        start = time.perf_counter()
        try:
            return extend(self.model, state, segments, self.pad_id, n_logits)
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start

    def _count_pass(self, row_docs: Sequence[int], stats: List[DocStats], stage: str) -> None:
        for d in set(row_docs):
            stats[d].forward_passes += 1
        self.stage_passes[stage] = self.stage_passes.get(stage, 0) + 1

    def _tree_forward(self, state: Optional[KVState], tries: List[Trie], want: List[List[int]],
                      row_docs: List[int], stats: List[DocStats], stage: str) -> Tuple[List[torch.Tensor], Any]:
        self._count_pass(row_docs, stats, stage)
        for d, trie in zip(row_docs, tries):
            stats[d].prompt_tokens += len(trie.tokens)
        start = time.perf_counter()
        try:
            return extend_tree(self.model, state, tries, self.pad_id, want)
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start


class _LabelRows:
    """The label rows of a tree pass (doc, label prompt) as a KVState-like `select`: each selected row is
    cut out of the doc tree when selected, so the cache of every label row is never held at once (it is
    labels x docs copies of the doc prefixes: 240 MB for 32 CoNLL sentences in bf16)."""

    def __init__(self, tree: Any, row_docs: List[int], paths: List[List[int]]) -> None:
        self.tree, self.row_docs, self.paths = tree, row_docs, paths

    def select(self, rows: Sequence[int], keep: Optional[Sequence[int]] = None) -> KVState:
        """Rows `rows`, each cut back to its first `keep[i]` tokens (the doc tree caches nothing before
        its tries, so a row's tokens are its path's nodes)."""
        keeps = list(keep) if keep is not None else [len(self.paths[r]) for r in rows]
        return self.tree.branch([self.row_docs[r] for r in rows], [0] * len(rows),
                                [self.paths[r][:k] for r, k in zip(rows, keeps)])


class _Ready:
    """Mention rows whose prompt is cached and whose first-token logits are known, gathered from the tree
    passes and decoded together (so a doc's mentions from pass 1 and pass 2 share their greedy passes).

    A row is kept as a recipe (tree state, row, cached tokens kept, trie path), not as a copy of its cache:
    the copies are made per batch that fits the decoder's KV budget, so peak memory is one batch of rows,
    whatever the number of mentions."""

    def __init__(self) -> None:
        self.branches: List[Tuple[Any, int, int, List[int]]] = []  # (TreeState, row, keep, path)
        self.logits: List[torch.Tensor] = []
        self.keys: List[Tuple[int, int, int]] = []  # (doc, label index, k)
        self.sources: List[Sequence[int]] = []

    def add(self, doc: int, label: int, k: int, logits: torch.Tensor, source: Sequence[int],
            branch: Tuple[Any, int, int, List[int]]) -> None:
        self.keys.append((doc, label, k))
        self.logits.append(logits)
        self.sources.append(source)
        self.branches.append(branch)

    def state(self, rows: Sequence[int]) -> KVState:
        """The cache of `rows`: one branch() per run of rows from the same tree state, concatenated."""
        parts, run = [], [rows[0]]
        for r in list(rows[1:]) + [None]:
            if r is not None and self.branches[r][0] is self.branches[run[0]][0]:
                run.append(r)
                continue
            tree = self.branches[run[0]][0]
            parts.append(tree.branch([self.branches[x][1] for x in run], [self.branches[x][2] for x in run],
                                     [self.branches[x][3] for x in run]))
            if r is not None:
                run = [r]
        return KVState.cat(parts)

    def decode(self, decoder: Decoder, texts: Sequence[str], labels: Sequence[str], stats: List[DocStats],
               out: List[List[MentionPrediction]]) -> None:
        if not self.keys:
            return
        logits = torch.stack(self.logits)
        lengths = [b[2] + len(b[3]) + decoder.max_new_tokens for b in self.branches]
        for rows in decoder._row_batches(lengths):
            keys = [self.keys[r] for r in rows]
            decoded = decoder.continue_greedy(self.state(rows), logits[rows], [k[0] for k in keys], stats,
                                              [self.sources[r] for r in rows], [texts[k[0]] for k in keys])
            for (d, j, k), (ids, logprob, done) in zip(keys, decoded):
                text = decoder.text_of(ids)
                out[d].append(MentionPrediction(labels[j], k, text, logprob, len(ids), done))


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key/value cache one token costs in `model` (all layers, keys and values), from its config
    and weights' dtype: what sizes the batches of mention rows."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 1)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 64)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    itemsize = next(model.parameters()).element_size()
    return int(layers * 2 * kv_heads * head_dim * itemsize)
