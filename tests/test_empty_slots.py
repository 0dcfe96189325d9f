"""Empty slots (issue 14): a slot that comes out empty drops out of its count, and the slot beyond a count is
decoded where the count step nearly said one more, on both paths, as plain greedy decoding would."""
from __future__ import annotations

from typing import List

import pytest
import torch

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.kv import full_sequence_logits
from spacy_padellm.engine.parts import Call
from spacy_padellm.engine.slots import beyond_requests, settle
from spacy_padellm.engine.substring import Substrings
from spacy_padellm.errors import PaDeLLMError
from spacy_padellm.prompts import get_template
from spacy_padellm.settings import decode_settings
from spacy_padellm.types import DocStats, MentionPrediction

from helpers import LABELS
from test_engine import TEXTS, greedy_reference, load


def mention(label: str, k: int, text: str) -> MentionPrediction:
    return MentionPrediction(label, k, text, -0.5, len(text.split()), True)


def call_of(labels: List[str], caps: List[int]) -> Call:
    return Call(["t"] * len(caps), labels, [[[1]] * len(labels)] * len(caps), caps, [DocStats() for _ in caps], 0, 0)


def test_settle_drops_empty_slots_and_keeps_a_beyond_slot_only_after_full_ones():
    call = call_of(["PER", "LOC", "ORG"], [5])
    mentions = [[mention("PER", 1, "Ada"), mention("PER", 2, ""), mention("PER", 3, "Bob"),  # PER: 3, one empty
                 mention("LOC", 1, "Paris"), mention("LOC", 2, "Rome"),  # LOC: 1, plus a beyond slot
                 mention("ORG", 1, "")]]  # ORG: 0, its beyond slot empty
    counts = settle(call, [3, 1, 0], mentions)
    assert counts == [2, 2, 0]
    assert [(m.label, m.k, m.text) for m in mentions[0]] == [("PER", 1, "Ada"), ("PER", 3, "Bob"),
                                                            ("LOC", 1, "Paris"), ("LOC", 2, "Rome")]
    # a count that was one too high does not also take its beyond slot
    mentions = [[mention("PER", 1, "Ada"), mention("PER", 2, " "), mention("PER", 3, "Bob")]]
    assert settle(call_of(["PER"], [5]), [2], mentions) == [1]
    assert [m.text for m in mentions[0]] == ["Ada"]


def test_beyond_requests_follow_the_ratio_and_the_caps():
    call = call_of(["PER", "LOC"], [2, 9])
    rows = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert beyond_requests(call, rows, [1, 2, 0, 9], [0.5, 0.5, 0.05, 0.9], 0.1) == [(0, 0, 2, 2)]
    assert beyond_requests(call, rows, [1, 2, 0, 8], [0.5, 0.5, 0.05, 0.9], 0.0) == [(0, 0, 2, 2), (1, 0, 1, 1),
                                                                                    (1, 1, 9, 9)]


def test_the_substring_constraint_lets_an_empty_slot_end_at_once(tokenizer):
    subs = Substrings(tokenizer)
    assert subs.for_text("Ada met Bob .").allowed()[1] is False
    assert subs.for_text("Ada met Bob .", allow_empty=True).allowed()[1] is True


def test_next_ratios_read_the_count_distribution(tiny_llama):
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"))
    vocab = dec.counts
    logits = torch.randn(3, model.config.vocab_size, dtype=torch.float64)
    chosen = vocab.next_tokens(logits)
    probs = torch.softmax(logits.masked_fill(~vocab.allowed[: logits.shape[1]], float("-inf")), -1)
    for row, (tok_id, ratio) in enumerate(zip(chosen, vocab.next_ratios(logits, chosen))):
        c = vocab.value(tok_id) if tok_id in vocab.digit_ids else 0
        nxt = vocab.digit_token.get(str(c + 1))
        expected = 0.0 if nxt is None else float(probs[row, nxt] / probs[row, tok_id])
        assert ratio == pytest.approx(expected, rel=1e-6)
        assert ratio <= 1.0 + 1e-9  # the chosen token is the most probable one


