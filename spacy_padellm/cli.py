"""PaDeLLM-NER for spaCy: annotate text with the shipped model, train an adapter on your own labels,
evaluate it on gold data, and benchmark it against autoregressive NER."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

DTYPES = ("auto", "float32", "bfloat16", "int8")


def _annotate(args: argparse.Namespace) -> int:
    import spacy
    from spacy import displacy

    texts: List[str] = list(args.text)
    if args.input:
        texts += [line.rstrip("\n") for line in Path(args.input).read_text(encoding="utf8").splitlines()
                  if line.strip()]
    if not texts:
        print("Nothing to annotate: give texts as arguments or --input FILE (one text per line).", file=sys.stderr)
        return 2
    config = _pipe_config(args)
    if args.labels:
        config["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    nlp = spacy.blank(args.lang)
    pipe = nlp.add_pipe("padellm_ner", config=config)
    docs = list(nlp.pipe(texts, batch_size=args.batch_size))
    for doc in docs:
        group = doc.spans[pipe.spans_key]
        print(json.dumps({"text": doc.text,
                          "ents": [[e.start_char, e.end_char, e.label_, e.text] for e in doc.ents],
                          "candidates": [[s.start_char, s.end_char, s.label_, round(score, 4)] for s, score in
                                         zip(group, group.attrs["scores"])]},
                         ensure_ascii=False))
    if args.html:
        html = displacy.render(docs, style="ent", page=True, jupyter=False)
        Path(args.html).write_text(html, encoding="utf8")
        print(f"displaCy HTML written to {args.html}", file=sys.stderr)
    return 0


def _pipe_config(args: argparse.Namespace) -> dict:
    """The component config from annotate's and evaluate's shared flags."""
    config = {"model": args.model, "dtype": args.dtype, "threads": args.threads,
              "mentions_from_text": args.mentions_from_text}
    if args.adapter is not None:
        config["adapter"] = args.adapter
    return config


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# The argparse type of every TrainConfig field the train command sets, written out rather than read from the
# annotations. Comma-separated lists (labels, target_modules) arrive as str and are split in _train; bf16 is
# a str (auto/true/false). A new TrainConfig field needs an entry here: tests/test_errors_cli.py fails
# without one, and so does build_parser.
TRAIN_FLAG_TYPES: Dict[str, Callable[[str], Any]] = {
    "train": str, "dev": str, "output": str, "model": str, "labels": str, "template": str, "format": str,
    "label_words": str, "lang": str, "init_adapter": str,
    "lora_r": int, "lora_alpha": int, "lora_dropout": float, "target_modules": str, "lora_first_layer": int,
    "lr": float, "warmup_steps": int, "min_lr_ratio": float, "weight_decay": float, "grad_clip": float,
    "count_weight": float, "marker_weight": float, "mention_weight": float, "eos_weight": float,
    "epochs": float, "max_steps": int, "row_tokens": int, "rows_per_step": int, "bf16": str, "threads": int,
    "seed": int,
    "log_every": int, "checkpoint_every": int, "checkpoint_minutes": float, "eval_every": int, "eval_docs": int,
    "final_eval": _flag, "eval_batch_size": int, "max_new_tokens": int,
}


def _train(args: argparse.Namespace) -> int:
    from .prompts import parse_label_words
    from .training.config import TrainConfig
    from .training.loop import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name != "extra" and getattr(args, f.name, None) is not None}
    if isinstance(values.get("labels"), str):
        values["labels"] = [x.strip() for x in values["labels"].split(",") if x.strip()]
    if isinstance(values.get("label_words"), str):
        values["label_words"] = parse_label_words(values["label_words"])
    if isinstance(values.get("target_modules"), str) and "," in values["target_modules"]:
        values["target_modules"] = values["target_modules"].split(",")
    best = train(TrainConfig(**values))
    if best.get("score", -1.0) < 0:  # no dev set: nothing was scored
        best = {k: v for k, v in best.items() if k != "score"}
        print(f"Trained without --dev: no dev score; the adapter of the last step is in {best['adapter']}",
              file=sys.stderr)
    print(json.dumps(best, indent=1, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import spacy

    from .evaluation import evaluate, pipeline_annotate
    from .training.readers import read_any

    config = {**_pipe_config(args), "batch_size": args.batch_size}
    nlp = spacy.blank(args.lang)
    pipe = nlp.add_pipe("padellm_ner", config=config)
    gold = read_any(args.data, nlp.vocab)[: args.limit or None]
    if args.sample:
        from .training.schedule import spread

        gold = spread(gold, args.sample)
    scores = evaluate(pipeline_annotate(nlp, args.batch_size), gold, args.batch_size)
    print(f"{'label':<8} {'P':>6} {'R':>6} {'F':>6}")
    for label, prf in sorted((scores.get("per_type") or {}).items()):
        print(f"{label:<8} {prf['p'] * 100:6.2f} {prf['r'] * 100:6.2f} {prf['f'] * 100:6.2f}")
    print(f"{'spans':<8} {scores['p_span'] * 100:6.2f} {scores['r_span'] * 100:6.2f} {scores['f1_span'] * 100:6.2f}"
          "   (spaCy span P/R/F)")
    print(f"{'strings':<8} {scores['p_string'] * 100:6.2f} {scores['r_string'] * 100:6.2f} "
          f"{scores['f1_string'] * 100:6.2f}   (paper: micro-F1 over (label, string) sets per doc)")
    if scores.get("count_exact") is not None:
        print(f"counts exact {scores['count_exact'] * 100:.1f}%, too low {scores['count_low'] * 100:.1f}%, "
              f"too high {scores['count_high'] * 100:.1f}%")
    print(f"labels {list(pipe.labels)}, {scores['n_docs']} docs")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(scores, indent=1))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import spacy

    from .benchmark import benchmark, build_methods, plot, quality_table, save, stage_table, table
    from .errors import Errors, PaDeLLMError
    from .training.readers import read_any

    if args.stride < 1:
        raise PaDeLLMError(Errors.E010.format(key="--stride", value=args.stride, why="must be a positive integer"))
    gold = [d for d in read_any(args.data, spacy.blank(args.lang).vocab) if d.text.strip()][:: args.stride]
    if args.limit:
        gold = gold[: args.limit]
    adapters = dict(x.split("=", 1) for x in args.adapters.split(",") if x) if args.adapters else {}
    runners = build_methods([m.strip() for m in args.methods.split(",") if m.strip()], args.model, adapters,
                            args.dtype, args.threads)
    result = benchmark(gold, runners, [int(x) for x in args.batch_sizes.split(",")],
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["command"] = "python -m spacy_padellm " + " ".join(args.argv)
    print(table(result))
    print(stage_table(result))
    print(quality_table(result))
    if args.out:
        save(result, args.out)
    if args.plot:
        plot(result, args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .settings import METHODS

    parser = argparse.ArgumentParser(prog="python -m spacy_padellm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"spacy_padellm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ann = sub.add_parser("annotate", help="annotate texts; prints JSON lines, optionally writes displaCy HTML")
    ann.add_argument("text", nargs="*", help="texts to annotate")
    ann.add_argument("--input", help="a UTF-8 file with one text per line")
    _add_model_flags(ann)
    ann.add_argument("--labels", default=None, help="comma-separated labels (default: the adapter's)")
    ann.add_argument("--batch-size", type=int, default=32, help="documents decoded together (default: 32)")
    ann.add_argument("--html", default=None, help="write displaCy HTML here")
    ann.set_defaults(func=_annotate)

    from .training.config import TrainConfig, field_help

    tr = sub.add_parser("train", help="fine-tune a PaDeLLM LoRA adapter (resumes from OUTPUT/checkpoint)")
    helps = field_help()
    missing = sorted(set(helps) - set(TRAIN_FLAG_TYPES))
    if missing:
        raise RuntimeError(f"TrainConfig fields {missing} have no argparse type in cli.TRAIN_FLAG_TYPES: add them")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in helps:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        tr.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=TRAIN_FLAG_TYPES[f.name],
                        default=None, metavar=f.name.upper(), help=f"{helps[f.name]} (default: {default!r})")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="spaCy ents P/R/F per label and the paper's string micro-F1")
    ev.add_argument("--data", required=True, help="gold data: CoNLL, .spacy, .jsonl or BMES")
    _add_model_flags(ev)
    ev.add_argument("--limit", type=int, default=0, help="first N documents only (default: 0, all)")
    ev.add_argument("--sample", type=int, default=0,
                    help="N documents spread over the data, as training selects checkpoints on (--eval-docs)")
    ev.add_argument("--batch-size", type=int, default=64, help="documents decoded together (default: 64)")
    ev.add_argument("--out", default=None, help="also write the scores as JSON here")
    ev.set_defaults(func=_evaluate)

    bm = sub.add_parser("benchmark", help="PaDeLLM vs autoregressive NER, side by side in one process")
    bm.add_argument("--data", required=True, help="gold data: CoNLL, .spacy, .jsonl or BMES")
    bm.add_argument("--limit", type=int, default=0, help="at most N documents after --stride (default: 0, all)")
    bm.add_argument("--stride", type=int, default=1, help="every STRIDE-th document (a sample spread over the file)")
    bm.add_argument("--methods", default="padellm,padellm_rows,padellm_reference,autoreg_struct,autoreg_aug",
                    help=f"comma-separated, from: {', '.join(METHODS)}")
    bm.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    bm.add_argument("--model", default="smollm2-135m", help="base model: packaged name, HF folder or .gguf file")
    bm.add_argument("--adapters", default="", help="METHOD=FOLDER,... (default: the packaged adapters)")
    bm.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' dtype (default: auto)")
    bm.add_argument("--threads", type=int, default=0, help="torch threads (default: 0, the cores this process may use)")
    bm.add_argument("--lang", default="en", help="spaCy language code for tokenization (default: en)")
    bm.add_argument("--out", default=None, help="results JSON")
    bm.add_argument("--plot", default=None, help="results PNG")
    bm.set_defaults(func=_benchmark)

    from .apply import add_apply_parser

    add_apply_parser(sub)  # `apply PIPELINE INPUT OUTPUT`: a corpus, locally or on Ray (spacy_padellm[ray])
    return parser


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The pipe settings annotate and evaluate share."""
    p.add_argument("--model", default="smollm2-135m", help="base model: packaged name, HF folder or .gguf file")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter folder (default: the shipped one)")
    p.add_argument("--lang", default="en", help="spaCy language code for tokenization (default: en)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' dtype (default: auto: bf16 where fast)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: 0, the cores this process may use)")
    p.add_argument("--mentions-from-text", action=argparse.BooleanOptionalAction, default=True,
                   help="constrain mentions to word-aligned substrings of the text (default); "
                        "--no-mentions-from-text: the paper's plain greedy decoding")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in benchmark results
    from .errors import PaDeLLMError

    try:
        return args.func(args)
    except PaDeLLMError as err:
        print(err, file=sys.stderr)
        return 2
