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
from transformers import DynamicCache


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
        """Rows `rows` (repeats allowed), each cut back to its first `keep[i]` real tokens."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        if keep is not None:
            keep_t = torch.as_tensor(keep, dtype=mask.dtype, device=mask.device)
            mask = mask * (mask.cumsum(dim=1) <= keep_t[:, None]).to(mask.dtype)
        used = mask.any(dim=0)
        cols: Optional[torch.Tensor] = None
        if not bool(used.all()):  # drop columns no selected row uses
            cols = used.nonzero().squeeze(1)
            mask = mask.index_select(1, cols)
        layers = []
        for key, value in self.layers:
            key, value = key.index_select(0, index), value.index_select(0, index)
            if cols is not None:
                key, value = key.index_select(2, cols), value.index_select(2, cols)
            layers.append((key, value))
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
           n_logits: int = 1) -> Tuple[torch.Tensor, KVState]:
    """Feed one segment per row in ONE forward pass; return (float32 logits, new state): [rows, vocab] for
    the last token of each row, or [rows, n_logits, vocab] for the last n_logits columns.

    Segments are left-padded so the last column holds every row's last real token: only the needed
    columns' logits are computed (the output layer is ~20% of a pass over SmolLM2's 49k-word vocabulary).
    """
    device = model.device if state is None else state.mask.device
    ids, seg_mask = left_pad(segments, pad_id, device)
    past_len = state.lengths() if state is not None else torch.zeros(len(segments), dtype=torch.long, device=device)
    positions = past_len[:, None] + seg_mask.cumsum(dim=1) - 1
    positions = positions.clamp(min=0)
    mask = seg_mask if state is None else torch.cat([state.mask, seg_mask], dim=1)
    cache = DynamicCache.from_legacy_cache(state.layers if state is not None else None)
    kwargs = {"logits_to_keep": n_logits} if _accepts_logits_to_keep(model) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **kwargs)
    logits = out.logits[:, -1, :].float() if n_logits == 1 else out.logits[:, -n_logits:, :].float()
    past = out.past_key_values
    layers = tuple((k, v) for k, v in (past.to_legacy_cache() if hasattr(past, "to_legacy_cache") else past))
    return logits, KVState(layers, mask)


def full_sequence_logits(model: Any, sequences: List[List[int]]) -> torch.Tensor:
    """Next-token logits of each whole sequence, run alone with no cache: the reference the shared-prefix
    path is tested against."""
    out = []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.as_tensor([seq], dtype=torch.long, device=model.device)
            out.append(model(input_ids=ids).logits[0, -1, :].float())
    return torch.stack(out)
