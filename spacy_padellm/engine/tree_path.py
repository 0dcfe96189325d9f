"""The tree path, for families whose attention takes a 4D mask (family.py): the fewest sequential passes.

    pass 1  one row per doc: the trie of all its label prompts (text once, labels as branches), plus the
            mention prompts of guessed counts -> each label's first count digit
    pass 2  one row per label: the trie of [digit] and every "{count}\\n<mention k>" for k = 1..digit
            -> verifies the count ended after one digit, and gives each mention's first token
    pass 3+ one row per mention, greedy (greedy.py) until EOS; mentions of all labels decode together

A count that goes on past one digit (rare: 10+ mentions in a sentence) falls back to the row path for its
label only. Both paths give the same tokens as plain greedy decoding of each sequence on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..prompts import common_prefix_len
from ..settings import MAX_GUESSED_COUNT
from ..types import MentionPrediction
from .counts import continue_count
from .kv import KVState, TreeState
from .parts import Call, Parts
from .row_path import LabelRow, mention_step, requests_of, sort_mentions
from .rows import MAX_ROWS_PER_PASS
from .tree import Trie

Key = Tuple[int, ...]  # (label,), (label, guessed count) or (label, guessed count, k): a sequence of a doc trie


@dataclass
class DocTrees:
    """Pass 1's output: per doc its trie, which sequence sits where, the logits after each sequence."""
    tries: List[Trie]
    layouts: List[Dict[Key, int]]
    logits: List[torch.Tensor]  # per doc [sequences, vocab]
    tree: TreeState
    label_rows: List[LabelRow]

    def logits_of(self, d: int, key: Key) -> torch.Tensor:
        return self.logits[d][self.layouts[d][key]]

    def path(self, d: int, key: Key) -> List[int]:
        return self.tries[d].path(self.tries[d].ends[self.layouts[d][key]])


class LabelRows:
    """The label rows of a tree pass (doc, label prompt) as a KVState-like `select`: each selected row is
    cut out of the doc tree when selected, so the cache of every label row is never held at once (it is
    labels x docs copies of the doc prefixes: 240 MB for 32 CoNLL sentences in bf16)."""

    def __init__(self, trees: DocTrees) -> None:
        self.tree = trees.tree
        self.row_docs = [d for d, _ in trees.label_rows]
        self.paths = [trees.path(d, (j,)) for d, j in trees.label_rows]

    def select(self, rows: Sequence[int], keep: Optional[Sequence[int]] = None) -> KVState:
        """Rows `rows`, each cut back to its first `keep[i]` tokens (the doc tree caches nothing before
        its tries, so a row's tokens are its path's nodes)."""
        keeps = list(keep) if keep is not None else [len(self.paths[r]) for r in rows]
        return self.tree.branch([self.row_docs[r] for r in rows], [0] * len(rows),
                                [self.paths[r][:k] for r, k in zip(rows, keeps)])


class Ready:
    """Mention rows whose prompt is cached and whose first-token logits are known, gathered from the tree
    passes and decoded together (so a doc's mentions from pass 1 and pass 2 share their greedy passes).

    A row is kept as a recipe (tree state, row, cached tokens kept, trie path), not as a copy of its cache:
    the copies are made per batch that fits the KV budget, so peak memory is one batch of rows, whatever
    the number of mentions."""

    def __init__(self) -> None:
        self.branches: List[Tuple[TreeState, int, int, List[int]]] = []  # (tree, row, keep, path)
        self.logits: List[torch.Tensor] = []
        self.keys: List[Tuple[int, int, int]] = []  # (doc, label index, k)
        self.sources: List[Sequence[int]] = []

    def add(self, doc: int, label: int, k: int, logits: torch.Tensor, source: Sequence[int],
            branch: Tuple[TreeState, int, int, List[int]]) -> None:
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

    def decode(self, parts: Parts, call: Call, out: List[List[MentionPrediction]]) -> None:
        if not self.keys:
            return
        logits = torch.stack(self.logits)
        lengths = [b[2] + len(b[3]) + parts.settings.max_new_tokens for b in self.branches]
        for rows in parts.batches(lengths):
            keys = [self.keys[r] for r in rows]
            decoded = parts.greedy.decode(self.state(rows), logits[rows], [k[0] for k in keys], call.stats,
                                          [self.sources[r] for r in rows], [call.texts[k[0]] for k in keys],
                                          call.speculate)
            for (d, j, k), (ids, logprob, done) in zip(keys, decoded):
                out[d].append(MentionPrediction(call.labels[j], k, parts.runner.text_of(ids), logprob, len(ids), done))


