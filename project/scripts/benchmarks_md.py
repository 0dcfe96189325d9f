"""Render a benchmark results JSON as BENCHMARKS.md: the summary table, the per-stage breakdown and F1 by
label (generated from the JSON), then benchmarks/NOTES.md (written by hand: the other measurements and the
history of runs, one short paragraph each)."""
import json
import sys
from pathlib import Path

from spacy_padellm.benchmark import quality_table, stage_table, table

result = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
notes = Path(__file__).resolve().parents[2] / "benchmarks" / "NOTES.md"
floor = result.get("floor") or {}
lines = [
    "# Benchmarks", "",
    f"{result.get('title', 'The latest run')}: {result['device']}"
    + (f" [{' '.join(floor.get('flags', []))}]" if floor else "") + f"; {result['n_docs']} CoNLL-2003 dev documents.",
    "All methods ran interleaved on the same batches after a warm-up, in one process: compare within this table",
    "only (this machine's runs differ by 10-15% from each other). Command:", "",
    "```", result.get("command", "spacy project run benchmark"), "```", "",
    "```", table(result), "```", "",
    "p50/p90: ms per batch (a batch of 1 is one document); passes: sequential forward passes per document;",
    "prompt/gen: tokens fed and generated per document; seq: tokens per output sequence (the paper's measure);",
    "floor: the share of this run's calibrated matmul rate over all passes; same %: documents whose (label,",
    "string) set equals padellm's. Speedups: the other's p50 over padellm's at batch size 1, padellm's docs/s",
    "over the other's at larger batches.", "",
    "## Per stage", "",
    "prompt = text + label prompts (+ guessed counts), count = count digits, mention_prompt = the mention",
    "prompts' prefill, mention = greedy mention tokens. x1tok: ms per pass over a one-token pass of the same",
    "model in this run; extras: what the engine chose from this machine's pass costs (`engine/extras.py`).", "",
    "```", stage_table(result), "```", "",
    "## F1 by label", "",
    "```", quality_table(result), "```", ""]
if notes.is_file():
    lines += [notes.read_text(encoding="utf8").rstrip(), ""]
out.write_text("\n".join(lines), encoding="utf8")
print(f"-> {out}")
