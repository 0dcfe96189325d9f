"""`dtype: int8`: dynamic int8 linears for CPUs without fast bf16, with activation outliers smoothed first.

An approximate mode, opt-in. Plain dynamic int8 of SmolLM2's decoder linears lost 39-42 string F1 on CoNLL
dev (a few input channels of each linear hold values far above the rest, and a per-tensor int8 scale set by
them rounds every other channel to a few levels; benchmarks/int8_experiments.txt). SmoothQuant (Xiao et al.,
2023) moves that range into the weights: per input channel j, s_j = max|X_j|^ALPHA / max|W_j|^(1 - ALPHA),
X / s and W * s give the same products. In a Llama layer each division folds into the layer before, so the
float32 model is unchanged up to rounding:

    q/k/v and gate/up   X = RMSNorm(h) * g       g / s
    o_proj              X = attention(v)         v_proj's output rows / s (per key head's channel: the max
                                                 over the query heads that share it)
    down_proj           stays float32: its input, silu(gate) * up, kept outliers that smoothing did not
                        tame (every linear in int8 lost 1.7-4.7 string F1, with down_proj in float32 the
                        loss was within 0.3: benchmarks/NOTES.md, session 19)

The maxima come with the adapter (MAXIMA_FILE, written by project/scripts/int8_calibrate.py from its
training sentences), else from a calibration pass at load over the prompts of CALIBRATION (sentences
written for this, not from any dataset) under the pipe's labels. Then q/k/v, o and gate/up run through fbgemm's
dynamic int8 linear (per-output-channel int8 weights, the activations quantized per call): in
engine/lean.py on its fused weights, else as torch's quantized modules in transformers' forward.

Unlike the float modes, int8's output depends on what shares a pass: the activation scale is one range over
every row of the call (other documents, speculated rows), so a document can decode differently alone and in
a batch, and with the extras chosen from timing (engine/extras.py), between two runs. On CoNLL dev its F1
was -0.33 to +0.35 from float32's over the samples measured, and calibration maxima 1e-5 apart (the same
sentences on 1 and 2 threads) moved it by 0.6 on 1,000 documents: the int8 rounding decides near-ties.

torch 2.13 (our pin) warns that its quantized tensors and eager-mode quantization are deprecated in favour
of torchao; fbgemm's linear ops are what run here, and a torch without them will need torchao's kernels.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

MAXIMA_FILE = "int8_maxima.safetensors"  # in an adapter folder: `calibrate`'s maxima over its training data
ALPHA = 0.8  # the migration strength that held the F1 (0.7: -0.60 on 650 dev documents, 0.9: -0.27 on 400)
KEEP_FLOAT = ("down_proj",)
MARK = "_padellm_int8"  # set on the model once smoothed: lean.py and the runner quantize its linears

CALIBRATION = (
    "Maria Lopez, a senior engineer at Siemens, flew from Madrid to Chicago on Monday.",
    "The United Nations asked Canada and Brazil to send more aid to the region.",
    "Shares of Toyota fell 3 percent in Tokyo after the company cut its forecast.",
    "Coach Peter Hansen said Ajax would play without their captain in the Champions League final.",
    "The European Commission fined Google 2.4 billion euros, Reuters reported from Brussels.",
    "President Ellen Carter met German Chancellor Olaf Brandt at the White House.",
    "Heavy rain flooded parts of Bangladesh and eastern India, the Red Cross said.",
    "Apple and Microsoft reported higher profits, lifting the Nasdaq in New York.",
    "The Australian Open starts in Melbourne next week without Rafael Ortiz.",
    "A Boeing 737 operated by Lufthansa landed safely in Frankfurt after an engine warning.",
    "Officials in Nairobi said the Kenya Wildlife Service had counted more elephants this year.",
    "Ahmed Khalil of Egypt won the marathon in Berlin, ahead of two runners from Ethiopia.",
    "The Federal Reserve left interest rates unchanged, and the dollar rose against the yen.",
    "Dutch police arrested two men in Rotterdam in connection with the robbery.",
    "Paris Saint-Germain signed the Argentine striker from Inter Milan for an undisclosed fee.",
    "The Labour Party won the by-election in Leeds, the BBC said.",
)


@contextmanager
def recorded_maxima(model: Any, real: Optional[List[torch.Tensor]] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """While open, the max |input| per channel of every decoder linear (named as in model.model.layers) over
    the tokens of each forward pass; `real`, if given, holds the [rows, width] mask of the pass running now
    (its padding's inputs are left out)."""
    maxima: Dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.model.layers.named_modules():
        if isinstance(module, nn.Linear):
            def hook(mod: Any, args: Any, out: Any, name: str = name) -> None:
                x = args[0].detach()
                x = x[real[0]] if real else x.reshape(-1, x.shape[-1])
                seen = x.abs().amax(dim=0).float()
                maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen
            hooks.append(module.register_forward_hook(hook))
    try:
        yield maxima
    finally:
        for h in hooks:
            h.remove()


def calibrate(model: Any, tokenizer: Any, template: Any, labels: Sequence[str],
              texts: Sequence[str] = CALIBRATION) -> Dict[str, torch.Tensor]:
    """Per decoder linear, `recorded_maxima` over the mention prompts of `texts` under `labels` (each holds
    its count prompt), through transformers' forward: one batch per text, right-padded (a causal model's
    real tokens do not see the padding after them, and the padding's own inputs are left out)."""
    from ..prompts import encode, special_prefix

    real: List[torch.Tensor] = []  # the mask of the batch running now
    bos = special_prefix(tokenizer)  # as the runner encodes prompts
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with recorded_maxima(model, real) as maxima, torch.inference_mode():
        for text in texts:
            rows = [encode(tokenizer, template.mention_prompt(text, label, 1, 1), bos) for label in labels]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
            real[:] = [mask.bool()]
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return maxima


@torch.no_grad()
def smooth(model: Any, maxima: Dict[str, torch.Tensor], alpha: float = ALPHA,
           keep_float: Sequence[str] = KEEP_FLOAT) -> None:
    """Fold s into the layer before each smoothed linear and multiply the linear's input columns by s (the
    float32 model's output stays the same up to rounding). Linears in `keep_float` are not smoothed."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    for i, layer in enumerate(model.model.layers):
        att, mlp = layer.self_attn, layer.mlp

        def scales(name: str, linears: List[nn.Linear]) -> torch.Tensor:
            x = maxima[f"{i}.{name}"].clamp_min(1e-5)
            w = torch.cat([lin.weight.abs() for lin in linears], dim=0).amax(dim=0).float().clamp_min(1e-5)
            return (x.pow(alpha) / w.pow(1 - alpha)).clamp_min(1e-5)

        s = scales("self_attn.q_proj", [att.q_proj, att.k_proj, att.v_proj])
        layer.input_layernorm.weight.div_(s.to(layer.input_layernorm.weight.dtype))
        for lin in (att.q_proj, att.k_proj, att.v_proj):
            lin.weight.mul_(s.to(lin.weight.dtype))
        s = scales("mlp.gate_proj", [mlp.gate_proj, mlp.up_proj])
        layer.post_attention_layernorm.weight.div_(s.to(layer.post_attention_layernorm.weight.dtype))
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight.mul_(s.to(lin.weight.dtype))
        if "down_proj" not in keep_float:
            s = scales("mlp.down_proj", [mlp.down_proj])
            _div_rows(mlp.up_proj, s)
            mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
        if "o_proj" not in keep_float:  # o_proj's input channel (query head q, dim d) is v's (q // group, d)
            group = heads // kv_heads
            s_kv = scales("self_attn.o_proj", [att.o_proj]).view(kv_heads, group, head_dim).amax(dim=1)
            _div_rows(att.v_proj, s_kv.reshape(-1))
            att.o_proj.weight.mul_(s_kv.repeat_interleave(group, dim=0).reshape(-1).to(att.o_proj.weight.dtype))


def save_maxima(maxima: Dict[str, torch.Tensor], folder: str, source: str) -> Path:
    """Write `calibrate`'s maxima into an adapter folder, for `make_int8` to read."""
    from safetensors.torch import save_file

    path = Path(folder) / MAXIMA_FILE
    save_file({k: v.contiguous() for k, v in maxima.items()}, str(path),
              metadata={"source": source, "adapter_sha256": adapter_hash(folder)})
    return path


def adapter_hash(folder: str) -> str:
    """sha256 of the adapter's weights: maxima measured with other weights would smooth the wrong ranges."""
    import hashlib

    weights = Path(folder) / "adapter_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""


def load_maxima(adapter: Optional[str], model: Any) -> Optional[Dict[str, torch.Tensor]]:
    """The adapter's stored maxima, or None where it has none; ValueError where they do not fit the model."""
    if adapter is None or not (Path(adapter) / MAXIMA_FILE).is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(adapter) / MAXIMA_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("adapter_sha256", "")
        maxima = load_file(str(path))
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable maxima file ({e}); rerun "
                         "project/scripts/int8_calibrate.py") from None
    if stored and stored != adapter_hash(adapter):
        raise ValueError(f"{path} was measured with other adapter weights; rerun project/scripts/int8_calibrate.py")
    wanted = {name: mod.in_features for name, mod in model.model.layers.named_modules() if isinstance(mod, nn.Linear)}
    finite = all(bool(torch.isfinite(v).all()) for v in maxima.values())
    if {k: v.shape[0] for k, v in maxima.items()} != wanted or not finite:
        raise ValueError(f"{Path(adapter) / MAXIMA_FILE} does not fit this model's linears (another base "
                         "model?); delete it to calibrate on the built-in sentences")
    return maxima


