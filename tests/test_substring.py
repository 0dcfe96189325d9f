"""Mentions constrained to substrings of the text (`mentions_from_text`), and exact mention strings."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.engine.substring import SubstringConstraint, TokenBytes, word_bounds
from spacy_padellm.prompts import get_template

from helpers import LABELS, SENTENCES

ODD = ["Zürich ist schön , 東京 🙂 naïve café .", "Leicestershire beat Leicester at Lord 's ."]


def load(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval().double(), tok


def test_token_bytes_rebuild_any_text(tokenizer):
    """Byte-level tokens joined give the UTF-8 bytes back, also where one character spans several tokens."""
    vocab = TokenBytes(tokenizer)
    for text in ODD:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(vocab.bytes[i] for i in ids) == text.encode("utf8")
    assert vocab.bytes[tokenizer.eos_token_id] is None  # special tokens are never copied from the text


def test_word_bounds_are_byte_offsets():
    starts, ends = word_bounds("Zürich beat Lord 's .")
    data = "Zürich beat Lord 's .".encode("utf8")
    assert data[starts[0]:].startswith("Zürich".encode("utf8"))
    assert len("Zürich".encode("utf8")) in ends and 3 not in ends  # never inside a word
    assert data.index(b"beat") in starts and data.index(b"eat") not in starts
    assert data.index(b"'s") in starts  # punctuation starts a word of its own


def test_unspaced_scripts_bound_at_every_character():
    """Chinese has no spaces: every character may start or end a mention (else only prefixes of the whole
    text could be mentions); a Latin word inside it keeps its own bounds."""
    text = "张三在北京的Apple公司工作"
    starts, ends = word_bounds(text)
    offsets = [len(text[:i].encode("utf8")) for i in range(len(text) + 1)]
    apple = text.index("Apple")
    assert starts == [offsets[i] for i in range(len(text)) if not apple < i < apple + 5]
    assert ends == {offsets[i] for i in range(1, len(text) + 1) if not apple < i < apple + 5}
    data = text.encode("utf8")
    for mention in ("张三", "北京", "Apple", "Apple公司"):  # reachable: starts at a start, ends at an end
        s = data.index(mention.encode("utf8"))
        assert s in starts and s + len(mention.encode("utf8")) in ends
    assert offsets[apple + 2] not in starts  # "ple" stays inside "Apple"


def test_chinese_mentions_come_from_anywhere_in_the_text(tokenizer, tmp_path):
    """The zh template with mentions from the text (the default): every mention is a piece of its text, and
    not only a prefix of it (a text without spaces was once a single word)."""
    from helpers import build_tiny

    model, tok = load(build_tiny("llama", tokenizer, tmp_path / "m", seed=0))
    texts = ["张三在北京的Apple公司工作。", "李四和王五去了上海。", "中国银行在香港开了分行。"]
    preds = Decoder(model, tok, get_template("zh"), max_new_tokens=4).predict(texts, LABELS, [3] * len(texts))
    mentions = [(m.text, t) for p, t in zip(preds, texts) for m in p.mentions]
    assert mentions and all(text and text in t for text, t in mentions)
    assert any(not t.startswith(text) for text, t in mentions)


def test_constraint_stops_only_at_word_ends(tokenizer):
    constraint = SubstringConstraint(TokenBytes(tokenizer), ODD[1])
    tokens, eos = constraint.allowed()
    assert not eos  # an empty mention is never allowed
    data = ODD[1].encode("utf8")
    for t in tokens:  # every allowed first token starts the text at some word start
        assert any(data.startswith(constraint.vocab.bytes[t], s) for s in word_bounds(ODD[1])[0])
    for t in tokenizer.encode("Leicester", add_special_tokens=False):
        assert t in constraint.allowed()[0]
        constraint.advance(t)
    tokens, eos = constraint.allowed()
    assert eos  # "Leicester" itself occurs as a word ...
    assert len(constraint.matches) == 2  # ... and as the start of "Leicestershire", which may go on
    for t in tokenizer.encode("shire", add_special_tokens=False):
        constraint.advance(t)
    assert constraint.allowed()[1] and len(constraint.matches) == 1
    constraint.advance(tokenizer.encode(" xyz", add_special_tokens=False)[0])
    assert constraint.allowed() == ([], False)  # left the text: nothing allowed (the decoder then ends it)


def _valid(text: str, source: str, finished: bool) -> bool:
    starts, ends = word_bounds(source)
    data, piece = source.encode("utf8"), text.encode("utf8")
    return bool(piece) and any(data.startswith(piece, s) and (not finished or s + len(piece) in ends)
                               for s in starts)


@pytest.mark.parametrize("seed", [0, 1])
def test_constrained_mentions_come_from_the_text(seed, tokenizer, tmp_path):
    """A random model babbles: unconstrained, some of its mentions are not in the text; constrained, every
    mention is a word-aligned substring, counts are unchanged, a mention plain greedy already wrote inside
    the text is unchanged, and the tree and row paths (with speculation) agree."""
    from helpers import build_tiny

    model, tok = load(build_tiny("llama", tokenizer, tmp_path / "m", seed=seed))
    texts = SENTENCES + ODD
    caps = [4] * len(texts)
    plain = Decoder(model, tok, get_template("en"), max_new_tokens=6,
                    mentions_from_text=False).predict(texts, LABELS, caps)
    assert any(not _valid(m.text, t, m.finished) for p, t in zip(plain, texts) for m in p.mentions)
    runs = [Decoder(model, tok, get_template("en"), max_new_tokens=6, tree=tree, speculate=spec,
                    mentions_from_text=True, small_batch=len(texts)).predict(texts, LABELS, caps)
            for tree, spec in ((True, 4), (False, 0))]
    assert [[(m.label, m.k, m.text) for m in p.mentions] for p in runs[0]] == \
        [[(m.label, m.k, m.text) for m in p.mentions] for p in runs[1]]
    n_kept = 0
    for text, before, after in zip(texts, plain, runs[0]):
        assert after.counts == before.counts
        assert len(after.mentions) == len(before.mentions)
        for m, b in zip(after.mentions, before.mentions):
            assert _valid(m.text, text, m.finished), (m.text, text)
            if _valid(b.text, text, b.finished):
                assert (m.text, m.finished) == (b.text, b.finished)
                n_kept += 1
    assert n_kept < sum(len(p.mentions) for p in plain)


def test_mention_strings_keep_their_spaces(tiny_llama):
    """Generated ids are turned into text without the tokenizer's space clean-up ("Lord 's" stays)."""
    model, tok = load(tiny_llama)
    dec = Decoder(model, tok, get_template("en"))
    for mention in ("Lord 's", "Salomon Bros .", "Bodman , Longely & Dahling"):
        assert dec.text_of(tok.encode(mention, add_special_tokens=False)) == mention


