"""Long documents (issue 19): sentence-sized chunks, a saturated count splits its chunk, batches sized by
the KV cache they hold, and peak memory that does not grow with the document."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import spacy
import torch

from spacy_padellm.chunking import MIN_SPLIT_TOKENS, chunk_doc, split_in_two
from spacy_padellm.engine.decoder import Decoder, DocPrediction, MentionPrediction, kv_bytes_per_token

from helpers import LABELS, SENTENCES

nlp = spacy.blank("en")


def test_sentences_are_packed_up_to_chunk_tokens_and_cut_beyond_max_tokens():
    doc = nlp("One two three . Four five six seven . Eight nine . " + " ".join(["w"] * 30) + " .")
    chunks = chunk_doc(doc, max_tokens=12, pack_tokens=9)
    assert chunks[0] == (0, 9)  # the first two sentences (4 + 5 tokens) fit in 9
    assert all(e - s <= 12 for s, e in chunks) and chunks[-1][1] == len(doc)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # contiguous, nothing lost
    assert chunk_doc(nlp("Short doc ."), max_tokens=12, pack_tokens=9) == [(0, 3)]


def test_split_in_two_cuts_at_the_sentence_end_nearest_the_middle():
    doc = nlp("A b c . D e f . G h i . J k l .")
    assert split_in_two(doc, 0, len(doc)) == [(0, 8), (8, 16)]
    words = nlp(" ".join(["w"] * 20))
    assert split_in_two(words, 0, 20) == [(0, 10), (10, 20)]
    assert split_in_two(words, 0, MIN_SPLIT_TOKENS - 1) is None


class CappedCounter:
    """A fake decoder that finds every 'itemN' word but, like a model trained on short sentences, never
    counts past 9: a long list in one chunk loses its tail unless the chunk is split."""

    kv_per_token = 1

    def predict(self, texts, labels, max_counts):
        out = []
        for text in texts:
            items = [w for w in text.split() if w.startswith("item")]
            shown = items[:9]
            mentions = tuple(MentionPrediction(labels[0], k, w, -1.0, 1, True) for k, w in enumerate(shown, 1))
            out.append(DocPrediction({labels[0]: len(shown)}, {labels[0]: str(len(shown))}, mentions,
                                     {"forward_passes": 3}))
        return out


@pytest.mark.parametrize("split_count,found", [(6, 20), (0, 9)])
def test_a_saturated_count_splits_the_chunk_so_nothing_is_capped(tiny_llama, split_count, found):
    pipe_nlp = spacy.blank("en")
    pipe = pipe_nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": ["ITEM"], "device": "cpu",
                                                    "split_count": split_count})
    pipe._decoder = CappedCounter()
    doc = pipe_nlp(" ".join(f"item{i}" for i in range(20)) + " .")
    assert len(doc.ents) == found
    if split_count:
        assert doc.user_data["padellm"]["chunks"] > 1 and doc.user_data["padellm"]["forward_passes"] > 3


def test_mention_batches_fit_the_kv_budget_and_change_no_output(tiny_llama):
    from spacy_padellm.engine.loading import load_base, resolve_model
    from spacy_padellm.prompts import get_template

    model, tok = load_base(resolve_model(tiny_llama), torch.float32, "cpu")
    texts = SENTENCES * 3
    big = Decoder(model, tok, get_template("en"), max_new_tokens=6, kv_budget_mb=1024)
    small = Decoder(model, tok, get_template("en"), max_new_tokens=6, kv_budget_mb=1)
    budget = 2 ** 20  # room for ~100 rows of 40 tokens of this model: forces many batches
    seen = []
    real = small.parts.greedy.decode

    def recording(state, logits, *args, **kwargs):
        seen.append(state.rows * state.mask.shape[1] * kv_bytes_per_token(model))
        return real(state, logits, *args, **kwargs)

    small.parts.greedy.decode = recording
    caps = [40] * len(texts)  # the random model babbles counts of 100+: 160 mention rows per text
    for a, b in zip(small.predict(texts, LABELS, caps), big.predict(texts, LABELS, caps)):
        assert a.counts == b.counts and a.raw_counts == b.raw_counts
        assert [(m.label, m.k, m.text) for m in a.mentions] == [(m.label, m.k, m.text) for m in b.mentions]
        for x, y in zip(a.mentions, b.mentions):  # other batch widths: float sums in another order
            assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
    assert len(seen) > 10 and max(seen) <= budget
    assert kv_bytes_per_token(model) == 2 * 2 * 2 * 8 * 4  # layers x (K, V) x kv heads x head dim x fp32


def test_peak_memory_does_not_grow_with_the_document(tiny_llama):
    """In a subprocess: peak RSS after a 300-word document, then after a 3,000-word one. The model, the
    batches and their caches are bounded; only the doc itself may grow. (The random model babbles counts,
    so every chunk decodes as many mention rows as it has tokens: a heavy load for its size.)"""
    code = f"""
import resource, spacy
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner", config={{"model": {tiny_llama!r}, "labels": ["PER"], "dtype": "float32",
                                    "device": "cpu", "max_new_tokens": 2, "kv_budget_mb": 16, "threads": 1,
                                    "split_count": 0}})
sentences = {SENTENCES!r}
def text(words):
    out = []
    while sum(len(s.split()) for s in out) < words:
        out.append(sentences[len(out) % len(sentences)])
    return " ".join(out)
nlp(text(300))
short = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
doc = nlp(text(3000))
long = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(short // 1024, long // 1024, doc.user_data["padellm"]["chunks"])
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    short, long, chunks = map(int, proc.stdout.split()[-3:])
    assert chunks > 100
    assert long - short < 100, (short, long)  # MB


def test_a_line_break_before_a_capital_ends_a_sentence_and_chunks_are_sentences():
    """A document's headline, dateline and table rows carry no end punctuation: a line break before a
    capital or a digit ends them, so they are not glued to the next sentence. Prose wrapped over lines
    continues in lower case and stays one sentence. By default every sentence is its own chunk."""
    text = ("SOCCER - JAPAN WIN\nAL-AIN 1996-12-06\nJapan began the defence of their title on Friday .\n"
            "A short sentence\nwrapped over two lines .")
    doc = nlp(text)
    chunks = [doc[s:e].text.strip() for s, e in chunk_doc(doc, max_tokens=128, pack_tokens=0)]
    assert chunks == ["SOCCER - JAPAN WIN", "AL-AIN 1996-12-06", "Japan began the defence of their title on Friday .",
                      "A short sentence\nwrapped over two lines ."]
    one = nlp("Angela Merkel met Emmanuel Macron in Paris .")
    assert chunk_doc(one, max_tokens=128, pack_tokens=0) == [(0, len(one))]
