"""Annotate a corpus with a saved pipeline on a Ray cluster (Ray Data `map_batches` on an actor pool).

Ray is optional: nothing here imports it at module level, and `import spacy_padellm` never imports this
module. Install it with `pip install "spacy_padellm[ray]"`.

    import ray, spacy_padellm.distributed as dist
    ds = ray.data.read_json("corpus/", lines=True, num_cpus=0)  # 0: no read waits for the actors' CPUs
    out = dist.annotate_dataset(ds, "pipeline/", actors=(1, 4), cpus_per_actor=2)
    out.write_parquet("annotated/")

Every output batch has one fixed Arrow schema (`output_schema`): the id (as a string), the kept input
columns, `ents` and `spans` (lists of {start_char, end_char, label, text, score}), `forward_passes` and
`error` (null, or why that one document could not be annotated: the rest of its batch still is).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

# Test hooks (environment variables read in the worker; never set them in production):
HOOK_DOC_ERROR = "SPACY_PADELLM_TEST_DOC_ERROR"  # a doc whose text holds this substring raises while annotated
HOOK_BLOCK_ERROR = "SPACY_PADELLM_TEST_BLOCK_ERROR"  # a batch holding such a doc fails as a whole (uncaught)
HOOK_KILL_ONCE = "SPACY_PADELLM_TEST_KILL_ONCE"  # a marker path: a batch holding a text with KILL_TEXT kills its
KILL_TEXT = "[kill-once]"  # process (os._exit) unless the marker exists; it creates the marker first
HOOK_SLEEP = "SPACY_PADELLM_TEST_SLEEP"  # seconds to sleep per batch (to widen races in tests)

ID = "id"  # output column names
ENTS, SPANS, PASSES, ERROR, DOC_BYTES = "ents", "spans", "forward_passes", "error", "doc"
FIXED = (ENTS, SPANS, PASSES, ERROR)


def span_type() -> Any:
    import pyarrow as pa

    return pa.struct([("start_char", pa.int64()), ("end_char", pa.int64()), ("label", pa.string()),
                      ("text", pa.string()), ("score", pa.float64())])


def fixed_fields() -> List[Any]:
    """The annotation columns every output batch ends with, in this order."""
    import pyarrow as pa

    return [pa.field(ENTS, pa.list_(span_type())), pa.field(SPANS, pa.list_(span_type())),
            pa.field(PASSES, pa.int64()), pa.field(ERROR, pa.string())]


def output_schema(keep: Sequence[Tuple[str, Any]] = ()) -> Any:
    """id (string), the kept columns [(name, arrow type)], then fixed_fields()."""
    import pyarrow as pa

    return pa.schema([pa.field(ID, pa.string())] + [pa.field(n, t) for n, t in keep] + fixed_fields())


def load_pipeline(path: Union[str, Path], threads: int = 0) -> Any:
    """spacy.load(path) with every padellm_ner pipe set to `threads` torch threads (0: leave as saved)."""
    import spacy

    if not Path(path).exists():
        import socket

        from .apply_errors import ApplyErrors
        from .errors import PaDeLLMError

        raise PaDeLLMError(ApplyErrors.A016.format(path=str(path), host=socket.gethostname()))
    nlp = spacy.load(path)
    if threads:
        for pipe in ner_pipes(nlp):
            pipe.cfg["threads"] = int(threads)  # cfg.json overrides a config override, so set it here
    return nlp


def ner_pipes(nlp: Any) -> List[Any]:
    from .component import PaDeLLMNER

    return [pipe for _, pipe in nlp.pipeline if isinstance(pipe, PaDeLLMNER)]


def _spans_key(nlp: Any) -> Optional[str]:
    pipes = ner_pipes(nlp)
    return pipes[-1].spans_key if pipes else None


def doc_annotations(doc: Any, spans_key: Optional[str]) -> Dict[str, Any]:
    """ents, spans and forward_passes of one annotated Doc, as plain Python values."""
    spans: List[Dict[str, Any]] = []
    scores: Dict[Tuple[int, int, str], float] = {}
    if spans_key is not None and spans_key in doc.spans:
        group = doc.spans[spans_key]
        values = list(group.attrs.get("scores", [None] * len(group)))
        for span, score in zip(group, values):
            score = None if score is None else float(score)
            scores[(span.start, span.end, span.label_)] = score
            spans.append(dict(start_char=span.start_char, end_char=span.end_char, label=span.label_,
                              text=span.text, score=score))
    ents = [dict(start_char=e.start_char, end_char=e.end_char, label=e.label_, text=e.text,
                 score=scores.get((e.start, e.end, e.label_))) for e in doc.ents]
    passes = (doc.user_data.get("padellm") or {}).get("forward_passes")
    return {ENTS: ents, SPANS: spans, PASSES: None if passes is None else int(passes)}


def _hook_batch(texts: Sequence[str]) -> None:
    marker = os.environ.get(HOOK_DOC_ERROR)
    if marker and any(marker in t for t in texts):
        raise RuntimeError("test hook: a document of this batch fails")


def _hook_doc(text: str) -> None:
    marker = os.environ.get(HOOK_DOC_ERROR)
    if marker and marker in text:
        raise RuntimeError(f"test hook: this document fails ({marker!r} in its text)")


def _hooks_per_call(texts: Sequence[Optional[str]]) -> None:
    kill = os.environ.get(HOOK_KILL_ONCE)
    if kill and any(t is not None and KILL_TEXT in t for t in texts) and not os.path.exists(kill):
        Path(kill).write_text(str(os.getpid()))
        os._exit(1)  # an actor process that dies mid-job
    marker = os.environ.get(HOOK_BLOCK_ERROR)
    if marker and any(t is not None and marker in t for t in texts):
        raise RuntimeError(f"test hook: this whole batch fails ({marker!r} in one of its texts)")
    if os.environ.get(HOOK_SLEEP):
        time.sleep(float(os.environ[HOOK_SLEEP]))


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def annotate_texts(nlp: Any, texts: Sequence[Optional[str]], batch_size: int = 32) -> Tuple[List[Any], List[Optional[str]]]:
    """Docs (None where no Doc could be made) and errors (None, or the message) for `texts`.

    The batch goes through nlp.pipe; when that raises, each doc is annotated on its own, so one bad
    document costs only its own annotation. A None text is an error of its own.
    """
    docs: List[Any] = [None] * len(texts)
    errors: List[Optional[str]] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if t is not None]
    for i, t in enumerate(texts):
        if t is None:
            errors[i] = "the text is null"
    try:
        _hook_batch([texts[i] for i in todo])
        for i, doc in zip(todo, nlp.pipe([texts[i] for i in todo], batch_size=max(1, batch_size))):
            docs[i] = doc
        return docs, errors
    except Exception:  # noqa: BLE001 - retried one by one below
        pass
    for i in todo:
        try:
            _hook_doc(texts[i])
            docs[i] = nlp(texts[i])
        except Exception as err:  # noqa: BLE001 - recorded in the doc's error column
            errors[i] = _error_text(err)
            try:
                docs[i] = nlp.make_doc(texts[i])
            except Exception:  # noqa: BLE001
                docs[i] = None
    return docs, errors


def annotate_table(nlp: Any, table: Any, *, text_column: str = "text", id_column: str = "id",
                   keep_columns: Sequence[str] = (), batch_size: int = 32, with_docs: bool = False) -> Any:
    """A pyarrow Table of input rows -> a pyarrow Table of output_schema (plus a `doc` binary column of
    Doc.to_bytes() when with_docs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = table.column(text_column).to_pylist()
    _hooks_per_call(texts)
    docs, errors = annotate_texts(nlp, texts, batch_size)
    key = _spans_key(nlp)
    rows = [doc_annotations(doc, key) if doc is not None and err is None else {ENTS: [], SPANS: [], PASSES: None}
            for doc, err in zip(docs, errors)]
    columns = [pc.cast(table.column(id_column), pa.string())] + [table.column(k) for k in keep_columns]
    names = [ID] + list(keep_columns)
    for field in fixed_fields():
        values = errors if field.name == ERROR else [r[field.name] for r in rows]
        columns.append(pa.array(values, type=field.type))
        names.append(field.name)
    out = pa.Table.from_arrays(columns, schema=pa.schema([pa.field(n, c.type) for n, c in zip(names, columns)]))
    if with_docs:
        blobs = []
        for doc, doc_id, err in zip(docs, out.column(ID).to_pylist(), errors):
            if doc is None:
                blobs.append(None)
                continue
            doc.user_data["id"] = doc_id
            if err is not None:
                doc.user_data["apply_error"] = err
            blobs.append(doc.to_bytes())
        out = out.append_column(DOC_BYTES, pa.array(blobs, type=pa.binary()))
    return out


class PipelineAnnotator:
    """The callable class `annotate_dataset` runs on every actor: loads the pipeline from its path once
    (spacy.load: a Language sent through the object store would carry no loaded model and may not
    unpickle), with torch set to the actor's CPUs, then annotates pyarrow batches.

    The load and every batch run on one thread of this object's own. Ray Data constructs the class on the
    actor's main thread but calls it on another (its single-threaded wrapper's executor), so the weights'
    load and the decoding used to start two OpenMP thread teams; libgomp then counts more threads than
    CPUs and stops spinning between parallel regions: the decoding threads slept and woke thousands of
    times a second (session 12: 6,837 and 15,408 voluntary switches in 8 s against 12 and 6 locally) and
    the actor's steady state ran at ~60% of `nlp.pipe`'s."""

    def __init__(self, pipeline_path: str, *, text_column: str = "text", id_column: str = "id",
                 keep_columns: Sequence[str] = (), threads: int = 1, batch_size: int = 32,
                 with_docs: bool = False) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.threads = max(1, int(threads))
        self.text_column, self.id_column = text_column, id_column
        self.keep_columns, self.batch_size, self.with_docs = list(keep_columns), batch_size, with_docs
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padellm")
        self.nlp = self._thread.submit(self._load, pipeline_path).result()

    def _load(self, pipeline_path: str) -> Any:
        import torch

        torch.set_num_threads(self.threads)
        nlp = load_pipeline(pipeline_path, self.threads)
        for pipe in ner_pipes(nlp):
            pipe.decoder  # noqa: B018 - load the weights at actor start, not in the first batch
        return nlp

    def __call__(self, batch: Any) -> Any:
        return self._thread.submit(annotate_table, self.nlp, batch, text_column=self.text_column,
                                   id_column=self.id_column, keep_columns=self.keep_columns,
                                   batch_size=self.batch_size, with_docs=self.with_docs).result()


def _pool(actors: Union[int, Tuple[int, int]]) -> Any:
    import ray.data

    if isinstance(actors, int):
        return ray.data.ActorPoolStrategy(size=actors), actors
    low, high = actors
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high), high


