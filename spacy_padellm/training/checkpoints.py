"""What a training run writes and reads back: checkpoints, the best adapter, the log.

Every folder is written to a temporary sibling and moved into place, so a kill never leaves a half-written
checkpoint; a resumed run keeps its schedule (the total step count is saved) and drops log lines written
after its checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import torch


def atomic_dir_write(target: Path, write: Any) -> None:
    """Call write(tmp_folder), then swap tmp_folder into `target` (rename is atomic on one filesystem)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(target: Path) -> None:
    """After a kill between the two renames of atomic_dir_write, the last complete copy is `.old`."""
    old = target.parent / f".{target.name}.old"
    if not target.exists() and old.exists():
        os.replace(old, target)


def truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint a resumed run restarts from (they will be redone)."""
    if not path.is_file():
        return
    lines = [x for x in path.read_text(encoding="utf8").splitlines() if x.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut by the kill
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf8")
    os.replace(tmp, path)


def log(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf8") as f:
        f.write(json.dumps(record) + "\n")


def slim_checkpoint(folder: Path) -> None:
    """Shrink a checkpoint to what travels in git between sessions: the adapter in bf16 and the step,
    schedule, best score and RNG state, without Adam's moments (twice the adapter's size in float32). A run
    resumed from it keeps its schedule; only the optimizer's running averages start again."""
    from safetensors.torch import load_file, save_file

    state = torch.load(folder / "state.pt", weights_only=False)
    weights = folder / "adapter_model.safetensors"
    slim = {k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}

    def write(tmp: Path) -> None:
        for f in folder.iterdir():
            if f.name not in ("state.pt", weights.name):
                shutil.copy2(f, tmp / f.name)
        save_file(slim, str(tmp / weights.name))
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp / "state.pt")
    atomic_dir_write(folder, write)


def resumed_total(state: Dict[str, Any], asked: int) -> int:
    """A resumed run keeps the schedule it started with: its total step count decides the learning rate
    of every step, so recomputing it from changed flags would make the rate jump (issue 14)."""
    total = int(state.get("total") or asked)
    if total != asked:
        print(f"[train] keeping the original schedule of {total} steps (these flags give {asked}); "
              "start a new --output folder for a new schedule", flush=True)
    return total


def warm_start(model: Any, folder: str) -> None:
    """Load a saved adapter's LoRA weights into the fresh peft model (a new schedule from a trained start).

    A saved adapter of a LOWER rank grows into this run's rank (issue 14: does a higher rank count better?)
    so that the model starts exactly where the saved adapter left it: its A rows and B columns take the
    first r0 places, B's are multiplied by scale0 / scale (peft scales B @ A by alpha / r), the new A rows
    keep peft's random init and the new B columns are zero, so the grown product equals the saved one."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..errors import Errors, PaDeLLMError

    weights = Path(folder) / "adapter_model.safetensors"
    if not weights.is_file():
        raise PaDeLLMError(Errors.E009.format(path=folder))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    current = get_peft_model_state_dict(model)
    if any(k in current and current[k].shape != v.shape for k, v in state.items()):
        state = grown_lora_state(state, current, saved_scale(folder), model_scale(model), folder)
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise PaDeLLMError(Errors.E010.format(key="--init-adapter", value=folder,
                                              why=f"its LoRA shape differs from this run's ({unexpected[:2]} ...)"))


def saved_scale(folder: str) -> float:
    """alpha / r of a saved adapter (its adapter_config.json)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf8"))
    return float(config["lora_alpha"]) / float(config["r"])


def model_scale(model: Any) -> float:
    """alpha / r of the peft model's active adapter."""
    config = model.peft_config[model.active_adapter]
    return float(config.lora_alpha) / float(config.r)


def grown_lora_state(state: Dict[str, torch.Tensor], current: Dict[str, torch.Tensor], scale0: float,
                     scale: float, folder: str) -> Dict[str, torch.Tensor]:
    """The saved lower-rank LoRA weights embedded in this run's (see warm_start)."""
    from ..errors import Errors, PaDeLLMError

    grown: Dict[str, torch.Tensor] = {}
    for key, saved in state.items():
        target = current.get(key)
        if target is None or target.shape == saved.shape:
            grown[key] = saved
            continue
        out = target.detach().float().clone()
        if "lora_A" in key and saved.shape[1:] == out.shape[1:] and saved.shape[0] <= out.shape[0]:
            out[: saved.shape[0]] = saved
        elif "lora_B" in key and saved.shape[0] == out.shape[0] and saved.shape[1] <= out.shape[1]:
            out.zero_()
            out[:, : saved.shape[1]] = saved * (scale0 / scale)
        else:
            raise PaDeLLMError(Errors.E010.format(
                key="--init-adapter", value=folder,
                why=f"{key} is {tuple(saved.shape)} there and {tuple(out.shape)} here: only a lower rank grows"))
        grown[key] = out
    return grown


def save_adapter(model: Any, folder: Path, meta: Dict[str, Any]) -> None:
    """The adapter in bf16 (half the bytes; LoRA deltas lose nothing measurable) plus padellm.json."""
    model.save_pretrained(folder)
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    (folder / "padellm.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf8")
