"""The shared-prefix engine against plain, uncached computation on tiny random models."""
from __future__ import annotations

from typing import List

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.kv import Trie, extend, extend_tree, full_sequence_logits
from spacy_padellm.prompts import get_template

from helpers import LABELS, SENTENCES

TEXTS = SENTENCES + ["A much longer sentence about the United Nations , the World Bank and Angela Merkel in Berlin ."]


def load(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return model, tok


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
def test_shared_prefix_logits_equal_separate_sequences(family, request):
    model, tok = load(request.getfixturevalue(family))
    t = get_template("en")
    dec = Decoder(model, tok, t)
    docs = [dec.encode(t.doc_prefix(x)) for x in TEXTS[:3]]
    suffix = {lab: tok(lab + t.count_marker, add_special_tokens=False)["input_ids"] for lab in LABELS}
    _, doc_state = extend(model, None, docs, dec.pad_id)  # ragged prefixes in one pass
    rows = [(d, lab) for d in range(len(docs)) for lab in LABELS]
    logits, label_state = extend(model, doc_state.select([d for d, _ in rows]), [suffix[lab] for _, lab in rows],
                                 dec.pad_id)
    ref = full_sequence_logits(model, [docs[d] + suffix[lab] for d, lab in rows])
    torch.testing.assert_close(logits, ref, atol=5e-5, rtol=1e-4)
    # one more hop: a row cut back inside its prompt and fed a different continuation
    cut = [len(docs[d]) + len(suffix[lab]) - 1 for d, lab in rows]
    more = [[tok.eos_token_id, 33] for _ in rows]
    logits2, _ = extend(model, label_state.select(list(range(len(rows))), cut), more, dec.pad_id)
    ref2 = full_sequence_logits(model, [(docs[d] + suffix[lab])[:-1] + [tok.eos_token_id, 33] for d, lab in rows])
    torch.testing.assert_close(logits2, ref2, atol=5e-5, rtol=1e-4)


def greedy_reference(model, dec: Decoder, text: str, label: str, max_count: int):
    """Plain greedy decoding of one (doc, label), every step a full forward pass without any cache."""
    t = dec.template
    ids = dec.encode(t.prompt(text, label))
    digits = ""
    while len(digits) < 3:
        logits = full_sequence_logits(model, [ids])[0].masked_fill(~dec.count_allowed, float("-inf"))
        tok = int(logits.argmax())
        if tok not in dec.digit_ids:
            break
        digits += dec.digit_ids[tok]
        ids = ids + [tok]
        if digits == "0":  # a count is a canonical number: a leading 0 ends it
            break
    count = min(int(digits) if digits else 0, max_count)
    mentions = []
    for k in range(1, count + 1):
        ids = dec.encode(t.mention_prompt(text, label, count, k))
        out: List[int] = []
        score = 0.0
        while len(out) < dec.max_new_tokens:
            logp = torch.log_softmax(full_sequence_logits(model, [ids])[0], -1)
            tok = int(logp.argmax())
            if tok in dec.eos_ids:
                break
            out.append(tok)
            score += float(logp[tok])
            ids = ids + [tok]
        mentions.append((label, k, dec.tokenizer.decode(out), score))
    return count, mentions


def as_tuples(pred):
    return pred.counts, [(m.label, m.k, m.text, round(m.logprob, 3)) for m in pred.mentions]


@pytest.mark.parametrize("tree", [True, False])
def test_decoder_equals_plain_greedy_without_cache(tiny_llama, tree):
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=4, tree=tree, mentions_from_text=False)
    assert dec.tree is tree
    texts, caps = TEXTS[:3], [3, 2, 4]
    preds = dec.predict(texts, LABELS, caps)
    assert sum(len(p.mentions) for p in preds) > 0, "the test model must produce mentions to compare"
    for text, cap, pred in zip(texts, caps, preds):
        for label in LABELS:
            count, mentions = greedy_reference(model, dec, text, label, cap)
            assert pred.counts[label] == count
            got = [(m.label, m.k, m.text, m.logprob) for m in pred.mentions if m.label == label]
            assert [g[:3] for g in got] == [r[:3] for r in mentions]
            for g, r in zip(got, mentions):
                assert g[3] == pytest.approx(r[3], abs=1e-3)


def test_batched_equals_one_at_a_time_and_order_does_not_matter(tiny_llama):
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=5)
    caps = [5] * len(TEXTS)
    batched = [as_tuples(p) for p in dec.predict(TEXTS, LABELS, caps)]
    single = [as_tuples(dec.predict([x], LABELS, [5])[0]) for x in TEXTS]
    reverse = [as_tuples(p) for p in dec.predict(TEXTS[::-1], LABELS, caps)][::-1]
    assert batched == single == reverse
    assert any(m for _, m in batched)


def test_stats_count_passes_and_tokens(tiny_llama):
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=3)
    pred = dec.predict([TEXTS[0]], LABELS, [2])[0]
    n_mentions = len(pred.mentions)
    # generated: every sampled token (count digits + terminators, mention tokens + EOS)
    assert pred.stats["generated_tokens"] >= n_mentions + len(LABELS)
    assert pred.stats["prompt_tokens"] >= len(dec.encode(get_template("en").prompt(TEXTS[0], "PER")))
    # tree pass (+ count steps) + mention prefill + mention steps
    assert 1 <= pred.stats["forward_passes"] <= 1 + 3 + 1 + 3


def test_trie_merges_shared_prefixes():
    trie = Trie.of([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]])
    assert trie.tokens == [1, 2, 3, 4, 5]
    assert trie.parents == [-1, 0, 1, 1, 0]
    assert trie.ends == [2, 3, 4, 2]
    assert trie.path(3) == [0, 1, 3] and trie.depths() == [0, 1, 2, 2, 1]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2"])
