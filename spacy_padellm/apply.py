"""`python -m spacy_padellm apply PIPELINE INPUT OUTPUT`: annotate a corpus with a saved pipeline, shaped
like `spacy apply`, in this process (`--backend local`) or on a Ray cluster (`--backend ray`).

INPUT is a JSONL file (one JSON object per line), a Parquet file, or a folder of either (not mixed). Every
record needs a text (`--text-key`) and a unique id (`--id-key`, a string or an integer).

OUTPUT is a folder of shards written atomically (a temporary name, then a rename), so a killed run leaves
only complete shards. Re-running with the same OUTPUT skips the ids already written (resume), and no id is
written twice. `--format parquet` (the default) writes `part-*.parquet` with the schema of
`distributed.output_schema`; `--format spacy` (the default when OUTPUT ends with `.spacy`) writes
`part-*.spacy` DocBin shards (the id in doc.user_data["id"], a document's error in
doc.user_data["apply_error"]).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .errors import PaDeLLMError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SHARD_PREFIX = "part-"


class ApplyErrors:
    """The `apply` command's coded messages (PaDeLLMError carries them)."""

    A001 = "[A001] {file}:{line}: not a JSON object ({err}). Every line of a JSONL file must be one JSON object."
    A002 = ("[A002] {file}:{where}: no {key!r} field (found {found}). Name the text field with --text-key or the "
            "id field with --id-key.")
    A003 = ("[A003] {file}:{line}: the text of id {id!r} is {kind}, not a string. Give every record a string "
            "in {key!r}.")
    A004 = ("[A004] {file}:{line}: the id {id!r} is {kind}; ids must be strings or integers (--id-key {key!r}), "
            "and of one kind within a file.")
    A005 = "[A005] {file}:{line}: the id {id!r} was already used at {first}. Ids must be unique (resume relies on them)."
    A006 = "[A006] {file}: the column {key!r} has type {kind}; {want}."
    A007 = ("[A007] No input: {path!r} is not a JSONL ({jsonl}) or Parquet file, nor a folder holding such files.")
    A008 = "[A008] The folder {path!r} mixes JSONL and Parquet files; give one kind per run."
    A009 = ("[A009] The output folder {path!r} holds {file!r}, which has another schema ({found}) than this run "
            "writes ({want}). Write to a new folder, or re-run with the same --id-key and --keep-columns.")
    A010 = "[A010] The pipeline {path!r} does not exist. Save one with nlp.to_disk, or give the name of a package."
    A011 = ("[A011] {count} block(s) failed, more than --max-errored-blocks {limit}: {err}. The shards written so "
            "far are kept; fix the cause and re-run the same command to resume.")
    A012 = "[A012] {file}: cannot be read ({err})."
    A013 = "[A013] Invalid option {flag} {value!r}: {why}."
    A014 = "[A014] The output {path!r} is a file; OUTPUT must be a folder (it is created if missing)."


# ---- input ------------------------------------------------------------------------------------------
@dataclass
class InputFile:
    path: Path
    ids: List[str] = field(default_factory=list)  # as strings, in file order


