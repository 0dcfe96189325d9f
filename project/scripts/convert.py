"""Convert NER data (CoNLL IOB1/IOB2, JSONL, BMES, .spacy) into a spaCy DocBin."""
import argparse
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from spacy_padellm.training.readers import read_any

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("src")
parser.add_argument("dest")
parser.add_argument("--lang", default="en")
parser.add_argument("--limit", type=int, default=0, help="first N documents only (0 = all)")
args = parser.parse_args()
docs = read_any(args.src, spacy.blank(args.lang).vocab)
if args.limit:
    docs = docs[: args.limit]
Path(args.dest).parent.mkdir(parents=True, exist_ok=True)
DocBin(docs=docs, store_user_data=False).to_disk(args.dest)
print(f"{len(docs)} docs, {sum(len(d.ents) for d in docs)} entities -> {args.dest}")
