"""`apply --backend local`: plain `nlp.pipe` in this process, batch by batch, written as it goes. It writes
what the Ray backend writes, and is the reference the tests compare Ray against."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, List

from .apply_errors import ApplyErrors
from .apply_input import InputFile, iter_tables
from .apply_output import ShardWriter
from .apply_summary import BatchClock
from .errors import PaDeLLMError

if TYPE_CHECKING:
    from .apply import Options


def run_local(opts: "Options", kind: str, pending: List[InputFile], writer: ShardWriter, with_docs: bool,
              todo: int, log: Any, clock: BatchClock) -> int:
    """Annotates the pending documents; returns the number of blocks that failed as a whole."""
    from .distributed import annotate_table, drop_ids, load_pipeline

    nlp = load_pipeline(opts.pipeline, opts.threads)
    clock.phase("load pipeline", clock.start)  # spacy.load; the weights load lazily, in the first batch
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
                _failed_block(opts, table.num_rows, errored, err, log)
                continue
            clock.batch(out.num_rows)
            writer.write(out)
            if time.perf_counter() - last > 5:
                last = time.perf_counter()
                log(f"{writer.written_now}/{todo} documents written")
    return errored


def _failed_block(opts: "Options", rows: int, errored: int, err: Exception, log: Any) -> None:
    """Raises A011 once more blocks failed than --max-errored-blocks allows; else logs the skipped block."""
    if 0 <= opts.max_errored_blocks < errored:
        raise PaDeLLMError(ApplyErrors.A011.format(count=errored, limit=opts.max_errored_blocks,
                                                   err=f"{type(err).__name__}: {err}")) from err
    log(f"A block of {rows} documents failed ({type(err).__name__}: {err}); skipped "
        f"({errored} of --max-errored-blocks {opts.max_errored_blocks})")
