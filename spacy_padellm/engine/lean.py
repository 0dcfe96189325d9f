"""Our own forward pass for Llama models: the same numbers as transformers' LlamaModel, less overhead.

A small pass (8 mention rows, one token each) spent more time outside its matmuls than in them (measured:
the 210 linear layers of SmolLM2-135M take 24 ms for 8 rows in bf16, the whole pass 84 ms). The overhead
is per-op: three projections where one would do, autocast's casts of the same input per projection, the
keys and values of the whole cache repeated per head group before attention, a 4D mask rebuilt by vmap
in every pass, and the modules' Python. This pass keeps each op transformers runs, in the same dtypes and
the same order (so the output is bitwise the same with `pack`, `weight_left` and `prepack` off, which the tests
compare; on, a float32 pass may differ in the last bit, and the decoded output stays greedy's), and cuts
only the overhead:

- q/k/v and gate/up are one matmul each over weights concatenated once (each output column is the same
  dot product; the module weights become views into the fused ones, so no memory is added);
- the float32 residual stream of engine/precision.py is written out (bf16 operands for the matmuls and
  attention, float32 for norms, rotary and adds) instead of autocast plus an embedding hook;
- float32 linears of a few rows run with the weight as the left operand (`weight_left`, engine/matmul.py:
  up to 3.5x faster on an AVX2 CPU);
- padding skips the linear layers: only the real tokens of the rows go through them (`pack`);
- the linears take weights reordered once into oneDNN's layout (`prepack`, engine/matmul.py: float32 on
  the CPU, bf16 where it has AMX; up to 1.5x (float32) and 1.9x (bf16) faster; the weights are held twice);
- attention takes the grouped keys as they are and a mask built here, in one step; in bf16 the query heads
  of one key head run as one head with their queries side by side (`grouped`: the CPU kernel's cost is
  per head; same numbers).

Only plain Llama models take it (`lean_forward`): any other family, a LoRA model not merged, eager
attention or scaled rotary embeddings keep transformers' forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .family import model_type
from .int8 import int8_linear, is_int8, packed_int8
from .matmul import linear, packed_linear, prepacked, prepacks, takes_packed
from .precision import float32_residual

Layers = Tuple[Tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class _Layer:
    norm_in: torch.Tensor
    norm_post: torch.Tensor
    qkv: torch.Tensor  # [heads*dim + 2*kv_heads*dim, hidden]
    o: torch.Tensor
    gate_up: torch.Tensor  # [2*intermediate, hidden]
    down: torch.Tensor
    packed: Optional[Tuple[Any, ...]] = None  # oneDNN copies of (qkv, o, gate_up, down), engine/matmul.py
    int8: Optional[Tuple[Any, ...]] = None  # fbgemm int8 weights of (qkv, o, gate_up), engine/int8.py


def supports(model: Any) -> bool:
    """A plain (merged) Llama whose every projection is an nn.Linear without bias, sdpa attention, silu,
    unscaled rotary embeddings, float32 weights or bf16 ones with the float32 residual."""
    config = getattr(model, "config", None)
    if model_type(model) != "llama" or config is None:
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "rope_scaling", None):
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return False
    if config.attention_bias or getattr(config, "mlp_bias", False):
        return False
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
        return False
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16) or (dtype == torch.bfloat16 and not float32_residual(model)):
        return False
    for layer in base.layers:
        mods = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in mods):  # LoRA layers, quantized linears: not ours
            return False
    return True


def _fuse(modules: Sequence[torch.nn.Linear]) -> torch.Tensor:
    """One weight for several linears of the same input; each module's weight becomes a view into it."""
    with torch.no_grad():
        fused = torch.cat([m.weight for m in modules], dim=0)
        start = 0
        for m in modules:
            rows = m.weight.shape[0]
            m.weight = torch.nn.Parameter(fused[start:start + rows], requires_grad=m.weight.requires_grad)
            start += rows
    return fused


