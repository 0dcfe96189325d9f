"""The paper's published single-device PaDeLLM procedure, for comparison with our engine: step 1 is one
`generate()` batch over all labels, step 2 one `generate()` batch over all mentions, every sequence
carrying (and re-encoding) its full prompt; no cache is shared between sequences. It is an Engine
(types.py): `pipe.set_engine(ReferencePaDeLLM(...))` runs it inside the component."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from transformers import LogitsProcessorList

from ..engine.counts import MAX_COUNT_DIGITS, CountVocabulary
from ..engine.precision import inference_precision, new_cache
from ..engine.runner import Runner
from ..prompts import Template, as_template
from ..types import DocPrediction, DocStats, MentionPrediction, output_sequences


class ReferencePaDeLLM:
    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], template: Union[str, Template] = "en",
                 max_new_tokens: int = 32, count_bias: float = 0.0) -> None:
        self.labels = list(labels)
        self.runner = Runner(model, tokenizer)
        self.template = as_template(template)
        self.counts = CountVocabulary(self.runner, self.template)
        self.max_new_tokens, self.count_bias = max_new_tokens, float(count_bias)
        self.model = model
        self.passes = 0
        model.register_forward_pre_hook(self._count_pass)
        self.newline = [int(i) for i in self.counts.allowed.nonzero().squeeze(1).tolist()
                        if i not in self.counts.digit_ids and i not in self.runner.eos_ids]

    def _count_pass(self, module: Any, args: Any) -> None:
        self.passes += 1

    def _generate(self, prompts: List[List[int]], max_new: int, stop: List[int], bias_first: bool = False
                  ) -> Tuple[List[List[int]], List[float], int, List[int]]:
        """Greedy generate() over left-padded prompts: new ids (stop tokens cut), their summed
        log-probabilities, and this call's forward passes and generated tokens."""
        width = max(len(p) for p in prompts)
        pad = self.runner.pad_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        before = self.passes
        counts, bias = self.counts, self.count_bias

        def first_count_bias(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # the engine's count_bias, applied the same way: on the first count token only
            return counts.bias_first(scores, bias) if input_ids.shape[1] == width else scores

        processors = [first_count_bias] if bias_first and bias else []
        with torch.inference_mode(), inference_precision(self.model):  # the engine's precision, for fairness
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                      eos_token_id=stop, pad_token_id=pad, return_dict_in_generate=True,
                                      output_scores=True, logits_processor=LogitsProcessorList(processors),
                                      past_key_values=new_cache(self.model))
        new = out.sequences[:, width:].tolist()
        logp = [torch.log_softmax(s.float(), dim=-1) for s in out.scores]
        seqs, scores, generated = [], [], []
        for r, row in enumerate(new):
            kept, score = [], 0.0
            generated.append(0)
            for t, tok in enumerate(row):
                generated[-1] += 1
                if tok in stop:
                    break
                kept.append(tok)
                score += float(logp[t][r, tok])
            seqs.append(kept)
            scores.append(score)
        return seqs, scores, self.passes - before, generated

    def predict(self, texts: Sequence[str], labels: Sequence[str], max_counts: Sequence[int]) -> List[DocPrediction]:
        """All docs of the batch together, as the paper batches all sequences of its inputs."""
        unknown = [x for x in labels if x not in self.labels]
        if unknown:
            raise ValueError(f"labels {unknown!r} are not among this reference's labels {self.labels!r}")
        rows = [(d, lab) for d in range(len(texts)) for lab in labels]
        prompts = [self.runner.encode(self.template.prompt(texts[d], lab)) for d, lab in rows]
        stats = [DocStats() for _ in texts]
        digits, _, passes, generated = self._generate(prompts, MAX_COUNT_DIGITS + 1,
                                                      sorted(self.runner.eos_ids) + self.newline, bias_first=True)
        requests = []
        counts: List[Dict[str, int]] = [{} for _ in texts]
        raw_counts: List[Dict[str, str]] = [{} for _ in texts]
        for (d, lab), ids in zip(rows, digits):
            text = "".join(self.counts.digit_ids.get(i, "x") for i in ids)
            count = min(int(text) if text.isdigit() else 0, max_counts[d])
            raw_counts[d][lab], counts[d][lab] = (text if text.isdigit() else ""), count
            requests += [(d, lab, count, k) for k in range(1, count + 1)]
        for d in range(len(texts)):
            stats[d].forward_passes += passes
        for (d, _), p, n in zip(rows, prompts, generated):
            stats[d].prompt_tokens += len(p)
            stats[d].generated_tokens += n
        mentions: List[List[MentionPrediction]] = [[] for _ in texts]
        if requests:
            self._mentions(texts, requests, stats, mentions)
        for d in range(len(texts)):
            stats[d].sequences, stats[d].sequence_tokens = output_sequences(raw_counts[d], mentions[d])
        return [DocPrediction(counts[d], raw_counts[d], tuple(mentions[d]), stats[d]) for d in range(len(texts))]

    def _mentions(self, texts: Sequence[str], requests: List[Tuple[int, str, int, int]], stats: List[DocStats],
                  out: List[List[MentionPrediction]]) -> None:
        """Step 2: one generate() batch over every (doc, label, count, k) mention prompt."""
        prompts = [self.runner.encode(self.template.mention_prompt(texts[d], lab, c, k)) for d, lab, c, k in requests]
        seqs, scores, passes, generated = self._generate(prompts, self.max_new_tokens, sorted(self.runner.eos_ids))
        for (d, lab, _, k), ids, score, p, n in zip(requests, seqs, scores, prompts, generated):
            out[d].append(MentionPrediction(lab, k, self.runner.text_of(ids), score, len(ids), True))
            stats[d].prompt_tokens += len(p)
            stats[d].generated_tokens += n
        for d in {r[0] for r in requests}:
            stats[d].forward_passes += passes
