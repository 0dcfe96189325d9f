"""A batch of rows that share cached keys/values, and the one forward step that extends them.

Rows are independent sequences kept side by side in one cache tensor per layer. Padding can sit anywhere
(`mask` marks real columns), positions come from the mask, so a row may be cut back to any of its real
prefixes by masking, copied to many rows (one doc prefix -> every label row), or dropped when finished.
Each forward call returns the next-token logits of every row's last fed token.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .family import takes_4d_mask
from .lean import LeanLlama
from .precision import inference_precision, new_cache, output_logits
from .tree import Trie


@dataclass(frozen=True)
class KVState:
    layers: Tuple[Tuple[torch.Tensor, torch.Tensor], ...]  # per layer (key, value): [rows, heads, cols, dim]
    mask: torch.Tensor  # [rows, cols] 1 = real token

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def lengths(self) -> torch.Tensor:
        """Real tokens per row = the position id of the row's next token."""
        return self.mask.sum(dim=1)

    def select(self, rows: Sequence[int] | torch.Tensor, keep: Optional[Sequence[int] | torch.Tensor] = None
               ) -> "KVState":
        """Rows `rows` (repeats allowed), each cut back to its first `keep[i]` real tokens.

        All rows in their order (a greedy step where no row finished) copies nothing but the mask: the
        cache of every layer is only copied where rows or columns are dropped."""
        same_rows = (not isinstance(rows, torch.Tensor) and len(rows) == self.rows
                     and list(rows) == list(range(self.rows)))
        index = None if same_rows else torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask if index is None else self.mask.index_select(0, index)
        if keep is not None:
            keep_t = torch.as_tensor(keep, dtype=mask.dtype, device=mask.device)
            mask = mask * (mask.cumsum(dim=1) <= keep_t[:, None]).to(mask.dtype)
        used = mask.any(dim=0)
        cols: Optional[torch.Tensor] = None
        if not bool(used.all()):  # drop columns no selected row uses
            cols = used.nonzero().squeeze(1)
            mask = mask.index_select(1, cols)
        if index is None and cols is None:
            return KVState(self.layers, mask)
        layers = []
        for key, value in self.layers:
            if index is not None:
                key, value = key.index_select(0, index), value.index_select(0, index)
            if cols is not None:
                key, value = key.index_select(2, cols), value.index_select(2, cols)
            layers.append((key, value))
        return KVState(tuple(layers), mask)

    @staticmethod
    def cat(states: Sequence["KVState"]) -> "KVState":
        """Rows of several states in one, each left-padded to the widest."""
        if len(states) == 1:
            return states[0]
        width = max(s.mask.shape[1] for s in states)

        def pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        mask = torch.cat([pad(s.mask, width - s.mask.shape[1], 1) for s in states], dim=0)
        layers = []
        for i in range(len(states[0].layers)):
            keys = [pad(s.layers[i][0], width - s.mask.shape[1], 2) for s in states]
            values = [pad(s.layers[i][1], width - s.mask.shape[1], 2) for s in states]
            layers.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
        return KVState(tuple(layers), mask)


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def left_pad(segments: Sequence[Sequence[int]], pad_id: int, device: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """[rows, width] ids and mask with every segment's last token in the last column."""
    width = max(len(s) for s in segments)
    ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(segments), width), dtype=torch.long)
    for i, seg in enumerate(segments):
        if len(seg) == 0:
            raise ValueError("every row must be fed at least one token")
        ids[i, width - len(seg):] = torch.as_tensor(list(seg), dtype=torch.long)
        mask[i, width - len(seg):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def extend(model: Any, state: Optional[KVState], segments: Sequence[Sequence[int]], pad_id: int,
           n_logits: int = 1, lean: Optional[LeanLlama] = None) -> Tuple[torch.Tensor, KVState]:
    """Feed one segment per row in ONE forward pass; return (float32 logits, new state): [rows, vocab] for
    the last token of each row, or [rows, n_logits, vocab] for the last n_logits columns.

    Segments are left-padded so the last column holds every row's last real token: only the needed
    columns' logits are computed (the output layer is ~20% of a pass over SmolLM2's 49k-word vocabulary).
    `lean`: the model's own forward (engine/lean.py), same output.
    """
    device = model.device if state is None else state.mask.device
    ids, seg_mask = left_pad(segments, pad_id, device)
    past_len = state.lengths() if state is not None else torch.zeros(len(segments), dtype=torch.long, device=device)
    positions = past_len[:, None] + seg_mask.cumsum(dim=1) - 1
    positions = positions.clamp(min=0)
    mask = seg_mask if state is None else torch.cat([state.mask, seg_mask], dim=1)
    if lean is not None:
        hidden, layers = lean(ids, mask, positions, state.layers if state is not None else None)
        if n_logits == 1:
            return output_logits(model, hidden[:, -1, :]), KVState(layers, mask)
        # a row shorter than n_logits reads only its own columns: the padding's logits stay zero, uncomputed
        wanted = seg_mask[:, -n_logits:].reshape(-1).nonzero().squeeze(1)
        picked = output_logits(model, hidden[:, -n_logits:, :].reshape(-1, hidden.shape[-1])[wanted])
        logits = picked.new_zeros(len(segments) * n_logits, picked.shape[-1]).index_copy_(0, wanted, picked)
        return logits.view(len(segments), n_logits, -1), KVState(layers, mask)
    cache = new_cache(model, state.layers if state is not None else None)
    with inference_precision(model):
        if takes_4d_mask(model):  # a plain output layer: ours scores the winning candidates in float32
            out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   past_key_values=cache, use_cache=True)
            logits = output_logits(model, out.last_hidden_state[:, -n_logits:, :])
        else:
            kwargs = {"logits_to_keep": n_logits} if _accepts_logits_to_keep(model) else {}
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, **kwargs)
            logits = out.logits[:, -n_logits:, :].float()
    return (logits[:, -1, :] if n_logits == 1 else logits), KVState(_layers(out.past_key_values), mask)


