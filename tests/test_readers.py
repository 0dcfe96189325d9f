"""Readers: every format gives the same Docs (text, tokens, entities), and bad input names file and line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from spacy.tokens import Doc, DocBin, Span
from spacy.vocab import Vocab

from spacy_padellm.training.readers import (decode_tags, read_any, read_bmes, read_conll, read_docbin,
                                            read_jsonl)


def _shared_data() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/data")


def ents(doc: Doc):
    return [(e.text, e.label_) for e in doc.ents]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# "Maria Lopez Jan Berg Otto Kranz visited Lake Tilda with Borvo Labs ."
# Three adjacent PER entities: IOB1 separates them with B- only where a PER follows a PER.
WORDS = ["Maria", "Lopez", "Jan", "Berg", "Otto", "Kranz", "visited", "Lake", "Tilda", "with", "Borvo",
         "Labs", "."]
IOB1 = ["I-PER", "I-PER", "B-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-LOC", "O", "I-ORG", "I-ORG", "O"]
IOB2 = ["B-PER", "I-PER", "B-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "O"]
BIOES = ["B-PER", "E-PER", "B-PER", "E-PER", "B-PER", "E-PER", "O", "B-LOC", "E-LOC", "O", "B-ORG", "E-ORG", "O"]
EXPECTED = [("Maria Lopez", "PER"), ("Jan Berg", "PER"), ("Otto Kranz", "PER"), ("Lake Tilda", "LOC"),
            ("Borvo Labs", "ORG")]


def conll(tags, sep=" ", extra=("NNP", "B-NP")):
    return "".join(sep.join([w, *extra, t]) + "\n" for w, t in zip(WORDS, tags))


@pytest.mark.parametrize("tags,scheme", [(IOB1, "iob1"), (IOB2, "iob2"), (IOB1, "auto"), (IOB2, "auto"),
                                         (BIOES, "auto")])
def test_iob1_iob2_bioes_give_the_same_entities(tmp_path, tags, scheme):
    docs = read_conll(write(tmp_path, "a.conll", conll(tags)), Vocab(), scheme=scheme)
    assert len(docs) == 1
    assert docs[0].text == " ".join(WORDS)
    assert [t.text for t in docs[0]] == WORDS
    assert ents(docs[0]) == EXPECTED


def test_bilou_and_single_token_entities():
    tags = [("S", "PER"), ("B", "LOC"), ("I", "LOC"), ("E", "LOC"), ("S", "LOC"), ("O", None), ("I", "ORG")]
    assert decode_tags(tags) == [(0, 1, "PER"), (1, 4, "LOC"), (4, 5, "LOC"), (6, 7, "ORG")]


def test_bilou_prefixes(tmp_path):
    text = "Kim U-PER\nmet O\nNew B-LOC\nPortown L-LOC\n"
    doc, = read_conll(write(tmp_path, "a.bio", text), Vocab())
    assert ents(doc) == [("Kim", "PER"), ("New Portown", "LOC")]


def test_docstart_skipped_and_sentences_split(tmp_path):
    text = ("-DOCSTART- -X- -X- O\n\n" + conll(IOB2) + "\n\n-DOCSTART- -X- O O\n\n"
            + "Hi NN B-NP O\nVera NNP I-NP B-PER\n\r\n" + "-DOCSTART-\n")
    docs = read_conll(write(tmp_path, "a.txt", text), Vocab())
    assert [d.text for d in docs] == [" ".join(WORDS), "Hi Vera"]
    assert ents(docs[1]) == [("Vera", "PER")]
    assert all("-DOCSTART-" not in d.text for d in docs)


def test_tab_separated_two_columns(tmp_path):
    docs = read_conll(write(tmp_path, "wnut.conll", conll(IOB2, sep="\t", extra=())), Vocab())
    assert ents(docs[0]) == EXPECTED
    assert docs[0][-1].whitespace_ == ""


def test_iob_scheme_rejects_bioes(tmp_path):
    with pytest.raises(ValueError, match="line 2"):
        read_conll(write(tmp_path, "a.conll", conll(BIOES)), Vocab(), scheme="iob2")
    with pytest.raises(ValueError, match="Unknown tag scheme"):
        read_conll(write(tmp_path, "b.conll", conll(IOB2)), Vocab(), scheme="bilou")


@pytest.mark.parametrize("bad_line,why", [("Lopez\n", "only one column"), ("Lopez NNP B-NP PER\n", "bad tag"),
                                          ("Lopez NNP B-NP X-PER\n", "bad tag"), ("Lopez B-\n", "bad tag")])
def test_malformed_conll_names_file_and_line(tmp_path, bad_line, why):
    text = "Maria NNP B-NP B-PER\n" + bad_line + "\nHi NN B-NP O\n"
    path = write(tmp_path, "broken.conll", text)
    with pytest.raises(ValueError) as info:
        read_conll(path, Vocab())
    message = str(info.value)
    assert str(path) in message and "line 2" in message and why in message
    assert bad_line.strip() in message and "Expected" in message


def test_jsonl_offsets_and_forms(tmp_path):
    lines = [
        {"text": "Ada Quill founded Brightwater in 1990.", "entities": [[0, 9, "PER"], [18, 29, "ORG"]]},
        {"text": "Visit Lake Tilda!", "spans": [{"start": 6, "end": 16, "label": "LOC"}]},
        {"text": "No names here.", "entities": []},
    ]
    path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    docs = read_jsonl(path, Vocab())
    assert [d.text for d in docs] == [x["text"] for x in lines]
    assert ents(docs[0]) == [("Ada Quill", "PER"), ("Brightwater", "ORG")]
    assert ents(docs[1]) == [("Lake Tilda", "LOC")]
    assert ents(docs[2]) == []


def test_jsonl_mid_token_offsets_expand(tmp_path):
    path = write(tmp_path, "a.jsonl", json.dumps({"text": "Ada Quill founded Brightwater.",
                                                  "entities": [[1, 7, "PER"], [20, 22, "ORG"]]}))
    doc, = read_jsonl(path, Vocab())
    assert ents(doc) == [("Ada Quill", "PER"), ("Brightwater", "ORG")]


def test_jsonl_docs_use_the_given_vocab(tmp_path):
    vocab = Vocab()
    doc, = read_jsonl(write(tmp_path, "a.json", '{"text": "Hi Vera", "entities": [[3, 7, "PER"]]}'), vocab)
    assert doc.vocab is vocab


@pytest.mark.parametrize("record,why", [
    ("{not json", "invalid JSON"),
    ('{"entities": []}', "missing \"text\""),
    ('{"text": "Hi Vera"}', "missing \"entities\""),
    ('{"text": "Hi Vera", "entities": [[3, 99, "PER"]]}', "outside the text"),
    ('{"text": "Hi Vera", "entities": [[3, 7]]}', "bad entity"),
    ('{"text": "Hi Vera", "entities": [{"start": 3, "end": 7}]}', "bad entity"),
    ('{"text": "Hi Vera Lind", "entities": [[3, 12, "PER"], [8, 12, "LOC"]]}', "overlapping"),
    ('{"text": "Hi Vera Lind", "entities": [[3, 6, "PER"], [6, 7, "LOC"]]}', "overlapping"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, record, why):
    path = write(tmp_path, "bad.jsonl", '{"text": "ok", "entities": []}\n' + record + "\n")
    with pytest.raises(ValueError) as info:
        read_jsonl(path, Vocab())
    assert str(path) in str(info.value) and "line 2" in str(info.value) and why in str(info.value)


def test_docbin_round_trip(tmp_path):
    vocab = Vocab()
    doc = Doc(vocab, words=["Vera", "lives", "in", "Portown"], spaces=[True, True, True, False])
    doc.ents = [Span(doc, 0, 1, label="PER"), Span(doc, 3, 4, label="LOC")]
    DocBin(docs=[doc, Doc(vocab, words=["Hello"], spaces=[False])]).to_disk(tmp_path / "a.spacy")
    docs = read_docbin(tmp_path / "a.spacy", Vocab())
    assert [d.text for d in docs] == ["Vera lives in Portown", "Hello"]
    assert ents(docs[0]) == [("Vera", "PER"), ("Portown", "LOC")]
    assert ents(read_any(tmp_path / "a.spacy", Vocab())[0]) == ents(docs[0])


def test_not_a_docbin(tmp_path):
    path = write(tmp_path, "fake.spacy", "Vera B-PER\n")
    with pytest.raises(ValueError, match="not a .spacy DocBin") as info:
        read_docbin(path, Vocab())
    assert str(path) in str(info.value)


def test_bmes_chinese(tmp_path):
    text = "我 O\n爱 O\n北 B-LOC\n京 E-LOC\n\n张 B-PER\n小 I-PER\n明 E-PER\n好 O\n\n"
    docs = read_bmes(write(tmp_path, "a.char.bmes", text), Vocab())
    assert docs[0].text == "我爱北京"
    assert [t.text for t in docs[0]] == ["我", "爱", "北", "京"]
    assert ents(docs[0]) == [("北京", "LOC")]
    assert ents(docs[1]) == [("张小明", "PER")]
    assert [d.text for d in read_any(tmp_path / "a.char.bmes", Vocab())] == ["我爱北京", "张小明好"]


def test_bmes_m_and_s_tags_and_errors(tmp_path):
    doc, = read_bmes(write(tmp_path, "a.bmes", "上 B-LOC\n海 M-LOC\n市 E-LOC\n人 S-PER\n"), Vocab())
    assert ents(doc) == [("上海市", "LOC"), ("人", "PER")]
    path = write(tmp_path, "bad.bmes", "我 O\n爱 O\n北 X-LOC\n")
    with pytest.raises(ValueError) as info:
        read_bmes(path, Vocab())
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_read_any_dispatch_and_folder(tmp_path):
    write(tmp_path, "a.iob", conll(IOB1))
    write(tmp_path, "b.jsonl", '{"text": "Hi Vera", "entities": [[3, 7, "PER"]]}\n')
    write(tmp_path, "c.data", "Vera\tB-PER\n")
    assert ents(read_any(tmp_path / "a.iob", Vocab())[0]) == EXPECTED
    assert ents(read_any(tmp_path / "b.jsonl", Vocab())[0]) == [("Vera", "PER")]
    assert ents(read_any(tmp_path / "c.data", Vocab())[0]) == [("Vera", "PER")]
    with pytest.raises(ValueError, match="is a folder"):
        read_any(tmp_path, Vocab())
    with pytest.raises(FileNotFoundError):
        read_any(tmp_path / "missing.conll", Vocab())


@pytest.mark.parametrize("name,n_docs,n_ents", [("conll2003/dev.conll", 3250, 5942),
                                                ("wnut17/dev.conll", 1009, 836)])
def test_real_dev_files(name, n_docs, n_ents):
    path = _shared_data() / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    docs = read_any(path, Vocab())
    assert len(docs) == n_docs
    assert sum(len(d.ents) for d in docs) == n_ents
