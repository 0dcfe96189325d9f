"""The `padellm_ner` pipe: PaDeLLM count-then-mention NER over spaCy Docs.

No weights load in the factory: the model loads on first use, in `initialize`, or after `from_disk`, so
`spacy.load` and `nlp.add_pipe` stay fast and a saved pipeline can move between machines.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example
from spacy.util import minibatch

from .align import choose_entities
from .annotations import keep_existing, place, record
from .chunking import chunk_doc, group, merge, span_getter_bounds, split_in_two
from .engine.forking import guard_after_fork, in_forked_child, set_threads
from .engine.memory import trim_if_grown
from .errors import Errors, PaDeLLMError, Warnings
from .pipe_io import PipeStorage
from .prompts import Template, get_template, validate_label_words, validate_labels
from .scoring import USER_DATA_KEY, score as score_examples
from .settings import PIPE_SETTINGS, DecodeSettings, check_setting, decode_settings
from .types import DocPrediction, Engine

DEFAULT_CONFIG: Dict[str, Any] = {
    "model": "smollm2-135m",  # packaged name, HF folder or .gguf file
    "adapter": "default",  # peft LoRA folder ("default": the shipped one, for its base model; null: none)
    "labels": None,  # null: the adapter's labels
    "template": "en",  # "en" (paper, byte-exact) or "zh"
    "label_words": None,  # label -> word in the prompt, e.g. {"PER": "person"}; null: the adapter's
    "span_getter": None,  # optional registered span getter for chunking, e.g. spacy-transformers.sent_spans.v1
    **PIPE_SETTINGS,  # settings.py: the pipe's own settings ...
    **DecodeSettings().to_config(),  # ... and the decoding ones, with their one set of defaults
    "count_bias": None,  # None: the adapter's tuned value, else 0 (DecodeSettings.count_bias)
}
# the settings kept in PaDeLLMNER.cfg (the rest live in their own attributes)
PIPE_DEFAULTS = {k: v for k, v in DEFAULT_CONFIG.items() if k not in ("adapter", "labels", "template", "label_words",
                                                                    "span_getter")}


@Language.factory(
    "padellm_ner",
    default_config=DEFAULT_CONFIG,
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None,
                           "ents_string_f": None, "ents_string_p": None, "ents_string_r": None,
                           "ents_count_exact": None, "ents_count_low": None, "ents_count_high": None},
)
def make_padellm_ner(nlp: Language, name: str, model: str, adapter: Optional[str], labels: Optional[List[str]],
                     template: str, label_words: Optional[Dict[str, str]], batch_size: int, max_new_tokens: int,
                     dtype: str, device: str, dedup: bool, spans_key: str, max_chunk_tokens: int,
                     chunk_tokens: int, split_count: int, all_occurrences: bool, kv_budget_mb: int, batch_tokens: int,
                     span_getter: Optional[Callable[[List[Doc]], List[List[Span]]]], speculate: int,
                     tree: bool, count_guesses: int, count_bias: Optional[float], small_batch: int,
                     mentions_from_text: bool, overwrite_ents: bool, threads: int, lean_forward: bool
                     ) -> "PaDeLLMNER":
    settings = {k: v for k, v in locals().items() if k in PIPE_DEFAULTS and k != "model"}
    return PaDeLLMNER(nlp.vocab, name, model=model, adapter=adapter, labels=labels, template=template,
                      label_words=label_words, span_getter=span_getter, **settings)


class PaDeLLMNER(PipeStorage, Pipe):
    """Sets doc.ents (non-overlapping, by score) and doc.spans[spans_key] (every aligned candidate, with
    summed token log-probabilities in attrs["scores"]); per-doc counts in doc.user_data["padellm"]."""

    SETTING_DEFAULTS = PIPE_DEFAULTS

    def __init__(self, vocab: Any, name: str = "padellm_ner", *, model: str = "smollm2-135m",
                 adapter: Optional[str] = "default", labels: Optional[Sequence[str]] = None, template: str = "en",
                 label_words: Optional[Dict[str, str]] = None, span_getter: Optional[Callable] = None,
                 **settings: Any) -> None:
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
        # None: the adapter's words (or none); a mapping: these, unless the adapter was trained with others
        self._label_words: Optional[Dict[str, str]] = (validate_label_words(label_words)
                                                       if label_words is not None else None)
        self.model_ref = resolve_model(model)
        self.cfg: Dict[str, Any] = {**PIPE_DEFAULTS, **settings, "model": model}
        for key, value in self.cfg.items():
            check_setting(key, value, PIPE_DEFAULTS[key])
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
            warnings.warn(Warnings.W001.format(adapter=self.adapter, trained=meta["template"],
                                               configured=self.template_name))
            self.template_name = meta["template"]
        trained = meta.get("label_words") or {}
        if trained and self._label_words is not None and self._label_words != trained:
            warnings.warn(Warnings.W002.format(adapter=self.adapter, trained=trained, configured=self._label_words))
        if trained or self._label_words is None:
            self._label_words = dict(trained)
        if self._labels is None and (strict or self.adapter is None):
            raise PaDeLLMError(Errors.E005)

    @property
    def labels(self) -> tuple:
        return tuple(self._labels or ())

    @property
    def label_words(self) -> Dict[str, str]:
        """label -> the word its prompts write (a label absent here is written as itself)."""
        return dict(self._label_words or {})

    @property
    def template(self) -> Template:
        """The prompt template, with the label words the adapter was trained on."""
        return get_template(self.template_name, self.label_words)

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
            from .engine.memory import reuse_freed_memory

            reuse_freed_memory()  # reuse freed caches instead of faulting their pages in again (memory.py)

            self._resolve_labels(strict=True)
            import torch

            device = resolve_device(self.cfg["device"])
            dtype = resolve_dtype(self.cfg["dtype"], device)
            # merge LoRA in float32 (as trained), then cast: merging into bf16 weights rounds twice
            model, tokenizer = load_base(self.model_ref, torch.float32 if self.adapter else dtype, device)
            if self.adapter is not None:
                model = apply_adapter(model, self.adapter, self.cfg["model"]).to(dtype)
            if self.cfg["dtype"] == "int8":  # smoothed with a calibration pass, quantized by the engine
                from .engine.int8 import make_int8

                try:
                    make_int8(model, tokenizer, self.template, self.labels, self.adapter)
                except ValueError as e:
                    raise PaDeLLMError(Errors.E010.format(key="dtype", value="int8", why=str(e))) from None
            self._decoder = Decoder(model, tokenizer, self.template, settings=self.decode_settings)
        return self._decoder

    @property
    def decode_settings(self) -> DecodeSettings:
        """The engine's settings: this pipe's config, with a null count_bias resolved (count_bias)."""
        return decode_settings(self.cfg, self.count_bias)

    def set_engine(self, engine: Engine) -> None:
        """Decode with `engine` (anything with `predict(texts, labels, max_counts) -> [DocPrediction]`)
        instead of loading this pipe's model: the training evaluator plugs in the model being trained,
        the benchmark the paper's reference procedure. Chunking, dedup and alignment stay the pipe's."""
        if not callable(getattr(engine, "predict", None)):
            raise PaDeLLMError(Errors.E010.format(key="engine", value=engine, why="needs a predict(texts, labels, "
                                                  "max_counts) method returning DocPredictions"))
        self._decoder = engine

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

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        """One DocPrediction per doc, merged from its chunks (chunking.merge); whitespace-only chunks skip
        the model.

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
        found: Dict[Tuple[int, int, int], DocPrediction] = {}
        passes = [0] * len(docs)
        while todo:
            again: List[Tuple[int, int, int]] = []
            for ids in group([e - s for _, s, e in todo], self.cfg["batch_size"], self.cfg["batch_tokens"]):
                part = [todo[j] for j in ids]
                # stripped: a chunk cut at a line break starts or ends with the break, which no training
                # prompt held (mentions are aligned in the doc, so offsets are unaffected)
                preds = self.decoder.predict([docs[i][s:e].text.strip() for i, s, e in part], list(self.labels),
                                             [e - s for _, s, e in part])
                shared: Dict[int, int] = {}  # chunks of one doc in one engine call share their passes
                for (i, s, e), pred in zip(part, preds):
                    shared[i] = max(shared.get(i, 0), pred.stats.forward_passes)
                    halves = self._split_if_saturated(docs[i], s, e, pred)
                    if halves:
                        again += [(i, a, b) for a, b in halves if docs[i][a:b].text.strip()]
                    else:
                        found[(i, s, e)] = pred
                for i, n in shared.items():
                    passes[i] += n
                trim_if_grown()  # give the heap's free pages back once it has grown (memory.py)
            todo = again
        chunks: List[List[Tuple[int, int, DocPrediction]]] = [[] for _ in docs]
        for (i, s, e) in sorted(found):
            chunks[i].append((s, e, found[(i, s, e)]))
        return [merge(doc, chunks[i], passes[i]) for i, doc in enumerate(docs)]

    def _split_if_saturated(self, doc: Doc, start: int, end: int, pred: DocPrediction
                            ) -> Optional[List[Tuple[int, int]]]:
        limit = self.cfg["split_count"]
        if not limit or not pred.counts or max(pred.counts.values()) < limit:
            return None
        return split_in_two(doc, start, end)

    def set_annotations(self, docs: Iterable[Doc], predictions: Sequence[DocPrediction]) -> None:
        """doc.spans[spans_key] (every aligned candidate, scores in attrs), doc.ents (non-overlapping, by
        score; earlier entities kept unless overwrite_ents) and doc.user_data["padellm"]."""
        for doc, pred in zip(docs, predictions):
            placed = place(doc, pred, list(self.labels), self.cfg["dedup"], self.cfg["all_occurrences"])
            spans = [Span(doc, a.start, a.end, label=a.label) for a in placed.aligned]
            doc.spans[self.spans_key] = SpanGroup(doc, name=self.spans_key, spans=spans,
                                                  attrs={"scores": [a.logprob for a in placed.aligned]})
            ents = [Span(doc, a.start, a.end, label=a.label) for a in choose_entities(placed.aligned)]
            if self.cfg["overwrite_ents"]:
                doc.set_ents(ents, default="outside")
            else:  # as spaCy's entity_ruler: entities set earlier stay, ours fill the gaps
                doc.ents = keep_existing(list(doc.ents), ents)
            doc.user_data[USER_DATA_KEY] = record(pred, placed)

    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        return score_examples(examples, **kwargs)
