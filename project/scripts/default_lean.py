"""The shipped default's runner, model and engine forward pass (`engine/lean.py`), loaded for the speed
scripts of this folder that time the engine's own passes (pass_overhead.py, compile_micro.py)."""
from __future__ import annotations

from typing import Any, Tuple


def load_default_lean(threads: int) -> Tuple[Any, Any, Any]:
    """(runner, model, LeanLlama) of the default pipe with `threads` torch threads; exits where the model
    does not take the engine's forward pass."""
    import spacy

    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"threads": threads})
    list(nlp.pipe(["Paris is in France ."]))  # loads the model
    runner = pipe.decoder.runner
    if runner.lean is None:
        raise SystemExit("the default model does not run engine/lean.py here")
    return runner, runner.model, runner.lean
