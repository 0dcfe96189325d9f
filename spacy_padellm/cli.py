"""`python -m spacy_padellm <command>`: annotate text (the main job); more commands join as they land."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


def _annotate(args: argparse.Namespace) -> int:
    import spacy
    from spacy import displacy

    from .component import DEFAULT_CONFIG

    texts: List[str] = list(args.text)
    if args.input:
        texts += [line.rstrip("\n") for line in Path(args.input).read_text(encoding="utf8").splitlines()
                  if line.strip()]
    if not texts:
        print("Nothing to annotate: give texts as arguments or --input FILE (one text per line).", file=sys.stderr)
        return 2
    config = {"model": args.model, "adapter": args.adapter if args.adapter is not None else DEFAULT_CONFIG["adapter"]}
    if args.labels:
        config["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    config["mentions_from_text"] = args.mentions_from_text
    nlp = spacy.blank(args.lang)
    nlp.add_pipe("padellm_ner", config=config)
    docs = list(nlp.pipe(texts, batch_size=args.batch_size))
    for doc in docs:
        print(json.dumps({"text": doc.text,
                          "ents": [[e.start_char, e.end_char, e.label_, e.text] for e in doc.ents],
                          "candidates": [[s.start_char, s.end_char, s.label_, round(score, 4)] for s, score in
                                         zip(doc.spans["padellm"], doc.spans["padellm"].attrs["scores"])]},
                         ensure_ascii=False))
    if args.html:
        html = displacy.render(docs, style="ent", page=True, jupyter=False)
        Path(args.html).write_text(html, encoding="utf8")
        print(f"displaCy HTML written to {args.html}", file=sys.stderr)
    return 0


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.config import TrainConfig
    from .training.loop import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name != "extra" and getattr(args, f.name, None) is not None}
    if isinstance(values.get("labels"), str):
        values["labels"] = [x.strip() for x in values["labels"].split(",") if x.strip()]
    if isinstance(values.get("target_modules"), str) and "," in values["target_modules"]:
        values["target_modules"] = values["target_modules"].split(",")
    best = train(TrainConfig(**values))
    print(json.dumps(best, indent=1, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    from .training.readers import read_any

    config = {"model": args.model, "batch_size": args.batch_size, "mentions_from_text": args.mentions_from_text}
    if args.adapter:
        config["adapter"] = args.adapter
    nlp = spacy.blank(args.lang)
    pipe = nlp.add_pipe("padellm_ner", config=config)
    gold = read_any(args.data, nlp.vocab)[: args.limit or None]
    examples = [Example(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]), d)
                for d in gold]
    scores = nlp.evaluate(examples, batch_size=args.batch_size)
    print(f"{'label':<8} {'P':>6} {'R':>6} {'F':>6}")
    for label, prf in sorted((scores.get("ents_per_type") or {}).items()):
        print(f"{label:<8} {prf['p'] * 100:6.2f} {prf['r'] * 100:6.2f} {prf['f'] * 100:6.2f}")
    print(f"{'spans':<8} {scores['ents_p'] * 100:6.2f} {scores['ents_r'] * 100:6.2f} {scores['ents_f'] * 100:6.2f}"
          "   (spaCy span P/R/F)")
    print(f"{'strings':<8} {scores['ents_string_p'] * 100:6.2f} {scores['ents_string_r'] * 100:6.2f} "
          f"{scores['ents_string_f'] * 100:6.2f}   (paper: micro-F1 over (label, string) sets per doc)")
    print(f"labels {list(pipe.labels)}, {len(examples)} docs")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({k: v for k, v in scores.items() if k.startswith("ents")}, indent=1))
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
                            args.dtype)
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
    parser = argparse.ArgumentParser(prog="python -m spacy_padellm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ann = sub.add_parser("annotate", help="annotate texts; prints JSON lines, optionally writes displaCy HTML")
    ann.add_argument("text", nargs="*", help="texts to annotate")
    ann.add_argument("--input", help="a UTF-8 file with one text per line")
    ann.add_argument("--model", default="smollm2-135m", help="packaged name, HF folder or .gguf file")
    ann.add_argument("--adapter", default=None, help="peft LoRA adapter folder (default: the shipped one)")
    ann.add_argument("--labels", default=None, help="comma-separated labels (default: the adapter's)")
    ann.add_argument("--lang", default="en", help="spaCy language code for tokenization")
    ann.add_argument("--batch-size", type=int, default=32)
    ann.add_argument("--html", default=None, help="write displaCy HTML here")
    ann.add_argument("--mentions-from-text", action="store_true",
                     help="constrain mentions to word-aligned substrings of the text (changes output)")
    ann.set_defaults(func=_annotate)

    import dataclasses

    from .training.config import TrainConfig

    tr = sub.add_parser("train", help="fine-tune a PaDeLLM LoRA adapter (resumes from OUTPUT/checkpoint)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        kind = {"int": int, "float": float, "bool": _flag}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
        tr.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                        help=f"default: {f.default!r}")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="spaCy ents P/R/F per label and the paper's string micro-F1")
    ev.add_argument("--data", required=True, help="gold data: CoNLL, .spacy, .jsonl or BMES")
    ev.add_argument("--model", default="smollm2-135m")
    ev.add_argument("--adapter", default=None)
    ev.add_argument("--lang", default="en")
    ev.add_argument("--limit", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--out", default=None, help="also write the scores as JSON here")
    ev.add_argument("--mentions-from-text", action="store_true",
                    help="constrain mentions to word-aligned substrings of the text (changes output)")
    ev.set_defaults(func=_evaluate)

    bm = sub.add_parser("benchmark", help="PaDeLLM vs autoregressive NER, side by side in one process")
    bm.add_argument("--data", required=True)
    bm.add_argument("--limit", type=int, default=0)
    bm.add_argument("--stride", type=int, default=1, help="every STRIDE-th document (a sample spread over the file)")
    bm.add_argument("--methods", default="padellm,padellm_rows,padellm_reference,autoreg_struct,autoreg_aug")
    bm.add_argument("--batch-sizes", default="1,32")
    bm.add_argument("--model", default="smollm2-135m")
    bm.add_argument("--adapters", default="", help="METHOD=FOLDER,... (default: the packaged adapters)")
    bm.add_argument("--dtype", default="auto")
    bm.add_argument("--lang", default="en")
    bm.add_argument("--out", default=None, help="results JSON")
    bm.add_argument("--plot", default=None, help="results PNG")
    bm.set_defaults(func=_benchmark)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in benchmark results
    from .errors import PaDeLLMError

    try:
        return args.func(args)
    except PaDeLLMError as err:
        print(err, file=sys.stderr)
        return 2
