"""Labels spelled out in the prompt ("person" for PER): the prompt writes the word, doc.ents keeps the label,
and the adapter carries its words to inference, through save and load."""
from __future__ import annotations

import json
import warnings

import pytest
import spacy

from spacy_padellm.errors import PaDeLLMError
from spacy_padellm.prompts import get_template, parse_label_words
from spacy_padellm.training.loop import train

from helpers import DOCS, overfit_config

WORDS = {"PER": "person", "LOC": "place"}


def test_prompt_writes_the_word_and_nothing_else_changes():
    t = get_template("en", WORDS)
    assert t.prompt("Ada met Bob.", "PER") == "text:\nAda met Bob.\nentity type:\nperson\n\n<num>"
    assert t.prompt("Ada met Bob.", "ORG") == get_template("en").prompt("Ada met Bob.", "ORG")  # no word: as is
    assert t.mention_prompt("x", "LOC", 2, 2).endswith("place\n\n<num>2\n<mention 2>")
    assert t.target(2, 1, "Ada") == get_template("en").target(2, 1, "Ada")
    assert get_template("en", {}) is get_template("en")


@pytest.mark.parametrize("value,why", [("PER", "no '='"), ("PER=person,ORG=person", "share a word"),
                                       ("PER= ", "one-line")])
def test_bad_label_words_name_the_problem(value, why):
    with pytest.raises(PaDeLLMError, match="E021") as err:
        parse_label_words(value)
    assert why in str(err.value)


def test_parse_label_words():
    assert parse_label_words(" PER=person , ORG=organisation,") == {"PER": "person", "ORG": "organisation"}


def test_label_words_are_refused_for_a_baseline_format(tmp_path, wide_tiny):
    with pytest.raises(PaDeLLMError, match="E022"):
        train(overfit_config(tmp_path, wide_tiny, format="autoreg_struct", label_words=WORDS))


def test_a_word_that_is_another_label_is_refused(tmp_path, wide_tiny):
    with pytest.raises(PaDeLLMError, match="E021"):
        train(overfit_config(tmp_path, wide_tiny, label_words={"PER": "ORG"}))


def test_trained_words_reach_inference_and_survive_save_load(tmp_path, wide_tiny):
    best = train(overfit_config(tmp_path, wide_tiny, label_words=WORDS))
    assert best["score"] == 1.0, best  # the evaluator prompted with the words the model was trained on
    adapter = tmp_path / "out" / "best"
    assert json.loads((adapter / "padellm.json").read_text())["label_words"] == WORDS

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": wide_tiny, "adapter": str(adapter), "dtype": "float32"})
    assert pipe.label_words == WORDS and "person" in pipe.decoder.template.prompt("x", "PER")
    nlp.to_disk(tmp_path / "pipeline")
    nlp2 = spacy.load(tmp_path / "pipeline")
    assert nlp2.get_pipe("padellm_ner").label_words == WORDS
    for record in DOCS:
        doc = nlp2(record["text"])  # labels in doc.ents, never the words
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == record["entities"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = spacy.blank("en").add_pipe("padellm_ner", config={"model": wide_tiny, "adapter": str(adapter),
                                                                   "label_words": {"PER": "human"}})
    assert other.label_words == WORDS and any("W002" in str(w.message) for w in caught)
