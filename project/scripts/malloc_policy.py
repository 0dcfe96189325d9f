"""glibc allocator policies for decoding, side by side: speed, page faults, kernel time and resident memory.

The policy is process-wide, so each run is its own subprocess (`--worker`), alternating policies (A B C A B
C ...). A worker loads the default pipeline, decodes one warm-up batch, then `nlp.pipe`s the first N CoNLL
sentences in batches, and reports docs/s, minor page faults per document, user and kernel CPU seconds,
the resident size at the end and at the peak (ru_maxrss).

Policies:
  shipped     what the component does (engine/memory.py: mmap threshold 32 MB, trim threshold 1 GB,
              malloc_trim(0) when the resident size grew by 512 MB);
  mmap1mb     the mmap threshold fixed at 1 MB, no trim (the component until session 12);
  glibc       glibc's defaults (dynamic mmap threshold), no trim;
  trim_every  as shipped, but malloc_trim(0) after every batch.

    python project/scripts/malloc_policy.py -n 352 --repeats 2 --out benchmarks/malloc_policy.json
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
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONLL = ROOT.parent / "shared" / "data" / "conll2003" / "dev.conll"
POLICIES = ("shipped", "mmap1mb", "glibc", "trim_every")


def _install(policy: str) -> Any:
    """Replace the component's allocator settings by `policy`'s; returns the per-batch hook."""
    import spacy_padellm.component as component
    import spacy_padellm.engine.memory as memory

    libc = memory._glibc()
    if libc is None:
        raise SystemExit("glibc is not this process's allocator: there is no policy to compare")
    if policy == "shipped":
        return lambda: None
    if policy == "mmap1mb":
        memory.reuse_freed_memory = lambda: bool(libc.mallopt(memory.M_MMAP_THRESHOLD, 1 << 20))
    elif policy == "glibc":
        memory.reuse_freed_memory = lambda: True
    elif policy != "trim_every":
        raise SystemExit(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    component.trim_if_grown = lambda *a, **k: False  # the per-batch hook below decides
    return (lambda: libc.malloc_trim(0)) if policy == "trim_every" else (lambda: None)


def worker(policy: str, conll: str, n: int, batch_size: int, threads: int) -> Dict[str, Any]:
    import spacy

    from spacy_padellm.engine.memory import resident_bytes
    from spacy_padellm.training.readers import read_conll

    after_batch = _install(policy)
    texts = [doc.text for doc in read_conll(conll, spacy.blank("en").vocab)[:n]]
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"threads": threads})
    list(nlp.pipe(texts[:batch_size], batch_size=batch_size))  # warm-up: loads the model
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(0, len(texts), batch_size):
        list(nlp.pipe(texts[i:i + batch_size], batch_size=batch_size))
        after_batch()
    seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"policy": policy, "documents": len(texts), "seconds": round(seconds, 2),
            "docs_per_s": round(len(texts) / seconds, 2),
            "faults_per_doc": round((after.ru_minflt - before.ru_minflt) / len(texts)),
            "user_s": round(after.ru_utime - before.ru_utime, 1),
            "kernel_s": round(after.ru_stime - before.ru_stime, 1),
            "rss_end_mb": round((resident_bytes() or 0) / 2**20), "rss_peak_mb": round(after.ru_maxrss / 1024)}


def main(argv: List[str] = sys.argv[1:]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conll", default=str(DEFAULT_CONLL))
    p.add_argument("-n", "--sentences", type=int, default=352, help="first N sentences (default: 352, 11 batches)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one policy, in this process
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.conll, args.sentences, args.batch_size, args.threads)))
        return 0
    policies = [x for x in args.policies.split(",") if x]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    rows = []
    for r in range(args.repeats):
        for policy in policies:
            cmd = [sys.executable, __file__, "--worker", policy, "--conll", args.conll, "-n",
                   str(args.sentences), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{policy} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "run": r + 1})
            print(json.dumps(rows[-1]), flush=True)
    print("| policy | run | docs/s | faults/doc | user s | kernel s | RSS end MB | RSS peak MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['policy']} | {row['run']} | {row['docs_per_s']:.2f} | {row['faults_per_doc']:,} | "
              f"{row['user_s']} | {row['kernel_s']} | {row['rss_end_mb']:,} | {row['rss_peak_mb']:,} |")
    if args.out:
        from spacy_padellm.engine.floor import cpu_description

        meta = {"cpu": cpu_description(), "python": platform.python_version(), "threads": args.threads,
                "command": "python project/scripts/malloc_policy.py " + " ".join(argv), "load": os.getloadavg()}
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n", encoding="utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
