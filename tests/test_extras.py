"""engine/extras.py: extra tokens are carried where this machine's passes make them pay, and only there."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spacy_padellm.engine.decoder import Decoder
from spacy_padellm.benchmark import extras_line
from spacy_padellm.engine.extras import EXPLORE, EXPLORE_PLAIN, RECENT, Extras, PassCost
from spacy_padellm.engine.runner import Meter
from spacy_padellm.prompts import get_template

from helpers import LABELS, SENTENCES

# a CPU-like machine (2-core bf16, measured shapes): ~30 ms a pass plus ~1 ms a token, more for rows with
# a cache; a GPU-like one: 10 ms up to 1,000 tokens
CPU = PassCost(((1, 0.030), (16, 0.045), (64, 0.100)))
CPU_ROWS = {1: PassCost(((1, 0.030), (8, 0.055), (32, 0.120))), 5: PassCost(((1, 0.040), (8, 0.082), (32, 0.300)))}
GPU = PassCost(((1, 0.010), (16, 0.010), (1000, 0.011)))
GPU_ROWS = {1: PassCost(((1, 0.010), (32, 0.010), (1000, 0.011))), 5: PassCost(((1, 0.010), (32, 0.010), (1000, 0.012)))}


def test_pass_cost_interpolates_and_extrapolates():
    assert CPU.seconds(1) == 0.030 and CPU.seconds(0) == 0.030
    assert abs(CPU.seconds(40) - 0.0725) < 1e-9
    assert abs(CPU.seconds(128) - (0.100 + 64 * 0.055 / 48)) < 1e-9  # the last slope goes on
    assert CPU.extra(64, 64) > GPU.extra(64, 64) * 50
    assert "64 tok 100 ms" in CPU.describe()


def test_measured_costs_grow_with_tokens_and_rows(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        costs = [PassCost.first_pass(model, sizes=(1, 8, 32))] + list(PassCost.greedy_passes(model, None, [1, 5]).values())
    for cost in costs:
        times = [t for _, t in cost.points]
        assert len(times) == 3 and times == sorted(times) and times[0] > 0


def test_choices_follow_the_cost_of_tokens():
    meter = Meter()
    for cost, rows, small, large in ((CPU, CPU_ROWS, 1, 0), (GPU, GPU_ROWS, 1, 1)):
        extras = Extras(None, meter=meter, prompt_cost=cost, row_costs=dict(rows))
        extras.count_rows = [60.0, 25.0, 15.0]  # CoNLL-like: most label rows have no mention
        meter.clear()
        meter.add("mention_prompt", 2.6 * cost.seconds(1), tokens=23)  # its pass as measured so far: 78 ms on the CPU
        # one document: guesses cost ~24 tokens of a ~64-token pass and often save a whole pass
        assert extras.guesses(1, docs=1, labels=4, prompt_tokens=64, guess_tokens=24) == small
        # 32 documents: some label row has 2+ mentions, a second pass is needed anyway (no gain)
        assert extras.guesses(1, docs=32, labels=4, prompt_tokens=2000, guess_tokens=768) == 0
        assert extras.speculate(4, rows=8) == 4 * small
        assert extras.speculate(4, rows=256) == 4 * large  # 1,024 extra tokens: compute on a CPU, free on a GPU
        assert extras.speculate(0, rows=8) == 0
        choices = dict(meter.choices)
    assert choices == {"count guesses": 1, "no count guesses": 1, "speculation": 2}  # the GPU-like one



def test_rates_are_learned_from_what_was_decoded():
    extras = Extras(None, prompt_cost=CPU, row_costs=dict(CPU_ROWS))
    extras.saw_counts([0] * 50 + [1] * 10 + [3] * 40)  # many long lists: a guess of 1 rarely saves a pass
    assert extras.guesses(1, docs=1, labels=4, prompt_tokens=64, guess_tokens=24) == 0
    for _ in range(1000):
        extras.saw_proposal(0)  # proposals never accepted: speculation only costs
    chosen = [extras.speculate(4, rows=4) for _ in range(32)]
    assert chosen.count(4) == 2 and chosen[15] == chosen[31] == 4  # but it is tried now and then, to measure it


def test_fixed_rule_and_same_output(tiny_llama):
    """small_batch > 0: the old threshold. Either way the output is plain greedy's, and the meter shows
    what was chosen."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    outputs = []
    for settings in ({"small_batch": 0}, {"small_batch": 1}, {"count_guesses": 0, "speculate": 0}):
        dec = Decoder(model, tok, get_template("en"), max_new_tokens=5, **settings)
        preds = dec.predict(SENTENCES, LABELS, [3] * len(SENTENCES))
        outputs.append([(p.counts, [(m.label, m.text) for m in p.mentions]) for p in preds])
        if settings == {"small_batch": 0}:
            assert dec.extras.prompt_cost is not None and sum(dec.meter.choices.values()) >= 1
            assert "first pass, by tokens" in dec.extras.describe()
        if settings == {"small_batch": 1}:  # more texts than the threshold: no extras, nothing measured
            assert dec.extras.prompt_cost is None and dec.meter.choices == {"no count guesses": 1}
    assert outputs[0] == outputs[1] == outputs[2]


