"""Training end to end on tiny things: overfit two documents, resume after a kill, the project workflow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
import torch

from spacy_padellm.training.loop import train

from helpers import DOCS, overfit_config


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, wide_tiny):
    tmp_path = tmp_path_factory.mktemp("overfit")
    best = train(overfit_config(tmp_path, wide_tiny))
    return tmp_path, best


def test_overfit_two_documents_save_reload_same_entities(overfit, wide_tiny):
    tmp_path, best = overfit
    assert best["score"] == 1.0, best
    meta = json.loads((tmp_path / "out" / "best" / "padellm.json").read_text())
    assert meta["labels"] == ["LOC", "ORG", "PER"] and meta["template"] == "en" and meta["base_model"] == wide_tiny
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": wide_tiny, "adapter": str(tmp_path / "out" / "best"),
                                        "dtype": "float32", "device": "cpu"})
    nlp.to_disk(tmp_path / "pipeline")
    nlp2 = spacy.load(tmp_path / "pipeline")
    for record in DOCS:
        doc = nlp2(record["text"])
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == record["entities"]


@pytest.mark.parametrize("tree,guesses,speculate", [(False, 0, 8), (True, 0, 0), (True, 2, 0), (True, 2, 4)])
def test_fast_paths_equal_plain_greedy(overfit, wide_tiny, tree, guesses, speculate):
    """A model that copies mentions from the text and writes counts of 1 and 2: tree passes, count guesses
    and copy-speculation must each give plain (row path, no speculation) greedy output, in fewer passes."""
    import random

    from spacy_padellm.engine.decoder import Decoder
    from spacy_padellm.engine.loading import apply_adapter, load_base, resolve_model
    from spacy_padellm.prompts import get_template

    tmp_path, _ = overfit
    model, tok = load_base(resolve_model(wide_tiny), torch.float32, "cpu")
    model = apply_adapter(model, str(tmp_path / "out" / "best"), wide_tiny)
    rng = random.Random(0)
    names = ["Ada Lovelace", "Charles Babbage", "London", "Acme Corp", "Paris", "Zoë Ruiz", "New York City"]
    texts = [record["text"] for record in DOCS]
    for _ in range(30):
        picked = rng.sample(names, 3)
        texts.append(f"{picked[0]} met {picked[1]} in {picked[2]} .")
    labels = ["LOC", "ORG", "PER"]
    plain = Decoder(model, tok, get_template("en"), max_new_tokens=8, tree=False, speculate=0,
                    count_guesses=0).predict(texts, labels, [12] * len(texts))
    fast = Decoder(model, tok, get_template("en"), max_new_tokens=8, tree=tree, count_guesses=guesses,
                   speculate=speculate, small_batch=len(texts)).predict(texts, labels, [12] * len(texts))
    assert sum(len(p.mentions) for p in plain) > 30
    assert {c for p in plain for c in p.counts.values()} >= {0, 1, 2}
    for a, b in zip(plain, fast):
        assert a.counts == b.counts
        assert [(m.label, m.k, m.text) for m in a.mentions] == [(m.label, m.k, m.text) for m in b.mentions]
        for x, y in zip(a.mentions, b.mentions):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
    assert sum(p.stats["forward_passes"] for p in fast) < sum(p.stats["forward_passes"] for p in plain)


def test_killed_run_resumes_from_its_checkpoint(tmp_path, wide_tiny):
    """SIGKILL mid-run, start again: the step count continues and the result equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    steps = dict(max_steps=30, checkpoint_every=4, eval_every=1000, lr=5e-3)
    whole = overfit_config(tmp_path / "a", wide_tiny, **steps) if (tmp_path / "a").mkdir() is None else None
    train(whole)
    (tmp_path / "b").mkdir()
    cfg = overfit_config(tmp_path / "b", wide_tiny, **steps)
    code = ("import json,sys; from spacy_padellm.training.config import TrainConfig; "
            "from spacy_padellm.training.loop import train; train(TrainConfig(**json.loads(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.to_dict())], cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = Path(cfg.output) / "checkpoint" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 30
    train(cfg)
    log = [json.loads(x) for x in (Path(cfg.output) / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps))  # the resumed run continued the log, it did not repeat steps
    assert torch.load(ckpt, weights_only=False)["step"] == 30
    a = load_file(str(tmp_path / "a" / "out" / "checkpoint" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "checkpoint" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


CONLL_TRAIN = """-DOCSTART- -X- -X- O

Ada NNP B-NP B-PER
Lovelace NNP I-NP I-PER
visited VBD B-VP O
Rome NNP B-NP B-LOC
. . O O

Zed NNP B-NP B-ORG
Bank NNP I-NP I-ORG
hired VBD B-VP O
Bob NNP B-NP B-PER
. . O O
"""


@pytest.mark.slow  # a spaCy project run: five subprocesses
def test_project_workflow_runs_end_to_end_on_a_tiny_slice(tmp_path, tiny_llama):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "train.conll").write_text(CONLL_TRAIN)
    (tmp_path / "dev.conll").write_text(CONLL_TRAIN)
    work = tmp_path / "work"
    overrides = [f"--vars.raw_dir={tmp_path}",
                 f"--vars.work={work}", f"--vars.model={tiny_llama}", "--vars.max_steps=3", "--vars.eval_every=3",
                 "--vars.eval_docs=2", "--vars.lora_first_layer=0", "--vars.threads=1"]
    result = subprocess.run([sys.executable, "-m", "spacy", "project", "run", "all", str(root), *overrides],
                            capture_output=True, text=True, cwd=str(root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "training" / "best" / "adapter_model.safetensors").is_file()
    assert (work / "training" / "curves.png").stat().st_size > 1000
    scores = json.loads((work / "metrics" / "dev.json").read_text())
    assert "f1_span" in scores and "f1_string" in scores
    html = (work / "visualize" / "dev.html").read_text()
    assert html.count("class=\"entities\"") == 2  # both dev docs, their words around any entity markup
    assert all(word in html for word in ("Zed", "Bank", "hired", "Bob"))
    assert "strings" in result.stdout and "PER" in result.stdout  # the per-label table was printed


@pytest.mark.parametrize("fmt", ["autoreg_struct", "autoreg_aug"])
def test_baseline_formats_train_and_overfit(tmp_path, wide_tiny, fmt):
    """The baselines train with the same loop, data and LoRA settings, and decode what they learned."""
    best = train(overfit_config(tmp_path, wide_tiny, format=fmt, max_steps=150, eval_every=50))
    assert best["score"] == 1.0, best
    meta = json.loads((tmp_path / "out" / "best" / "padellm.json").read_text())
    assert meta["format"] == fmt


@pytest.mark.parametrize("overwrite", [False, True])
def test_entities_set_earlier_stay_unless_overwrite_ents(overfit, wide_tiny, overwrite):
    """An entity_ruler before padellm_ner: its entities stay and ours fill the gaps (overwrite_ents false,
    as spaCy's own ner and entity_ruler do), or ours replace them (true)."""
    tmp_path, _ = overfit
    text = DOCS[0]["text"]  # the model predicts Ada Lovelace PER, Charles Babbage PER, London LOC
    config = {"model": wide_tiny, "adapter": str(tmp_path / "out" / "best"), "dtype": "float32", "device": "cpu",
              "overwrite_ents": overwrite}
    alone = spacy.blank("en")
    alone.add_pipe("padellm_ner", config=config)
    ours = [(e.text, e.label_) for e in alone(text).ents]
    assert ours == [("Ada Lovelace", "PER"), ("Charles Babbage", "PER"), ("London", "LOC")]
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "GPE", "pattern": "London"}, {"label": "ROLE", "pattern": "Charles"}])
    nlp.add_pipe("padellm_ner", config=config)
    got = [(e.text, e.label_) for e in nlp(text).ents]
    if overwrite:
        assert got == ours
    else:  # Charles Babbage overlaps the ruler's "Charles": dropped; Ada Lovelace fills a gap
        assert got == [("Ada Lovelace", "PER"), ("Charles", "ROLE"), ("London", "GPE")]
    assert len(nlp(text).spans["padellm"]) == 3  # every candidate is still in doc.spans
