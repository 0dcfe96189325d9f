"""Long documents, hostile input, babbling models, broken files."""
from __future__ import annotations

import random
import re
from typing import List

import pytest
import spacy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_padellm.engine.decoder import DocPrediction, MentionPrediction
from spacy_padellm.errors import PaDeLLMError

from helpers import LABELS

CFG = {"dtype": "float32", "device": "cpu"}


class EchoDecoder:
    """Stands in for the model: 'predicts' words of the text (and some strings that are not in it), so the
    alignment, chunking and span logic get exercised on arbitrary text without torch."""

    def __init__(self, seed: int = 0, vocabulary: dict | None = None) -> None:
        self.rng = random.Random(seed)
        self.vocabulary = vocabulary  # word -> label: predict exactly these
        self.calls: List[List[int]] = []

    def predict(self, texts, labels, max_counts):
        self.calls.append([len(t.split()) for t in texts])
        out = []
        for text in texts:
            mentions = []
            if self.vocabulary is not None:
                for word, label in self.vocabulary.items():
                    for k, _ in enumerate(re.finditer(re.escape(word), text), start=1):
                        mentions.append(MentionPrediction(label, k, word, -1.0, 1, True))
            else:
                words = text.split() or [text]
                for k in range(self.rng.randint(0, 4)):
                    a = self.rng.randrange(len(words))
                    b = min(len(words), a + self.rng.randint(1, 3))
                    pick = " ".join(words[a:b]) if self.rng.random() < 0.8 else text[a: a + 3] + "\u200b"
                    mentions.append(MentionPrediction(self.rng.choice(labels), k + 1, pick,
                                                      -self.rng.random() * 5, 1, self.rng.random() < 0.9))
            out.append(DocPrediction({lab: 1 for lab in labels}, {lab: "1" for lab in labels}, tuple(mentions),
                                     {"forward_passes": 3, "prompt_tokens": len(text), "generated_tokens": 5}))
        return out


def echo_nlp(tiny_llama, decoder, **config):
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, **CFG, **config})
    pipe._decoder = decoder
    return nlp


def check_invariants(doc):
    for ent in doc.ents:
        assert doc.text[ent.start_char:ent.end_char] == ent.text
    ents = sorted((e.start, e.end) for e in doc.ents)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ents, ents[1:]))
    group = doc.spans["padellm"]
    assert len(group.attrs["scores"]) == len(group)
    for span in group:
        assert 0 <= span.start < span.end <= len(doc)


def test_a_5000_word_document_finds_entities_near_its_end_with_bounded_batches(tiny_llama):
    rng = random.Random(0)
    words = "the a of market share price rose fell today report".split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + " ."
                 for _ in range(400)]
    sentences[-2] = "Later Zanzibar signed with Quuxcorp ."
    text = " ".join(sentences)
    assert len(text.split()) > 5000
    decoder = EchoDecoder(vocabulary={"Zanzibar": "LOC", "Quuxcorp": "ORG"})
    nlp = echo_nlp(tiny_llama, decoder, max_chunk_tokens=64, batch_tokens=1024)
    doc = nlp(text)
    assert [(e.text, e.label_) for e in doc.ents] == [("Zanzibar", "LOC"), ("Quuxcorp", "ORG")]
    assert doc.ents[0].start_char == text.index("Zanzibar")
    assert doc.user_data["padellm"]["chunks"] > 5000 // 64
    for call in decoder.calls:  # memory: every engine batch stays within the token budget
        assert sum(call) <= 1024
    assert len(decoder.calls) > 1


def test_long_doc_uses_the_docs_own_sentences(tiny_llama):
    decoder = EchoDecoder(vocabulary={"Oslo": "LOC"})
    nlp = echo_nlp(tiny_llama, decoder, max_chunk_tokens=8)
    nlp.add_pipe("sentencizer", first=True)
    doc = nlp("One two three four five six. Seven eight nine Oslo ten eleven. Twelve thirteen.")
    assert [e.text for e in doc.ents] == ["Oslo"]
    assert doc.user_data["padellm"]["chunks"] == 3


def test_registered_span_getter_can_do_the_chunking(tiny_llama):
    decoder = EchoDecoder(vocabulary={"Oslo": "LOC"})
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    pipe = nlp.add_pipe("padellm_ner", config={
        "model": tiny_llama, "labels": LABELS, **CFG, "max_chunk_tokens": 4,
        "span_getter": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 4, "stride": 3}})
    pipe._decoder = decoder
    doc = nlp("one two three four five Oslo six seven eight")
    assert [e.text for e in doc.ents] == ["Oslo"]  # found in two overlapping windows, kept once
    assert len(doc.spans["padellm"]) == 1


unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf")),
    max_size=80,
) | st.sampled_from(["", " ", "\x00", "\u202eRTL \u05e9\u05dc\u05d5\u05dd", "e\u0301\u0301 👩‍👩‍👧 x" * 5,
                     "a" * 3000, "\t\n\r\x0b\x0c", "İİİ iii ǅ ß ẞ"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(unicode_text, min_size=1, max_size=4), seed=st.integers(0, 10_000))
def test_fuzz_alignment_and_spans_never_break(tiny_llama, texts, seed):
    nlp = echo_nlp(tiny_llama, EchoDecoder(seed), max_chunk_tokens=16)
    for doc in nlp.pipe(texts):
        check_invariants(doc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_fuzz_the_real_engine_on_hostile_text(nlp_tiny, text):
    doc = nlp_tiny(text)
    check_invariants(doc)


def babbling_decoder(tiny_llama, max_new_tokens=5):
    """The tiny model with +100 on the logit of '9' and -100 on EOS: every count is 999..., and every
    mention is '99999...' that never ends (plain greedy: mentions from the text could not write it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spacy_padellm.engine.decoder import Decoder
    from spacy_padellm.prompts import get_template

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    bias = torch.zeros(model.lm_head.weight.shape[0])
    bias[tok.convert_tokens_to_ids("9")] = 100.0
    bias[tok.eos_token_id] = -100.0
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    return Decoder(model, tok, get_template("en"), max_new_tokens=max_new_tokens, mentions_from_text=False)


def test_a_babbling_model_does_bounded_work(tiny_llama):
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": ["PER", "LOC"], **CFG})
    pipe._decoder = babbling_decoder(tiny_llama)
    doc = nlp("Ada met Bob in Paris .")
    data = doc.user_data["padellm"]
    assert set(data["raw_counts"].values()) == {"999"}  # absurd counts are cut at 3 digits ...
    assert data["counts"] == {"PER": len(doc), "LOC": len(doc)}  # ... and capped at the doc's tokens
    assert len(data["unfinished"]) == 2 * len(doc)  # mentions that never end stop at max_new_tokens
    # tree pass (text + labels), count check (with the mention trees), 1 digit feed (the 3rd digit ends the
    # count), mention prefill on the row path, 4 more mention tokens
    assert data["forward_passes"] == 1 + 1 + 1 + 1 + 4
    assert {m for _, m in data["unaligned"]} == {"99999"}  # strings not in the text: recorded, not lost
    assert len(doc.ents) == 0
    check_invariants(doc)


def test_truncated_adapter_file(tiny_llama, tiny_adapter, tmp_path):
    import shutil

    broken = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "adapter": str(broken), **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E016\].*adapter_model.safetensors"):
        nlp("Ada met Bob.")


def test_truncated_model_folder(tiny_llama, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": str(broken), "labels": ["PER"], **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E008\].*model"):
        nlp("Ada met Bob.")


def test_n_process_2_gives_the_same_result(tiny_llama):
    """n_process=2 forks after the parent ran torch with 2 threads: without the fork guard the workers hang
    in torch's OpenMP pool (this script did, before engine/forking.py). A subprocess, so a hang is a
    failure with a message rather than a stuck test run."""
    import os
    import subprocess
    import sys

    code = f"""
import spacy, torch
torch.set_num_threads(2)
a = torch.randn(1500, 1500)
(a @ a).sum()  # the parent's OpenMP pool is running now
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner", config={{"model": {tiny_llama!r}, "labels": {LABELS!r}, "dtype": "float32",
                                    "device": "cpu", "max_new_tokens": 3}})
texts = ["Ada met Bob .", "Paris is big .", "Acme hired Zoë .", "Nothing ."] * 2
one = [[(l, t) for l, t, _ in d.user_data["padellm"]["mentions"]] for d in nlp.pipe(texts)]
two = [[(l, t) for l, t, _ in d.user_data["padellm"]["mentions"]] for d in nlp.pipe(texts, n_process=2, batch_size=2)]
assert one == two, (one, two)
print("same")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail("nlp.pipe(n_process=2) hung for 400 s (forked workers in torch's OpenMP pool)")
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stderr[-2000:]


def test_fork_guard_switches_a_forked_child_to_one_thread():
    """The guard acts only in a forked child, once."""
    import os

    import torch

    from spacy_padellm.engine.forking import guard_after_fork

    assert guard_after_fork() is False  # not a forked child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report (switched, threads, switched again)
        result = f"{guard_after_fork()},{torch.get_num_threads()},{guard_after_fork()}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == "True,1,False"
