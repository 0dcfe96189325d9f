"""engine/lean.py: our forward pass gives transformers' numbers bitwise, on every pass shape we run."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.kv import extend, extend_tree
from spacy_padellm.engine.lean import lean_forward, supports
from spacy_padellm.engine.tree import Trie
from spacy_padellm.prompts import get_template

from helpers import LABELS, SENTENCES


def load(folder, dtype, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_and_tree_passes_equal_transformers_bitwise(tiny_llama, dtype):
    model, tok = load(tiny_llama, dtype)
    lean = lean_forward(model)
    assert lean is not None
    assert lean.grouped == (dtype == torch.bfloat16)  # both attention calls are compared below
    lean.pack = lean.weight_left = lean.prepack = False  # transformers' shapes and order (the tests below: ours)
    segs = [tok(s)["input_ids"] for s in ("Paris is in France .", "EU rejects German call", "Hi")]
    # a first pass of ragged rows (left padding), then a second pass on its cache
    plain, s_plain = extend(model, None, segs, 0)
    ours, s_ours = extend(model, None, segs, 0, lean=lean)
    assert torch.equal(plain, ours)
    for (k1, v1), (k2, v2) in zip(s_plain.layers, s_ours.layers):  # real columns only: padding is never read
        real = s_plain.mask.bool()
        assert torch.equal(k1.transpose(1, 2)[real], k2.transpose(1, 2)[real])
        assert torch.equal(v1.transpose(1, 2)[real], v2.transpose(1, 2)[real])
    nxt = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]  # same width: all n_logits positions are real
    assert torch.equal(extend(model, s_plain, nxt, 0, n_logits=3)[0], extend(model, s_ours, nxt, 0, n_logits=3, lean=lean)[0])
    # a tree pass from nothing, then one on branches cut out of it
    tries = [Trie.of([segs[0] + [20, 21], segs[0] + [22]]), Trie.of([segs[1] + [23], segs[1] + [24, 25, 26]])]
    want = [t.ends for t in tries]
    (la, ta), (lb, tb) = extend_tree(model, None, tries, 0, want), extend_tree(model, None, tries, 0, want, lean=lean)
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    paths = [tries[0].path(tries[0].ends[1]), tries[1].path(tries[1].ends[0]), tries[1].path(tries[1].ends[1])]
    ba, bb = ta.branch([0, 1, 1], [0, 0, 0], paths), tb.branch([0, 1, 1], [0, 0, 0], paths)
    more = [Trie.of([[30, 31], [30, 32, 33]]), Trie.of([[34]]), Trie.of([[35, 36]])]
    la, _ = extend_tree(model, ba, more, 0, [t.ends for t in more])
    lb, _ = extend_tree(model, bb, more, 0, [t.ends for t in more], lean=lean)
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert torch.equal(extend(model, ba, [[5], [6], [7]], 0)[0], extend(model, bb, [[5], [6], [7]], 0, lean=lean)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_skips_the_linear_layers_and_changes_no_real_token(tiny_llama, dtype):
    """Packed (only real tokens through the matmuls) against padded passes: row and tree shapes."""
    model, tok = load(tiny_llama, dtype)
    lean = lean_forward(model)
    segs = [tok(s)["input_ids"] for s in ("Paris is in France .", "EU rejects German call", "Hi")]
    heights = []
    from spacy_padellm.engine import kv, lean as lean_module
    linear, packed_linear, output_logits = lean_module.linear, lean_module.packed_linear, kv.output_logits

    def counting(x, w, *a):
        heights.append(x.shape[0])
        return linear(x, w, *a)

    def counting_packed(x, p):  # where the weights are prepacked (engine/matmul.py)
        heights.append(x.shape[0])
        return packed_linear(x, p)

    def counting_head(model, hidden):
        heights.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return output_logits(model, hidden)

    def run(pack, fn):
        lean.pack = pack
        heights.clear()
        lean_module.linear, lean_module.packed_linear, kv.output_logits = counting, counting_packed, counting_head
        try:
            return fn(), list(heights)
        finally:
            lean_module.linear, lean_module.packed_linear, kv.output_logits = linear, packed_linear, output_logits

    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.0, rtol=0.0)
    (padded, s_pad), h_pad = run(False, lambda: extend(model, None, segs, 0, lean=lean))
    (packed, s_pack), h_pack = run(True, lambda: extend(model, None, segs, 0, lean=lean))
    real = sum(map(len, segs))
    assert set(h_pad[:-1]) == {3 * max(map(len, segs))} and set(h_pack[:-1]) == {real}  # the last: output layer
    torch.testing.assert_close(packed, padded, **tol)
    # a speculating pass (rows of 1 and 3 tokens) on the packed cache: logits of real columns only
    nxt = [[5], [8, 9, 10], [11]]
    (la, _), _ = run(False, lambda: extend(model, s_pad, nxt, 0, n_logits=3, lean=lean))
    (lb, _), h = run(True, lambda: extend(model, s_pack, nxt, 0, n_logits=3, lean=lean))
    assert h[-1] == 5  # the output layer ran on the 5 real positions, not 3 x 3
    for row, seg in enumerate(nxt):
        torch.testing.assert_close(lb[row, 3 - len(seg):], la[row, 3 - len(seg):], **tol)
        assert not lb[row, : 3 - len(seg)].any()
    tries = [Trie.of([segs[0] + [20, 21], segs[0] + [22]]), Trie.of([segs[2] + [23]])]
    want = [t.ends for t in tries]
    (ta, _), _ = run(False, lambda: extend_tree(model, None, tries, 0, want, lean=lean))
    (tb, _), h = run(True, lambda: extend_tree(model, None, tries, 0, want, lean=lean))
    assert h[0] == sum(len(t.tokens) for t in tries)
    for x, y in zip(ta, tb):
        torch.testing.assert_close(y, x, **tol)
    lean.pack = True


def test_fusing_leaves_the_model_as_it_was(tiny_llama):
    """The module weights become views into the fused ones: transformers' forward gives the same logits
    after, and no weight is held twice."""
    model, tok = load(tiny_llama, torch.float32)
    ids = torch.tensor([tok("Paris is in France .")["input_ids"]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    lean = lean_forward(model)
    assert lean_forward(model) is lean  # built once per model
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, before)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + attn.q_proj.weight.numel() * 4


def test_other_models_keep_the_transformers_forward(tiny_llama, tiny_gpt2, tiny_qwen2):
    from peft import LoraConfig, get_peft_model

    assert not supports(load(tiny_gpt2, torch.float32)[0])
    assert not supports(load(tiny_qwen2, torch.float32)[0])  # q/k/v biases
    assert not supports(load(tiny_llama, torch.float32, attn_implementation="eager")[0])
    lora = get_peft_model(load(tiny_llama, torch.float32)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    assert not supports(lora) and lean_forward(lora) is None  # LoRA layers not merged: not plain linears


@pytest.mark.parametrize("tree", [True, False])
def test_decoder_output_is_the_same_with_and_without(tiny_llama, tree):
    model, tok = load(tiny_llama, torch.bfloat16)
    out = []
    for lean in (False, True):
        # extras by the fixed rule (always on here): timed choices could differ between the two decoders,
        # and a token scored in a pass of another shape differs in its last bits
        dec = Decoder(model, tok, get_template("en"), max_new_tokens=5, tree=tree, lean_forward=lean,
                      small_batch=len(SENTENCES))
        assert (dec.runner.lean is not None) == lean
        out.append([(p.counts, [(m.label, m.text, m.logprob) for m in p.mentions])
                    for p in dec.predict(SENTENCES, LABELS, [3] * len(SENTENCES))])
    assert out[0] == out[1]


def test_float32_linears_of_few_rows_put_the_weight_left_with_the_same_numbers():
    from spacy_padellm.engine.matmul import linear, weight_left

    w = torch.randn(96, 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    cases = [(1, False), (2, True), (8, True), (128, True), (129, False)]
    try:
        assert [weight_left(torch.randn(r, 40), w) for r, _ in cases] == [left for _, left in cases]
        torch.set_num_threads(1)  # one thread: the order pays only for fewer rows
        assert weight_left(torch.randn(48, 40), w) and not weight_left(torch.randn(49, 40), w)
    finally:
        torch.set_num_threads(threads)
    for rows, left in [(1, False), (2, True), (8, True)]:
        x = torch.randn(rows, 40)
        assert weight_left(x, w) is left
        out = linear(x, w)
        assert out.shape == (rows, 96) and out.is_contiguous()
        torch.testing.assert_close(out, torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
    assert not weight_left(torch.randn(8, 40, dtype=torch.bfloat16), w.bfloat16())  # oneDNN's kernels
    assert torch.equal(linear(torch.ones(8, 40), w, left=False), torch.nn.functional.linear(torch.ones(8, 40), w))


def _can_prepack(dtype: torch.dtype) -> bool:
    from spacy_padellm.engine.matmul import prepacked

    return prepacked(torch.ones(8, 8, dtype=dtype)) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weights_decode_the_same_and_follow_a_written_weight(tiny_llama, dtype):
    """The prepacked oneDNN copies (engine/matmul.py; on by rule for float32 on the CPU, for bf16 where the
    CPU has AMX, forced on here): logits within a rounding of the plain linears', the same decoded output,
    and a weight written in place after packing (an adapter merged later) is packed again before the next
    pass. float32 must be prepackable wherever torch has oneDNN; bf16 needs AVX512 (torch's check)."""
    from spacy_padellm.engine.matmul import packed_linear, prepacked

    if dtype == torch.bfloat16 and not _can_prepack(dtype):
        pytest.skip("oneDNN cannot prepack bf16 weights on this CPU (torch: it needs AVX512-BW/VL/DQ or AVX-NE-CONVERT)")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    bf16 = dtype == torch.bfloat16
    tol = dict(atol=0.05, rtol=0.02) if bf16 else dict(atol=1e-4, rtol=1e-4)
    w, x = torch.randn(48, 40).to(dtype), torch.randn(5, 40).to(dtype)
    torch.testing.assert_close(packed_linear(x, prepacked(w)), torch.nn.functional.linear(x, w),
                               **(dict(atol=2e-2, rtol=1e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)))
    model, tok = load(tiny_llama, dtype)
    lean = lean_forward(model)
    if not bf16:
        assert lean.prepack and all(layer.packed is not None for layer in lean.layers)  # the rule, unforced
    segs = [tok(s)["input_ids"] for s in ("Paris is in France .", "EU rejects German call", "Hi")]
    lean.prepack = False
    plain, _ = extend(model, None, segs, 0, lean=lean)
    lean.prepack = True
    lean.pack_weights()
    assert lean.prepack and all(layer.packed is not None for layer in lean.layers)
    packed, _ = extend(model, None, segs, 0, lean=lean)
    torch.testing.assert_close(packed, plain, **tol)
    out = []
    for on in (False, True):
        lean.prepack = on
        dec = Decoder(model, tok, get_template("en"), max_new_tokens=5, tree=True, small_batch=len(SENTENCES))
        assert dec.runner.lean is lean
        out.append([(p.counts, [(m.label, m.text) for m in p.mentions])
                    for p in dec.predict(SENTENCES, LABELS, [3] * len(SENTENCES))])
    assert out[0] == out[1]
    with torch.no_grad():  # a weight written after packing: the packed copies follow it
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    lean.prepack = False
    want, _ = extend(model, None, segs, 0, lean=lean)
    lean.prepack = True
    got, _ = extend(model, None, segs, 0, lean=lean)
    assert not torch.allclose(want, plain, **tol)  # the write changed the output
    torch.testing.assert_close(got, want, **tol)
