"""Measure training throughput, packed (text once per document) against unpacked (one padded sequence per
example, as the paper trains), on the same documents, model and settings, side by side in one run."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

import torch

from .examples import EncodedExample
from .packing import collate, pack_examples, packed_loss


def _padded_loss(model: Any, batch: Sequence[EncodedExample], pad_id: int) -> torch.Tensor:
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(batch):
        ids[i, :len(e.ids)] = torch.as_tensor(e.ids)
        mask[i, :len(e.ids)] = 1
        labels[i, max(e.n_prompt, 1):len(e.ids)] = torch.as_tensor(e.ids[max(e.n_prompt, 1):])
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def measure(model: Any, optimizer: Any, per_doc: List[List[EncodedExample]], pad_id: int, bf16: bool,
            row_tokens: int = 1024, rows_per_step: int = 2, unpacked_batch: int = 16) -> Dict[str, float]:
    """Seconds for one pass of training steps over the same docs both ways; 'work tokens' are the tokens
    of the separate sequences (what the unpacked run feeds), so work tokens/s compares like with like."""
    from .schedule import plan_rows

    trees = [pack_examples(x) for x in per_doc]
    flat = [e for x in per_doc for e in x]
    work_tokens = sum(len(e.ids) for e in flat)
    rows = plan_rows(trees, list(range(len(trees))), row_tokens)
    steps = [rows[i:i + rows_per_step] for i in range(0, len(rows), rows_per_step)]

    def run(kind: str) -> float:
        t0 = time.perf_counter()
        if kind == "packed":
            for step in steps:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = packed_loss(model, collate([[trees[i] for i in r] for r in step], pad_id))
                loss.backward(); optimizer.step(); optimizer.zero_grad()
        else:
            for i in range(0, len(flat), unpacked_batch):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = _padded_loss(model, flat[i:i + unpacked_batch], pad_id)
                loss.backward(); optimizer.step(); optimizer.zero_grad()
        return time.perf_counter() - t0

    run("packed")  # warm-up (allocator, oneDNN kernels)
    times = {"unpacked": run("unpacked"), "packed": run("packed")}
    packed_tokens = sum(len(t) for t in trees)
    return {"docs": len(per_doc), "examples": len(flat), "work_tokens": work_tokens,
            "packed_tokens": packed_tokens, "seconds_unpacked": times["unpacked"], "seconds_packed": times["packed"],
            "work_tokens_per_s_unpacked": work_tokens / times["unpacked"],
            "work_tokens_per_s_packed": work_tokens / times["packed"],
            "speedup": times["unpacked"] / times["packed"]}