def test_costs_are_measured_once(tiny_llama, monkeypatch):
    """All pass costs are timed together, at the first decision, and never again."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    calls = []
    original = PassCost.time_passes

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return original(*args, **kwargs)

    monkeypatch.setattr(PassCost, "time_passes", staticmethod(counted))
    extras = Extras(model, speculate_width=4)
    extras.guesses(1, docs=1, labels=4, prompt_tokens=64, guess_tokens=24)
    assert set(extras.row_costs) == {1, 5} and calls == [3, 6]  # the first pass; greedy passes of 1 and 5 tokens
    for rows in (1, 3, 8, 40):
        extras.speculate(4, rows)
    extras.guesses(1, docs=2, labels=4, prompt_tokens=128, guess_tokens=48)
    assert calls == [3, 6]


def test_real_passes_correct_a_wrong_calibration():
    """A calibration that prices proposals far too high (run 22's: 38 ms for 5 tokens against 20 for one)
    declines speculation; the passes that speculate to measure it show it is cheap, and it is chosen."""
    wrong = {1: PassCost(((1, 0.020), (8, 0.026), (32, 0.040))), 5: PassCost(((1, 0.038), (8, 0.057), (32, 0.153)))}
    extras = Extras(None, prompt_cost=CPU, row_costs=dict(wrong))
    extras.accepted, extras.proposal_rows = 120.0, 100.0  # proposals gain 1.2 tokens a pass
    assert extras.speculate(4, rows=1) == 0
    chosen = []
    for _ in range(3 * EXPLORE):
        proposals = extras.speculate(4, rows=1)
        chosen.append(proposals)
        extras.saw_pass(1, proposals, 0.021 if proposals else 0.020)  # what the machine really takes
    assert chosen[:EXPLORE - 2].count(4) == 0 and chosen[-EXPLORE:].count(4) == EXPLORE
    assert extras.describe()["real speculating greedy passes / calibration"] == "0.55x"  # 21 ms of 38
    # and a calibration too cheap for speculation is corrected the other way
    extras = Extras(None, prompt_cost=CPU, row_costs={1: wrong[1], 5: wrong[1]})
    extras.accepted, extras.proposal_rows = 10.0, 100.0  # proposals gain 0.1 tokens a pass
    assert extras.speculate(4, rows=32) == 4
    for _ in range(RECENT):
        extras.saw_pass(32, 4, 0.080)
    assert extras.speculate(4, rows=32) == 0


def test_plain_passes_stay_measured_while_every_pass_speculates():
    """Where speculation always pays, one pass in EXPLORE_PLAIN runs plain, so a calibration that overprices
    plain passes is corrected too; passes whose rows had no proposal are plain passes already and count."""
    meter = Meter()
    extras = Extras(None, meter=meter, prompt_cost=GPU, row_costs=dict(GPU_ROWS))  # proposals nearly free
    extras.accepted, extras.proposal_rows = 300.0, 100.0
    chosen = [extras.speculate(4, rows=4) for _ in range(2 * EXPLORE_PLAIN)]
    assert chosen.count(0) == 2 and chosen[EXPLORE_PLAIN - 1] == chosen[2 * EXPLORE_PLAIN - 1] == 0
    assert extras_line(meter.choices) == f"speculation in {2 * EXPLORE_PLAIN - 2} of {2 * EXPLORE_PLAIN} passes " \
                                         "(2 without, to measure that)"
    extras = Extras(None, prompt_cost=GPU, row_costs=dict(GPU_ROWS))
    extras.accepted, extras.proposal_rows = 300.0, 100.0
    chosen = []
    for i in range(2 * EXPLORE_PLAIN):
        chosen.append(extras.speculate(4, rows=4))
        extras.saw_pass(4, 0 if i % 32 == 0 else chosen[-1], 0.010)  # now and then no row had a proposal
    assert chosen.count(0) == 0


def test_no_timing_without_speculation(tiny_llama):
    """With speculation off nothing is worth timing: no calibration is run for it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    dec = Decoder(model, tok, get_template("en"), max_new_tokens=5, small_batch=0, speculate=0, count_guesses=0)
    dec.predict(SENTENCES, LABELS, [3] * len(SENTENCES))
    assert dec.extras.row_costs == {} and dec.extras.ratios == {False: [], True: []}
