"""The same documents through two checkouts of spacy_padellm, alternately, in one run: same output? how fast?

A refactor of the engine must not change what it writes, nor slow it down. This runs the default pipeline
of each checkout (its own code, in a subprocess with PYTHONPATH set to it) on the benchmark's sample of dev
(every STRIDE-th document, the first LIMIT), at batch size 1 (one doc per call: p50 latency) and 32
(docs/s), ROUNDS times each, alternating the checkouts so machine noise hits both alike. It prints string
F1, the share of documents whose (label, string) set is the same in both, and the speed ratios.

    python project/scripts/compare_engines.py /tmp/old . --data ../shared/data/conll2003/dev.conll \
        --out benchmarks/engine_v2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

WORKER = r'''
import json, sys, time
import spacy
import spacy_padellm
from spacy_padellm.training.readers import read_any
from spacy_padellm.scoring import gold_strings, predicted_strings, string_prf
args = json.loads(sys.argv[1])
gold = [d for d in read_any(args["data"], spacy.blank("en").vocab) if d.text.strip()]
gold = gold[:: args["stride"]][: args["limit"]]
nlp = spacy.blank("en")
nlp.add_pipe("padellm_ner", config={"threads": args["threads"]})
def copy(g):
    return spacy.tokens.Doc(g.vocab, words=[t.text for t in g], spaces=[bool(t.whitespace_) for t in g])
list(nlp.pipe([copy(g) for g in gold[:2]]))  # warm-up
out = {"file": spacy_padellm.__file__}
for bs in args["batch_sizes"]:
    times, strings = [], []
    for i in range(0, len(gold), bs):
        t0 = time.perf_counter()
        docs = list(nlp.pipe([copy(g) for g in gold[i:i + bs]], batch_size=bs))
        times.append(time.perf_counter() - t0)
        strings += [sorted(predicted_strings(d)) for d in docs]
    prf = string_prf((set(map(tuple, s)), gold_strings(g)) for s, g in zip(strings, gold))
    out[str(bs)] = {"times": times, "strings": strings, "f1_string": prf.fscore}
print("RESULT " + json.dumps(out))
'''


def run_tree(tree: str, args: argparse.Namespace) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "OMP_NUM_THREADS": str(args.threads)}
    payload = json.dumps({"data": str(Path(args.data).resolve()), "stride": args.stride, "limit": args.limit,
                          "threads": args.threads, "batch_sizes": [1, 32]})
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: its folder must not shadow PYTHONPATH
        proc = subprocess.run([sys.executable, "-c", WORKER, payload], capture_output=True, text=True, env=env,
                              cwd=cwd)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--data", required=True)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    runs: Dict[str, List[Dict[str, Any]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in (["old", "new"] if r % 2 == 0 else ["new", "old"]):
            runs[name].append(run_tree(getattr(args, name), args))
            print(f"round {r + 1}: {name} done ({runs[name][-1]['file']})", file=sys.stderr, flush=True)
    report: Dict[str, Any] = {"command": "python " + " ".join(sys.argv), "docs": args.limit, "by_batch_size": {}}
    for bs in ("1", "32"):
        old, new = runs["old"], runs["new"]
        same = statistics.fmean(a == b for a, b in zip(old[0][bs]["strings"], new[0][bs]["strings"]))
        stable = all(x[bs]["strings"] == v[0][bs]["strings"] for v in (old, new) for x in v)
        # batch size 1: the median call (p50 latency) of each run; 32: docs/s of each run; then the mean
        # over rounds
        if bs == "1":
            speed = {k: statistics.fmean(1000 * statistics.median(x[bs]["times"]) for x in v)
                     for k, v in runs.items()}
            ratio = speed["new"] / speed["old"]
        else:
            speed = {k: statistics.fmean(args.limit / sum(x[bs]["times"]) for x in v) for k, v in runs.items()}
            ratio = speed["old"] / speed["new"]
        report["by_batch_size"][bs] = {"f1_string_old": old[0][bs]["f1_string"],
                                       "f1_string_new": new[0][bs]["f1_string"], "docs_same": same, "runs_repeat_themselves": stable,
                                       ("p50_ms" if bs == "1" else "docs_per_s"): speed,
                                       "time_ratio_new_over_old": ratio}
        unit = "p50 ms" if bs == "1" else "docs/s"
        print(f"bs {bs:>2}: string F1 old {100 * old[0][bs]['f1_string']:.2f} "
              f"new {100 * new[0][bs]['f1_string']:.2f}; "
              f"same output {100 * same:.0f}% of docs; {unit} old {speed['old']:.1f} new {speed['new']:.1f}; "
              f"new takes {ratio:.3f}x the time of old")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf8")


if __name__ == "__main__":
    main()