def tree_step(parts: Parts, call: Call) -> Tuple[List[int], List[str], List[List[MentionPrediction]]]:
    """Counts (and raw count strings) per (doc, label) row, doc-major, and mentions per doc."""
    trees = first_pass(parts, call)
    digits, open_rows, verified = first_digits(parts, call, trees)
    ready = Ready()
    if verified:
        verify_guesses(parts, call, trees, verified, digits, ready)
    fallback = [r for r in verified if len(digits[r]) > 1]
    label_state = LabelRows(trees) if open_rows or fallback else None  # cut from the doc tree on demand
    for group in groups(parts, call, trees.label_rows, open_rows, digits):
        fallback += mention_tree(parts, call, trees.label_rows, label_state, group, digits, ready)
    mentions: List[List[MentionPrediction]] = [[] for _ in call.texts]
    ready.decode(parts, call, mentions)
    counts, raw = parts.counts.parse(digits)
    requests = requests_of(call, trees.label_rows, counts, fallback)
    if requests:
        for d, preds in enumerate(mention_step(parts, call, label_state, requests)):
            mentions[d].extend(preds)
    for preds in mentions:
        sort_mentions(preds, call.labels)
    return counts, raw, mentions


def first_pass(parts: Parts, call: Call) -> DocTrees:
    """Pass 1: per doc, the trie of every label prompt and of the mention prompts of guessed counts."""
    tries, layouts = [], []
    for d, text in enumerate(call.texts):
        seqs: List[List[int]] = []
        layout: Dict[Key, int] = {}
        for j, label in enumerate(call.labels):
            layout[(j,)] = len(seqs)
            seqs.append(call.prompts[d][j])
            for c in range(1, min(call.guesses, call.max_counts[d], MAX_GUESSED_COUNT) + 1):
                layout[(j, c)] = len(seqs)
                seqs.append(call.prompts[d][j] + [parts.counts.digit_token[str(c)]])
                for k in range(1, c + 1):
                    layout[(j, c, k)] = len(seqs)
                    seqs.append(parts.mention_prompt(text, label, c, k))
        tries.append(Trie.of(seqs))
        layouts.append(layout)
    docs = list(range(len(call.texts)))
    logits, tree = parts.runner.forward_tree(None, tries, [t.ends for t in tries], docs, call.stats, "prompt")
    label_rows = [(d, j) for d in docs for j in range(len(call.labels))]
    return DocTrees(tries, layouts, logits, tree, label_rows)


def first_digits(parts: Parts, call: Call, trees: DocTrees) -> Tuple[List[List[int]], List[int], List[int]]:
    """Each label row's first count token: (digits per row, rows whose count is open, rows whose count
    was guessed in pass 1). A 0 (or no digit) ends the count."""
    vocab = parts.counts
    first = vocab.next_tokens(vocab.bias_first(torch.stack([trees.logits_of(d, (j,)) for d, j in trees.label_rows]),
                                               parts.settings.count_bias))
    digits: List[List[int]] = [[] for _ in trees.label_rows]
    open_rows, verified = [], []
    for r, tok in enumerate(first):
        d, j = trees.label_rows[r]
        call.stats[d].generated_tokens += 1
        if tok not in vocab.digit_ids:
            continue
        digits[r].append(tok)
        if tok == vocab.zero_id:
            continue
        guessed = (j, vocab.value(tok)) in trees.layouts[d] and vocab.digit_token.get(vocab.digit_ids[tok]) == tok
        (verified if guessed else open_rows).append(r)
    return digits, open_rows, verified


