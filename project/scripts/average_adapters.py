"""Average LoRA adapters of one base model into one adapter (a "model soup" of checkpoints).

Adapters of the same run (or a run and its continuation) sit in one basin of the loss, and the mean of their
weight deltas often scores better than any of them, at no training cost (issue 14: counts). A LoRA delta is
scale * B @ A, and the mean of deltas is not the LoRA of the means of A and B, so the average is written
exactly, as a LoRA of the summed ranks: B' = [B_1 ... B_n], A' = [w_1 s_1/s' A_1; ...; w_n s_n/s' A_n], with
s' = the first adapter's scale. `--rank R` instead keeps the R largest singular directions of each averaged
delta (a smaller file, an approximation: the script prints how much of each delta's norm it kept).

    python project/scripts/average_adapters.py OUT ADAPTER [ADAPTER ...] [--weights 0.5,0.5] [--rank 16]

OUT gets adapter_config.json, adapter_model.safetensors and the first adapter's padellm.json (with the
sources and weights under "averaged_from"; its dev scores and tuned decoding settings are removed: they
belong to the first adapter).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

META = "padellm.json"


def read_adapter(folder: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf8"))
    for key in ("use_dora", "use_rslora"):
        if config.get(key):
            raise SystemExit(f"{folder}: {key} adapters are not supported")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise SystemExit(f"{folder}: per-module ranks are not supported")
    if config.get("modules_to_save") or config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise SystemExit(f"{folder}: only plain LoRA A/B weights are averaged (no modules_to_save, no biases)")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    other = [k for k in weights if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if other:
        raise SystemExit(f"{folder}: holds tensors other than LoRA A/B weights, e.g. {other[0]}")
    return config, weights


def modules(weights: Dict[str, torch.Tensor]) -> List[str]:
    return sorted(k[: -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight"))


def average(adapters: Sequence[Tuple[dict, Dict[str, torch.Tensor]]], weights: Sequence[float], rank: int = 0
            ) -> Tuple[int, Dict[str, torch.Tensor], List[float]]:
    """(new rank, LoRA weights with the first adapter's scale, per module the share of the delta's norm kept)."""
    first_config, first = adapters[0]
    names = modules(first)
    for config, w in adapters[1:]:
        if modules(w) != names or any(w[n + ".lora_A.weight"].shape[1] != first[n + ".lora_A.weight"].shape[1]
                                      or w[n + ".lora_B.weight"].shape[0] != first[n + ".lora_B.weight"].shape[0]
                                      for n in names):
            raise SystemExit("the adapters do not adapt the same modules of the same shapes")
    if rank:
        most = min(min(first[n + ".lora_B.weight"].shape[0], first[n + ".lora_A.weight"].shape[1]) for n in names)
        if not 0 < rank <= min(most, sum(c["r"] for c, _ in adapters)):
            raise SystemExit(f"--rank {rank}: at most {min(most, sum(c['r'] for c, _ in adapters))} here (the "
                             "summed ranks, and the smallest module dimension)")
    scale = first_config["lora_alpha"] / first_config["r"]
    out: Dict[str, torch.Tensor] = {}
    kept: List[float] = []
    dtype = first[names[0] + ".lora_A.weight"].dtype
    new_rank = sum(c["r"] for c, _ in adapters)
    for name in names:
        a_parts, b_parts = [], []
        for (config, w), weight in zip(adapters, weights):
            s = config["lora_alpha"] / config["r"]
            a_parts.append(w[name + ".lora_A.weight"].float() * (weight * s / scale))
            b_parts.append(w[name + ".lora_B.weight"].float())
        a, b = torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
        if rank:
            u, sv, vh = torch.linalg.svd(b @ a, full_matrices=False)
            kept.append(float(sv[:rank].norm() / sv.norm().clamp_min(1e-12)))
            root = sv[:rank].sqrt()
            b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
            new_rank = rank
        out[name + ".lora_A.weight"] = a.to(dtype).contiguous()
        out[name + ".lora_B.weight"] = b.to(dtype).contiguous()
    return new_rank, out, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--weights", default="", help="comma-separated, one per adapter (default: equal)")
    parser.add_argument("--rank", type=int, default=0, help="truncate each averaged delta to this rank (0: exact)")
    args = parser.parse_args()
    folders = [Path(a) for a in args.adapters]
    weights = [float(x) for x in args.weights.split(",")] if args.weights else [1 / len(folders)] * len(folders)
    if len(weights) != len(folders):
        raise SystemExit(f"{len(weights)} weights for {len(folders)} adapters")
    if abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        raise SystemExit(f"weights {weights}: an average takes non-negative weights that sum to 1")
    adapters = [read_adapter(f) for f in folders]
    rank, tensors, kept = average(adapters, weights, args.rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(adapters[0][0])
    config["lora_alpha"] = config["lora_alpha"] / config["r"] * rank  # the same scale at the new rank
    config["r"] = rank
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf8")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    if (folders[0] / META).exists():
        meta = json.loads((folders[0] / META).read_text(encoding="utf8"))
        for key in [k for k in meta if k.startswith("dev") or k == "decode"]:
            del meta[key]  # scores and tuned decoding settings belong to the first adapter, not to the average
        if isinstance(meta.get("config"), dict):
            meta["config"] = {**meta["config"], "lora_r": rank, "lora_alpha": config["lora_alpha"]}
        meta["averaged_from"] = [{"adapter": str(f), "weight": w} for f, w in zip(folders, weights)]
        if args.rank:
            meta["averaged_from"].append({"svd_rank": args.rank, "min_norm_kept": min(kept)})
        (out / META).write_text(json.dumps(meta, indent=1), encoding="utf8")
    elif (folders[0] / "README.md").exists():
        shutil.copy(folders[0] / "README.md", out / "README.md")
    note = f", SVD kept {100 * min(kept):.2f}-{100 * max(kept):.2f}% of each delta's norm" if kept else ""
    print(f"{out}: rank {rank} from {len(folders)} adapters (weights {weights}){note}")


if __name__ == "__main__":
    main()