def _div_rows(linear: nn.Linear, s: torch.Tensor) -> None:
    """Divide a linear's outputs by s: its weight's rows and its bias (Qwen2's v_proj has one)."""
    linear.weight.div_(s[:, None].to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.div_(s.to(linear.bias.dtype))


def make_int8(model: Any, tokenizer: Any, template: Any, labels: Sequence[str], adapter: Optional[str] = None
              ) -> Any:
    """Smooth a float32 CPU model for int8 and mark it; its linears are quantized where it runs (lean.py's
    fused weights, else `quantize_modules` from the runner). The maxima are the adapter's (MAXIMA_FILE,
    from its training data: on CoNLL dev, 64 training sentences held the F1 where the 16 built-in ones lost
    0.45), else a calibration pass over CALIBRATION."""
    if model.device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("int8 needs a float32 model on the CPU")
    if getattr(model.config, "model_type", None) not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ValueError(f"int8 smoothing knows Llama-like layers, not {model.config.model_type!r}")
    if is_int8(model):
        return model  # smoothed already: a second smoothing would divide by s twice
    if "_padellm_lean" in model.__dict__:
        raise ValueError("int8 must be applied before the engine's forward pass is built on the model")
    maxima = load_maxima(adapter, model)
    smooth(model, maxima if maxima is not None else calibrate(model, tokenizer, template, labels))
    model.__dict__[MARK] = {"alpha": ALPHA, "keep_float": KEEP_FLOAT, "modules": False}
    return model


def is_int8(model: Any) -> bool:
    return MARK in model.__dict__


def quantize_modules(model: Any) -> None:
    """torch's dynamic int8 modules for every decoder linear but KEEP_FLOAT, once: for transformers'
    forward, which calls the modules."""
    mark = model.__dict__[MARK]
    if not mark["modules"]:
        quantize_linears(model, mark["keep_float"])
        mark["modules"] = True


def quantize_linears(model: Any, keep_float: Sequence[str]) -> None:
    """Dynamic int8 (per-channel weights) for every decoder linear whose name does not end in `keep_float`."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, mod in model.model.layers.named_modules()
            if isinstance(mod, nn.Linear) and not name.endswith(tuple(keep_float))}
    with warnings.catch_warnings():  # as in packed_int8; eager-mode quantization is deprecated for torchao
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantize_dynamic(model.model.layers, spec, dtype=torch.qint8, inplace=True)


def packed_int8(weight: torch.Tensor) -> Any:
    """fbgemm's packed int8 weight of a float32 [out, in] weight, per output channel, as torch's dynamic
    quantized Linear packs it (the same numbers as `quantize_modules`)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    observer = per_channel_dynamic_qconfig.weight()
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors, not yet fbgemm's linear
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(weight.float(), scales.double(), zero_points.long(), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


def int8_linear(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """x [n, in] float32 through a packed int8 weight: the activations quantized per call (reduce_range as
    torch's dynamic Linear does on x86, so int16 accumulations cannot saturate)."""
    return torch.ops.quantized.linear_dynamic(x, packed, True)