def list_inputs(path: Union[str, Path]) -> Tuple[str, List[Path]]:
    """("jsonl" | "parquet", files) for a file or a folder of them."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES)
    else:
        files = []
    kinds = {"parquet" if p.suffix.lower() in PARQUET_SUFFIXES else "jsonl" for p in files}
    if not files or (path.is_file() and path.suffix.lower() not in JSONL_SUFFIXES + PARQUET_SUFFIXES):
        raise PaDeLLMError(ApplyErrors.A007.format(path=str(path), jsonl="/".join(JSONL_SUFFIXES)))
    if len(kinds) > 1:
        raise PaDeLLMError(ApplyErrors.A008.format(path=str(path)))
    return kinds.pop(), files


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def iter_jsonl(path: Path, text_key: str, id_key: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, record) for every non-blank line, checked: A001-A004."""
    id_kind: Optional[type] = None
    with open(path, encoding="utf8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise PaDeLLMError(ApplyErrors.A001.format(file=path, line=line_no, err=err)) from None
            if not isinstance(rec, dict):
                raise PaDeLLMError(ApplyErrors.A001.format(file=path, line=line_no, err=f"a JSON {_kind(rec)}"))
            for key in (id_key, text_key):
                if key not in rec:
                    raise PaDeLLMError(ApplyErrors.A002.format(file=path, where=line_no, key=key,
                                                               found=sorted(rec)))
            rid = rec[id_key]
            if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (id_kind and type(rid) is not id_kind):
                raise PaDeLLMError(ApplyErrors.A004.format(file=path, line=line_no, id=rid, kind=_kind(rid),
                                                           key=id_key))
            id_kind = type(rid)
            if not isinstance(rec[text_key], str):
                raise PaDeLLMError(ApplyErrors.A003.format(file=path, line=line_no, id=rid,
                                                           kind=_kind(rec[text_key]), key=text_key))
            yield line_no, rec


def _parquet_schema(path: Path, text_key: str, id_key: str, keep: Sequence[str]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # noqa: BLE001
        raise PaDeLLMError(ApplyErrors.A012.format(file=path, err=err)) from None
    for key in [id_key, text_key, *keep]:
        if key not in schema.names:
            raise PaDeLLMError(ApplyErrors.A002.format(file=path, where="columns", key=key, found=schema.names))
    if not (pa.types.is_string(schema.field(text_key).type) or pa.types.is_large_string(schema.field(text_key).type)):
        raise PaDeLLMError(ApplyErrors.A006.format(file=path, key=text_key, kind=schema.field(text_key).type,
                                                   want="the text column must hold strings"))
    t = schema.field(id_key).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
        raise PaDeLLMError(ApplyErrors.A006.format(file=path, key=id_key, kind=t,
                                                   want="ids must be strings or integers"))
    return schema


def scan_inputs(kind: str, files: Sequence[Path], text_key: str, id_key: str,
                keep: Sequence[str] = ()) -> List[InputFile]:
    """Checks every input up front (so a bad line fails the run before any work) and collects the ids."""
    import pyarrow.parquet as pq

    seen: Dict[str, str] = {}
    out: List[InputFile] = []
    for path in files:
        item = InputFile(path)
        if kind == "jsonl":
            for line_no, rec in iter_jsonl(path, text_key, id_key):
                for key in keep:
                    if key not in rec:
                        raise PaDeLLMError(ApplyErrors.A002.format(file=path, where=line_no, key=key, found=sorted(rec)))
                _add_id(seen, str(rec[id_key]), f"{path}:{line_no}", item)
        else:
            _parquet_schema(path, text_key, id_key, keep)
            ids = pq.read_table(path, columns=[id_key]).column(id_key).to_pylist()
            for row, rid in enumerate(ids):
                if rid is None:
                    raise PaDeLLMError(ApplyErrors.A004.format(file=path, line=f"row {row}", id=rid, kind="null",
                                                               key=id_key))
                _add_id(seen, str(rid), f"{path}:row {row}", item)
        out.append(item)
    return out


def _add_id(seen: Dict[str, str], rid: str, where: str, item: InputFile) -> None:
    if rid in seen:
        file, line = where.rsplit(":", 1)
        raise PaDeLLMError(ApplyErrors.A005.format(file=file, line=line, id=rid, first=seen[rid]))
    seen[rid] = where
    item.ids.append(rid)


def iter_tables(kind: str, path: Path, text_key: str, id_key: str, keep: Sequence[str],
                batch_size: int) -> Iterator[Any]:
    """pyarrow Tables of at most batch_size input rows (id, text and the kept columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys([id_key, text_key, *keep]))
    if kind == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            yield pa.Table.from_batches([batch])
        return
    rows: List[Dict[str, Any]] = []
    first = 0
    for line_no, rec in iter_jsonl(path, text_key, id_key):
        if not rows:
            first = line_no
        rows.append({k: rec.get(k) for k in columns})
        if len(rows) == batch_size:
            yield _from_rows(rows, path, first)
            rows = []
    if rows:
        yield _from_rows(rows, path, first)


def _from_rows(rows: List[Dict[str, Any]], path: Path, first: int) -> Any:
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise PaDeLLMError(ApplyErrors.A006.format(file=f"{path} (lines from {first})", key="a kept column",
                                                   kind="mixed types", want=f"give it one type ({err})")) from None


# ---- output -----------------------------------------------------------------------------------------
class ShardWriter:
    """OUTPUT: a folder of complete shards; knows the ids already written and never writes one twice."""

    def __init__(self, folder: Union[str, Path], fmt: str, keep: Sequence[str], lang: str = "en") -> None:
        self.folder, self.fmt, self.keep = Path(folder), fmt, list(keep)
        if self.folder.exists() and not self.folder.is_dir():
            raise PaDeLLMError(ApplyErrors.A014.format(path=str(self.folder)))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = uuid.uuid4().hex[:8]
        self.count = 0
        self._vocab: Any = None
        self.lang = lang
        for tmp in self.folder.glob(".tmp-*"):  # left by a killed run: incomplete by construction
            tmp.unlink(missing_ok=True)
        self.done: Set[str] = self._read_done()
        self.written_now = 0
        self.errors_now = 0
        self.duplicates_dropped = 0

    @property
    def vocab(self) -> Any:
        if self._vocab is None:
            import spacy

            self._vocab = spacy.blank(self.lang).vocab
        return self._vocab

    def _want(self) -> List[str]:
        from .distributed import FIXED, ID

        return [ID, *self.keep, *FIXED]

    def _read_done(self) -> Set[str]:
        import pyarrow.parquet as pq

        other = "spacy" if self.fmt == "parquet" else "parquet"
        for path in sorted(self.folder.iterdir()):
            if path.suffix == "." + other:
                raise PaDeLLMError(ApplyErrors.A009.format(path=str(self.folder), file=path.name,
                                                           found=f"a .{other} file", want=f".{self.fmt} shards"))
        done: Set[str] = set()
        if self.fmt == "parquet":
            from .distributed import fixed_fields

            fixed = {f.name: f.type for f in fixed_fields()}
            for path in sorted(self.folder.glob("*.parquet")):
                try:
                    schema = pq.read_schema(path)
                except Exception as err:  # noqa: BLE001
                    raise PaDeLLMError(ApplyErrors.A012.format(file=path, err=err)) from None
                bad = schema.names != self._want() or any(schema.field(n).type != t for n, t in fixed.items())
                if bad:
                    raise PaDeLLMError(ApplyErrors.A009.format(path=str(self.folder), file=path.name,
                                                               found=schema.names, want=self._want()))
                done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        else:
            from spacy.tokens import DocBin

            for path in sorted(self.folder.glob("*.spacy")):
                try:
                    docs = DocBin().from_disk(path).get_docs(self.vocab)
                    done.update(str(doc.user_data["id"]) for doc in docs)
                except Exception as err:  # noqa: BLE001
                    raise PaDeLLMError(ApplyErrors.A012.format(file=path, err=err)) from None
        return done

    def write(self, table: Any) -> int:
        """Writes the rows of an annotated table whose ids are new, as one shard; returns rows written."""
        import pyarrow as pa

        from .distributed import DOC_BYTES, ERROR, ID

        ids = table.column(ID).to_pylist()
        fresh, seen = [], set()
        for rid in ids:
            ok = rid not in self.done and rid not in seen
            fresh.append(ok)
            seen.add(rid)
        dropped = len(ids) - sum(fresh)
        self.duplicates_dropped += dropped
        if dropped:
            table = table.filter(pa.array(fresh, type=pa.bool_()))
        if table.num_rows == 0:
            return 0
        self.count += 1
        name = f"{SHARD_PREFIX}{self.run}-{self.count:06d}.{self.fmt}"
        tmp = self.folder / f".tmp-{name}"
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            if DOC_BYTES in table.column_names:
                table = table.drop_columns([DOC_BYTES])
            pq.write_table(table, tmp)
        else:
            self._write_docbin(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        new_ids = table.column(ID).to_pylist()
        self.done.update(new_ids)
        self.written_now += len(new_ids)
        self.errors_now += sum(e is not None for e in table.column(ERROR).to_pylist())
        return len(new_ids)

    def _write_docbin(self, table: Any, tmp: Path) -> None:
        from spacy.tokens import Doc, DocBin

        from .distributed import DOC_BYTES

        db = DocBin(store_user_data=True)
        for blob in table.column(DOC_BYTES).to_pylist():
            if blob is not None:
                db.add(Doc(self.vocab).from_bytes(blob))
        db.to_disk(tmp)


# ---- running ----------------------------------------------------------------------------------------
@dataclass
class Options:
    pipeline: str
    input: str
    output: str
    text_key: str = "text"
    id_key: str = "id"
    keep_columns: Tuple[str, ...] = ()
    batch_size: int = 32
    backend: str = "local"
    address: Optional[str] = None
    actors: Union[int, Tuple[int, int]] = 1
    cpus_per_actor: float = 2
    gpus_per_actor: float = 0
    max_errored_blocks: int = 0
    format: Optional[str] = None
    threads: int = 0


@dataclass
class Summary:
    documents: int
    seconds: float
    errors: int
    skipped: int
    missing: int
    output: str
    errored_blocks: int = 0

    def line(self) -> str:
        rate = self.documents / self.seconds if self.seconds > 0 else 0.0
        text = (f"Annotated {self.documents} documents in {self.seconds:.1f} s ({rate:.2f} docs/s), "
                f"{self.errors} with errors, {self.skipped} already done")
        if self.missing:
            text += (f", {self.missing} NOT written ({self.errored_blocks} failed block(s); re-run the same "
                     "command to retry them)")
        return text + f"; output: {self.output}"


def _pipeline_lang(path: str) -> str:
    meta = Path(path) / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf8")).get("lang", "en")
    return "en"


def run(opts: Options, log: Any = None) -> Summary:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if opts.batch_size < 1:
        raise PaDeLLMError(ApplyErrors.A013.format(flag="--batch-size", value=opts.batch_size, why="must be >= 1"))
    if opts.backend not in ("local", "ray"):
        raise PaDeLLMError(ApplyErrors.A013.format(flag="--backend", value=opts.backend, why="use local or ray"))
    if not Path(opts.pipeline).exists():
        from spacy.util import is_package

        if not is_package(opts.pipeline):
            raise PaDeLLMError(ApplyErrors.A010.format(path=opts.pipeline))
    fmt = opts.format or ("spacy" if opts.output.rstrip("/").endswith(".spacy") else "parquet")
    if fmt not in ("parquet", "spacy"):
        raise PaDeLLMError(ApplyErrors.A013.format(flag="--format", value=fmt, why="use parquet or spacy"))
    kind, files = list_inputs(opts.input)
    keep = list(opts.keep_columns)
    scanned = scan_inputs(kind, files, opts.text_key, opts.id_key, keep)
    writer = ShardWriter(opts.output, fmt, keep, _pipeline_lang(opts.pipeline))
    total = sum(len(f.ids) for f in scanned)
    pending = [f for f in scanned if any(i not in writer.done for i in f.ids)]
    todo = sum(sum(i not in writer.done for i in f.ids) for f in pending)
    skipped = total - todo
    log(f"{total} documents in {len(files)} file(s); {skipped} already in {opts.output}; {todo} to annotate "
        f"(backend {opts.backend})")
    start = time.perf_counter()
    errored = 0
    if todo:
        runner = _run_local if opts.backend == "local" else _run_ray
        errored = runner(opts, kind, pending, writer, fmt == "spacy", todo, log)
    seconds = time.perf_counter() - start
    summary = Summary(writer.written_now, seconds, writer.errors_now, skipped, todo - writer.written_now,
                      str(opts.output), errored)
    return summary


def _run_local(opts: Options, kind: str, pending: List[InputFile], writer: ShardWriter, with_docs: bool,
               todo: int, log: Any) -> int:
    from .distributed import annotate_table, drop_ids, load_pipeline

    nlp = load_pipeline(opts.pipeline, opts.threads)
    errored, last = 0, time.perf_counter()
    for item in pending:
        for table in iter_tables(kind, item.path, opts.text_key, opts.id_key, opts.keep_columns, opts.batch_size):
            table = drop_ids(table, id_column=opts.id_key, done=writer.done)
            if table.num_rows == 0:
                continue
            try:
                out = annotate_table(nlp, table, text_column=opts.text_key, id_column=opts.id_key,
                                     keep_columns=opts.keep_columns, batch_size=opts.batch_size, with_docs=with_docs)
            except Exception as err:  # noqa: BLE001 - a failed block, as Ray counts them
                errored += 1
                if 0 <= opts.max_errored_blocks < errored:
                    raise PaDeLLMError(ApplyErrors.A011.format(count=errored, limit=opts.max_errored_blocks,
                                                               err=f"{type(err).__name__}: {err}")) from err
                log(f"A block of {table.num_rows} documents failed ({type(err).__name__}: {err}); skipped "
                    f"({errored} of --max-errored-blocks {opts.max_errored_blocks})")
                continue
            writer.write(out)
            if time.perf_counter() - last > 5:
                last = time.perf_counter()
                log(f"{writer.written_now}/{todo} documents written")
    return errored


def _run_ray(opts: Options, kind: str, pending: List[InputFile], writer: ShardWriter, with_docs: bool,
             todo: int, log: Any) -> int:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise PaDeLLMError("[A015] --backend ray needs Ray: pip install \"spacy_padellm[ray]\" "
                           f"(ray[data]) ({err}).") from None
    from functools import partial

    from .distributed import _pool, annotate_dataset, drop_ids

    started = False
    if not ray.is_initialized():
        kwargs: Dict[str, Any] = {"address": opts.address, "include_dashboard": False}
        if opts.address is None:  # a local cluster: room for the actors plus the readers
            _, most = _pool(opts.actors)
            kwargs["num_cpus"] = max(os.cpu_count() or 1, int(most * opts.cpus_per_actor + 1))
        ray.init(**kwargs)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = opts.max_errored_blocks
        paths = [str(f.path) for f in pending]
        blocks = max(1, min(10_000, -(-todo // opts.batch_size)))
        read_args = dict(num_cpus=0.25, override_num_blocks=blocks)
        if kind == "jsonl":
            import pyarrow as pa
            import pyarrow.json as pj

            parse = pj.ParseOptions(explicit_schema=pa.schema([(opts.text_key, pa.string())]))
            ds = ray.data.read_json(paths, parse_options=parse,  # pyarrow reads JSONL; lines=True goes through pandas (it retypes ids)
                                     file_extensions=None, **read_args)
        else:
            ds = ray.data.read_parquet(paths, columns=list(dict.fromkeys([opts.id_key, opts.text_key,
                                                                          *opts.keep_columns])),
                                       file_extensions=None, **read_args)
        if writer.done:
            ds = ds.map_batches(partial(drop_ids, id_column=opts.id_key, done=frozenset(writer.done)),
                                batch_format="pyarrow", batch_size=None, num_cpus=0.25)
        ds = annotate_dataset(ds, opts.pipeline, text_column=opts.text_key, id_column=opts.id_key,
                              batch_size=opts.batch_size, actors=opts.actors, cpus_per_actor=opts.cpus_per_actor,
                              gpus_per_actor=opts.gpus_per_actor, keep_columns=opts.keep_columns,
                              with_docs=with_docs)
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.write(table)
        except PaDeLLMError:
            raise
        except Exception as err:  # noqa: BLE001 - Ray aborted: more failed blocks than allowed
            raise PaDeLLMError(ApplyErrors.A011.format(count="", limit=opts.max_errored_blocks,
                                                       err=f"{type(err).__name__}: {str(err)[:2000]}")) from err
        missing = todo - writer.written_now
        return max(0, -(-missing // opts.batch_size)) if missing else 0  # blocks dropped by Ray (estimate)
    finally:
        if started:
            ray.shutdown()


# ---- command line -----------------------------------------------------------------------------------
def _actors(value: str) -> Union[int, Tuple[int, int]]:
    try:
        parts = [int(x) for x in value.replace("-", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX (e.g. 2 or 1,4), got {value!r}") from None
    if len(parts) == 1 and parts[0] >= 1:
        return parts[0]
    if len(parts) == 2 and 1 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected N or MIN,MAX with 1 <= MIN <= MAX, got {value!r}")


def add_apply_parser(sub: Any) -> argparse.ArgumentParser:
    """Registers `apply` on an argparse subparsers object (cli.build_parser's `sub`)."""
    p = sub.add_parser("apply", help="annotate a JSONL/Parquet corpus with a saved pipeline, locally or on Ray "
                                     "(resumable Parquet or .spacy shards)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", help="the pipeline: a folder written by nlp.to_disk, or an installed package name")
    p.add_argument("input", help="a JSONL or Parquet file, or a folder of them")
    p.add_argument("output", help="the output folder of shards (created; re-running resumes)")
    p.add_argument("--text-key", default="text", help="the text field/column (default: text)")
    p.add_argument("--id-key", default="id", help="the id field/column, strings or integers (default: id)")
    p.add_argument("--keep-columns", default="", help="comma-separated input columns copied to the output")
    p.add_argument("--batch-size", type=int, default=32, help="documents per batch and per shard (default: 32)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: nlp.pipe in this process; ray: Ray Data actors (default: local)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto': the running cluster; default: start a local one)")
    p.add_argument("--actors", type=_actors, default=1, help="actors: N, or MIN,MAX to autoscale (default: 1)")
    p.add_argument("--cpus-per-actor", type=float, default=2, help="CPUs (torch threads) per actor (default: 2)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor (default: 0)")
    p.add_argument("--max-errored-blocks", type=int, default=0,
                   help="blocks that may fail as a whole before the job aborts; their documents are not written "
                        "and a re-run retries them (-1: any number; default: 0). A failing document never counts: "
                        "it gets its error column")
    p.add_argument("--format", choices=("parquet", "spacy"), default=None,
                   help="shard format (default: spacy if OUTPUT ends with .spacy, else parquet)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for --backend local (default: 0, as saved in the pipeline)")
    p.set_defaults(func=apply_command)
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(pipeline=args.pipeline, input=args.input, output=args.output, text_key=args.text_key,
                   id_key=args.id_key, keep_columns=tuple(x.strip() for x in args.keep_columns.split(",") if x.strip()),
                   batch_size=args.batch_size, backend=args.backend, address=args.address, actors=args.actors,
                   cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                   max_errored_blocks=args.max_errored_blocks, format=args.format, threads=args.threads)


def apply_command(args: argparse.Namespace) -> int:
    """0 when every document is written (some may carry an error), 1 when some are not (re-run to resume)."""
    summary = run(options_from_args(args))
    print(summary.line(), flush=True)
    return 1 if summary.missing else 0


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m spacy_padellm.apply ...` (the same as `python -m spacy_padellm apply ...`)."""
    parser = argparse.ArgumentParser(prog="python -m spacy_padellm")
    add_apply_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["apply", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except PaDeLLMError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
