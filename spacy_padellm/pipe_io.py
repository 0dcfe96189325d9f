"""How a padellm_ner pipe is saved and restored: its settings, labels and template in cfg.json, and a copy
of its adapter. The base model is stored as a reference (a packaged name or a path), never as weights, and
a pickle carries the same bytes (the model reloads lazily in the process that unpickles it).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import srsly

from .errors import Errors, PaDeLLMError

CFG_FILE = "cfg.json"
ADAPTER_DIR = "adapter"


class PipeStorage:
    """to_disk / from_disk / to_bytes / from_bytes / pickling for PaDeLLMNER (which sets SETTING_DEFAULTS)."""

    SETTING_DEFAULTS: Dict[str, Any] = {}
    cfg: Dict[str, Any]
    adapter: Optional[str]
    span_getter: Optional[Callable]
    _tmpdir: Optional[tempfile.TemporaryDirectory]

    def _state(self) -> Dict[str, Any]:
        return dict(cfg=self.cfg, labels=self._labels, template=self.template_name,
                    label_words=self._label_words, has_adapter=self.adapter is not None)

    def _load_state(self, state: Dict[str, Any], adapter: Optional[str]) -> None:
        from .engine.loading import resolve_model

        self.cfg = {**self.SETTING_DEFAULTS, **getattr(self, "cfg", {}), **state["cfg"]}  # newer settings: defaults
        self.model_ref = resolve_model(self.cfg["model"])
        self._labels = state["labels"]
        self.template_name = state["template"]
        self._label_words = state.get("label_words")  # absent in pipelines saved before label words
        self.adapter = adapter
        self._decoder = None

    def to_disk(self, path: Any, *, exclude: Iterable[str] = ()) -> None:
        """cfg.json plus a copy of the adapter; the base model is stored as a reference (name or path)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.adapter is not None:
            src, dst = Path(self.adapter).resolve(), (path / ADAPTER_DIR).resolve()
            if src != dst:
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)
        srsly.write_json(path / CFG_FILE, self._state())

    def from_disk(self, path: Any, *, exclude: Iterable[str] = ()) -> "PipeStorage":
        path = Path(path)
        if not (path / CFG_FILE).is_file():
            raise PaDeLLMError(Errors.E012.format(path=str(path), file=CFG_FILE))
        state = srsly.read_json(path / CFG_FILE)
        adapter = None
        if state.get("has_adapter"):
            if not (path / ADAPTER_DIR / "adapter_config.json").is_file():
                raise PaDeLLMError(Errors.E012.format(path=str(path), file=f"{ADAPTER_DIR}/adapter_config.json"))
            adapter = str(path / ADAPTER_DIR)
        self._load_state(state, adapter)
        return self

    def to_bytes(self, *, exclude: Iterable[str] = ()) -> bytes:
        files: Dict[str, bytes] = {}
        if self.adapter is not None:
            root = Path(self.adapter)
            files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return srsly.msgpack_dumps({"state": self._state(), "adapter_files": files})

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = ()) -> "PipeStorage":
        msg = srsly.msgpack_loads(data)
        adapter = None
        if msg["state"].get("has_adapter"):
            self._tmpdir = tempfile.TemporaryDirectory(prefix="padellm-adapter-")
            for rel, blob in msg["adapter_files"].items():
                target = Path(self._tmpdir.name) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
            adapter = self._tmpdir.name
        self._load_state(msg["state"], adapter)
        return self

    def __reduce__(self) -> Any:
        """Pickles carry settings and adapter bytes, never the loaded torch model (it reloads lazily)."""
        if self.span_getter is not None:
            import pickle

            try:
                pickle.dumps(self.span_getter)
            except Exception as err:
                raise PaDeLLMError(Errors.E015.format(getter=self.span_getter, err=err)) from err
        return (_unpickle_pipe, (type(self), self.vocab, self.name, self.to_bytes(), self.span_getter))


def _unpickle_pipe(cls: type, vocab: Any, name: str, data: bytes, span_getter: Optional[Callable] = None) -> Any:
    pipe = cls.__new__(cls)
    pipe.vocab, pipe.name = vocab, name
    pipe._decoder, pipe._tmpdir, pipe.span_getter = None, None, span_getter
    return pipe.from_bytes(data)
