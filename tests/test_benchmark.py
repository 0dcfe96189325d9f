"""The benchmark command on tiny models: every method runs, the JSON has the promised shape."""
import json
import subprocess
import sys

import pytest

from helpers import LABELS, make_adapter

CONLL = "".join(f"{w} {t}\n" if w else "\n" for w, t in [
    ("Ada", "B-PER"), ("met", "O"), ("Bob", "B-PER"), (".", "O"), ("", ""),
    ("Acme", "B-ORG"), ("left", "O"), ("Paris", "B-LOC"), (".", "O"), ("", ""),
    ("Nothing", "O"), ("here", "O"), (".", "O"), ("", "")])


@pytest.mark.slow  # every method, two batch sizes
def test_benchmark_command_writes_the_promised_json(tmp_path, tiny_llama, tiny_adapter):
    adapters = {name: tiny_adapter for name in ("padellm", "padellm_rows", "padellm_fp32", "padellm_plain",
                                                  "padellm_reference")}
    for fmt in ("autoreg_struct", "autoreg_aug"):
        folder = make_adapter(tiny_llama, tmp_path / fmt, LABELS)
        meta = json.loads((tmp_path / fmt / "padellm.json").read_text())
        (tmp_path / fmt / "padellm.json").write_text(json.dumps({**meta, "format": fmt}))
        adapters[fmt] = folder
    data = tmp_path / "dev.conll"
    data.write_text(CONLL)
    out, png = tmp_path / "results.json", tmp_path / "results.png"
    cmd = [sys.executable, "-m", "spacy_padellm", "benchmark", "--data", str(data), "--limit", "3",
           "--model", tiny_llama, "--dtype", "float32", "--batch-sizes", "1,2", "--out", str(out), "--plot", str(png),
           "--methods", ",".join(["padellm", "padellm_rows", "padellm_fp32", "padellm_plain", "padellm_reference",
                                  "autoreg_struct", "autoreg_aug"]),
           "--adapters", ",".join(f"{k}={v}" for k, v in adapters.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n_docs"] == 3 and "cores" in result["device"]
    assert set(result["methods"]) == {"padellm", "padellm_rows", "padellm_fp32", "padellm_plain",
                                      "padellm_reference", "autoreg_struct", "autoreg_aug"}
    for m in result["methods"].values():
        assert 0.0 <= m["f1_string"] <= 1.0 and 0.0 <= m["f1_span"] <= 1.0
        assert 0.0 <= m["p_string"] <= 1.0 and 0.0 <= m["r_string"] <= 1.0
        assert set(m["f1_string_by_label"]) <= set(LABELS) and {"PER", "ORG", "LOC"} <= set(m["f1_string_by_label"])
        for bs in ("1", "2"):
            e = m["by_batch_size"][bs]
            assert e["latency_ms_p50"] > 0 and e["latency_ms_p90"] >= e["latency_ms_p50"] and e["docs_per_s"] > 0
            assert e["forward_passes_mean"] >= 1 and e["prompt_tokens_mean"] > 0 and e["generated_tokens_mean"] > 0
            assert e["sequence_tokens_mean"] > 0
    for fmt in ("autoreg_struct", "autoreg_aug"):  # one output sequence per document
        e = result["methods"][fmt]["by_batch_size"]["1"]
        assert e["sequence_tokens_mean"] == e["generated_tokens_mean"]
    assert set(result["speedup_vs"]) == {"padellm_rows", "padellm_fp32", "padellm_plain", "padellm_reference",
                                         "autoreg_struct", "autoreg_aug"}
    assert all(set(v) == {"1", "2"} for v in result["speedup_vs"].values())
    # the engine's plain greedy setting and the reference procedure decode the same mentions
    p, r = result["methods"]["padellm_plain"], result["methods"]["padellm_reference"]
    assert abs(p["f1_string"] - r["f1_string"]) < 1e-9
    assert r["docs_same_as_padellm_plain"] == 1.0
    assert "padellm_reference vs padellm_plain (both plain greedy): 100.0% of docs the same" in proc.stdout
    # the row engine keeps the default's output (mentions from the text)
    assert abs(result["methods"]["padellm"]["f1_string"] - result["methods"]["padellm_rows"]["f1_string"]) < 1e-9
    assert result["methods"]["padellm"]["docs_same_as_padellm"] == 1.0
    assert result["methods"]["padellm_rows"]["docs_same_as_padellm"] == 1.0
    # per-stage breakdown for both engine variants: the tree path spends its first pass on "prompt" only
    stages = p["by_batch_size"]["1"]["stages"]
    assert stages["prompt"]["passes_per_batch"] == 1.0 and stages["prompt"]["ms_per_doc"] > 0
    assert result["methods"]["padellm_rows"]["by_batch_size"]["1"]["stages"]["prompt"]["passes_per_batch"] == 2.0
    assert png.stat().st_size > 1000
    assert "padellm vs autoreg_struct" in proc.stdout and "R str" in proc.stdout


def test_string_f1_by_label_scores_each_label_alone():
    from spacy_padellm.scoring import string_f1_by_label

    pairs = [({("PER", "Ada"), ("LOC", "Rome")}, {("PER", "Ada"), ("LOC", "Paris")}),
             ({("ORG", "Acme")}, {("PER", "Bob")})]
    by_label = string_f1_by_label(pairs)
    assert set(by_label) == {"PER", "LOC", "ORG"}
    assert abs(by_label["PER"] - 2 / 3) < 1e-9  # tp 1, fn 1 (Bob)
    assert by_label["LOC"] == 0.0 and by_label["ORG"] == 0.0


def test_missing_baseline_adapter_is_a_coded_error(tmp_path, tiny_llama):
    data = tmp_path / "dev.conll"
    data.write_text(CONLL)
    proc = subprocess.run([sys.executable, "-m", "spacy_padellm", "benchmark", "--data", str(data), "--model",
                           tiny_llama, "--methods", "autoreg_struct", "--adapters",
                           f"autoreg_struct={tmp_path / 'none'}"], capture_output=True, text=True)
    assert proc.returncode == 2 and "[E017]" in proc.stderr


def test_spacy_benchmark_speed_runs_on_a_pipeline_with_the_component(tmp_path, nlp_tiny):
    from spacy.tokens import DocBin

    nlp_tiny.to_disk(tmp_path / "pipeline")
    docs = [nlp_tiny.make_doc(t) for t in ["Ada met Bob .", "Paris is big .", "Acme hired Zoë ."]]
    DocBin(docs=docs).to_disk(tmp_path / "data.spacy")
    proc = subprocess.run([sys.executable, "-m", "spacy", "benchmark", "speed", str(tmp_path / "pipeline"),
                           str(tmp_path / "data.spacy"), "--batches", "30", "--batch-size", "1", "--warmup", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "words/s" in proc.stdout.replace("Words/s", "words/s") or "WPS" in proc.stdout


def test_the_floor_times_every_layers_own_weights(tiny_llama, monkeypatch):
    """gemm_rate makes weights for each of the model's layers (one layer's, called over and over, stay in the
    CPU's caches and give a rate no real pass reaches), and counts their FLOPs."""
    import torch
    from transformers import AutoModelForCausalLM

    from spacy_padellm.engine import floor

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    made = []
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: made.append(a) or real(*a, **k))
    rate = floor.gemm_rate(model, torch.float32, tokens=4, seconds=0.05)
    shapes = floor.linear_shapes(model)
    weights = [a for a in made if len(a) == 2 and a != (4, a[1])]
    assert len(weights) == model.config.num_hidden_layers * len(shapes) and rate > 0
    made.clear()
    floor.gemm_rate(model, torch.float32, tokens=4, seconds=0.05, layers=1)
    assert len([a for a in made if len(a) == 2 and a != (4, a[1])]) == len(shapes)
