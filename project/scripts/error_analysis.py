"""Where PaDeLLM's errors come from, per label: the count step, the mention slots, the labels (issue 14).

For every (document, label) the count the model wrote is compared with the gold number of mentions
(exact / too low / too high / 0 for a label that has mentions). For every error in the paper's string
metric the cause is named:
- a missed gold string: `count` when the label's count was too low, else `slot` (a slot held another
  string);
- a wrong predicted string: `label` when it is gold under another label, `boundary` when it overlaps a
  gold string of the same label, else `spurious`.
Slot accuracy by k: among (document, label) pairs whose count was exact, how often the k-th decoded
mention is the k-th gold mention (long lists lose their place).

    python project/scripts/error_analysis.py ../shared/data/conll2003/dev.conll --stride 8 \
        --adapter old=spacy_padellm/default_adapter --adapter new=training_runs/default-3ep/best \
        --out benchmarks/error_analysis.json --markdown benchmarks/error_analysis.md

`--include` adds the columns of an earlier `--out` (a run with another `--config`, or adapters measured
before).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence


def analyse(docs: Sequence[Any], golds: Sequence[Any], labels: Sequence[str]) -> Dict[str, Any]:
    """Count, string and slot errors of predicted docs against gold docs (same order)."""
    counts: Dict[str, Counter] = defaultdict(Counter)
    causes: Dict[str, Counter] = defaultdict(Counter)
    slots: Dict[int, Counter] = defaultdict(Counter)
    for doc, gold in zip(docs, golds):
        data = doc.user_data.get("padellm") or {}
        said = data.get("counts") or {}
        mentions = [(label, text.strip()) for label, text, _ in data.get("mentions", []) if text.strip()]
        gold_by_label = {lab: [e.text for e in sorted(gold.ents, key=lambda e: e.start) if e.label_ == lab]
                         for lab in labels}
        gold_strings = {(lab, t) for lab, ts in gold_by_label.items() for t in ts}
        pred_strings = set(mentions)
        for lab in labels:
            n, want = int(said.get(lab, 0)), len(gold_by_label[lab])
            counts[lab]["pairs"] += 1
            counts[lab]["exact" if n == want else "low" if n < want else "high"] += 1
            counts[lab]["zero_for_some"] += int(n == 0 < want)
            if n == want and want:
                decoded = [t for label, t in mentions if label == lab]
                for k, gold_text in enumerate(gold_by_label[lab], start=1):
                    slots[k]["n"] += 1
                    slots[k]["right"] += int(k <= len(decoded) and decoded[k - 1] == gold_text)
        for lab, text in gold_strings - pred_strings:
            low = int(said.get(lab, 0)) < len(gold_by_label[lab])
            causes[lab]["missed_count" if low else "missed_slot"] += 1
        for lab, text in pred_strings - gold_strings:
            if any(t == text for other, t in gold_strings if other != lab):
                causes[lab]["wrong_label"] += 1
            elif any(t in text or text in t for other, t in gold_strings if other == lab):
                causes[lab]["boundary"] += 1
            else:
                causes[lab]["spurious"] += 1
        for lab, text in pred_strings & gold_strings:
            causes[lab]["right"] += 1
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {"counts": {k: dict(v) for k, v in counts.items()}, "count_total": dict(total),
            "causes": {k: dict(v) for k, v in causes.items()},
            "slots": {k: dict(v) for k, v in sorted(slots.items())}}


def markdown(results: Dict[str, Dict[str, Any]], labels: Sequence[str]) -> str:
    """Tables: count exact-match, error causes per label, slot accuracy; one column group per adapter."""
    names = list(results)
    lines = ["| count (doc, label) | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for key in ("exact", "low", "high", "zero_for_some"):
        cells = []
        for name in names:
            t = results[name]["count_total"]
            cells.append(f"{100 * t.get(key, 0) / max(1, t['pairs']):.1f}%")
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", "| label | cause | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(names)]
    for lab in labels:
        for cause in ("right", "missed_count", "missed_slot", "wrong_label", "boundary", "spurious"):
            cells = [str(results[n]["causes"].get(lab, {}).get(cause, 0)) for n in names]
            lines.append(f"| {lab} | {cause.replace('_', ' ')} | " + " | ".join(cells) + " |")
    ks = sorted({int(k) for n in names for k in results[n]["slots"]})
    lines += ["", "| slot k (exact counts) | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for k in ks[:6]:
        cells = []
        for n in names:
            s = results[n]["slots"].get(k) or results[n]["slots"].get(str(k)) or {}
            cells.append(f"{100 * s.get('right', 0) / max(1, s.get('n', 0)):.1f}% of {s.get('n', 0)}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    scores = [f"{n}: string F1 {results[n]['f1_string']:.2f}, span F1 {results[n]['f1_span']:.2f}" for n in names]
    return "\n".join(lines + ["", "; ".join(scores)]) + "\n"


def main() -> None:
    import spacy
    from spacy.training import Example

    from spacy_padellm.evaluation import gold_copy, metrics
    from spacy_padellm.training.readers import read_any

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stride", type=int, default=8, help="every STRIDE-th document")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--config", default="{}", help="padellm_ner config overrides, as JSON")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--include", action="append", default=[],
                        help="the --out JSON of an earlier run: its adapters come first in the tables (repeatable)")
    args = parser.parse_args()
    adapters = dict(a.split("=", 1) for a in args.adapter) or {"default": "default"}
    vocab = spacy.blank("en").vocab
    golds = [d for d in read_any(args.data, vocab) if d.text.strip()][:: args.stride]
    golds = golds[: args.limit or None]
    results: Dict[str, Dict[str, Any]] = {}
    for earlier in args.include:  # columns measured before, with their own settings (kept in "config")
        results.update({k: v for k, v in json.loads(Path(earlier).read_text()).items() if isinstance(v, dict)})
    labels: List[str] = []
    for name, folder in adapters.items():
        nlp = spacy.blank("en")
        pipe = nlp.add_pipe("padellm_ner", config={"model": args.model, "adapter": folder,
                                                   "threads": args.threads, **json.loads(args.config)})
        labels = list(pipe.labels)
        docs = list(nlp.pipe([gold_copy(g) for g in golds], batch_size=32))
        scores = metrics([Example(d, g) for d, g in zip(docs, golds)])
        results[name] = {**analyse(docs, golds, labels), "f1_string": 100 * scores["f1_string"],
                         "f1_span": 100 * scores["f1_span"], "adapter": folder, "docs": len(golds),
                         "config": json.loads(args.config)}
        print(f"[{name}] string F1 {results[name]['f1_string']:.2f} on {len(golds)} docs", file=sys.stderr)
    table = markdown(results, labels)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), **results}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
