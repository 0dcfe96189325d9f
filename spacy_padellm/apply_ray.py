"""`apply --backend ray`: the input read by Ray Data tasks, annotated on an actor pool
(`distributed.annotate_dataset`), the results streamed back to this process, which writes the shards."""
from __future__ import annotations

import math
import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List

from .apply_errors import ApplyErrors
from .apply_input import InputFile
from .apply_output import ShardWriter
from .apply_summary import BatchClock
from .errors import PaDeLLMError

if TYPE_CHECKING:
    from .apply import Options


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise PaDeLLMError(ApplyErrors.A015.format(err=err)) from None
    return ray


def _init_ray(ray: Any, opts: "Options") -> bool:
    """Connects to `--address`, or starts a local Ray; True when this call started it (and must stop it)."""
    from .distributed import _pool

    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"address": opts.address, "include_dashboard": False}
    if opts.address is None and not os.environ.get("RAY_ADDRESS"):  # RAY_ADDRESS: e.g. a `ray job submit` job
        # "local": a new Ray of our own, as documented. With None, ray.init joins the cluster named in
        # /tmp/ray/ray_current_cluster (left by any `ray start` on this machine, even a stopped one), and
        # then refuses num_cpus.
        kwargs["address"] = "local"
        # As large as this machine, or as the actor pool if that is larger (several actors of fractional
        # CPUs, as in the tests). No CPU is set aside for the readers: they take 0 CPUs (see _read), and Ray
        # prestarts one idle worker process per logical CPU, each importing Ray while the actor loads.
        _, most = _pool(opts.actors)
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(most * opts.cpus_per_actor))
    ray.init(**kwargs)
    return True


TASKS_PER_ACTOR = 4  # a small job still gives every actor this many tasks, so none waits for the last


def task_rows(todo: int, batch_size: int, actors: int) -> int:
    """Documents per Ray task (and per `nlp.pipe` batch): `batch_size`, or fewer for a small job on
    several actors.

    Tasks are whole blocks of rows, and 7 tasks of ~29 rows on 2 actors leave one actor idle for the
    last one (200 documents: 114 against 86). A job of fewer than TASKS_PER_ACTOR batches per actor is cut
    into that many tasks per actor instead, so the split is even; a smaller batch costs no speed on CPUs
    (one document alone decodes about as fast per document as 32 together, BENCHMARKS.md). One actor, or
    a job large enough, keeps `batch_size`, and with it the local backend's batches (and forward passes)."""
    tasks = TASKS_PER_ACTOR * actors
    if actors <= 1 or -(-todo // batch_size) >= tasks:
        return batch_size
    return max(1, todo // tasks)


def _read(ray: Any, opts: "Options", kind: str, pending: List[InputFile], todo: int, rows: int) -> Any:
    """The pending input files as a Dataset (the input columns as the files hold them), in blocks of
    about `rows` rows."""
    paths = [str(f.path) for f in pending]
    # One block per batch: Ray Data gives an actor one block per task and sends a task's output back when
    # the task ends, so a block of one batch is annotated, returned and written (one shard) on its own,
    # and spreads over the actors. Ray reads a file in one task and splits it into these blocks, so more
    # blocks cost no more read tasks (nor worker processes).
    blocks = max(1, min(10_000, -(-todo // rows)))
    # num_cpus=0: parsing JSONL or Parquet costs microseconds a row against the model's tenths of a
    # second, and a read that asks for CPUs can wait forever when the actors hold them all (the pool is
    # created first): `ray start --head --num-cpus 2` with --cpus-per-actor 2 hung at "2.25/2 CPU".
    read_args = dict(num_cpus=0, override_num_blocks=blocks)
    if kind == "jsonl":
        import pyarrow as pa
        import pyarrow.json as pj

        parse = pj.ParseOptions(explicit_schema=pa.schema([(opts.text_key, pa.string())]))
        # pyarrow reads JSONL; lines=True goes through pandas (it retypes ids)
        return ray.data.read_json(paths, parse_options=parse, file_extensions=None, **read_args)
    columns = list(dict.fromkeys([opts.id_key, opts.text_key, *opts.keep_columns]))
    return ray.data.read_parquet(paths, columns=columns, file_extensions=None, **read_args)


def _dataset(ray: Any, opts: "Options", kind: str, pending: List[InputFile], writer: ShardWriter,
             with_docs: bool, todo: int, rows: int) -> Any:
    """The lazy Dataset of annotated batches: read, drop the ids already written, annotate."""
    from .distributed import annotate_dataset, drop_ids

    ds = _read(ray, opts, kind, pending, todo, rows)
    if writer.done:
        ds = ds.map_batches(partial(drop_ids, id_column=opts.id_key, done=frozenset(writer.done)),
                            batch_format="pyarrow", batch_size=None, num_cpus=0)  # 0 CPUs, as the read
    return annotate_dataset(ds, opts.pipeline, text_column=opts.text_key, id_column=opts.id_key,
                            batch_size=rows, actors=opts.actors, cpus_per_actor=opts.cpus_per_actor,
                            gpus_per_actor=opts.gpus_per_actor, keep_columns=opts.keep_columns,
                            with_docs=with_docs)


def run_ray(opts: "Options", kind: str, pending: List[InputFile], writer: ShardWriter, with_docs: bool,
            todo: int, log: Any, clock: BatchClock) -> int:
    """Annotates the pending documents on Ray; returns the (estimated) number of blocks Ray dropped."""
    ray = _import_ray()
    now = clock.phase("import ray", clock.start)
    started = _init_ray(ray, opts)
    now = clock.phase("ray.init", now)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = opts.max_errored_blocks
        from .distributed import _pool

        rows = task_rows(todo, opts.batch_size, _pool(opts.actors)[1])  # documents per task and batch
        ds = _dataset(ray, opts, kind, pending, writer, with_docs, todo, rows)
        try:
            # prefetch_batches=0: with the default 1, iter_batches waits for block k+1 before it yields
            # block k (ray/data/_internal/block_batching/iter_batches.py, prefetch_batches_locally), so
            # every shard was written one batch late (the first after two batches' time; a killed run
            # lost one more batch). Prefetching moves remote blocks to this node ahead of use; ours are
            # a few KB of annotations per batch of seconds of model time, so fetching each when it is
            # needed costs one small transfer per batch (on one node: a batch reached the writer about
            # 0.15 s after the actor returned it).
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                clock.batch(table.num_rows)
                writer.write(table)
        except PaDeLLMError:
            raise
        except Exception as err:  # noqa: BLE001 - Ray aborted: more failed blocks than allowed
            raise PaDeLLMError(ApplyErrors.A011.format(count="", limit=opts.max_errored_blocks,
                                                       err=f"{type(err).__name__}: {str(err)[:2000]}")) from err
        missing = todo - writer.written_now
        return max(0, -(-missing // rows)) if missing else 0  # blocks dropped by Ray (estimate)
    finally:
        if started:
            t = time.perf_counter()
            ray.shutdown()
            clock.phase("ray.shutdown", t)
