"""Pack all examples of one document into ONE sequence: a token trie holding the text once.

Every example's ids are inserted into a trie; each trie node is one position of the packed sequence, its
position id is its depth, and it attends to its ancestors only. So each label branch sees the text and
its own tokens, exactly as a separate sequence would, and the loss of the packed sequence equals the
loss of the separate ones (tested). Where two examples share a node but continue differently (mention 1
vs mention 2 after "2\n<mention "), that node carries two supervised targets: the loss is a list of
(node, next token) pairs, not one label per position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..engine.tree import ancestor_mask, depths, insert
from .examples import MENTION, EncodedExample


@dataclass(frozen=True)
class PackedTree:
    ids: List[int]
    parents: List[int]  # -1 for a root
    depth: List[int]
    loss_nodes: List[int]  # the node whose output predicts ...
    loss_targets: List[int]  # ... this token
    loss_weights: List[float]  # ... with this weight (the weight of the target token's part)

    def __len__(self) -> int:
        return len(self.ids)


def pack_examples(examples: Sequence[EncodedExample],
                  weights: Optional[Sequence[float]] = None) -> PackedTree:
    """`weights[part]` is the loss weight of a target token of that part (None: all 1)."""
    ids: List[int] = []
    parents: List[int] = []
    children: Dict[Tuple[int, int], int] = {}
    loss_nodes: List[int] = []
    loss_targets: List[int] = []
    loss_weights: List[float] = []
    for ex in examples:
        node = -1
        path: List[int] = []
        for tok in ex.ids:
            node = insert(ids, parents, children, node, tok)
            path.append(node)
        for j in range(max(ex.n_prompt, 1), len(ex.ids)):
            loss_nodes.append(path[j - 1])
            loss_targets.append(ex.ids[j])
            part = ex.parts[j - ex.n_prompt] if ex.parts and j >= ex.n_prompt else MENTION
            loss_weights.append(1.0 if weights is None else float(weights[part]))
    return PackedTree(ids, parents, depths(parents), loss_nodes, loss_targets, loss_weights)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, L]
    position_ids: torch.Tensor  # [rows, L]
    attention_mask: torch.Tensor  # [rows, 1, L, L] additive float mask (0 = attend)
    loss_rows: torch.Tensor  # [N]
    loss_cols: torch.Tensor  # [N]
    loss_targets: torch.Tensor  # [N]
    loss_weights: torch.Tensor  # [N] float

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


def collate(rows: Sequence[Sequence[PackedTree]], pad_id: int, dtype: torch.dtype = torch.float32) -> PackedBatch:
    """Rows of trees laid end to end; a tree never attends to another tree or to padding."""
    width = max(sum(len(t) for t in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    l_rows: List[int] = []
    l_cols: List[int] = []
    l_tgt: List[int] = []
    l_w: List[float] = []
    for r, row in enumerate(rows):
        offset = 0
        for tree in row:
            n = len(tree)
            ids[r, offset:offset + n] = torch.as_tensor(tree.ids)
            pos[r, offset:offset + n] = torch.as_tensor(tree.depth)
            allowed[r, offset:offset + n, offset:offset + n] = torch.from_numpy(ancestor_mask(tree.parents))
            l_rows.extend([r] * len(tree.loss_nodes))
            l_cols.extend(offset + x for x in tree.loss_nodes)
            l_tgt.extend(tree.loss_targets)
            l_w.extend(tree.loss_weights)
            offset += n
        for i in range(offset, width):  # padding sees itself only (no fully masked row -> no NaN)
            allowed[r, i, i] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return PackedBatch(ids, pos, mask[:, None], torch.as_tensor(l_rows), torch.as_tensor(l_cols),
                       torch.as_tensor(l_tgt), torch.as_tensor(l_w, dtype=torch.float32))


def packed_loss(model: torch.nn.Module, batch: PackedBatch, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the supervised pairs only: the output layer runs on those positions alone
    (SmolLM2's 49k-word output layer is ~20% of a full pass). Each pair weighs its part's weight; "mean"
    is the weighted mean (with all weights 1, the plain mean)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = causal_lm.base_model
    device = next(causal_lm.parameters()).device
    hidden = body(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                  attention_mask=batch.attention_mask.to(device), use_cache=False).last_hidden_state
    picked = hidden[batch.loss_rows.to(device), batch.loss_cols.to(device)]
    logits = causal_lm.get_output_embeddings()(picked).float()
    losses = torch.nn.functional.cross_entropy(logits, batch.loss_targets.to(device), reduction="none")
    weights = batch.loss_weights.to(device)
    total = (losses * weights).sum()
    return total / weights.sum().clamp_min(1e-9) if reduction == "mean" else total


def unpacked_loss(model: torch.nn.Module, examples: Sequence[EncodedExample], reduction: str = "mean"
                  ) -> torch.Tensor:
    """The same loss computed the plain way, one sequence per example (the reference for tests and the
    packed-vs-unpacked speed measurement)."""
    losses = []
    for ex in examples:
        ids = torch.as_tensor([ex.ids])
        logits = model(input_ids=ids).logits[0].float()
        start = max(ex.n_prompt, 1)
        losses.append(torch.nn.functional.cross_entropy(logits[start - 1:-1], ids[0, start:], reduction="none"))
    flat = torch.cat(losses)
    return flat.mean() if reduction == "mean" else flat.sum()
