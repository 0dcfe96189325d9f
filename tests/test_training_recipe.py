"""The training recipe (issue 14): loss weights per target part, a resumed run keeps its schedule, the
selection sample is spread over dev, the full dev score is written at the end, warm start, count metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
import torch
from spacy.tokens import Span
from transformers import AutoModelForCausalLM

from spacy_padellm.prompts import get_template, special_prefix
from spacy_padellm.training.config import TrainConfig
from spacy_padellm.training.examples import COUNT, EOS, MARKER, MENTION, doc_examples, encode_example
from spacy_padellm.training.loop import lr_at, spread, train
from spacy_padellm.training.packing import collate, pack_examples, packed_loss

from helpers import DOCS, overfit_config, write_jsonl


@pytest.fixture()
def encoded(tokenizer):
    nlp = spacy.blank("en")
    doc = nlp.make_doc('Ada met "Bob" in Paris .')
    doc.ents = [Span(doc, 0, 1, "PER"), Span(doc, 3, 4, "PER"), Span(doc, 6, 7, "LOC")]
    examples = doc_examples(doc, ["PER", "LOC", "ORG"], get_template("en"))
    return [encode_example(tokenizer, e, special_prefix(tokenizer)) for e in examples]


def test_every_target_token_gets_its_part(encoded, tokenizer):
    for ex in encoded:
        target = ex.ids[ex.n_prompt:]
        assert len(ex.parts) == len(target) and ex.parts[-1] == EOS
        assert list(ex.parts) == sorted(ex.parts)  # count, marker, mention, EOS: in that order
        text = {p: tokenizer.decode([t for t, q in zip(target, ex.parts) if q == p]) for p in set(ex.parts)}
        if ex.parts[0] == COUNT and MARKER not in ex.parts:  # a label without mentions: "0<eos>"
            assert text[COUNT] == "0"
            continue
        assert text[COUNT] in ("2\n", "1\n")  # the newline ending the count is read by the decoder: it is COUNT
        assert text[MARKER].startswith("<mention ") and text[MARKER].endswith(">")
        assert text[MENTION] in ("Ada", "Bob", '"Bob', "Paris")  # a seam merge '>"' goes to the mention


def test_loss_weights_weigh_each_part(encoded, tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    sums, counts = {}, {}
    for part in (COUNT, MARKER, MENTION, EOS):
        w = [0.0] * 4
        w[part] = 1.0
        tree = pack_examples(encoded, w)
        counts[part] = sum(tree.loss_weights)
        sums[part] = packed_loss(model, collate([[tree]], pad_id=0), reduction="sum").item()
    plain = collate([[pack_examples(encoded)]], pad_id=0)
    assert sum(sums.values()) == pytest.approx(packed_loss(model, plain, reduction="sum").item(), rel=1e-5)
    assert all(n > 0 for n in counts.values())
    weights = (2.0, 0.0, 1.0, 0.5)
    weighted = packed_loss(model, collate([[pack_examples(encoded, weights)]], pad_id=0)).item()
    expected = sum(w * sums[p] for p, w in enumerate(weights)) / sum(w * counts[p] for p, w in enumerate(weights))
    assert weighted == pytest.approx(expected, rel=1e-5)


def test_spread_sample_covers_dev_and_misses_every_kth():
    docs = list(range(3250))
    sample = spread(docs, 400)
    assert len(sample) == 400 and len(set(sample)) == 400
    assert sample[0] < 10 and sample[-1] > 3240  # from the first block to the last
    assert len(set(sample) & set(docs[::8])) <= 50  # mostly apart from a benchmark's every-8th sample (48)
    assert spread(docs[:5], 10) == docs[:5]


def test_evaluate_sample_scores_the_selection_documents(tiny_llama, tiny_adapter, tmp_path):
    """`evaluate --sample N` scores the documents training selects on, so a checkpoint's selection score can
    be re-read with other settings (the same decoding on two arms)."""
    from spacy_padellm.cli import main

    data = tmp_path / "dev.conll"
    data.write_text("".join(f"W{i} B-PER\n. O\n\n" for i in range(9)))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--data", str(data), "--model", tiny_llama, "--adapter", tiny_adapter,
                 "--sample", "3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n_docs"] == 3


def test_resumed_run_keeps_its_schedule_and_scores_all_dev(tmp_path, wide_tiny):
    dev = write_jsonl(tmp_path / "dev.jsonl", DOCS + [{"text": "Bob Smith ran .", "entities": [[0, 9, "PER"]]}])
    cfg = overfit_config(tmp_path, wide_tiny, dev=dev, max_steps=6, eval_every=3, eval_docs=2, checkpoint_every=2)
    best = train(cfg)
    # the full-dev score of the selected adapter: written once, on all 3 docs (the sample had 2)
    meta = json.loads((Path(cfg.output) / "best" / "padellm.json").read_text())
    assert meta["dev_full"]["n_docs"] == 3 and best["dev_full"]["n_docs"] == 3
    assert meta["dev"]["scores"]["n_docs"] == 2
    assert "count_exact" in meta["dev_full"] and 0.0 <= meta["dev_full"]["count_exact"] <= 1.0
    assert json.loads(json.dumps(cfg.to_dict()))["count_weight"] == meta["config"]["count_weight"]
    # asking for a longer run in the same folder keeps the original schedule: nothing more is trained
    train(overfit_config(tmp_path, wide_tiny, dev=dev, max_steps=12, eval_every=3, eval_docs=2))
    log = [json.loads(x) for x in (Path(cfg.output) / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert max(steps) == 6
    for r in log:
        if "lr" in r:
            assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, 6, cfg))
    assert sum("final_eval" in r for r in log) == 1  # not evaluated again


def test_warm_start_begins_from_the_given_adapter(tmp_path, wide_tiny):
    from safetensors.torch import load_file

    (tmp_path / "a").mkdir()
    first = overfit_config(tmp_path / "a", wide_tiny, dev="", max_steps=4)
    train(first)
    (tmp_path / "b").mkdir()
    second = overfit_config(tmp_path / "b", wide_tiny, dev="", max_steps=1, lr=1e-12, warmup_steps=1,
                            init_adapter=str(Path(first.output) / "best"))
    train(second)
    a = load_file(str(Path(first.output) / "best" / "adapter_model.safetensors"))
    b = load_file(str(Path(second.output) / "checkpoint" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), atol=1e-2, rtol=1e-2)
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)  # not the zero init


def test_a_lower_rank_adapter_grows_into_a_higher_rank_run_unchanged(tmp_path, wide_tiny):
    """Growing r=4 (scale 2) into r=8 (scale 1) must start from the same model; shrinking is refused."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from spacy_padellm.errors import PaDeLLMError
    from spacy_padellm.training.checkpoints import warm_start

    small = overfit_config(tmp_path, wide_tiny, dev="", max_steps=4, lora_r=4, lora_alpha=8)
    train(small)
    saved = str(Path(small.output) / "best")
    ids = torch.tensor([[5, 9, 17, 3, 30, 2]])
    with torch.no_grad():
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(wide_tiny), saved)(ids).logits

    def fresh(r: int, alpha: int):
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                            task_type="CAUSAL_LM")
        return get_peft_model(AutoModelForCausalLM.from_pretrained(wide_tiny), config)

    grown = fresh(8, 8)
    warm_start(grown, saved)
    with torch.no_grad():
        torch.testing.assert_close(grown(ids).logits, reference, atol=1e-5, rtol=1e-5)
    # the new rank is really there: A's new rows are random (trainable directions), B's new columns zero
    a = next(p for n, p in grown.named_parameters() if "lora_A" in n)
    b = next(p for n, p in grown.named_parameters() if "lora_B" in n)
    assert a[4:].abs().sum() > 0 and b[:, 4:].abs().sum() == 0 and b[:, :4].abs().sum() > 0
    with pytest.raises(PaDeLLMError, match="only a lower rank grows"):
        warm_start(fresh(2, 4), saved)


