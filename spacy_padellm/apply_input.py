"""`apply`'s input: list the JSONL or Parquet files of INPUT, check every record up front (A001-A008, A012),
collect the ids, and read the files back as pyarrow Tables of at most `batch_size` rows."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .apply_errors import ApplyErrors
from .errors import PaDeLLMError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


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
        suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
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
                        raise PaDeLLMError(ApplyErrors.A002.format(file=path, where=line_no, key=key,
                                                                   found=sorted(rec)))
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
