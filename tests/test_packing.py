"""Packed training (the text once per document) must compute the loss of the separate sequences."""
import pytest
import spacy
import torch
from spacy.tokens import Span
from transformers import AutoModelForCausalLM

from spacy_padellm.prompts import get_template
from spacy_padellm.training.examples import doc_examples, encode_example
from spacy_padellm.training.packing import collate, pack_examples, packed_loss, unpacked_loss

LABELS = ["PER", "ORG", "LOC", "MISC"]


def make_doc(nlp, text, ents):
    doc = nlp.make_doc(text)
    doc.ents = [Span(doc, s, e, label=lab) for s, e, lab in ents]
    return doc


@pytest.fixture()
def docs():
    nlp = spacy.blank("en")
    return [make_doc(nlp, "Ada met Bob in Paris and Bob left .", [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC"),
                                                                   (6, 7, "PER")]),
            make_doc(nlp, "Nothing here .", []),
            make_doc(nlp, "The Acme Corp hired Zoë .", [(1, 3, "ORG"), (4, 5, "PER")])]


def test_examples_follow_the_paper(docs):
    t = get_template("en")
    ex = doc_examples(docs[0], LABELS, t)
    assert [e.target for e in ex] == ["3\n<mention 1>Ada", "3\n<mention 2>Bob", "3\n<mention 3>Bob", "0",
                                      "1\n<mention 1>Paris", "0"]
    assert ex[0].prompt == "text:\nAda met Bob in Paris and Bob left .\nentity type:\nPER\n\n<num>"


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2"])
def test_packed_loss_equals_separate_sequences(docs, tokenizer, family, request):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(family), torch_dtype=torch.float32)
    t = get_template("en")
    encoded = [[encode_example(tokenizer, e) for e in doc_examples(d, LABELS, t)] for d in docs]
    trees = [pack_examples(x) for x in encoded]
    flat = [e for x in encoded for e in x]
    # the text appears once per doc: far fewer tokens than the separate sequences
    assert sum(len(t) for t in trees) < 0.5 * sum(len(e.ids) for e in flat)
    batch = collate([[trees[0], trees[1]], [trees[2]]], pad_id=0)
    with torch.no_grad():
        packed = packed_loss(model, batch)
        separate = unpacked_loss(model, flat)
    assert batch.loss_targets.numel() == sum(len(e.ids) - e.n_prompt for e in flat)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-4)


def test_packed_gradients_equal_separate_gradients(docs, tokenizer, tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32)
    t = get_template("en")
    encoded = [encode_example(tokenizer, e) for e in doc_examples(docs[0], LABELS, t)]
    packed_loss(model, collate([[pack_examples(encoded)]], pad_id=0)).backward()
    g_packed = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    unpacked_loss(model, encoded).backward()
    torch.testing.assert_close(g_packed, model.model.layers[0].mlp.up_proj.weight.grad, atol=1e-5, rtol=1e-3)
