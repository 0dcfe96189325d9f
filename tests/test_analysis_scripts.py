"""The accuracy experiments' arithmetic (project/scripts: error_analysis, count_probe, count_check,
count_calibration, average_adapters, int8_smoothquant) and the speed scripts (linear_orientation, int8_weight_micro) on
hand-made predictions: the tables in docs/accuracy.md are only as right as these counts."""
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import Doc, Span

sys.path.append(str(Path(__file__).resolve().parents[1] / "project" / "scripts"))  # after everything installed

import average_adapters  # noqa: E402
import count_calibration  # noqa: E402
import count_check  # noqa: E402
import count_probe  # noqa: E402
import error_analysis  # noqa: E402

LABELS = ["LOC", "PER"]


def gold_and_pred(counts, mentions):
    """'Ada met Bob in Paris and Paris .' with gold PER Ada, PER Bob, LOC Paris twice, and a prediction
    carrying the component's user_data."""
    vocab = spacy.blank("en").vocab
    words = ["Ada", "met", "Bob", "in", "Paris", "and", "Paris", "."]
    gold = Doc(vocab, words=words)
    gold.ents = [Span(gold, 0, 1, "PER"), Span(gold, 2, 3, "PER"), Span(gold, 4, 5, "LOC"), Span(gold, 6, 7, "LOC")]
    pred = Doc(vocab, words=words)
    pred.user_data["padellm"] = {"counts": counts, "mentions": mentions}
    return gold, pred


def test_error_analysis_names_the_causes():
    gold, pred = gold_and_pred({"PER": 1, "LOC": 2}, [("PER", "Ada", -0.1), ("LOC", "Paris", -0.1),
                                                      ("LOC", "Bob", -0.5)])
    out = error_analysis.analyse([pred], [gold], LABELS)
    assert out["counts"]["PER"] == {"pairs": 1, "low": 1, "zero_for_some": 0}
    assert out["counts"]["LOC"] == {"pairs": 1, "exact": 1, "zero_for_some": 0}
    assert out["causes"]["PER"] == {"missed_count": 1, "right": 1}  # Bob: PER's count was too low
    assert out["causes"]["LOC"] == {"wrong_label": 1, "right": 1}  # Bob is gold under PER
    assert out["slots"] == {1: {"n": 1, "right": 1}, 2: {"n": 1, "right": 0}}  # LOC slot 2 held Bob


def test_count_calibration_tunes_on_one_half_and_reports_the_other():
    def row(label, gold, p0, p1):
        return {"label": label, "gold": gold, "p_digits": [p0, p1] + [(1 - p0 - p1) / 8] * 8}

    # PER says 0 at 0.55 where the truth is 1, in both halves; LOC is right without an offset
    rows = [row("LOC", 0, 0.9, 0.1), row("PER", 1, 0.55, 0.45)] * 4
    assert count_calibration.calibrated(rows[1], {}) == 0
    assert count_calibration.calibrated(rows[1], {"PER": (-0.5, 0.0)}) == 1
    out = count_calibration.report(rows)
    assert out["greedy"] == {"A": 0.5, "B": 0.5}
    fit = out["offset_of_0"]
    assert fit["tuned_on_A"]["LOC"] == (0.0, 0.0) and fit["tuned_on_A"]["PER"][0] < 0  # smallest offset that works
    assert fit["B_held_out"] == 1.0 and fit["A_held_out"] == 1.0


def test_count_probe_summary():
    rows = [{"gold": 1, "greedy": 1, "p_greedy": 0.995, "p_digits": [0.005, 0.995] + [0.0] * 8},
            {"gold": 2, "greedy": 1, "p_greedy": 0.6, "p_digits": [0.1, 0.6, 0.3] + [0.0] * 7},
            {"gold": 0, "greedy": 1, "p_greedy": 0.8, "p_digits": [0.05, 0.8, 0.15] + [0.0] * 7}]
    s = count_probe.summary(rows)
    assert (s["pairs"], s["wrong"], s["gold_is_second_choice"]) == (3, 2, 1)  # 2 is second; 0 is third
    assert s["bins"]["0.99-1.00"] == {"n": 1, "exact": 1} and s["bins"]["0.50-0.70"] == {"n": 1, "exact": 0}


