"""Store int8 calibration maxima with an adapter (`dtype: int8`, spacy_padellm/engine/int8.py).

The smoothing scales of the int8 mode come from the largest input of each channel of each decoder linear.
Measured over the mention prompts of 64 CoNLL-2003 training sentences they held the string F1 (92.68
against float32's 92.33 on the 400-document dev selection sample; 91.22 against 91.55 on 1,000), over the
component's 16 built-in sentences they lost 0.45 (91.88, 400 documents): the prompts the adapter was trained on set the ranges it meets. This
writes those maxima (numbers, not text) into the adapter folder, where the component reads them.

    python project/scripts/int8_calibrate.py --train ../shared/data/conll2003/train.conll \\
        --adapter spacy_padellm/default_adapter -n 64
"""
import argparse

import spacy

from spacy_padellm.engine.int8 import calibrate, save_maxima
from spacy_padellm.training.readers import read_any

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--train", required=True, help="training data: CoNLL, .spacy, .jsonl or BMES")
parser.add_argument("--adapter", default="spacy_padellm/default_adapter")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("-n", type=int, default=64, help="training sentences with 2+ entities to calibrate on")
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()

nlp = spacy.blank("en")
pipe = nlp.add_pipe("padellm_ner", config={"model": args.model, "adapter": args.adapter, "dtype": "float32",
                                           "threads": args.threads})
texts = [d.text for d in read_any(args.train, nlp.vocab) if len(d.ents) >= 2][: args.n]
runner = pipe.decoder.runner
maxima = calibrate(runner.model, runner.tokenizer, pipe.template, list(pipe.labels), texts)
path = save_maxima(maxima, args.adapter, f"{len(texts)} sentences of {args.train} with 2+ entities")
print(f"{path}: maxima of {len(maxima)} linears over {len(texts)} sentences x {len(pipe.labels)} labels")
