"""How sure the count step is, and whether the right count is within reach (issue 14, counts).

For every (document, label) of a dev sample this reads the model's distribution over the first count token
(the tokens a count may start with, as the engine reads them) and compares it with the gold number of
mentions. It prints exact-match of the greedy count, how often the gold count is the second choice, and
exact-match by the greedy count's probability: if the wrong counts are the unsure ones, a check that spends
passes only on unsure counts can pay; if they are confident, only a better model helps.

    python project/scripts/count_probe.py ../shared/data/conll2003/dev.conll --stride 8 --threads 1 \
        --out benchmarks/count_probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

BINS = (0.5, 0.7, 0.9, 0.97, 0.99, 1.01)


def probe(pipe: Any, golds: List[Any]) -> List[Dict[str, Any]]:
    """Per (doc, label): gold count, the greedy first count token's value, its probability and the
    probability of each single-digit count (0..9)."""
    import torch

    from spacy_padellm.engine.counts import CountVocabulary
    from spacy_padellm.engine.kv import full_sequence_logits
    from spacy_padellm.prompts import encode

    dec = pipe.decoder
    runner = dec.runner
    vocab = CountVocabulary(runner, dec.template)
    digits = [vocab.digit_token[str(d)] for d in range(10)]
    rows = []
    for index, gold in enumerate(golds):
        prompts = [encode(dec.tokenizer, dec.template.prompt(gold.text, lab)) for lab in pipe.labels]
        logits = full_sequence_logits(dec.model, prompts)
        masked = logits.masked_fill(~vocab.allowed[: logits.shape[1]], float("-inf"))
        probs = torch.softmax(masked, dim=-1)
        for lab, p in zip(pipe.labels, probs):
            top = int(p.argmax())
            greedy = vocab.value(top) if top in vocab.digit_ids else 0
            by_count = [float(p[t]) for t in digits]
            rows.append({"doc": index, "label": lab, "gold": sum(e.label_ == lab for e in gold.ents),
                         "greedy": greedy, "p_greedy": float(p[top]), "p_digits": by_count})
    return rows


def summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Exact-match, second-choice coverage, and exact-match per probability bin of the greedy count."""
    n = len(rows)
    exact = sum(r["greedy"] == r["gold"] for r in rows)
    second = 0
    for r in rows:
        if r["greedy"] != r["gold"] and r["gold"] < 10:
            order = sorted(range(10), key=lambda d: -r["p_digits"][d])
            second += int(order[1] == r["gold"])
    bins: Dict[str, Counter] = {}
    low = 0.0
    for high in BINS:
        inside = [r for r in rows if low <= r["p_greedy"] < high]
        bins[f"{low:.2f}-{min(high, 1.0):.2f}"] = Counter(n=len(inside),
                                                         exact=sum(r["greedy"] == r["gold"] for r in inside))
        low = high
    return {"pairs": n, "exact": exact / n, "wrong": n - exact, "gold_is_second_choice": second,
            "bins": {k: dict(v) for k, v in bins.items()}}


def sample_and_pipe(description: str) -> Tuple[argparse.Namespace, List[Any], Any, Any]:
    """(args, every STRIDE-th non-empty dev document, nlp, its padellm_ner pipe) from the command line
    these experiments share: DATA --adapter --model --stride --threads --out."""
    import spacy

    from spacy_padellm.training.readers import read_any

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("data")
    parser.add_argument("--adapter", default="default")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    golds = [d for d in read_any(args.data, spacy.blank("en").vocab) if d.text.strip()][:: args.stride]
    nlp = spacy.blank("en")
    pipe = nlp.add_pipe("padellm_ner", config={"model": args.model, "adapter": args.adapter,
                                               "threads": args.threads})
    return args, golds, nlp, pipe


def main() -> None:
    args, golds, _, pipe = sample_and_pipe(__doc__.split("\n\n")[0])
    rows = probe(pipe, golds)
    result = summary(rows)
    print(f"{len(golds)} docs, {result['pairs']} (doc, label) pairs: greedy count exact {100 * result['exact']:.1f}%, "
          f"{result['wrong']} wrong, gold count the second choice in {result['gold_is_second_choice']} of them")
    for name, b in result["bins"].items():
        if b.get("n"):
            print(f"  p(greedy) {name}: {b['n']:5d} pairs, exact {100 * b['exact'] / b['n']:5.1f}%")
    if args.out:  # the summary indented, then one line per (doc, label)
        head = json.dumps({"command": "python " + " ".join(sys.argv), **result}, indent=1)[:-2]
        body = ",\n".join(json.dumps(r) for r in rows)
        Path(args.out).write_text(f'{head},\n "rows": [\n{body}\n ]\n}}\n')


if __name__ == "__main__":
    main()
