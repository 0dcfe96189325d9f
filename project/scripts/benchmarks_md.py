"""Render a benchmark results JSON as BENCHMARKS.md (table, speedups, plot, machine, command)."""
import json
import sys
from datetime import date
from pathlib import Path

from spacy_padellm.benchmark import quality_table, stage_table, table

result = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])
lines = [
    "# Benchmarks", "",
    f"Measured {date.today().isoformat()} on: {result['device']}; {result['n_docs']} documents.",
    "Methods ran interleaved on the same batches after a warm-up, in one process. Command:", "",
    "```", result.get("command", "spacy project run benchmark"), "```", "",
    "```", table(result), "```", "",
    "Speedup: the baseline's p50 latency over padellm's at batch size 1, padellm's docs/s over the baseline's above.",
    "`padellm_rows` is our engine before the tree passes (one row per sequence, counts digit by digit, no",
    "speculation): the before/after of the per-stage breakdown below. `padellm_substring` is the default engine",
    "with `mentions_from_text` on (each mention token chosen among those that keep the mention a word-aligned",
    "substring of the text): its F1 beside `padellm`'s is the effect of that opt-in constraint.",
    "`same %`: the share of documents whose (label, string) set equals padellm's at the first batch size.", "",
    "## Where the time goes", "",
    "Per engine variant and batch size: wall ms per document and sequential forward passes per batch, by stage",
    "(prompt = text + label prompts, count = count digits, mention_prompt = the mention prompts' prefill,",
    "mention = greedy mention tokens).", "",
    "```", stage_table(result), "```", "",
    "## Where the F1 comes from", "",
    "The paper's string metric per method: precision, recall, F1, and F1 per label.", "",
    "```", quality_table(result), "```", "",
    "![benchmark](benchmarks/benchmark.png)", ""]
out.write_text("\n".join(lines), encoding="utf8")
print(f"-> {out}")
