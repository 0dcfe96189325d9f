"""engine/int8.py, `dtype: int8`: the smoothing leaves the float32 model's output alone, the engine's int8
pass computes what torch's int8 modules compute, the maxima travel with the adapter, bad uses are refused."""
from __future__ import annotations

import pytest
import spacy
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from spacy_padellm.engine import int8
from spacy_padellm.engine.lean import lean_forward
from spacy_padellm.engine.loading import resolve_dtype
from spacy_padellm.errors import PaDeLLMError
from spacy_padellm.prompts import get_template

from helpers import LABELS


def load(path: str) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def random_maxima(model: nn.Module) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {name: torch.rand(mod.in_features, generator=gen) * 10 + 0.1
            for name, mod in model.model.layers.named_modules() if isinstance(mod, nn.Linear)}


IDS = torch.tensor([[5, 17, 230, 41, 9, 77, 3, 12]])


@pytest.mark.parametrize("family,keep_float", [("llama", ()), ("llama", int8.KEEP_FLOAT), ("qwen2", ())])
def test_smoothing_leaves_the_float_model_unchanged(request, family, keep_float):
    """s folds into the RMSNorm weights, v_proj's rows and bias (per key head: the tiny models have 4 query
    heads on 2 key heads; Qwen2's v_proj has a bias) and up_proj's rows; the linears' columns take s: the
    same logits, whatever the maxima."""
    model = load(request.getfixturevalue(f"tiny_{family}"))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_()  # initialised to zero: a bias that is not folded would go unseen
    with torch.no_grad():
        before = model(IDS).logits
    original_v = model.model.layers[0].self_attn.v_proj.weight.clone()
    int8.smooth(model, random_maxima(model), alpha=0.8, keep_float=keep_float)
    with torch.no_grad():
        after = model(IDS).logits
    assert not torch.equal(model.model.layers[0].self_attn.v_proj.weight, original_v)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_the_engine_int8_pass_is_torch_int8_modules(tiny_llama, tokenizer):
    """lean.py's int8 linears on its fused weights against transformers' forward through torch's dynamic
    int8 modules: the same quantization (per output channel, activations per call), so the same logits
    up to float rounding; down_proj stays float32 in both. Both differ from the float32 model."""
    models = [load(tiny_llama) for _ in range(3)]
    with torch.no_grad():
        float_logits = models[2](IDS).logits[0]
    for model in models[:2]:
        int8.make_int8(model, tokenizer, get_template("en"), LABELS)
    lean = lean_forward(models[0])
    assert lean is not None and lean.layers[0].int8 is not None
    int8.quantize_modules(models[1])
    assert type(models[1].model.layers[0].mlp.down_proj) is nn.Linear
    assert "quantized" in type(models[1].model.layers[0].self_attn.q_proj).__module__
    with torch.inference_mode():
        positions = torch.arange(IDS.shape[1])[None]
        hidden, _ = lean(IDS, torch.ones_like(IDS), positions, None)
        lean_logits = models[0].lm_head(hidden)[0]
        hf_logits = models[1](IDS).logits[0]
    scale = float_logits.abs().max()
    assert (lean_logits - hf_logits).abs().max() < 0.02 * scale
    assert (lean_logits - float_logits).abs().max() > 1e-4 * scale  # int8 is approximate


def test_one_int8_linear_is_torchs_dynamic_int8_linear():
    """packed_int8 + int8_linear compute exactly what torch's dynamic quantized Linear computes."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    gen = torch.Generator().manual_seed(3)
    linear = nn.Linear(48, 24, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 48, generator=gen))
    linear.qconfig = per_channel_dynamic_qconfig
    x = torch.randn(7, 48, generator=gen) * torch.linspace(0.1, 20, 48)  # channels of unequal range
    reference = DynamicLinear.from_float(linear)(x)
    assert torch.equal(int8.int8_linear(x, int8.packed_int8(linear.weight.detach())), reference)


def test_maxima_travel_with_the_adapter(tiny_llama, tokenizer, tmp_path):
    model = load(tiny_llama)
    maxima = int8.calibrate(model, tokenizer, get_template("en"), LABELS, texts=["Ada met Bob in Paris ."])
    assert set(maxima) == set(random_maxima(model)) and all(bool((v > 0).all()) for v in maxima.values())
    assert int8.load_maxima(str(tmp_path), model) is None  # no file: the component calibrates
    int8.save_maxima(maxima, str(tmp_path), "one sentence")
    loaded = int8.load_maxima(str(tmp_path), model)
    assert all(torch.equal(loaded[k], maxima[k]) for k in maxima)
    int8.save_maxima({k: v[:-1] for k, v in maxima.items()}, str(tmp_path), "another model's")
    with pytest.raises(ValueError, match="does not fit"):
        int8.load_maxima(str(tmp_path), model)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    int8.save_maxima(maxima, str(tmp_path), "these weights")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"other weights")  # the adapter retrained
    with pytest.raises(ValueError, match="other adapter weights"):
        int8.load_maxima(str(tmp_path), model)
    (tmp_path / int8.MAXIMA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable maxima file"):
        int8.load_maxima(str(tmp_path), model)


def test_make_int8_once_and_before_the_engine_pass(tiny_llama, tokenizer):
    model = load(tiny_llama)
    int8.make_int8(model, tokenizer, get_template("en"), LABELS)
    norm = model.model.layers[0].input_layernorm.weight.clone()
    int8.make_int8(model, tokenizer, get_template("en"), LABELS)  # smoothed once only
    assert torch.equal(model.model.layers[0].input_layernorm.weight, norm)
    other = load(tiny_llama)
    lean_forward(other)  # the engine's pass holds fused float weights already
    with pytest.raises(ValueError, match="before the engine"):
        int8.make_int8(other, tokenizer, get_template("en"), LABELS)


@pytest.mark.parametrize("lean", [True, False])
def test_the_component_in_int8(tiny_llama, lean):
    """Both forward passes run the int8 linears: the engine's on its fused weights, transformers' through
    torch's quantized modules."""
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "int8", "device": "cpu",
                                        "max_new_tokens": 4, "threads": 1, "lean_forward": lean})
    docs = list(nlp.pipe(["Ada Lovelace met Charles Babbage in London .", "Paris is in France ."]))
    data = docs[0].user_data["padellm"]
    assert set(data["counts"]) == set(LABELS) and data["forward_passes"] > 0
    runner = nlp.get_pipe("padellm_ner").decoder.runner
    assert int8.is_int8(runner.model)
    if lean:
        packed = runner.lean.layers[0].packed  # None where oneDNN's copies are off; never q/k/v's under int8
        assert runner.lean.layers[0].int8 is not None and (packed is None or packed[0] is None)
    else:
        assert runner.lean is None and "quantized" in type(runner.model.model.layers[0].mlp.gate_proj).__module__
    with pytest.raises(PaDeLLMError, match="E010.*int8 runs on the CPU only"):
        resolve_dtype("int8", "cuda")


def test_int8_refuses_other_families(tiny_gpt2):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_gpt2, "labels": LABELS, "dtype": "int8", "device": "cpu"})
    with pytest.raises(PaDeLLMError, match="E010.*Llama-like layers, not 'gpt2'"):
        nlp("Ada met Bob .")


def test_int8_needs_float32_on_the_cpu(tiny_llama, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.bfloat16).eval()
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        int8.make_int8(model, tokenizer, get_template("en"), LABELS)


def test_unknown_dtype_names_int8(tiny_llama):
    nlp = spacy.blank("en")
    with pytest.raises(PaDeLLMError, match="int8"):
        nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float16"})