def test_train_config_fields_reach_the_cli():
    from spacy_padellm.cli import build_parser

    args = build_parser().parse_args(["train", "--count-weight", "3", "--marker-weight", "0", "--final-eval",
                                      "false", "--init-adapter", "x"])
    assert (args.count_weight, args.marker_weight, args.final_eval, args.init_adapter) == (3.0, 0.0, False, "x")
    assert TrainConfig().final_eval is True


def test_a_slim_checkpoint_resumes_with_the_same_schedule(tmp_path, wide_tiny):
    """What travels in git: bf16 adapter and step/schedule, no Adam moments; the run goes on from its step
    and every learning rate is the original schedule's."""
    from spacy_padellm.training.checkpoints import slim_checkpoint

    cfg = overfit_config(tmp_path, wide_tiny, dev="", max_steps=6, checkpoint_every=3, final_eval=False)
    train(cfg)
    ckpt = Path(cfg.output) / "checkpoint"
    state = torch.load(ckpt / "state.pt", weights_only=False)
    torch.save({**state, "step": 3}, ckpt / "state.pt")  # as if killed after step 3
    slim_checkpoint(ckpt)
    slim = torch.load(ckpt / "state.pt", weights_only=False)
    assert "optimizer" not in slim and slim["step"] == 3 and slim["total"] == 6
    train(overfit_config(tmp_path, wide_tiny, dev="", max_steps=99, checkpoint_every=3, final_eval=False))
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] == 6
    log = [json.loads(x) for x in (Path(cfg.output) / "train_log.jsonl").read_text().splitlines()]
    assert all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, 6, cfg)) for r in log if "lr" in r)