def verify_guesses(parts: Parts, call: Call, trees: DocTrees, verified: List[int], digits: List[List[int]],
                   ready: Ready) -> None:
    """Rows whose count was guessed: pass 1 already holds their count's end and their mentions' first
    tokens. Confirmed mentions join `ready`; a count that goes on is continued digit by digit."""
    keys = [(trees.label_rows[r][1], parts.counts.value(digits[r][0])) for r in verified]
    ends = parts.counts.next_tokens(torch.stack([trees.logits_of(trees.label_rows[r][0], key)
                                                 for r, key in zip(verified, keys)]))
    going_on, going_paths = [], []
    for r, key, tok in zip(verified, keys, ends):
        d, j = trees.label_rows[r]
        call.stats[d].generated_tokens += 1
        if tok in parts.counts.digit_ids:
            digits[r].append(tok)
            going_on.append(r)
            going_paths.append(trees.path(d, key))
            continue
        for k in range(1, key[1] + 1):
            ready.add(d, j, k, trees.logits_of(d, key + (k,)), call.prompts[d][j],
                      (trees.tree, d, 0, trees.path(d, key + (k,))))
    if going_on:
        row_docs = [d for d, _ in trees.label_rows]
        state = trees.tree.branch([row_docs[r] for r in going_on], [0] * len(going_on), going_paths)
        continue_count(parts.runner, parts.counts, state, going_on, digits, row_docs, call.stats)


def groups(parts: Parts, call: Call, label_rows: List[LabelRow], rows: List[int], digits: List[List[int]]
           ) -> List[List[int]]:
    """Rows in groups of at most MAX_ROWS_PER_PASS speculated mentions (memory bound for babble)."""
    out: List[List[int]] = []
    size = 0
    for r in rows:
        n = call.cap(label_rows[r][0], parts.counts.value(digits[r][0]))
        if not out or size + n > MAX_ROWS_PER_PASS:
            out.append([])
            size = 0
        out[-1].append(r)
        size += n
    return out


def mention_tree(parts: Parts, call: Call, label_rows: List[LabelRow], label_state: Any, group: List[int],
                 digits: List[List[int]], ready: Ready) -> List[int]:
    """Pass 2 for label rows `group` (one-digit counts so far): one trie per row holding the count digit
    (to verify the count ends there) and every mention prompt. Confirmed rows' mentions join `ready`;
    rows whose count goes on are continued digit by digit and returned (their mentions take the row path)."""
    tries, bases, counts = [], [], []
    for r in group:
        d, j = label_rows[r]
        c = call.cap(d, parts.counts.value(digits[r][0]))
        seqs = [call.prompts[d][j] + [digits[r][0]]]
        seqs += [parts.mention_prompt(call.texts[d], call.labels[j], c, k) for k in range(1, c + 1)]
        base = min(min(common_prefix_len(q, call.prompts[d][j]) for q in seqs), min(len(q) for q in seqs) - 1)
        tries.append(Trie.of([q[base:] for q in seqs]))
        bases.append(base)
        counts.append(c)
    group_docs = [label_rows[r][0] for r in group]
    logits, tree = parts.runner.forward_tree(label_state.select(group, bases), tries, [t.ends for t in tries],
                                             group_docs, call.stats, "mention_prompt")
    ends = parts.counts.next_tokens(torch.stack([lg[0] for lg in logits]))
    going_on = []
    for i, (r, tok) in enumerate(zip(group, ends)):
        call.stats[group_docs[i]].generated_tokens += 1
        if tok in parts.counts.digit_ids:
            digits[r].append(tok)
            going_on.append(i)
            continue
        d, j = label_rows[r]
        for k in range(1, counts[i] + 1):
            ready.add(d, j, k, logits[i][k], call.prompts[d][j], (tree, i, bases[i], tries[i].path(tries[i].ends[k])))
    if not going_on:
        return []
    rows = [group[i] for i in going_on]
    state = tree.branch(going_on, [bases[i] for i in going_on], [tries[i].path(tries[i].ends[0]) for i in going_on])
    continue_count(parts.runner, parts.counts, state, rows, digits, [d for d, _ in label_rows], call.stats)
    return rows
