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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

from .apply_errors import ApplyErrors
from .apply_input import (JSONL_SUFFIXES, PARQUET_SUFFIXES, InputFile, iter_jsonl, iter_tables, list_inputs,
                          scan_inputs)
from .apply_output import SHARD_PREFIX, ShardWriter
from .apply_summary import BatchClock, Summary
from .errors import PaDeLLMError

__all__ = ["ApplyErrors", "Options", "Summary", "BatchClock", "ShardWriter", "InputFile", "list_inputs",
           "scan_inputs", "iter_jsonl", "iter_tables", "run", "add_apply_parser", "options_from_args",
           "apply_command", "main", "JSONL_SUFFIXES", "PARQUET_SUFFIXES", "SHARD_PREFIX"]


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


def _pipeline_lang(path: str) -> str:
    meta = Path(path) / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf8")).get("lang", "en")
    return "en"


def _check_options(opts: Options) -> str:
    """Checks the options that need no input read (A010, A013); returns the output format."""
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
    return fmt


def run(opts: Options, log: Any = None) -> Summary:
    """Checks the whole input, then annotates what OUTPUT does not hold yet; the Summary of this run."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    fmt = _check_options(opts)
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
    clock = BatchClock()
    errored = 0
    if todo:
        if opts.backend == "local":
            from .apply_local import run_local as runner
        else:
            from .apply_ray import run_ray as runner
        errored = runner(opts, kind, pending, writer, fmt == "spacy", todo, log, clock)
    seconds = time.perf_counter() - clock.start
    if clock.phases:
        log("Timed steps: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in clock.phases.items()))
    return _summary(opts, writer, clock, seconds, skipped, todo, errored)


def _summary(opts: Options, writer: ShardWriter, clock: BatchClock, seconds: float, skipped: int, todo: int,
             errored: int) -> Summary:
    steady, startup = clock.steady_rate, clock.startup
    return Summary(writer.written_now, seconds, writer.errors_now, skipped, todo - writer.written_now,
                   str(opts.output), errored, backend=opts.backend,
                   startup_seconds=None if startup is None else round(startup, 3),
                   steady_docs_per_s=None if steady is None else round(steady, 4),
                   steady_documents=clock.rows - clock.first_rows if clock.first is not None else 0,
                   batches=clock.batches, phases=dict(clock.phases), started_unix=clock.unix(clock.start),
                   first_batch_unix=clock.unix(clock.first), last_batch_unix=clock.unix(clock.last))


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
    p.add_argument("--summary-json", default=None, metavar="PATH",
                   help="also write the summary as JSON to PATH: documents, seconds, start-up seconds (until the "
                        "first annotated batch), steady-state docs/s (first batch to last), the timed start-up steps")
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
    if getattr(args, "summary_json", None):
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf8")
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
