"""Training throughput packed vs unpacked on the same documents, model and settings, in one process."""
import argparse
import json
import os
from pathlib import Path

import spacy
import torch
from peft import get_peft_model

from spacy_padellm.engine.loading import cpu_has_fast_bf16, load_base, resolve_model
from spacy_padellm.prompts import get_template
from spacy_padellm.training.config import TrainConfig
from spacy_padellm.training.examples import doc_examples, encode_example
from spacy_padellm.training.loop import lora_config
from spacy_padellm.training.readers import read_any
from spacy_padellm.training.speed import measure

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("data")
parser.add_argument("out")
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--docs", type=int, default=64)
parser.add_argument("--threads", type=int, default=0)
parser.add_argument("--lora-first-layer", type=int, default=TrainConfig.lora_first_layer)
args = parser.parse_args()
torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
docs = [d for d in read_any(args.data, spacy.blank("en").vocab) if d.text.strip()][: args.docs]
labels = sorted({e.label_ for d in docs for e in d.ents})
model, tokenizer = load_base(resolve_model(args.model), torch.float32, "cpu")
cfg = TrainConfig(lora_first_layer=args.lora_first_layer)
model = get_peft_model(model, lora_config(model, cfg))
per_doc = [[encode_example(tokenizer, e) for e in doc_examples(d, labels, get_template("en"))] for d in docs]
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
result = measure(model, optimizer, per_doc, tokenizer.eos_token_id, bf16=cpu_has_fast_bf16(),
                 row_tokens=cfg.row_tokens, rows_per_step=cfg.rows_per_step)
result.update(threads=torch.get_num_threads(), bf16=cpu_has_fast_bf16(), lora_first_layer=cfg.lora_first_layer)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
