"""The `padellm_ner` pipe: PaDeLLM count-then-mention NER over spaCy Docs.

No weights load in the factory: the model loads on first use, in `initialize`, or after `from_disk`, so
`spacy.load` and `nlp.add_pipe` stay fast and a saved pipeline can move between machines.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import srsly
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example
from spacy.util import minibatch

from .align import align_mentions, choose_entities
from .chunking import chunk_doc, group, span_getter_bounds, split_in_two
from .dedup import dedup_mentions
from .engine.forking import guard_after_fork, in_forked_child, set_threads
from .errors import Errors, PaDeLLMError
from .prompts import get_template, validate_labels
from .scoring import USER_DATA_KEY, score as score_examples

DEFAULT_CONFIG: Dict[str, Any] = {
    "model": "smollm2-135m",  # packaged name, HF folder or .gguf file
    "adapter": "default",  # peft LoRA folder ("default": the shipped one, for its base model; null: none)
    "labels": None,  # null: the adapter's labels
    "template": "en",  # "en" (paper, byte-exact) or "zh"
    "batch_size": 32,  # most docs decoded together (bounds memory; nlp.pipe's batch_size can lower it)
    "max_new_tokens": 32,  # longest mention, in tokens
    "dtype": "auto",  # bf16 where the CPU/GPU runs it fast, else float32
    "device": "auto",
    "dedup": True,  # the paper's one-label-per-string rule
    "spans_key": "padellm",
    "max_chunk_tokens": 128,  # a sentence longer than this is cut at whitespace
    "chunk_tokens": 0,  # sentences packed into one chunk up to this many tokens (0: a chunk per sentence)
    "split_count": 6,  # a chunk whose count for a label reaches this is cut in two and decoded again (0: never)
    "all_occurrences": False,  # also tag every same-case, token-aligned occurrence of a predicted string
    "kv_budget_mb": 256,  # most MB of key/value cache materialised for one batch of mention rows
    "batch_tokens": 4096,  # most tokens (over all chunks) decoded together: bounds memory
    "span_getter": None,  # optional registered span getter for chunking, e.g. spacy-transformers.sent_spans.v1
    "speculate": 4,  # copy-speculative mention decoding: text tokens proposed per pass (same output, fewer passes)
    "tree": True,  # tree-shaped passes (text + all labels in one pass) where the model family allows; same output
    "count_guesses": 1,  # tree path: mention prompts of counts 1..N ride along in the first pass; same output
    "count_bias": None,  # taken off the logits of a 0 count (recall knob); None: the adapter's tuned value, else 0
    "mentions_from_text": False,  # mention tokens constrained to substrings of the text (changes output; opt-in)
    "overwrite_ents": False,  # false: keep entities set earlier in the pipeline, add ours where they don't overlap
    "threads": 0,  # torch threads; 0: the cores this process may use (more than the free cores is 5-10x slower)
}
CFG_FILE = "cfg.json"
# the settings kept in PaDeLLMNER.cfg (the rest live in their own attributes)
PIPE_DEFAULTS = {k: v for k, v in DEFAULT_CONFIG.items() if k not in ("adapter", "labels", "template", "span_getter")}


@dataclass(frozen=True)
class ChunkPrediction:
    """The engine's prediction for doc[start:end]; `passes` = forward passes of the doc's group (set on the
    doc's last chunk of each group, so summing over chunks counts each pass once)."""

    start: int
    end: int
    prediction: Any  # engine.decoder.DocPrediction
    passes: int
ADAPTER_DIR = "adapter"


@Language.factory(
    "padellm_ner",
    default_config=DEFAULT_CONFIG,
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None,
                           "ents_string_f": None, "ents_string_p": None, "ents_string_r": None,
                           "ents_count_exact": None, "ents_count_low": None, "ents_count_high": None},
)
def make_padellm_ner(nlp: Language, name: str, model: str, adapter: Optional[str], labels: Optional[List[str]],
                     template: str, batch_size: int, max_new_tokens: int, dtype: str, device: str, dedup: bool,
                     spans_key: str, max_chunk_tokens: int, chunk_tokens: int, split_count: int,
                     all_occurrences: bool, kv_budget_mb: int, batch_tokens: int,
                     span_getter: Optional[Callable[[List[Doc]], List[List[Span]]]], speculate: int,
                     tree: bool, count_guesses: int, count_bias: Optional[float],
                     mentions_from_text: bool, overwrite_ents: bool, threads: int) -> "PaDeLLMNER":
    settings = {k: v for k, v in locals().items() if k in PIPE_DEFAULTS and k != "model"}
    return PaDeLLMNER(nlp.vocab, name, model=model, adapter=adapter, labels=labels, template=template,
                      span_getter=span_getter, **settings)


