"""Long documents: span recall of one long document against the same sentences annotated one by one,
and the peak memory of each, in one run (issue 19).

The long document is dev sentences (in file order, so topics and names repeat as in a real report)
joined by single spaces until it holds --words words. Each mode runs in its own subprocess, so its peak
RSS (ru_maxrss: model, pipeline and decoding together) is its own. Gold and predicted entities are
compared as (start_char, end_char, label) of the long text, so both modes are scored on the same spans.

    python project/scripts/long_doc.py ../shared/data/conll2003/dev.conll --words 3000 20000 \
        --out benchmarks/long_doc.json [--config '{"chunk_tokens": 40}'] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

Entity = Tuple[int, int, str]
JOINS = {"space": " ", "newline": "\n"}


def build(data: str, words: int, join: str = " ") -> Tuple[str, List[Tuple[int, int]], List[Entity]]:
    """The long text (sentences joined by `join`), each sentence's (start, end) in it, and the gold
    entities' char spans in it."""
    import spacy

    from spacy_padellm.training.readers import read_any

    parts, bounds, gold, offset, n = [], [], [], 0, 0
    for doc in read_any(data, spacy.blank("en").vocab):
        text = doc.text.strip()
        if not text:
            continue
        shift = offset - (len(doc.text) - len(doc.text.lstrip()))  # where doc.text's char 0 lands
        gold += [(shift + e.start_char, shift + e.end_char, e.label_) for e in doc.ents]
        bounds.append((offset, offset + len(text)))
        parts.append(text)
        offset += len(text) + len(join)
        n += len(doc)
        if n >= words:
            break
    return join.join(parts), bounds, gold


def run_mode(mode: str, data: str, words: int, config: Dict[str, Any], join: str) -> Dict[str, Any]:
    """In this (child) process: annotate the long text whole, or sentence by sentence."""
    import spacy

    text, bounds, gold = build(data, words, join)
    assert all(text[s:e] for s, e, _ in gold)
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config=config)
    start = time.time()
    if mode == "whole":
        doc = nlp(text)
        pred = {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        stats = doc.user_data["padellm"]
        extra = {"chunks": stats["chunks"], "unaligned": len(stats["unaligned"]),
                 "forward_passes": stats["forward_passes"]}
    else:
        pred, extra = set(), {"chunks": len(bounds)}
        for (s, _), doc in zip(bounds, nlp.pipe([text[s:e] for s, e in bounds], batch_size=32)):
            pred |= {(s + e.start_char, s + e.end_char, e.label_) for e in doc.ents}
    seconds = time.time() - start
    gold_set = set(gold)
    tp = len(pred & gold_set)
    return {"mode": mode, "words": words, "join": join, "chars": len(text), "sentences": len(bounds), "gold": len(gold_set),
            "predicted": len(pred), "recall": 100 * tp / max(1, len(gold_set)),
            "precision": 100 * tp / max(1, len(pred)), "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dev data (CoNLL, .spacy, .jsonl)")
    parser.add_argument("--words", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--config", default="{}", help="padellm_ner config overrides, as JSON")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of each subprocess (0: all cores)")
    parser.add_argument("--modes", default="whole,sentences")
    parser.add_argument("--join", choices=["space", "newline"], default="newline",
                        help="what separates the sentences: a line break (a document's lines: headlines, "
                             "datelines and table rows carry no end punctuation) or a space (harder: nothing "
                             "marks those boundaries)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = {"threads": args.threads, **json.loads(args.config)}
    if args.child:
        print(json.dumps(run_mode(args.child, args.data, args.words[0], config, JOINS[args.join])))
        return
    rows = []
    for words in args.words:
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, args.data, "--words", str(words), "--config", json.dumps(config),
                   "--join", args.join, "--child", mode]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{mode} on {words} words failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{words:>6} words  {mode:<9}  recall {row['recall']:6.2f}  precision {row['precision']:6.2f}  "
                  f"peak RSS {row['peak_rss_mb']:7.0f} MB  {row['seconds']:7.1f} s  chunks {row['chunks']}",
                  flush=True)
    for words in args.words:
        pair = {r["mode"]: r for r in rows if r["words"] == words}
        if {"whole", "sentences"} <= set(pair):
            print(f"{words:>6} words: whole-document recall {pair['whole']['recall'] - pair['sentences']['recall']:+.2f}"
                  " points against sentence by sentence")
    if args.out:
        cpu = platform.processor() or platform.machine()
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        header = {"command": "python " + " ".join(sys.argv), "config": config, "cpu": cpu,
                  "avx512_bf16": "avx512_bf16" in flags, "cores": len(os.sched_getaffinity(0))}
        Path(args.out).write_text(json.dumps({**header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