def _layers(past: Any) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ...]:
    """Per-layer (key, value) of a model's returned cache, whatever its class."""
    return tuple((k, v) for k, v in (past.to_legacy_cache() if hasattr(past, "to_legacy_cache") else past))


def full_sequence_logits(model: Any, sequences: List[List[int]]) -> torch.Tensor:
    """Next-token logits of each whole sequence, run alone with no cache: the reference the shared-prefix
    path is tested against."""
    out = []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.as_tensor([seq], dtype=torch.long, device=model.device)
            out.append(model(input_ids=ids).logits[0, -1, :].float())
    return torch.stack(out)


# ---- tree-shaped passes --------------------------------------------------------------------------
@dataclass(frozen=True)
class TreeState:
    """The cache after a tree pass: row i's node n sits in column `offsets[i] + n` of `state`, after
    `cached` columns of what the rows held before. The 2D mask marks every node of every branch, so rows
    are taken out of it with `branch`, never used directly."""
    state: KVState
    offsets: List[int]
    cached: int

    def branch(self, rows: Sequence[int], keeps: Sequence[int], paths: Sequence[Sequence[int]]) -> KVState:
        """One new row per (row, keep, path): the row's first `keep` cached tokens, then the path's nodes.

        The result is left-padded; positions continue correctly because the nodes on a path have
        consecutive depths right after the cached tokens.
        """
        mask = self.state.mask
        cached_cols = mask[:, : self.cached].bool().cpu()
        cols = []
        for r, keep, path in zip(rows, keeps, paths):
            real = cached_cols[r].nonzero().squeeze(1).tolist()[:keep]
            cols.append(real + [self.offsets[r] + n for n in path])
        width = max(len(c) for c in cols)
        index = torch.zeros((len(cols), width), dtype=torch.long)
        new_mask = torch.zeros((len(cols), width), dtype=mask.dtype)
        for i, c in enumerate(cols):
            index[i, width - len(c):] = torch.as_tensor(c, dtype=torch.long)
            new_mask[i, width - len(c):] = 1
        device = mask.device
        index, new_mask = index.to(device), new_mask.to(device)
        row_index = torch.as_tensor(list(rows), dtype=torch.long, device=device)
        layers = []
        for key, value in self.state.layers:  # [rows, heads, cols, dim]: pick rows, then per-row columns
            k, v = key.index_select(0, row_index), value.index_select(0, row_index)
            gather = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            layers.append((k.gather(2, gather), v.gather(2, gather)))
        return KVState(tuple(layers), new_mask)