def greedy_slot(model, dec: Decoder, text: str, label: str, count: int, k: int) -> str:
    """Plain greedy decoding of slot k under count `count`, every step a full pass without a cache."""
    ids = dec.encode(dec.template.mention_prompt(text, label, count, k))
    out: List[int] = []
    while len(out) < dec.max_new_tokens:
        tok = int(full_sequence_logits(model, [ids])[0].argmax())
        if tok in dec.eos_ids:
            break
        out.append(tok)
        ids = ids + [tok]
    return dec.tokenizer.decode(out)


@pytest.mark.parametrize("tree,guesses", [(True, 0), (True, 1), (True, 2), (False, 0)])
@pytest.mark.parametrize("digits", ["0", "01"])
def test_every_beyond_slot_is_plain_greedy_on_every_path(tiny_llama, tree, guesses, digits):
    """beyond_ratio 0: every label row below its cap decodes slot c + 1 under count c + 1; a non-empty one
    joins the label's mentions and its count, as plain greedy decoding of that prompt gives it, whether the
    slot rides in pass 1 (a count guess), in pass 2 or in a mention step of its own. A random model babbles
    counts of three digits (no slot beyond them), so its count digits are held to `digits` here: "0" gives
    every row slot 1 under count 1, "01" also counts of 1 (and 10, 11, ... which have no slot beyond)."""
    model, tok = load(tiny_llama)
    model = model.double()
    texts, caps = TEXTS[:3] + ["Paris ."], [3, 2, 4, 12]

    def decoder(**settings):
        dec = Decoder(model, tok, get_template("en"), max_new_tokens=3, tree=tree, mentions_from_text=False,
                      small_batch=len(texts), count_guesses=guesses, **settings)
        for token, digit in dec.digit_ids.items():
            dec.count_allowed[token] = digit in digits  # the reference below reads the same mask
        return dec

    dec = decoder(empty_slots=True, beyond_ratio=0.0)
    preds = dec.predict(texts, LABELS, caps)
    added = 0
    for text, cap, pred in zip(texts, caps, preds):
        for label in LABELS:
            count, mentions = greedy_reference(model, dec, text, label, cap)
            expected = [(k, m) for _, k, m, _ in mentions if m.strip()]
            if len(expected) == count and count + 1 <= cap:
                beyond = greedy_slot(model, dec, text, label, count + 1, count + 1)
                if beyond.strip():
                    expected.append((count + 1, beyond))
                    added += 1
            assert [(m.k, m.text) for m in pred.mentions if m.label == label] == expected
            assert pred.counts[label] == len(expected)
    assert added > 0, "the test model must fill some beyond slots"
    off = decoder(empty_slots=True, beyond_ratio=1e9).predict(texts, LABELS, caps)
    plain = decoder().predict(texts, LABELS, caps)
    for a, b in zip(off, plain):  # no beyond slot: only empty slots leave
        assert [(m.k, m.text) for m in a.mentions] == [(m.k, m.text) for m in b.mentions if m.text.strip()]


def test_the_adapter_turns_empty_slots_on_unless_the_config_says_no():
    assert decode_settings({"empty_slots": None}).empty_slots is False
    assert decode_settings({"empty_slots": None}, adapter={"empty_slots": True}).empty_slots is True
    assert decode_settings({"empty_slots": False}, adapter={"empty_slots": True}).empty_slots is False
    tuned = decode_settings({"beyond_ratio": None}, adapter={"empty_slots": True, "beyond_ratio": 0.3})
    assert tuned.beyond_ratio == 0.3
    assert decode_settings({"beyond_ratio": 0.5}, adapter={"beyond_ratio": 0.3}).beyond_ratio == 0.5
    with pytest.raises(PaDeLLMError, match="beyond_ratio"):
        decode_settings({"beyond_ratio": -0.1})
