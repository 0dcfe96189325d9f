"""What a model family lets the engine do, decided once per model from its config's `model_type`.

The Llama-like families (Llama, Mistral, Qwen2/3) share the three traits the fast paths need: their
attention takes a prepared 4D mask as-is (tree-shaped passes, transformers' masking_utils), their output
layer is a plain linear map of the last hidden state (we score only the wanted positions, in float32), and
their RMSNorm computes in float32 and multiplies by its bf16 weight, so a float32 residual stream passes
through (engine/precision.py). Other families (GPT-2: LayerNorm rejects mixed dtypes on CPU) take the
row-per-sequence path and run all-bf16.
"""
from __future__ import annotations

from typing import Any

LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def model_type(model: Any) -> Any:
    return getattr(getattr(model, "config", None), "model_type", None)


def takes_4d_mask(model: Any) -> bool:
    """Tree passes (engine/tree_path.py) and our own output layer (only wanted positions, float32)."""
    return model_type(model) in LLAMA_LIKE


def float32_residual_ok(model: Any) -> bool:
    """Whether a bf16 model of this family can run with a float32 residual stream."""
    return model_type(model) in LLAMA_LIKE


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key/value cache one token costs in `model` (all layers, keys and values), from its config
    and weights' dtype: what sizes the batches of rows (engine/rows.py)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 1)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 64)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    itemsize = next(model.parameters()).element_size()
    return int(layers * 2 * kv_heads * head_dim * itemsize)
