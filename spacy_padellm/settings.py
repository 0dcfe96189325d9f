"""Decoding settings: their defaults, their checks, and the named presets the benchmark compares.

This is the one place a decoding default is written. The component's config, the Decoder, the training
evaluator and the benchmark all build a `DecodeSettings`, so a changed default changes all of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional

from .errors import Errors, PaDeLLMError

# A one-digit count is one token of the base vocabulary ("1".."9"): count guesses stop there.
MAX_GUESSED_COUNT = 9


@dataclass(frozen=True)
class DecodeSettings:
    """How the engine decodes; every value checked once, here (E010 quotes the offending value)."""
    max_new_tokens: int = 32  # longest mention, in tokens
    # copy-speculation: text tokens proposed per mention pass (same output, fewer passes, where they pay)
    speculate: int = 4
    tree: bool = True  # tree-shaped passes where the model family allows (engine/family.py); same output
    count_guesses: int = 1  # tree path: mention prompts of counts 1..N ride along in the first pass; same output
    count_bias: float = 0.0  # taken off the logits of a 0 count at the first count token (a recall knob)
    # 0: count guesses (per call) and speculation (per greedy pass) where this machine's measured passes say
    # they pay (engine/extras.py); the output is plain greedy's either way, but the choices follow timing, so
    # pass counts and a score's last bits can differ between two runs. N > 0: the fixed rule, extras for
    # calls of at most N texts, reproducible to the bit (the choice before session 19: 4)
    small_batch: int = 0
    # mention tokens constrained to word-aligned substrings of the text (+1.27 string F1 on all of CoNLL-2003
    # dev with the shipped adapter); false: the paper's plain greedy decoding
    mentions_from_text: bool = True
    kv_budget_mb: int = 256  # most MB of key/value cache materialised for one batch of rows
    lean_forward: bool = True  # Llama models run our own forward pass (engine/lean.py); same output, faster

    def __post_init__(self) -> None:
        defaults = DecodeSettings.__dataclass_fields__
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name), defaults[f.name].default)
        object.__setattr__(self, "count_bias", float(self.count_bias or 0.0))  # null: no bias

    def replace(self, **changes: Any) -> "DecodeSettings":
        return replace(self, **changes)

    def to_config(self) -> Dict[str, Any]:
        return asdict(self)


DECODE_KEYS = tuple(f.name for f in fields(DecodeSettings))

# The component's own settings beside the decoding ones (model, adapter, labels and template are checked
# where they are resolved). Keys listed in DECODE_KEYS take their defaults from DecodeSettings.
PIPE_SETTINGS: Dict[str, Any] = {
    "batch_size": 32,  # most docs decoded together (bounds memory; nlp.pipe's batch_size can lower it)
    "dtype": "auto",  # bf16 where the CPU/GPU runs it fast, else float32; int8: approximate, opt-in (engine/int8.py)
    "device": "auto",
    "dedup": True,  # the paper's one-label-per-string rule
    "spans_key": "padellm",
    "max_chunk_tokens": 128,  # a sentence longer than this is cut at whitespace
    "chunk_tokens": 0,  # sentences packed into one chunk up to this many tokens (0: a chunk per sentence)
    "split_count": 6,  # a chunk whose count for a label reaches this is cut in two and decoded again (0: never)
    "all_occurrences": False,  # also tag every same-case, token-aligned occurrence of a predicted string
    "batch_tokens": 4096,  # most tokens (over all chunks) decoded together: bounds memory
    "overwrite_ents": False,  # false: keep entities set earlier in the pipeline, add ours where they don't overlap
    "threads": 0,  # torch threads; 0: the cores this process may use (more than the free cores is 5-10x slower)
}

# Named variants the benchmark runs side by side (component config overrides).
PRESETS: Dict[str, Dict[str, Any]] = {
    "padellm": {},
    # our engine before the tree passes: one row per sequence, no count guesses, no speculation
    "padellm_rows": {"tree": False, "speculate": 0, "count_guesses": 0},
    # float32 weights (dtype auto is bf16 on CPUs with AVX512-BF16/AMX)
    "padellm_fp32": {"dtype": "float32"},
    # smoothed dynamic int8 linears, down_proj float32 (engine/int8.py): approximate, the F1 to compare
    "padellm_int8": {"dtype": "int8"},
    # the paper's plain greedy mentions (no substring constraint): the same output as padellm_reference
    "padellm_plain": {"mentions_from_text": False},
    # transformers' own forward pass instead of engine/lean.py (same output: the benchmark checks it)
    "padellm_hf": {"lean_forward": False},
    # the fixed rule for the extras (calls of at most 4 texts) instead of this machine's measured pass costs
    "padellm_fixed_extras": {"small_batch": 4},
}
# every method the benchmark runs: the presets, the paper's procedure and the two autoregressive baselines
# (here, not in benchmark.py, so the command line lists them without importing spaCy)
METHODS = (*PRESETS, "padellm_reference", "autoreg_struct", "autoreg_aug")

POSITIVE = {"batch_size", "max_new_tokens", "max_chunk_tokens", "batch_tokens", "kv_budget_mb"}
UPPER = {"count_guesses": MAX_GUESSED_COUNT}
NOTES = {"threads": " (0: the cores this process may use)", "split_count": " (0: never split)",
         "small_batch": " (0: chosen from this machine's pass costs)"}
NUMBERS = {"count_bias"}  # ints or floats
NULLABLE = {"count_bias"}  # the component's null: the adapter's tuned value


def check_setting(key: str, value: Any, default: Any) -> None:
    """E010 for a setting of the wrong kind or range; the kind is that of `default`."""
    if key in ("model", "device"):
        return  # checked where they are resolved
    if key in NUMBERS:
        if value is None and key in NULLABLE:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be a number or null"))
    elif key == "dtype" and value not in ("auto", "float32", "bfloat16", "int8"):
        raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="use auto, float32, bfloat16 or int8"))
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be true or false"))
    elif isinstance(default, int):
        low, high = (1 if key in POSITIVE else 0), UPPER.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            why = f"must be an integer from {low}" + (f" to {high}" if high else "") + NOTES.get(key, "")
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why=why))
    elif isinstance(default, str) and (not isinstance(value, str) or not value):
        raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be a non-empty string"))


def decode_settings(config: Dict[str, Any], count_bias: Optional[float] = None) -> DecodeSettings:
    """The DecodeSettings of a component config (its other keys ignored); `count_bias` overrides the
    config's (the component resolves a null one to the adapter's tuned value)."""
    values = {k: config[k] for k in DECODE_KEYS if k in config}
    if count_bias is not None:
        values["count_bias"] = count_bias
    return DecodeSettings(**values)  # a null count_bias becomes 0.0 there
