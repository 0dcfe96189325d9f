"""bf16 inference: bf16 matmuls, float32 residual stream, float32 scores for the winning candidates."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.kv import extend
from spacy_padellm.engine.precision import RESCORED, inference_precision, output_logits
from spacy_padellm.prompts import get_template

from helpers import LABELS, SENTENCES


def load(folder, dtype):
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).eval(), AutoTokenizer.from_pretrained(folder)


def test_residual_stream_stays_float32_and_the_context_cleans_up(tiny_llama):
    model, tok = load(tiny_llama, torch.bfloat16)
    seen = []
    hook = model.model.layers[1].register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].dtype)
                                                            if args else seen.append(kwargs["hidden_states"].dtype),
                                                            with_kwargs=True)
    ids = torch.tensor([tok("Paris is in France .")["input_ids"]])
    with torch.inference_mode(), inference_precision(model):
        model(input_ids=ids)
    assert seen == [torch.float32]  # the residual entering layer 1: float32, while the weights are bf16
    with torch.inference_mode():
        model(input_ids=ids)  # outside the context: plain bf16 again, no hook left behind
    hook.remove()
    assert seen[-1] == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_float32_models_are_untouched(tiny_llama):
    model, tok = load(tiny_llama, torch.float32)
    ids = torch.tensor([tok("Paris is in France .")["input_ids"]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with inference_precision(model):
            same = model(input_ids=ids).logits
        ours = output_logits(model, model.model(input_ids=ids).last_hidden_state)
    assert torch.equal(plain, same)
    # the output layer may run with its weight left (engine/matmul.py): the same products, another order
    torch.testing.assert_close(ours, plain.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(-1), plain.argmax(-1))


def test_winning_candidates_are_scored_in_float32(tiny_llama):
    model, _ = load(tiny_llama, torch.bfloat16)
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, model.config.hidden_size)
    with torch.inference_mode():
        got = output_logits(model, hidden)
    assert got.dtype == torch.float32 and got.shape == (3, 5, model.config.vocab_size)
    exact = hidden.double() @ model.get_output_embeddings().weight.double().T
    plain = torch.nn.functional.linear(hidden.bfloat16(), model.get_output_embeddings().weight).float()
    top = plain.topk(RESCORED, dim=-1).indices
    # rescored: float32 sums of bf16 weights times the float32 hidden state, ~1e-7 off (bf16: ~1e-3 off)
    assert torch.allclose(got.gather(-1, top).double(), exact.gather(-1, top), atol=1e-5, rtol=0)
    assert not torch.allclose(plain.gather(-1, top).double(), exact.gather(-1, top), atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))


@pytest.mark.parametrize("tree", [True, False])
def test_bf16_engine_decodes_with_float32_logits(tiny_llama, tree):
    """Both paths run end to end in bf16 (mixed KV dtypes: float32 keys after the rotary step, bf16
    values), and a row fed its tokens one pass at a time agrees with the same row fed in one pass."""
    model, tok = load(tiny_llama, torch.bfloat16)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=4, tree=tree)
    preds = dec.predict(SENTENCES, LABELS, [3] * len(SENTENCES))
    assert len(preds) == len(SENTENCES) and all(set(p.counts) == set(LABELS) for p in preds)
    ids = dec.encode(get_template("en").prompt(SENTENCES[0], "PER"))
    whole, _ = extend(model, None, [ids], dec.pad_id)
    _, state = extend(model, None, [ids[:-3]], dec.pad_id)
    stepped, _ = extend(model, state, [ids[-3:]], dec.pad_id)
    assert whole.dtype == torch.float32
    assert torch.allclose(whole, stepped, atol=0.1)
    assert all(k.dtype == v.dtype == torch.bfloat16 for k, v in state.layers)  # a bf16 cache


def test_bf16_cache_changes_no_number(tiny_llama):
    """Attention casts its operands to bf16 under autocast: a cache stored in bf16 gives the same logits
    as one holding the float32 keys of the rotary step."""
    import spacy_padellm.engine.precision as precision
    from transformers import DynamicCache

    model, tok = load(tiny_llama, torch.bfloat16)
    ids = tok("Paris is in France and Berlin is in Germany .")["input_ids"]
    out = []
    for cache_class in (precision.Bf16Cache, DynamicCache):
        original, precision.Bf16Cache = precision.Bf16Cache, cache_class
        try:
            _, state = extend(model, None, [ids[:-4]], 0)
            out.append(extend(model, state, [ids[-4:]], 0, n_logits=4)[0])
        finally:
            precision.Bf16Cache = original
        assert state.layers[0][0].dtype == (torch.bfloat16 if cache_class is original else torch.float32)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("family", ["tiny_qwen2", "tiny_gpt2"])
def test_other_families_run_in_bf16(family, request):
    """qwen2 takes the float32 residual stream like llama; GPT-2's LayerNorm rejects mixed dtypes on CPU,
    so it keeps all-bf16 activations (and the row path) instead of crashing."""
    model, tok = load(request.getfixturevalue(family), torch.bfloat16)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=3)
    assert dec.tree == (family == "tiny_qwen2")
    preds = dec.predict(SENTENCES[:2], LABELS, [2, 2])
    assert all(set(p.counts) == set(LABELS) for p in preds)
