"""The paper's published single-device PaDeLLM procedure, for comparison with our engine: step 1 is one
`generate()` batch over all labels, step 2 one `generate()` batch over all mentions, every sequence
carrying (and re-encoding) its full prompt; no cache is shared between sequences."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from transformers import LogitsProcessorList

from ..engine.decoder import MAX_COUNT_DIGITS, Decoder, MentionPrediction, output_sequences
from ..engine.precision import inference_precision, new_cache
from ..prompts import get_template


class ReferencePaDeLLM:
    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], template: str = "en",
                 max_new_tokens: int = 32, count_bias: float = 0.0) -> None:
        self.labels = list(labels)
        self.dec = Decoder(model, tokenizer, get_template(template), max_new_tokens, count_bias=count_bias)
        self.model = model
        self.passes = 0
        model.register_forward_pre_hook(self._count_pass)
        self.newline = [int(i) for i in self.dec.count_allowed.nonzero().squeeze(1).tolist()
                        if i not in self.dec.digit_ids and i not in self.dec.eos_ids]

    def _count_pass(self, module: Any, args: Any) -> None:
        self.passes += 1

    def _generate(self, prompts: List[List[int]], max_new: int, stop: List[int], bias_first: bool = False
                  ) -> Tuple[List[List[int]], List[float], int, List[int]]:
        """Greedy generate() over left-padded prompts: new ids (stop tokens cut), their summed
        log-probabilities, and this call's forward passes and generated tokens."""
        width = max(len(p) for p in prompts)
        pad = self.dec.pad_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        before = self.passes
        dec = self.dec

        def first_count_bias(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # the engine's count_bias, applied the same way: on the first count token only
            return dec._bias_first(scores) if input_ids.shape[1] == width else scores

        processors = [first_count_bias] if bias_first and dec.count_bias else []
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

    def predict(self, texts: Sequence[str], max_counts: Sequence[int]) -> List[Tuple[List[MentionPrediction],
                                                                                       Dict[str, int]]]:
        """All docs of the batch together, as the paper batches all sequences of its inputs."""
        t = self.dec.template
        rows = [(d, lab) for d in range(len(texts)) for lab in self.labels]
        prompts = [self.dec.encode(t.prompt(texts[d], lab)) for d, lab in rows]
        stats = [dict(forward_passes=0, prompt_tokens=0, generated_tokens=0) for _ in texts]
        digits, _, passes, generated = self._generate(prompts, MAX_COUNT_DIGITS + 1,
                                                      sorted(self.dec.eos_ids) + self.newline, bias_first=True)
        requests = []
        raw_counts: List[Dict[str, str]] = [{} for _ in texts]
        for (d, lab), ids in zip(rows, digits):
            text = "".join(self.dec.digit_ids.get(i, "x") for i in ids)
            count = int(text) if text.isdigit() else 0
            raw_counts[d][lab] = text if text.isdigit() else ""
            requests += [(d, lab, min(count, max_counts[d]), k) for k in range(1, min(count, max_counts[d]) + 1)]
        for d in range(len(texts)):
            stats[d]["forward_passes"] += passes
        for (d, _), p, n in zip(rows, prompts, generated):
            stats[d]["prompt_tokens"] += len(p)
            stats[d]["generated_tokens"] += n
        mentions: List[List[MentionPrediction]] = [[] for _ in texts]
        if requests:
            m_prompts = [self.dec.encode(t.mention_prompt(texts[d], lab, c, k)) for d, lab, c, k in requests]
            seqs, scores, passes, generated = self._generate(m_prompts, self.dec.max_new_tokens,
                                                             sorted(self.dec.eos_ids))
            for (d, lab, c, k), ids, score, p, n in zip(requests, seqs, scores, m_prompts, generated):
                mentions[d].append(MentionPrediction(lab, k, self.dec.text_of(ids), score, len(ids), True))
                stats[d]["prompt_tokens"] += len(p)
                stats[d]["generated_tokens"] += n
            for d in {r[0] for r in requests}:
                stats[d]["forward_passes"] += passes
        for d in range(len(texts)):
            stats[d]["sequences"], stats[d]["sequence_tokens"] = output_sequences(raw_counts[d], mentions[d])
        return list(zip(mentions, stats))