def test_count_check_keeps_only_new_strings_of_the_text():
    gold, pred = gold_and_pred({"PER": 1, "LOC": 2}, [("PER", "Ada", -0.1), ("LOC", "Paris", -0.1),
                                                      ("LOC", "Paris", -0.2)])
    cands = [{"doc": 0, "label": "PER", "ratio": 0.5, "text": "Bob", "mean_logprob": -0.05},
             {"doc": 0, "label": "LOC", "ratio": 0.5, "text": "Paris", "mean_logprob": -0.05},  # not new
             {"doc": 0, "label": "LOC", "ratio": 0.5, "text": "Rome", "mean_logprob": -0.05}]  # not in the text
    keep = count_check.accepted(cands, [pred], [gold], ratio=0.1, tau=-0.1)
    assert keep == {(0, "PER"): "Bob"}
    assert count_check.accepted(cands, [pred], [gold], ratio=0.6, tau=-0.1) == {}  # p(c+1) too unlikely
    assert count_check.accepted(cands, [pred], [gold], ratio=0.1, tau=-0.01) == {}  # not sure enough
    before = count_check.score([gold], [pred], LABELS, [0], {}, False)
    after = count_check.score([gold], [pred], LABELS, [0], keep, False)
    assert (before["count_exact"], after["count_exact"]) == (50.0, 100.0)
    assert (before["r"], after["r"]) == (pytest.approx(200 / 3), pytest.approx(100.0))
    # the repeated last LOC slot counts one less (here wrongly: CoNLL counts Paris twice)
    assert count_check.score([gold], [pred], LABELS, [0], keep, True)["count_exact"] == 50.0


def test_the_speed_scripts_compare_the_same_products():
    """linear_orientation's two orders and int8_weight_micro's quantization, on small shapes: a speed
    table is only worth its numbers if both sides compute the same thing."""
    import torch

    import int8_weight_micro
    import linear_orientation

    w, x = torch.randn(48, 32), torch.randn(5, 32)
    torch.testing.assert_close(linear_orientation.weight_left(x, w), linear_orientation.one_order(x, w))
    linear_ms, left_ms = linear_orientation.case([w, w.clone()], rows=5, repeats=2)
    assert linear_ms > 0 and left_ms > 0
    packed = int8_weight_micro.quantize(w)
    assert packed["q"].dtype == torch.int8 and packed["q"].abs().max() <= 127
    assert ((packed["q"].float() * packed["scale"][:, None] - w).abs() <= packed["scale"][:, None] / 2 + 1e-6).all()


def test_cpu_share_counts_a_busy_process_in_its_group_and_window():
    """ray_benchmark --cpu-share: a child that burns ~0.6 CPU-s is counted under its group, inside the
    window it ran in, and not in a window before it started."""
    import subprocess
    import time

    import cpu_share

    assert cpu_share.group_of("ray::MapWorker(MapBatches(PipelineAnnotator))") == "actor (MapWorker)"
    assert cpu_share.group_of("/x/ray/core/src/ray/raylet/raylet --node") == "raylet"
    assert cpu_share.group_of("python -m spacy_padellm apply p in out") == "apply driver"
    sampler = cpu_share.CpuSampler(interval=0.05).start()
    time.sleep(0.3)
    before = time.time()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.2)"
    subprocess.run([sys.executable, "-c", burn, "spacy_padellm apply"], check=True)
    after = time.time()
    time.sleep(0.2)
    sampler.stop()
    during = sampler.share(before, after)
    assert 0.4 <= during.get("apply driver", 0.0) <= 1.0, during
    assert sampler.share(before - 0.3, before - 0.1).get("apply driver", 0.0) == 0.0


def test_averaged_adapters_hold_the_mean_delta_exactly():
    """The soup of two LoRA adapters is the mean of their deltas (scale * B @ A), not the LoRA of mean A and B;
    with --rank, the truncated delta of this rank-3 mean is exact at rank 3 and not at rank 1."""
    import torch

    gen = torch.Generator().manual_seed(0)
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    adapters = []
    for r, alpha in ((2, 4), (1, 8)):  # different ranks and scales (2 and 8)
        weights = {name + ".lora_A.weight": torch.randn(r, 6, generator=gen),
                   name + ".lora_B.weight": torch.randn(5, r, generator=gen)}
        adapters.append(({"r": r, "lora_alpha": alpha}, weights))

    def delta(config, w):
        return config["lora_alpha"] / config["r"] * w[name + ".lora_B.weight"] @ w[name + ".lora_A.weight"]

    mean = 0.25 * delta(*adapters[0]) + 0.75 * delta(*adapters[1])
    rank, out, kept = average_adapters.average(adapters, [0.25, 0.75])
    assert rank == 3 and kept == []
    assert torch.allclose(delta({"r": rank, "lora_alpha": 2 * rank}, out), mean, atol=1e-5)  # the first's scale
    rank, out, kept = average_adapters.average(adapters, [0.25, 0.75], rank=3)
    assert torch.allclose(delta({"r": 3, "lora_alpha": 6}, out), mean, atol=1e-4) and kept[0] > 0.9999
    rank, out, kept = average_adapters.average(adapters, [0.25, 0.75], rank=1)
    assert not torch.allclose(delta({"r": 1, "lora_alpha": 2}, out), mean, atol=1e-2) and kept[0] < 0.9999


def test_int8_experiment_leaves_the_named_linears_float(tiny_llama):
    """int8_smoothquant.quantize: dynamic int8 for every decoder linear but those named in `keep`."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    import int8_smoothquant

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    int8_smoothquant.quantize(model, keep=["down_proj"])
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj) is nn.Linear
    for mod in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj):
        assert type(mod) is not nn.Linear and "quantized" in type(mod).__module__
