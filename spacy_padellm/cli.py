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
    ann.set_defaults(func=_annotate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import PaDeLLMError

    try:
        return args.func(args)
    except PaDeLLMError as err:
        print(err, file=sys.stderr)
        return 2
