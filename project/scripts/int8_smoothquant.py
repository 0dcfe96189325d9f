"""Does int8 hold the F1 once activation outliers are smoothed? (issue 17: an int8 mode for CPUs without
fast bf16, at most 0.3 string F1 below float32.)

Session 11's dynamic int8 of every decoder linear lost 39 string F1 per-tensor and 42 per-channel, and 2.1
with down_proj left in float32 (`benchmarks/int8_experiments.txt`): a few input channels of each linear hold
values far above the rest, and an int8 scale set by them rounds every other channel to a few levels.
SmoothQuant (Xiao et al., 2023) moves that range from the activations into the weights: per input channel j,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), X / s and W * s, the same products. In a Llama layer every
division folds into the layer before, so the float32 model is unchanged up to rounding:
  q/k/v and gate/up   X = RMSNorm(h) * g       g / s
  down_proj           X = silu(gate) * up      up_proj's output rows / s
  o_proj              X = attention(v)         v_proj's output rows / s (one s per key head's channel,
                                               the max over the query heads that share it)
The maxima come from the prompts of training sentences (not dev), through the component's own decoding.
Then torch's dynamic int8 (per-channel weights, activations quantized per call) replaces the linears,
and dev is decoded through transformers' forward (`lean_forward: false`, which calls the modules).

    python project/scripts/int8_smoothquant.py --train ../shared/data/conll2003/train.conll \\
        --dev ../shared/data/conll2003/dev.conll --stride 8 --limit 400 --alpha 0.8 --keep-float down_proj

Session 19 (benchmarks/NOTES.md, `benchmarks/int8_smoothquant/`): alpha 0.8 with down_proj left in float32
held the string F1 within 0.3 on 400 and 650 dev documents; every linear in int8 lost 1.7 or more.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List

import spacy
import torch

from spacy_padellm.engine.int8 import quantize_linears, recorded_maxima, smooth
from spacy_padellm.evaluation import evaluate, pipeline_annotate
from spacy_padellm.training.readers import read_any


def pipe_of(threads: int) -> Any:
    nlp = spacy.blank("en")
    nlp.add_pipe("padellm_ner", config={"dtype": "float32", "lean_forward": False, "threads": threads,
                                        "small_batch": 4})
    return nlp


def input_maxima(nlp: Any, model: Any, texts: List[str]) -> Dict[str, torch.Tensor]:
    """Per linear of the decoder, the max |input| per channel over every token the decoder fed."""
    with recorded_maxima(model) as maxima:
        list(nlp.pipe(texts, batch_size=16))
    return maxima


def quantize(model: Any, keep: List[str]) -> None:
    """Dynamic int8 (per-channel weights) for every decoder linear whose name does not end in one of `keep`."""
    quantize_linears(model, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=64, help="training sentences whose inputs set s")
    parser.add_argument("--alpha", default="0.5", help="comma-separated migration strengths to try")
    parser.add_argument("--keep-float", default="", help="comma-separated linear names left float32, e.g. down_proj")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    vocab = spacy.blank("en").vocab
    dev = [d for d in read_any(args.dev, vocab) if d.text.strip()][:: args.stride][: args.limit]
    train = [d.text for d in read_any(args.train, vocab) if len(d.ents) >= 2][: args.calibration]
    keep = [k for k in args.keep_float.split(",") if k]
    rows = []

    def run(name: str, nlp: Any) -> None:
        start = time.perf_counter()
        scores = evaluate(pipeline_annotate(nlp, 32), dev, 32)
        rows.append({"setting": name, "f1_string": scores["f1_string"], "f1_span": scores["f1_span"],
                     "count_exact": scores["count_exact"], "seconds": time.perf_counter() - start})
        print(f"{name:<40} string F1 {100 * scores['f1_string']:.2f}  span F1 {100 * scores['f1_span']:.2f}  "
              f"counts exact {100 * (scores['count_exact'] or 0):.1f}%  [{rows[-1]['seconds']:.0f} s]", flush=True)

    nlp = pipe_of(args.threads)
    model = nlp.get_pipe("padellm_ner").decoder.runner.model
    run("float32", nlp)
    maxima = input_maxima(nlp, model, train)
    for alpha in [float(a) for a in args.alpha.split(",")]:
        nlp = pipe_of(args.threads)  # a fresh float32 model
        model = nlp.get_pipe("padellm_ner").decoder.runner.model
        if alpha > 0:
            smooth(model, maxima, alpha, keep_float=())  # every linear smoothed (a float one is unchanged)
        quantize(model, keep)
        run(f"int8, alpha {alpha}" + (f", {'/'.join(keep)} float32" if keep else ""), nlp)
    if args.out:
        with open(args.out, "w", encoding="utf8") as f:
            json.dump({"command": "python project/scripts/int8_smoothquant.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ("", None)), "rows": rows},
                f, indent=1)


if __name__ == "__main__":
    main()