def test_tree_pass_logits_equal_separate_sequences(family, request):
    """Text + every label prompt as one tree-masked row per doc, then branches cut out of it and fed on:
    the same logits as each whole sequence run alone."""
    model, tok = load(request.getfixturevalue(family))
    t = get_template("en")
    dec = Decoder(model, tok, t)
    prompts = [[dec.encode(t.prompt(x, lab)) for lab in LABELS] for x in TEXTS[:3]]
    tries = [Trie.of(p) for p in prompts]
    logits, tree = extend_tree(model, None, tries, dec.pad_id, [tr.ends for tr in tries])
    ref = full_sequence_logits(model, [q for p in prompts for q in p])
    torch.testing.assert_close(torch.cat(logits), ref, atol=5e-5, rtol=1e-4)
    rows = [(d, j) for d in range(3) for j in range(len(LABELS))]
    state = tree.branch([d for d, _ in rows], [0] * len(rows), [tries[d].path(tries[d].ends[j]) for d, j in rows])
    more = [[33, tok.eos_token_id] for _ in rows]
    logits2, _ = extend(model, state, more, dec.pad_id)
    ref2 = full_sequence_logits(model, [prompts[d][j] + [33, tok.eos_token_id] for d, j in rows])
    torch.testing.assert_close(logits2, ref2, atol=5e-5, rtol=1e-4)
    # a second tree pass on label rows cut back inside their prompts
    keeps = [len(prompts[d][j]) - 2 for d, j in rows]
    tries2 = [Trie.of([prompts[d][j][-2:] + [7], prompts[d][j][-2:] + [8, 9]]) for d, j in rows]
    logits3, _ = extend_tree(model, state.select(list(range(len(rows))), keeps), tries2, dec.pad_id,
                             [tr.ends for tr in tries2])
    ref3 = full_sequence_logits(model, [prompts[d][j] + tail for d, j in rows for tail in ([7], [8, 9])])
    torch.testing.assert_close(torch.cat(logits3), ref3, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_tree_path_equals_row_path(family, seed, tokenizer, tmp_path):
    """Random models babble counts of one to three digits: the tree path's guesses, verification and
    fallbacks must give the row path's counts, mentions and scores. In float64: a random model's logits
    are near-ties everywhere, and float32 rounding (4D vs 2D masks) would flip some argmaxes."""
    from helpers import build_tiny

    model, tok = load(build_tiny(family, tokenizer, tmp_path / "m", seed=seed))
    model = model.double()
    texts = TEXTS + ["Paris .", "Nothing here at all ."]
    caps = [6] * len(texts)
    rows = Decoder(model, tok, get_template("en"), max_new_tokens=5, tree=False).predict(texts, LABELS, caps)
    for guesses, speculate in ((0, 0), (2, 0), (2, 4)):
        dec = Decoder(model, tok, get_template("en"), max_new_tokens=5, count_guesses=guesses, speculate=speculate,
                      small_batch=len(texts))
        assert dec.tree
        got = dec.predict(texts, LABELS, caps)
        for a, b in zip(rows, got):
            assert (a.counts, a.raw_counts) == (b.counts, b.raw_counts)
            assert [(m.label, m.k, m.text, m.finished) for m in a.mentions] == \
                [(m.label, m.k, m.text, m.finished) for m in b.mentions]
            for x, y in zip(a.mentions, b.mentions):
                assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
            assert b.stats["generated_tokens"] == a.stats["generated_tokens"]


def test_gpt2_takes_the_row_path(tiny_gpt2):
    model, tok = load(tiny_gpt2)
    assert Decoder(model, tok, get_template("en")).tree is False


@pytest.mark.parametrize("tree", [True, False])
def test_count_bias_moves_counts_off_zero(tiny_llama, tree):
    """count_bias only touches the first count token: a huge bias leaves no label at 0 (and changes
    nothing once a count has started), and both paths agree under a bias."""
    model, tok = load(tiny_llama)
    model = model.double()
    texts = TEXTS[:3]
    plain = Decoder(model, tok, get_template("en"), max_new_tokens=2, tree=tree).predict(texts, LABELS, [3] * 3)
    forced = Decoder(model, tok, get_template("en"), max_new_tokens=2, tree=tree, count_bias=1e4).predict(
        texts, LABELS, [3] * 3)
    assert all(c >= 1 for p in forced for c in p.counts.values())
    assert all(r and r[0] != "0" for p in forced for r in p.raw_counts.values())
    for a, b in zip(plain, forced):  # a count that started with a non-zero digit is decoded as before
        for label, raw in a.raw_counts.items():
            if raw and raw[0] != "0":
                assert b.raw_counts[label] == raw
    mild = [Decoder(model, tok, get_template("en"), max_new_tokens=2, tree=t, count_bias=0.05).predict(
        texts, LABELS, [3] * 3) for t in (True, False)]
    assert [as_tuples(p) for p in mild[0]] == [as_tuples(p) for p in mild[1]]


def test_output_sequences_count_the_papers_sequences():
    """One sequence per (label, mention), one per label without mentions; each holds the count's digits and
    the token ending them, then the mention's tokens and its EOS (none when cut at max_new_tokens)."""
    from spacy_padellm.engine.decoder import MentionPrediction, output_sequences

    mentions = [MentionPrediction("PER", 1, "Ada", -0.1, 2, True), MentionPrediction("PER", 2, "Bob", -0.2, 3, False)]
    assert output_sequences({"PER": "2", "LOC": "0", "ORG": ""}, mentions) == (4, (2 + 3) + (2 + 3) + 2 + 1)
    assert output_sequences({}, []) == (0, 0)
