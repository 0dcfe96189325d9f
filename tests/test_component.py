"""The padellm_ner pipe inside spaCy, on a tiny random Llama with the real SmolLM2 tokenizer."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import spacy
from spacy import displacy
from spacy.tokens import Doc
from spacy.training import Example

from spacy_padellm.errors import PaDeLLMError

from helpers import LABELS, SENTENCES, make_adapter

CFG = {"dtype": "float32", "device": "cpu", "max_new_tokens": 6}


def annotations(docs):
    return [([(e.start, e.end, e.label_) for e in d.ents],
             [(s.start, s.end, s.label_) for s in d.spans["padellm"]],
             [round(x, 3) for x in d.spans["padellm"].attrs["scores"]],
             [(label, text, round(lp, 3)) for label, text, lp in d.user_data["padellm"]["mentions"]])
            for d in docs]


def test_factory_resolves_through_the_entry_point_without_import():
    code = ("import sys, spacy; nlp = spacy.blank('en'); "
            "p = nlp.add_pipe('padellm_ner', config={'labels': ['PER']}); "
            "print(type(p).__module__, 'peft' in sys.modules, 'spacy_padellm.engine.decoder' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["spacy_padellm.component", "False", "False"]  # found by name; no weights, no peft loaded


def test_entities_spans_scores_and_stats(nlp_tiny):
    docs = list(nlp_tiny.pipe(SENTENCES, batch_size=32))
    for doc in docs:
        group = doc.spans["padellm"]
        assert len(group.attrs["scores"]) == len(group)
        assert all(s <= 0.0 for s in group.attrs["scores"])
        data = doc.user_data["padellm"]
        assert data["forward_passes"] > 0 and data["prompt_tokens"] > 0 and data["generated_tokens"] > 0
        assert set(data["counts"]) == set(LABELS)
        ents = sorted((e.start, e.end) for e in doc.ents)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ents, ents[1:]))
    assert any(d.user_data["padellm"]["mentions"] for d in docs)


def test_batched_equals_single_and_reversed(nlp_tiny):
    batched = annotations(nlp_tiny.pipe(SENTENCES, batch_size=32))
    single = annotations([nlp_tiny(t) for t in SENTENCES])
    reverse = annotations(nlp_tiny.pipe(SENTENCES[::-1], batch_size=32))[::-1]
    assert batched == single == reverse


def test_entities_come_from_aligned_strings(nlp_tiny):
    """Random mentions rarely occur in the text; feed the pipe a prediction that does."""
    from spacy_padellm.engine.decoder import DocPrediction, MentionPrediction

    pipe = nlp_tiny.get_pipe("padellm_ner")
    doc = nlp_tiny.make_doc("Ada Lovelace met Charles Babbage in London.")
    pred = DocPrediction({"PER": 2, "LOC": 1}, {"PER": "2", "LOC": "1"}, (
        MentionPrediction("PER", 1, "Ada Lovelace", -0.1, 3, True),
        MentionPrediction("PER", 2, "Charles Babbage", -0.2, 3, True),
        MentionPrediction("LOC", 1, "London", -0.3, 1, True),
        MentionPrediction("ORG", 1, "London", -2.0, 1, True),
        MentionPrediction("MISC", 1, "Lovelace met", -5.0, 2, True),
        MentionPrediction("MISC", 2, "Mars", -1.0, 1, True)), {})
    pipe.set_annotations([doc], [pred])
    assert [(e.text, e.label_) for e in doc.ents] == [("Ada Lovelace", "PER"), ("Charles Babbage", "PER"),
                                                      ("London", "LOC")]
    assert ("Lovelace met", "MISC") in [(s.text, s.label_) for s in doc.spans["padellm"]]  # overlapping kept
    assert doc.user_data["padellm"]["dropped_duplicates"] == [["ORG", "London"]]
    assert doc.user_data["padellm"]["unaligned"] == [["MISC", "Mars"]]


@pytest.mark.parametrize("text", ["", " ", "\n\t  ", "word " * 400])
def test_empty_whitespace_and_long_docs(nlp_tiny, text):
    doc = nlp_tiny(text)
    assert doc.text == text
    for e in doc.ents:
        assert doc.text[e.start_char:e.end_char] == e.text
    if not text.strip():
        assert doc.user_data["padellm"]["forward_passes"] == 0 and len(doc.ents) == 0


def test_to_disk_and_spacy_load_round_trip_with_adapter(tiny_llama, tiny_adapter, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "adapter": tiny_adapter, **CFG})
    assert nlp.get_pipe("padellm_ner").labels == tuple(LABELS)  # from the adapter's padellm.json
    before = annotations(nlp.pipe(SENTENCES))
    nlp.to_disk(tmp_path / "pipeline")
    assert (tmp_path / "pipeline" / "padellm_ner" / "adapter" / "adapter_config.json").is_file()
    nlp2 = spacy.load(tmp_path / "pipeline")
    assert annotations(nlp2.pipe(SENTENCES)) == before
    # the adapter changes the output: the base model alone gives something else
    base = spacy.blank("en")
    base.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, **CFG})
    assert annotations(base.pipe(SENTENCES)) != before


def test_pickle_round_trip(tiny_llama, tiny_adapter):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "adapter": tiny_adapter, **CFG})
    before = annotations(nlp.pipe(SENTENCES[:2]))
    nlp2 = pickle.loads(pickle.dumps(nlp))
    assert nlp2.get_pipe("padellm_ner")._decoder is None  # weights are never pickled
    assert annotations(nlp2.pipe(SENTENCES[:2])) == before


def test_evaluate_returns_ents_f(nlp_tiny):
    examples = []
    for text, ents in [("Ada met Bob in Paris .", [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC")]),
                       ("Nothing here .", [])]:
        ref = Doc(nlp_tiny.vocab, words=text.split())
        ref.ents = [spacy.tokens.Span(ref, s, e, label=label) for s, e, label in ents]
        examples.append(Example(nlp_tiny.make_doc(text), ref))
    scores = nlp_tiny.evaluate(examples)
    assert "ents_f" in scores and "ents_string_f" in scores
    assert 0.0 <= scores["ents_f"] <= 1.0


def test_displacy_renders_ents_and_spans(nlp_tiny):
    from spacy_padellm.engine.decoder import DocPrediction, MentionPrediction

    doc = nlp_tiny.make_doc("Ada met Bob in Paris .")
    pred = DocPrediction({}, {}, (MentionPrediction("PER", 1, "Ada", -0.1, 1, True),
                                  MentionPrediction("LOC", 1, "Paris", -0.2, 1, True)),
                         {"forward_passes": 0, "prompt_tokens": 0, "generated_tokens": 0})
    nlp_tiny.get_pipe("padellm_ner").set_annotations([doc], [pred])
    html = displacy.render(doc, style="ent", page=True)
    assert "Ada" in html and "PER" in html and "LOC" in html
    html = displacy.render(doc, style="span", options={"spans_key": "padellm"})
    assert "Paris" in html


# ---- coded errors -------------------------------------------------------------------------------
def add(config):
    nlp = spacy.blank("en")
    return nlp, nlp.add_pipe("padellm_ner", config=config)


def test_unknown_model_name():
    with pytest.raises(PaDeLLMError, match=r"\[E001\].*'llama-9000'"):
        add({"model": "llama-9000", "labels": ["PER"]})


def test_missing_model_folder(tmp_path):
    with pytest.raises(PaDeLLMError, match=r"\[E002\]"):
        add({"model": str(tmp_path / "nope"), "labels": ["PER"]})


def test_broken_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    nlp, _ = add({"model": str(bad), "labels": ["PER"], **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E003\]"):
        nlp("Ada met Bob.")


def test_folder_without_a_model(tmp_path, tiny_llama):
    (tmp_path / "config.json").write_text("{}")
    nlp, _ = add({"model": str(tmp_path), "labels": ["PER"], **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E013\]|\[E008\]"):
        nlp("Ada met Bob.")


def test_adapter_that_does_not_match_the_base_model(tiny_gpt2, tiny_llama, tmp_path):
    adapter = make_adapter(tiny_gpt2, tmp_path / "gpt2-adapter", ["PER"])
    nlp, _ = add({"model": tiny_llama, "adapter": adapter, **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E004\]"):
        nlp("Ada met Bob.")


def test_missing_adapter_folder(tiny_llama, tmp_path):
    nlp, _ = add({"model": tiny_llama, "adapter": str(tmp_path / "none"), "labels": ["PER"], **CFG})
    with pytest.raises(PaDeLLMError, match=r"\[E009\]"):
        nlp("Ada met Bob.")


def test_labels_missing(tiny_llama):
    with pytest.raises(PaDeLLMError, match=r"\[E005\]"):
        add({"model": tiny_llama})


def test_label_unknown_to_the_adapter(tiny_llama, tiny_adapter):
    with pytest.raises(PaDeLLMError, match=r"\[E014\].*'DATE'"):
        add({"model": tiny_llama, "adapter": tiny_adapter, "labels": ["PER", "DATE"]})


def test_unknown_template(tiny_llama):
    with pytest.raises(PaDeLLMError, match=r"\[E006\]"):
        add({"model": tiny_llama, "labels": ["PER"], "template": "klingon"})


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("max_new_tokens", -1), ("dtype", "float8"),
                                       ("count_guesses", 10), ("speculate", -1)])
def test_bad_settings(tiny_llama, key, value):
    with pytest.raises(PaDeLLMError, match=r"\[E010\]"):
        add({"model": tiny_llama, "labels": ["PER"], key: value})


def test_truncated_pipeline_folder(nlp_tiny, tmp_path):
    nlp_tiny.to_disk(tmp_path / "p")
    (tmp_path / "p" / "padellm_ner" / "cfg.json").unlink()
    with pytest.raises(PaDeLLMError, match=r"\[E012\].*cfg.json"):
        spacy.load(tmp_path / "p")


def test_count_bias_comes_from_the_adapter_unless_configured(tiny_llama, tiny_adapter, tmp_path):
    """A value tuned on dev travels with the adapter (padellm.json decode.count_bias), survives to_disk,
    and an explicit setting wins."""
    import json
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, folder)
    meta = json.loads((folder / "padellm.json").read_text())
    (folder / "padellm.json").write_text(json.dumps({**meta, "decode": {"count_bias": 2.5}}))
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "adapter": str(folder), **CFG})
    assert pipe.count_bias == 2.5 and pipe.decoder.count_bias == 2.5
    nlp.to_disk(tmp_path / "pipeline")
    assert spacy.load(tmp_path / "pipeline").get_pipe("padellm_ner").count_bias == 2.5
    nlp2 = spacy.blank("en")
    explicit = nlp2.add_pipe("padellm_ner",
                             config={"model": tiny_llama, "adapter": str(folder), "count_bias": 0, **CFG})
    assert explicit.count_bias == 0.0
    plain = spacy.blank("en").add_pipe("padellm_ner", config={"model": tiny_llama, "adapter": tiny_adapter, **CFG})
    assert plain.count_bias == 0.0