def test_component_setting_reaches_the_engine_and_survives_to_disk(tiny_llama, tmp_path):
    import spacy

    nlp = spacy.blank("en")  # the default: no setting needed
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32", "device": "cpu",
                                        "max_new_tokens": 6})
    docs = list(nlp.pipe(SENTENCES))
    assert nlp.get_pipe("padellm_ner").decoder.settings.mentions_from_text is True
    assert any(doc.user_data["padellm"]["mentions"] for doc in docs)
    for doc in docs:  # every candidate the engine wrote is a word-aligned piece of the text
        for label, text, _ in doc.user_data["padellm"]["mentions"]:
            assert _valid(text, doc.text, True) or _valid(text, doc.text, False)
    nlp.to_disk(tmp_path / "p")
    assert spacy.load(tmp_path / "p").get_pipe("padellm_ner").cfg["mentions_from_text"] is True
    plain = spacy.blank("en")  # the paper's plain greedy, kept as a setting, survives to disk too
    plain.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32",
                                          "device": "cpu", "max_new_tokens": 6, "mentions_from_text": False})
    assert plain.get_pipe("padellm_ner").decoder.settings.mentions_from_text is False
    plain.to_disk(tmp_path / "plain")
    assert spacy.load(tmp_path / "plain").get_pipe("padellm_ner").cfg["mentions_from_text"] is False


def test_cli_flags_turn_it_on_and_off(tiny_llama, tiny_adapter, tmp_path, capsys):
    """`annotate` and `evaluate` constrain mentions by default; --no-mentions-from-text is plain greedy."""
    import json

    from spacy_padellm.cli import _pipe_config, build_parser, main

    for flags, want in (([], True), (["--mentions-from-text"], True), (["--no-mentions-from-text"], False)):
        for command in (["annotate", "x"], ["evaluate", "--data", "d.conll"]):
            assert _pipe_config(build_parser().parse_args(command[:1] + flags + command[1:]))["mentions_from_text"] is want

    data = tmp_path / "dev.conll"
    data.write_text("Ada B-PER\nmet O\nCharles B-PER\nBabbage I-PER\n. O\n\nParis B-LOC\n. O\n\n")
    assert main(["annotate", "--model", tiny_llama, "--labels", ",".join(LABELS), "--mentions-from-text",
                 *SENTENCES[:2]]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 2
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--data", str(data), "--model", tiny_llama, "--adapter", tiny_adapter,
                 "--no-mentions-from-text", "--out", str(out)]) == 0
    assert "f1_string" in json.loads(out.read_text())
