"""The default pipe with engine/lean.py's packing (`pack`), weight-left float32 linears (`weight_left`) and
weights prepacked for oneDNN (`prepack`) switched on and off in ONE process, alternating, on the benchmark's dev
sample: what each pays, here.

    python project/scripts/lean_toggles.py ../shared/data/conll2003/dev.conll --batch-size 1 -n 30 --threads 2

Prints p50 and mean ms per call for each setting (old: all off; pack; left; pack+left; prepack; all: the default, each
where the model's dtype and this CPU take it: `left` is float32's where `prepack` is off, `prepack`
float32's and bf16's on a CPU with AMX) and
whether its entities equal those of `old` on every document.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("-n", type=int, default=30, help="documents (every 32nd of the data)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import spacy
    import torch

    import spacy_padellm.engine.matmul as matmul
    from spacy_padellm.evaluation import gold_copy
    from spacy_padellm.training.readers import read_any

    torch.set_num_threads(args.threads)
    gold = [d for d in read_any(args.data, spacy.blank("en").vocab) if d.text.strip()][::32][: args.n]
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"threads": args.threads})
    docs = [gold_copy(g) for g in gold]
    list(nlp.pipe(docs[:3], batch_size=args.batch_size))  # warm-up
    lean = pipe.decoder.runner.lean
    if lean is None:
        raise SystemExit("the default model does not run engine/lean.py here")
    prepack, switch = lean.prepack, matmul.PREPACK
    if not prepack and matmul.prepacks(lean.layers[0].qkv):
        lean.pack_weights()  # the rule is on, oneDNN could not (then the toggle below measures nothing)
    settings = {"old": (False, False, False), "pack": (True, False, False), "left": (False, True, False),
                "pack+left": (True, True, False), "prepack": (False, False, prepack), "all": (True, True, prepack)}
    times: Dict[str, List[float]] = {k: [] for k in settings}
    ents: Dict[str, List[list]] = {k: [] for k in settings}
    rows = dict(matmul.LEFT_ROWS)
    batches = [docs[i:i + args.batch_size] for i in range(0, len(docs), args.batch_size)]
    for _ in range(args.rounds):
        for name, (pack, left, packed) in settings.items():
            lean.pack, lean.weight_left, lean.prepack = pack, left, packed
            matmul.PREPACK = packed  # the output layer's copy too (engine/precision.py)
            matmul.LEFT_ROWS = rows if left else {1: (10 ** 9, 0), 2: (10 ** 9, 0)}  # the output layer too
            found = []
            for batch in batches:
                start = time.perf_counter()
                out = list(nlp.pipe(batch, batch_size=args.batch_size))
                times[name].append(1000 * (time.perf_counter() - start))
                found += [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in out]
            ents[name] = found
    matmul.LEFT_ROWS = rows
    lean.pack, lean.weight_left, lean.prepack = True, True, prepack
    matmul.PREPACK = switch
    result = {}
    for name, values in times.items():
        values = sorted(values)
        same = sum(a == b for a, b in zip(ents[name], ents["old"]))
        result[name] = {"p50_ms": round(values[len(values) // 2], 1), "mean_ms": round(sum(values) / len(values), 1),
                        "same_ents_as_old": f"{same}/{len(ents['old'])}"}
        print(f"bs {args.batch_size} {name:9s} p50 {result[name]['p50_ms']:9.1f} ms  mean {result[name]['mean_ms']:9.1f} ms"
              f"  same entities as old: {result[name]['same_ents_as_old']}")
    if args.out:
        from spacy_padellm.engine.floor import cpu_description

        Path(args.out).write_text(json.dumps({**cpu_description(), "dtype": str(lean.dtype), "threads": args.threads, "batch_size":
                                              args.batch_size, "n": args.n, "ms_per_call": result}, indent=1))


if __name__ == "__main__":
    main()