@torch.inference_mode()
def extend_tree(model: Any, state: Optional[KVState], tries: Sequence[Trie], pad_id: int,
                want: Sequence[Sequence[int]], lean: Optional[LeanLlama] = None
                ) -> Tuple[List[torch.Tensor], TreeState]:
    """Feed one trie per row in ONE forward pass: every node attends to its row's cached tokens, its
    ancestors and itself, at position (cached tokens + depth). Returns per row the float32 next-token
    logits [len(want[i]), vocab] after each wanted node, and the cache.

    The output layer runs only on the wanted nodes, so a pass over many branches costs no more vocabulary
    projections than it has branch ends.
    """
    device = model.device if state is None else state.mask.device
    rows = len(tries)
    width = max(len(t.tokens) for t in tries)
    cached = state.mask.shape[1] if state is not None else 0
    past_len = state.lengths().tolist() if state is not None else [0] * rows
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.zeros((rows, width, cached + width), dtype=torch.bool)
    if state is not None:
        allowed[:, :, :cached] = state.mask.bool().cpu()[:, None, :]
    offsets = []
    node_mask = torch.zeros((rows, width), dtype=torch.long)  # the real nodes (the rest is left padding)
    for i, trie in enumerate(tries):
        off = width - len(trie.tokens)
        offsets.append(cached + off)
        ids[i, off:] = torch.as_tensor(trie.tokens, dtype=torch.long)
        node_mask[i, off:] = 1
        depth = trie.depths()
        positions[i, off:] = torch.as_tensor(depth, dtype=torch.long) + past_len[i]
        allowed[i, off:, cached + off:] = torch.from_numpy(trie.ancestors())
        allowed[i, :off, :] = False  # padding queries attend to themselves only (no all-masked rows)
        pad = torch.arange(off)
        allowed[i, pad, cached + pad] = True
    dtype = next(model.parameters()).dtype
    mask4d = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    if lean is not None:  # the padding of rows with fewer nodes skips the linear layers
        hidden, layers = lean(ids.to(device), mask4d.to(device), positions.to(device),
                              state.layers if state is not None else None, real=node_mask.bool().to(device))
    else:
        cache = new_cache(model, state.layers if state is not None else None)
        with inference_precision(model):
            out = model.base_model(input_ids=ids.to(device), attention_mask=mask4d.to(device),
                                   position_ids=positions.to(device), past_key_values=cache, use_cache=True)
        hidden, layers = out.last_hidden_state, _layers(out.past_key_values)
    flat_rows = [i for i, w in enumerate(want) for _ in w]
    flat_cols = [width - len(tries[i].tokens) + n for i, w in enumerate(want) for n in w]
    picked = hidden[torch.as_tensor(flat_rows, dtype=torch.long, device=device),
                    torch.as_tensor(flat_cols, dtype=torch.long, device=device)]
    logits = output_logits(model, picked)  # float32 scoring runs outside autocast
    per_row, start = [], 0
    for w in want:
        per_row.append(logits[start: start + len(w)])
        start += len(w)
    full_mask = node_mask.to(device) if state is None else torch.cat([state.mask, node_mask.to(device)], dim=1)
    return per_row, TreeState(KVState(layers, full_mask), offsets, cached)