class LeanLlama:
    """The forward pass of a Llama model's decoder stack: (ids, mask, positions, cached layers) ->
    (float32 last hidden states [rows, width, hidden], the cache with the new columns)."""

    def __init__(self, model: Any) -> None:
        base = model.model
        config = model.config
        self.embed = base.embed_tokens.weight
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.inv_freq = base.rotary_emb.inv_freq
        self.rope_scaling = base.rotary_emb.attention_scaling
        self.norm = base.norm.weight
        self.dtype = next(model.parameters()).dtype  # of the matmul operands and of the cache
        # Attention runs the query heads of one key head as one head with `group * width` queries. The CPU
        # flash kernel pays a fixed cost per (row, head): a one-token pass of 128 rows in bf16 took 9.83 ms
        # with SmolLM2's 9 query heads and 2.66 ms as its 3 key heads with 3 queries each, 1.79x for 4-token
        # passes (project/scripts/attention_micro.py, 2 threads). In bf16 every query's numbers stay the same
        # bitwise (tests compare them with transformers' forward); in float32 they do not always, so float32
        # keeps the per-head call.
        self.grouped = self.heads != self.kv_heads and self.dtype == torch.bfloat16
        # Padding skips the linear layers (see __call__). The same tokens then go through the matmuls in
        # blocks of another height, which in float32 can round the last bit differently (MKL picks its
        # kernel by height): the decoded output stays greedy's, the tests compare it; off, a pass is
        # bitwise transformers' (tests/test_lean.py).
        self.pack = True
        self.weight_left = True  # engine/matmul.py; off (with pack), a pass is bitwise transformers'
        self.layers: List[_Layer] = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                                      _fuse([attn.q_proj, attn.k_proj, attn.v_proj]), attn.o_proj.weight,
                                      _fuse([mlp.gate_proj, mlp.up_proj]), mlp.down_proj.weight))
        # dtype int8 (engine/int8.py): q/k/v, o and gate/up as fbgemm int8 weights, down_proj float32
        if is_int8(model):
            for layer in self.layers:
                layer.int8 = tuple(packed_int8(w) for w in (layer.qkv, layer.o, layer.gate_up))
        # oneDNN's blocked copies of the weights, made once, where the rule takes them (engine/matmul.py)
        self.prepack = prepacks(self.layers[0].qkv) if self.layers else False
        self._packed_versions: Tuple[int, ...] = ()
        if self.prepack:
            self.pack_weights()

    def pack_weights(self) -> None:
        """Make the `prepack` copies of every linear weight (where oneDNN cannot, `prepack` turns off)."""
        with torch.no_grad():
            for layer in self.layers:
                weights = (layer.qkv, layer.o, layer.gate_up, layer.down)
                # under int8 only down_proj runs float32: no copies of the others (~320 MB in float32)
                packed = tuple(prepacked(w) if layer.int8 is None or i == 3 else None for i, w in enumerate(weights))
                if packed[3] is None or (layer.int8 is None and any(p is None for p in packed)):
                    self.prepack = False
                    return
                layer.packed = packed
        self._packed_versions = self._weight_versions()

    def _weight_versions(self) -> Tuple[int, ...]:
        """The weights' in-place write counters (shared by the module weights, views into them): a weight
        written after packing (a merged adapter) makes its copies stale, and the next pass repacks."""
        return tuple(w._version for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down))

    def _linear(self, x: torch.Tensor, layer: _Layer, which: int) -> torch.Tensor:
        """Linear `which` (0 qkv, 1 o, 2 gate_up, 3 down) of a layer, on a 2D x."""
        if layer.int8 is not None and which < 3:
            return int8_linear(x, layer.int8[which])  # built once: int8 weights are not written after load
        if self.prepack and layer.packed is not None and x.dtype == layer.qkv.dtype and takes_packed(x):
            return packed_linear(x, layer.packed[which])
        weight = (layer.qkv, layer.o, layer.gate_up, layer.down)[which]
        return linear(x, weight, self.weight_left)

    def _norm(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm on a float32 stream: float32 out (the bf16 weight times a float32 tensor)."""
        variance = h.pow(2).mean(-1, keepdim=True)
        return weight * (h * torch.rsqrt(variance + self.eps))

    def _rotary(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [rows, 1, width, dim] as LlamaRotaryEmbedding computes them, float32."""
        inv = self.inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
        freqs = (inv @ positions[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scaling)[:, None], (emb.sin() * self.rope_scaling)[:, None]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)

    @staticmethod
    def row_mask(mask2d: torch.Tensor, width: int) -> torch.Tensor:
        """The bool [rows, 1, width, cols] mask of a row pass: a fed token sees the row's real columns up to
        itself. A padding query sees itself only (its output is never read; no row is all-masked)."""
        cols = mask2d.shape[1]
        cached = cols - width
        q = torch.arange(width, device=mask2d.device)[:, None] + cached
        c = torch.arange(cols, device=mask2d.device)[None, :]
        allowed = (c <= q)[None] & mask2d.bool()[:, None, :]
        pad = ~mask2d[:, cached:].bool()  # [rows, width]
        if bool(pad.any()):
            allowed = allowed | ((c == q)[None] & pad[:, :, None])
        return allowed[:, None]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 past: Optional[Layers], real: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Layers]:
        """`mask`: the row pass's 2D [rows, cached + width] mask, or a tree pass's additive 4D mask.
        `real` [rows, width] marks the fed tokens that are not padding (default: a row pass's mask columns;
        every token of a tree pass); the padding's hidden states come back as zeros."""
        rows, width = ids.shape
        if self.prepack and self._weight_versions() != self._packed_versions:
            self.pack_weights()
        if real is None and mask.dim() == 2:
            real = mask[:, mask.shape[1] - width:].bool()
        # Only the real tokens run through the linear layers (`flat`); attention alone needs the rows'
        # [rows, width] layout, so q, k, v are scattered into it and its output gathered back. Rows padded
        # to the longest one wasted 31% of a batch-32 prompt pass's matmuls (tries of unequal length) and
        # 15% of a batch-1 mention pass's (speculated rows beside 1-token ones); the padding's keys and
        # values are zeros, which its mask hides like any others.
        flat = None if real is None or not self.pack or bool(real.all()) else real.reshape(-1).nonzero().squeeze(1)
        attn_mask = self.row_mask(mask, width) if mask.dim() == 2 else mask
        group = self.heads // self.kv_heads
        grouped = self.grouped
        if grouped and width > 1:  # query g * width + w of a key head sees what token w sees
            attn_mask = attn_mask.expand(rows, group, width, attn_mask.shape[-1]).reshape(rows, 1, group * width, -1)
        cos, sin = self._rotary(positions)  # [rows, 1, width, dim]
        cos, sin = cos.reshape(rows * width, 1, -1), sin.reshape(rows * width, 1, -1)
        ids = ids.reshape(-1)
        if flat is not None:
            ids, cos, sin = ids[flat], cos[flat], sin[flat]
        n = ids.shape[0]
        h = F.embedding(ids, self.embed).float()  # [n, hidden]
        out: List[Tuple[torch.Tensor, torch.Tensor]] = []
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, layer in enumerate(self.layers):
            x = self._norm(h, layer.norm_in).to(self.dtype)
            qkv = self._linear(x, layer, 0)
            q = self._rotate(qkv[:, :nq].view(n, self.heads, self.head_dim), cos, sin).to(self.dtype)
            k = self._rotate(qkv[:, nq:nq + nkv].view(n, self.kv_heads, self.head_dim), cos, sin).to(self.dtype)
            v = qkv[:, nq + nkv:].view(n, self.kv_heads, self.head_dim)
            q, k, v = (self._rows(t, flat, rows, width) for t in (q, k, v))  # [rows, heads, width, dim]
            if past is not None:
                k = torch.cat([past[i][0], k], dim=-2)
                v = torch.cat([past[i][1], v], dim=-2)
            else:
                k, v = k.contiguous(), v.contiguous()
            out.append((k, v))
            if grouped:
                a = F.scaled_dot_product_attention(q.contiguous().view(rows, self.kv_heads, group * width, -1), k, v,
                                                   attn_mask=attn_mask, scale=self.head_dim ** -0.5)
                a = a.view(rows, self.heads, width, self.head_dim)
            else:
                a = F.scaled_dot_product_attention(q.contiguous(), k, v, attn_mask=attn_mask,
                                                   scale=self.head_dim ** -0.5, enable_gqa=self.heads != self.kv_heads)
            a = a.transpose(1, 2).reshape(rows * width, nq)
            h = h + self._linear(a if flat is None else a[flat], layer, 1)
            x = self._norm(h, layer.norm_post).to(self.dtype)
            gate, up = self._linear(x, layer, 2).chunk(2, dim=-1)
            h = h + self._linear(F.silu(gate) * up, layer, 3)
        h = self._norm(h, self.norm)
        if flat is not None:
            h = h.new_zeros(rows * width, h.shape[-1]).index_copy_(0, flat, h)
        return h.view(rows, width, -1), tuple(out)

    @staticmethod
    def _rows(t: torch.Tensor, flat: Optional[torch.Tensor], rows: int, width: int) -> torch.Tensor:
        """[n, heads, dim] of the real tokens -> [rows, heads, width, dim], zeros where a row is padded."""
        if flat is not None:
            t = t.new_zeros(rows * width, *t.shape[1:]).index_copy_(0, flat, t)
        return t.view(rows, width, *t.shape[1:]).transpose(1, 2)


def lean_forward(model: Any) -> Optional[LeanLlama]:
    """The model's LeanLlama (built once per model and kept on it), or None where it does not apply."""
    lean = model.__dict__.get("_padellm_lean")
    if lean is None and supports(model):
        lean = LeanLlama(model)
        model.__dict__["_padellm_lean"] = lean
    return lean
