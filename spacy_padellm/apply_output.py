"""`apply`'s output: a folder of complete shards (Parquet or .spacy DocBin), each written under a temporary
name, fsynced and renamed, so a killed run leaves only complete shards; the ids already written are read
back at start (resume) and never written twice."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, List, Sequence, Set, Union

from .apply_errors import ApplyErrors
from .errors import PaDeLLMError

SHARD_PREFIX = "part-"


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

    # ---- resume: the ids already in the folder ------------------------------------------------------
    def _read_done(self) -> Set[str]:
        other = "spacy" if self.fmt == "parquet" else "parquet"
        for path in sorted(self.folder.iterdir()):
            if path.suffix == "." + other:
                raise PaDeLLMError(ApplyErrors.A009.format(path=str(self.folder), file=path.name,
                                                           found=f"a .{other} file", want=f".{self.fmt} shards"))
        return self._parquet_done() if self.fmt == "parquet" else self._docbin_done()

    def _parquet_done(self) -> Set[str]:
        import pyarrow.parquet as pq

        from .distributed import fixed_fields

        done: Set[str] = set()
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
        return done

    def _docbin_done(self) -> Set[str]:
        from spacy.tokens import DocBin

        done: Set[str] = set()
        for path in sorted(self.folder.glob("*.spacy")):
            try:
                docs = DocBin().from_disk(path).get_docs(self.vocab)
                done.update(str(doc.user_data["id"]) for doc in docs)
            except Exception as err:  # noqa: BLE001
                raise PaDeLLMError(ApplyErrors.A012.format(file=path, err=err)) from None
        return done

    # ---- writing ------------------------------------------------------------------------------------
    def _fresh(self, table: Any) -> Any:
        """The rows of `table` whose ids are neither written already nor repeated within it."""
        import pyarrow as pa

        from .distributed import ID

        ids = table.column(ID).to_pylist()
        fresh, seen = [], set()
        for rid in ids:
            fresh.append(rid not in self.done and rid not in seen)
            seen.add(rid)
        dropped = len(ids) - sum(fresh)
        self.duplicates_dropped += dropped
        return table.filter(pa.array(fresh, type=pa.bool_())) if dropped else table

    def write(self, table: Any) -> int:
        """Writes the rows of an annotated table whose ids are new, as one shard; returns rows written."""
        from .distributed import DOC_BYTES, ERROR, ID

        table = self._fresh(table)
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