def annotate_dataset(ds: Any, pipeline_path: Union[str, Path], *, text_column: str = "text", id_column: str = "id",
                     batch_size: int = 32, actors: Union[int, Tuple[int, int]] = 1, cpus_per_actor: float = 2,
                     gpus_per_actor: float = 0, keep_columns: Sequence[str] = (), with_docs: bool = False,
                     max_restarts: int = -1, max_task_retries: int = -1) -> Any:
    """`ds` (a ray.data.Dataset with text_column and id_column) annotated by the pipeline saved at
    `pipeline_path`, on a pool of `actors` (n, or (min, max) to autoscale) actors of `cpus_per_actor` CPUs
    (torch threads: that many, at least 1) and `gpus_per_actor` GPUs.

    A crashed actor is restarted and its batch retried (max_restarts / max_task_retries, -1: without
    limit); an exception of one document fills its `error` column. Lazy, like every Dataset.
    """
    pool, _ = _pool(actors)
    remote_args: Dict[str, Any] = {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
    return ds.map_batches(
        PipelineAnnotator,
        fn_constructor_kwargs=dict(pipeline_path=str(pipeline_path), text_column=text_column, id_column=id_column,
                                   keep_columns=list(keep_columns), threads=max(1, int(cpus_per_actor)),
                                   batch_size=batch_size, with_docs=with_docs),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=pool,
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        udf_modifying_row_count=False,
        **remote_args,
    )


def drop_ids(batch: Any, *, id_column: str, done: Iterable[str]) -> Any:
    """The rows of a pyarrow batch whose id (as a string) is not in `done` (resume)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    done_set = done if isinstance(done, (set, frozenset)) else set(done)
    ids = pc.cast(batch.column(id_column), pa.string()).to_pylist()
    return batch.filter(pa.array([i not in done_set for i in ids], type=pa.bool_()))
