"""The shared-prefix engine against plain, uncached computation on tiny random models."""
from __future__ import annotations

from typing import List

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.kv import extend, full_sequence_logits
from spacy_padellm.prompts import get_template

from conftest import LABELS, SENTENCES

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


def test_decoder_equals_plain_greedy_without_cache(tiny_llama):
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=4)
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
    # prefill + label suffixes (+ count steps) + mention prefill + mention steps
    assert 2 <= pred.stats["forward_passes"] <= 2 + 3 + 1 + 3
