"""The row path, for every model family: one row per sequence, the document prefix encoded once.

    prompt        prefill each doc prefix once -> branch it into one row per label (the label suffixes)
    count         the label rows' counts, digit by digit (counts.py)
    mention       each (label, k) mention prompt branched from its label row, decoded greedily (greedy.py)
"""
from __future__ import annotations

from typing import Any, List, Tuple

from ..prompts import common_prefix_len
from ..types import MentionPrediction
from .counts import count_loop
from .kv import KVState
from .parts import Call, Parts

Request = Tuple[int, int, int, int]  # (doc, label index, count, k): one mention to decode
LabelRow = Tuple[int, int]  # (doc, label index)


def doc_prefix_len(prompts: List[List[int]]) -> int:
    """Tokens all of a doc's label prompts share, token for token (at least one token of each is left)."""
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = min(n, common_prefix_len(prompts[0], p))
    return n


def count_step(parts: Parts, call: Call) -> Tuple[List[int], List[str], KVState, List[LabelRow]]:
    """Counts and raw count strings per label row (doc-major), the label rows' cache holding exactly their
    prompts (mention rows start from it), and (doc, label) per row."""
    runner, docs = parts.runner, list(range(len(call.texts)))
    prefix = [doc_prefix_len(call.prompts[d]) for d in docs]
    _, doc_state = runner.forward(None, [call.prompts[d][0][: prefix[d]] for d in docs], docs, call.stats,
                                  stage="prompt", prompt=True)
    label_rows = [(d, j) for d in docs for j in range(len(call.labels))]
    row_docs = [d for d, _ in label_rows]
    suffixes = [call.prompts[d][j][prefix[d]:] for d, j in label_rows]
    logits, label_state = runner.forward(doc_state.select(row_docs), suffixes, row_docs, call.stats,
                                         stage="prompt", prompt=True)
    digits: List[List[int]] = [[] for _ in label_rows]
    first = parts.counts.bias_first(logits, parts.settings.count_bias)
    count_loop(runner, parts.counts, first, label_state, list(range(len(label_rows))), digits, row_docs, call.stats)
    counts, raw = parts.counts.parse(digits)
    return counts, raw, label_state, label_rows


def requests_of(call: Call, label_rows: List[LabelRow], counts: List[int], rows: List[int]) -> List[Request]:
    """The mentions to decode for label rows `rows`: k = 1..count, the count capped per doc."""
    out = []
    for r in rows:
        d, j = label_rows[r]
        c = call.cap(d, counts[r])
        out.extend((d, j, c, k) for k in range(1, c + 1))
    return out


def mention_step(parts: Parts, call: Call, label_state: Any, requests: List[Request]) -> List[List[MentionPrediction]]:
    """Decode every requested mention greedily, in batches of rows that fit the KV budget. `label_state`
    selects label rows (doc * labels + label), each cut to a prefix: a KVState or tree_path.LabelRows."""
    n_labels = len(call.labels)
    out: List[List[MentionPrediction]] = [[] for _ in call.texts]
    fulls = [parts.mention_prompt(call.texts[d], call.labels[j], c, k) for d, j, c, k in requests]
    for rows in parts.batches([len(f) + parts.settings.max_new_tokens for f in fulls]):
        chunk = [requests[r] for r in rows]
        sources, keeps, suffixes = [], [], []
        for r, (d, j, _, _) in zip(rows, chunk):
            keep = min(common_prefix_len(fulls[r], call.prompts[d][j]), len(fulls[r]) - 1)
            sources.append(d * n_labels + j)
            keeps.append(keep)
            suffixes.append(fulls[r][keep:])
        decoded = parts.greedy.prefill_and_decode(
            label_state.select(sources, keeps), suffixes, [d for d, _, _, _ in chunk], call.stats,
            [call.prompts[d][j] for d, j, _, _ in chunk], [call.texts[d] for d, _, _, _ in chunk], call.speculate)
        for (d, j, _, k), (ids, logprob, done) in zip(chunk, decoded):
            out[d].append(MentionPrediction(call.labels[j], k, parts.runner.text_of(ids), logprob, len(ids), done))
    for preds in out:
        sort_mentions(preds, call.labels)
    return out


def sort_mentions(preds: List[MentionPrediction], labels: Any) -> None:
    """Label order, then k: the order a doc's mentions are reported in, whatever the path."""
    preds.sort(key=lambda m: (list(labels).index(m.label), m.k))
