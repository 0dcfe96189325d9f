"""What tests build from: tiny random causal LMs of several families with the real tokenizer's
vocabulary, random LoRA adapters, and a few sentences. Imported by tests as `helpers` (the fixtures that
use these live in conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from spacy_padellm.training.config import TrainConfig

LABELS = ["PER", "ORG", "LOC", "MISC"]
SENTENCES = [
    "Ada Lovelace met Charles Babbage in London.",
    "The Acme Corporation opened an office in Paris and another in Paris, Texas.",
    "İstanbul ve Ankara büyük şehirlerdir.",
    "Nothing to see here.",
    "Zoë flew from São Paulo to Zürich with Lufthansa.",
]


def build_tiny(family: str, tokenizer, folder: Path, seed: int = 0, hidden: int = 32) -> str:
    """A 2-layer random model of `family` with the real tokenizer's vocabulary, saved to `folder`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    if family == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=4096, **common)
    elif family == "qwen2":
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=4096, **common)
    elif family == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=4096, **common)
    else:
        raise ValueError(family)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_adapter(base_folder: str, folder: Path, labels, seed: int = 1) -> str:
    """A random (non-zero) LoRA adapter for `base_folder`, saved with its padellm.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    (folder / "padellm.json").write_text(json.dumps({"labels": list(labels), "template": "en",
                                                     "base_model": base_folder}))
    return str(folder)



DOCS = [
    {"text": "Ada Lovelace met Charles Babbage in London .", "entities": [[0, 12, "PER"], [17, 32, "PER"], [36, 42, "LOC"]]},
    {"text": "Acme Corp opened in Paris .", "entities": [[0, 9, "ORG"], [20, 25, "LOC"]]},
]


def write_jsonl(path: Path, records: Sequence[Dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    return str(path)


def overfit_config(tmp_path: Path, model: str, **kw: Any) -> TrainConfig:
    """A run that overfits DOCS in ~100 steps of a 64-wide tiny model (seconds on one thread)."""
    data = write_jsonl(tmp_path / "two.jsonl", DOCS)
    values = dict(train=data, dev=data, output=str(tmp_path / "out"), model=model, lora_r=16, lora_alpha=32,
                  lora_first_layer=0, lora_dropout=0.0, lr=1e-2, warmup_steps=5, max_steps=120, rows_per_step=1,
                  eval_every=40, eval_docs=2, checkpoint_every=20, threads=1, bf16="false", max_new_tokens=8)
    values.update(kw)
    return TrainConfig(**values)
