"""How a bf16 model runs a forward pass: bf16 weights and matmuls, a float32 residual stream, and exact
float32 scores for the tokens that can win.

Pure bf16 (every activation rounded to 8 mantissa bits) made the result depend on how rows were packed:
the tree engine and the plain row-per-sequence engine, same weights, disagreed on 4 of 100 CoNLL dev docs
(string F1 87.26 vs 87.80), because a different packing rounds the residual stream differently and a
near-tie between two tokens then flips. Keeping the residual stream, the norms and the rotary step in
float32 (matmuls and attention still take bf16 operands, through autocast, and the cache stays bf16) and
scoring the top candidates of every next-token distribution in float32 made the two engines agree on all
100 docs (the benchmark's sample; its `same %` column keeps checking it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from transformers import DynamicCache

from .family import float32_residual_ok
from .matmul import linear, packed_linear, prepacked, prepacks, weight_left

# Candidates per position rescored in float32. A token outside the bf16 top 8 can only be the true greedy
# pick when 8 others sit within one bf16 rounding step (~0.4%) of the best.
RESCORED = 8



def is_bf16(model: Any) -> bool:
    return next(model.parameters()).dtype == torch.bfloat16


def _float32_output(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def float32_residual(model: Any) -> bool:
    """Whether `inference_precision` runs this model with bf16 matmuls around a float32 residual stream."""
    return is_bf16(model) and float32_residual_ok(model)


class Bf16Cache(DynamicCache):
    """A DynamicCache that stores keys and values in bf16. Under autocast, attention casts its operands to
    bf16 anyway, so the numbers are the same; but a float32 key (the rotary step multiplies by float32
    cos/sin) would double the cache and be cast again, whole, in every later pass."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return super().update(key_states.to(torch.bfloat16), value_states.to(torch.bfloat16), layer_idx,
                              cache_kwargs)


def new_cache(model: Any, layers: Optional[Any] = None) -> DynamicCache:
    """The cache a forward pass of `model` should extend, holding `layers` ((key, value) per layer)."""
    return (Bf16Cache if float32_residual(model) else DynamicCache).from_legacy_cache(layers)


@contextlib.contextmanager
def inference_precision(model: Any) -> Iterator[None]:
    """Around a forward pass (or `generate`) of `model`: for bf16 weights of a family that allows it (family.py),
    embeddings come out in float32 (so every residual add and norm runs in float32) and autocast feeds
    the matmuls bf16 operands. Other families and dtypes: a no-op."""
    if not float32_residual(model):
        yield
        return
    handle = model.get_input_embeddings().register_forward_hook(_float32_output)
    try:
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            yield
    finally:
        handle.remove()


def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """float32 next-token logits [..., vocab] from final hidden states [..., dim].

    bf16 weights: one bf16 matmul over the vocabulary, then the RESCORED best candidates of each position
    recomputed from the float32 hidden state (a bf16 logit of ~20 is only known to +-0.06, which decides
    near-ties at random). float32 weights: the output layer in one matmul (engine/matmul.py).

    The hidden states are made one 2D block first: a strided 3D slice (the last position of a multi-token
    pass) turns the linear layer into a batched matmul over a copy of the whole output matrix, 20 ms a pass
    for SmolLM2's 49k x 576 (measured; it made a 1-row pass of 2+ tokens cost 3x a 1-token one).
    """
    lead = hidden.shape[:-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    head = model.get_output_embeddings()
    if head.weight.dtype != torch.bfloat16:
        hooked = bool(head._forward_hooks or head._forward_pre_hooks)  # a hook must see its module run
        packed = _packed_head(model, head) if hidden.dtype == head.weight.dtype else None  # matmul.py
        if packed is not None or (isinstance(head, torch.nn.Linear) and not hooked and weight_left(hidden, head.weight)):
            logits = linear(hidden, head.weight) if packed is None else packed_linear(hidden, packed)
            return (logits if head.bias is None else logits + head.bias).reshape(*lead, -1)
        return head(hidden).float().reshape(*lead, -1)
    with torch.autocast(hidden.device.type, enabled=False):
        packed = _packed_head(model, head)
        if packed is not None:
            logits = packed_linear(hidden.to(torch.bfloat16), packed).float()
            logits = logits if head.bias is None else logits + head.bias.float()
        else:
            logits = torch.nn.functional.linear(hidden.to(torch.bfloat16), head.weight, head.bias).float()
        top = logits.topk(min(RESCORED, logits.shape[-1]), dim=-1).indices  # [n, k]
        exact = (head.weight[top].float() @ hidden.float().unsqueeze(-1)).squeeze(-1)  # [n, k]
        if head.bias is not None:
            exact = exact + head.bias[top].float()
        return logits.scatter(-1, top, exact).reshape(*lead, -1)


def _packed_head(model: Any, head: Any) -> Optional[torch.Tensor]:
    """The output layer's weight in oneDNN's layout where the rule takes it (engine/matmul.py), made
    once per model and again when the weight was written since (its version counter), else None."""
    if not isinstance(head, torch.nn.Linear) or head._forward_hooks or head._forward_pre_hooks:
        return None
    weight = head.weight
    if not prepacks(weight):
        return None
    key = (weight.data_ptr(), weight._version)
    cached = model.__dict__.get("_padellm_packed_head")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, prepacked(weight))
        model.__dict__["_padellm_packed_head"] = cached
    return cached[1]