def _check(key: str, value: Any) -> None:
    """E010 for a setting of the wrong kind; the kinds are those of the defaults."""
    default = PIPE_DEFAULTS[key]
    if key in ("model", "device"):
        return  # checked where they are resolved
    if key == "count_bias":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be a number or null"))
    elif key == "dtype" and value not in ("auto", "float32", "bfloat16"):
        raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="use auto, float32 or bfloat16"))
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be true or false"))
    elif isinstance(default, int):
        low = 1 if key in POSITIVE else 0
        high = 9 if key == "count_guesses" else None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            why = f"must be an integer from {low}" + (f" to {high}" if high else "") + SETTING_NOTES.get(key, "")
            raise PaDeLLMError(Errors.E010.format(key=key, value=value, why=why))
    elif isinstance(default, str) and (not isinstance(value, str) or not value):
        raise PaDeLLMError(Errors.E010.format(key=key, value=value, why="must be a non-empty string"))


POSITIVE = {"batch_size", "max_new_tokens", "max_chunk_tokens", "batch_tokens", "kv_budget_mb"}
SETTING_NOTES = {"threads": " (0: the cores this process may use)", "split_count": " (0: never split)"}


class PaDeLLMNER(Pipe):
    """Sets doc.ents (non-overlapping, by score) and doc.spans[spans_key] (every aligned candidate, with
    summed token log-probabilities in attrs["scores"]); per-doc counts in doc.user_data["padellm"]."""

    def __init__(self, vocab: Any, name: str = "padellm_ner", *, model: str = "smollm2-135m",
                 adapter: Optional[str] = "default", labels: Optional[Sequence[str]] = None, template: str = "en",
                 span_getter: Optional[Callable] = None, **settings: Any) -> None:
        """`settings`: any of DEFAULT_CONFIG's engine settings (the rest take their defaults)."""
        from .engine.loading import resolve_adapter, resolve_model  # cheap: no torch

        unknown = sorted(set(settings) - set(PIPE_DEFAULTS))
        if unknown:
            raise PaDeLLMError(Errors.E010.format(key=unknown[0], value=settings[unknown[0]],
                                                  why=f"unknown setting; use some of {sorted(PIPE_DEFAULTS)}"))
        self.vocab = vocab
        self.name = name
        self.template_name = template
        get_template(template)
        self.model_ref = resolve_model(model)
        self.cfg: Dict[str, Any] = {**PIPE_DEFAULTS, **settings, "model": model}
        for key, value in self.cfg.items():
            _check(key, value)
        self.span_getter = span_getter  # a function from the registry: rebuilt from nlp.config, not saved
        self.adapter: Optional[str] = resolve_adapter(adapter, model)
        self._labels: Optional[List[str]] = validate_labels(labels) if labels is not None else None
        self._decoder: Any = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._resolve_labels(strict=False)

    # ---- settings ---------------------------------------------------------------------------------
    def _resolve_labels(self, strict: bool) -> None:
        """Labels and template from the adapter's padellm.json where the config leaves them open.

        Not strict at construction: spacy.load builds the pipe before from_disk points it at the copy of
        the adapter saved with the pipeline, so the original adapter folder may be gone by then.
        """
        from .engine.loading import read_adapter_meta

        meta: Dict[str, Any] = {}
        if self.adapter is not None and Path(self.adapter).is_dir():
            from .engine.loading import check_adapter_folder
            check_adapter_folder(self.adapter)  # a folder without adapter_config.json is no adapter (E009)
            meta = read_adapter_meta(self.adapter)
        elif self.adapter is not None and strict:
            from .engine.loading import check_adapter_folder
            check_adapter_folder(self.adapter)
        known = meta.get("labels")
        if self._labels is None and known:
            self._labels = validate_labels(known)
        elif self._labels is not None and known:
            unknown = [x for x in self._labels if x not in known]
            if unknown:
                raise PaDeLLMError(Errors.E014.format(labels=unknown, path=self.adapter, known=known))
        if meta.get("template") and meta["template"] != self.template_name:
            warnings.warn(f"[W001] The adapter {self.adapter!r} was trained with template "
                          f"{meta['template']!r}; using it instead of {self.template_name!r}.")
            self.template_name = meta["template"]
        if self._labels is None and (strict or self.adapter is None):
            raise PaDeLLMError(Errors.E005)

    @property
    def labels(self) -> tuple:
        return tuple(self._labels or ())

    @property
    def spans_key(self) -> str:
        return self.cfg["spans_key"]

    def add_label(self, label: str) -> int:
        labels = list(self.labels)
        if label in labels:
            return 0
        self._labels = validate_labels(labels + [label])
        return 1

    # ---- the model --------------------------------------------------------------------------------
    @property
    def count_bias(self) -> float:
        """The configured count_bias, else the one tuned on dev and stored with the adapter, else 0."""
        if self.cfg.get("count_bias") is not None:
            return float(self.cfg["count_bias"])
        if self.adapter is None:
            return 0.0
        from .engine.loading import read_adapter_meta

        return float(read_adapter_meta(self.adapter).get("decode", {}).get("count_bias", 0.0))

    @property
    def decoder(self) -> Any:
        """The loaded engine; loads base model (+ merged adapter) on first access."""
        if not guard_after_fork() and not in_forked_child():  # a forked worker keeps one thread (forking.py)
            set_threads(self.cfg.get("threads", 0))
        if self._decoder is None:
            from .engine.decoder import Decoder
            from .engine.loading import apply_adapter, load_base, resolve_device, resolve_dtype
            from .engine.memory import return_freed_memory

            return_freed_memory()  # caches of ever-different sizes would fragment the heap (memory.py)

            self._resolve_labels(strict=True)
            import torch

            device = resolve_device(self.cfg["device"])
            dtype = resolve_dtype(self.cfg["dtype"], device)
            # merge LoRA in float32 (as trained), then cast: merging into bf16 weights rounds twice
            model, tokenizer = load_base(self.model_ref, torch.float32 if self.adapter else dtype, device)
            if self.adapter is not None:
                model = apply_adapter(model, self.adapter, self.cfg["model"]).to(dtype)
            self._decoder = Decoder(model, tokenizer, get_template(self.template_name), self.cfg["max_new_tokens"],
                                    speculate=self.cfg.get("speculate", 0), tree=self.cfg.get("tree", True),
                                    count_guesses=self.cfg.get("count_guesses", 0), count_bias=self.count_bias,
                                    mentions_from_text=self.cfg.get("mentions_from_text", False),
                                    kv_budget_mb=self.cfg["kv_budget_mb"])
        return self._decoder

    def initialize(self, get_examples: Optional[Callable[[], Iterable[Example]]] = None, *,
                   nlp: Optional[Language] = None, labels: Optional[List[str]] = None) -> None:
        """Takes labels from the argument, else from the examples when none are set; loads the model."""
        if labels is not None:
            self._labels = validate_labels(labels)
        elif self._labels is None and get_examples is not None:
            found = sorted({e.label_ for eg in get_examples() for e in eg.reference.ents})
            if found:
                self._labels = validate_labels(found)
        self.decoder  # noqa: B018 - surface loading errors now rather than at the first doc

    # ---- annotating -------------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        try:
            self.set_annotations([doc], self.predict([doc]))
        except Exception as err:  # spaCy's error-handler protocol
            self.get_error_handler()(self.name, self, [doc], err)
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Docs in input order; each engine batch holds at most min(batch_size, config batch_size) docs."""
        size = max(1, min(batch_size, self.cfg["batch_size"]))
        for docs in minibatch(stream, size=size):
            try:
                self.set_annotations(docs, self.predict(docs))
            except Exception as err:
                self.get_error_handler()(self.name, self, docs, err)
            yield from docs

    def predict(self, docs: Iterable[Doc]) -> List[List[Any]]:
        """Per doc, a list of ChunkPrediction covering it; whitespace-only chunks skip the model.

        Chunks of all docs are decoded together, in groups bounded by batch_size and batch_tokens. A chunk
        whose count for some label reaches `split_count` asked for more mentions than the model learned to
        list: it is cut in two and both halves are decoded again (recursively, down to
        chunking.MIN_SPLIT_TOKENS), so a dense chunk is never capped silently.
        """
        docs = list(docs)
        bounds = span_getter_bounds(self.span_getter, docs) if self.span_getter else [None] * len(docs)
        todo = [(i, s, e) for i, doc in enumerate(docs)
                for s, e in chunk_doc(doc, self.cfg["max_chunk_tokens"], bounds[i], self.cfg["chunk_tokens"])
                if doc[s:e].text.strip()]
        found: Dict[Tuple[int, int, int], Any] = {}
        passes = [0] * len(docs)
        while todo:
            again: List[Tuple[int, int, int]] = []
            for ids in group([e - s for _, s, e in todo], self.cfg["batch_size"], self.cfg["batch_tokens"]):
                part = [todo[j] for j in ids]
                # stripped: a chunk cut at a line break starts or ends with the break, which no training
                # prompt held (mentions are aligned in the doc, so offsets are unaffected)
                preds = self.decoder.predict([docs[i][s:e].text.strip() for i, s, e in part], list(self.labels),
                                             [e - s for _, s, e in part])
                group_passes: Dict[int, int] = {}
                for (i, s, e), pred in zip(part, preds):  # chunks of one doc in one group share their passes
                    group_passes[i] = max(group_passes.get(i, 0), pred.stats["forward_passes"])
                    halves = self._split_if_saturated(docs[i], s, e, pred)
                    if halves:
                        again += [(i, a, b) for a, b in halves if docs[i][a:b].text.strip()]
                    else:
                        found[(i, s, e)] = pred
                for i, n in group_passes.items():
                    passes[i] += n
            todo = again
        out: List[List[Any]] = [[] for _ in docs]
        for (i, s, e) in sorted(found):
            out[i].append(ChunkPrediction(s, e, found[(i, s, e)], 0))
        for i, chunks in enumerate(out):  # the doc's passes ride on its last chunk (set_annotations sums)
            if chunks:
                last = chunks[-1]
                chunks[-1] = ChunkPrediction(last.start, last.end, last.prediction, passes[i])
        return out

    def _split_if_saturated(self, doc: Doc, start: int, end: int, pred: Any) -> Optional[List[Tuple[int, int]]]:
        limit = self.cfg["split_count"]
        if not limit or not pred.counts or max(pred.counts.values()) < limit:
            return None
        return split_in_two(doc, start, end)

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[List[Any]]) -> None:
        labels = list(self.labels)
        for doc, chunk_preds in zip(docs, predictions):
            aligned, kept, missing, dropped, unfinished = [], [], [], [], []
            stats = dict(forward_passes=0, prompt_tokens=0, generated_tokens=0, sequences=0, sequence_tokens=0)
            counts: Dict[str, int] = {}
            raw: Dict[str, List[str]] = {}
            for chunk in chunk_preds:
                pred = chunk.prediction
                mentions = list(pred.mentions)
                if self.cfg["dedup"]:  # per chunk: the unit the model saw
                    mentions, gone = dedup_mentions(mentions, labels)
                    dropped += gone
                span = doc[chunk.start:chunk.end]
                found, lost = align_mentions(doc, mentions, span.start_char, span.end_char,
                                             self.cfg.get("all_occurrences", False))
                aligned += found
                missing += lost
                kept += mentions
                unfinished += [m for m in pred.mentions if not m.finished]
                stats["forward_passes"] += chunk.passes
                for key in ("prompt_tokens", "generated_tokens", "sequences", "sequence_tokens"):
                    stats[key] += pred.stats.get(key, 0)
                for label, n in pred.counts.items():
                    counts[label] = counts.get(label, 0) + n
                    raw.setdefault(label, []).append(pred.raw_counts[label])
            unique = {(a.label, a.start, a.end): a for a in sorted(aligned, key=lambda a: a.logprob)}
            aligned = sorted(unique.values(), key=lambda a: (a.start, a.end, a.label))
            spans = [Span(doc, a.start, a.end, label=a.label) for a in aligned]
            doc.spans[self.spans_key] = SpanGroup(doc, name=self.spans_key, spans=spans,
                                                  attrs={"scores": [a.logprob for a in aligned]})
            ents = [Span(doc, a.start, a.end, label=a.label) for a in choose_entities(aligned)]
            if self.cfg.get("overwrite_ents", False):
                doc.set_ents(ents, default="outside")
            else:  # as spaCy's entity_ruler: entities set earlier stay, ours fill the gaps
                doc.ents = keep_existing(list(doc.ents), ents)
            doc.user_data[USER_DATA_KEY] = {
                **stats,
                "chunks": len(chunk_preds),
                "counts": counts,
                "raw_counts": {label: " ".join(v) for label, v in raw.items()},
                "mentions": [[m.label, m.text, m.logprob] for m in kept],
                "unaligned": [[m.label, m.text] for m in missing],
                "dropped_duplicates": [[m.label, m.text] for m in dropped],
                "unfinished": [[m.label, m.text] for m in unfinished],
            }

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        return score_examples(examples, **kwargs)

    # ---- serialization ----------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return dict(cfg=self.cfg, labels=self._labels, template=self.template_name,
                    has_adapter=self.adapter is not None)

    def _load_state(self, state: Dict[str, Any], adapter: Optional[str]) -> None:
        from .engine.loading import resolve_model

        self.cfg = {**PIPE_DEFAULTS, **getattr(self, "cfg", {}), **state["cfg"]}  # newer settings: defaults
        self.model_ref = resolve_model(self.cfg["model"])
        self._labels = state["labels"]
        self.template_name = state["template"]
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

    def from_disk(self, path: Any, *, exclude: Iterable[str] = ()) -> "PaDeLLMNER":
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

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = ()) -> "PaDeLLMNER":
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
        return (_unpickle_pipe, (self.vocab, self.name, self.to_bytes(), self.span_getter))


def _unpickle_pipe(vocab: Any, name: str, data: bytes, span_getter: Optional[Callable] = None) -> PaDeLLMNER:
    pipe = PaDeLLMNER.__new__(PaDeLLMNER)
    pipe.vocab, pipe.name = vocab, name
    pipe._decoder, pipe._tmpdir, pipe.span_getter = None, None, span_getter
    return pipe.from_bytes(data)


def keep_existing(existing: List[Span], ours: List[Span]) -> List[Span]:
    """`existing` plus those of `ours` that share no token with any of them (both non-overlapping)."""
    taken = {i for span in existing for i in range(span.start, span.end)}
    new = [span for span in ours if not any(i in taken for i in range(span.start, span.end))]
    return sorted(existing + new, key=lambda span: span.start)
