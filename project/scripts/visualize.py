"""displaCy HTML of documents annotated by padellm_ner: entities, then every candidate span."""
import argparse
from pathlib import Path

import spacy
from spacy import displacy
from spacy.tokens import Doc

from spacy_padellm.training.readers import read_any

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("data")
parser.add_argument("out")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--adapter", default=None)
parser.add_argument("--lang", default="en")
parser.add_argument("--limit", type=int, default=40)
args = parser.parse_args()
nlp = spacy.blank(args.lang)
config = {"model": args.model}
if args.adapter:
    config["adapter"] = args.adapter
nlp.add_pipe("padellm_ner", config=config)
gold = read_any(args.data, nlp.vocab)[: args.limit]
docs = list(nlp.pipe(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d])
                     for d in gold))
parts = ["<h2>Entities (doc.ents)</h2>", displacy.render(docs, style="ent", page=False, jupyter=False),
         "<h2>All candidates (doc.spans['padellm'])</h2>",
         "".join(displacy.render(d, style="span", options={"spans_key": "padellm"}, jupyter=False) for d in docs)]
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text("<html><body>" + "\n".join(parts) + "</body></html>", encoding="utf8")
print(f"{len(docs)} documents -> {args.out}")
