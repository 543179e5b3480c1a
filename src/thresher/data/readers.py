"""The pool file readers: JSONL, JSON, Parquet, a folder of shards, a ``datasets`` folder or a hub
name; each yields every row with its file and position (:class:`RowItem`) for
:func:`~thresher.data.pool.load_pool` to normalise, check and count (formats and positions: the
:mod:`thresher.data.pool` docstring)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.data.records import POOL_COLUMNS, PoolFormatError


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    """``(line, row, raw text, error)`` per non-blank line; lines are 1-based, an invalid-JSON
    error names the 1-based column within its line."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors)
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                col = len(raw[: e.start].decode("utf-8", "replace")) + 1
                yield i, None, raw.decode("utf-8", "replace"), PoolFormatError(
                    path, i, None, f"not valid UTF-8 ({e.reason} at byte {e.start}, column {col})", column=col)
                continue
            if not text.strip():
                continue
            body = text.rstrip("\r\n")  # so an error at the end of the line stays on this line
            try:
                yield i, json.loads(body), text, None
            except json.JSONDecodeError as e:
                col = e.pos + 1  # the line holds no newline: the offset is the column
                yield i, None, text, PoolFormatError(path, i, None, f"invalid JSON: {e.msg} (column {col})", column=col)


def _iter_json(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    """``(element, row, "", None)`` per element of the file's JSON array (0-based index)."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = len(data[data.rfind(b"\n", 0, e.start) + 1: e.start].decode("utf-8", "replace")) + 1
        raise PoolFormatError(path, line, None, f"not valid UTF-8 ({e.reason} at byte {e.start}, column {col})",
                              column=col) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PoolFormatError(path, e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})", column=e.colno) from None
    if isinstance(obj, dict):
        for key in ("data", "examples", "rows", "train"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise PoolFormatError(path, None, None, "expected a JSON list of examples (or an object with a 'data' list)")
    if not isinstance(obj, list):
        raise PoolFormatError(path, None, None, f"expected a JSON list of examples, got {type(obj).__name__}")
    yield from ((i, row, "", None) for i, row in enumerate(obj))




def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    """``(row, row dict, "", error)`` per Parquet row (0-based). A pool file (the columns
    :meth:`Pool.to_arrow` writes) has its JSON ``meta`` decoded; a bad one is that row's error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        is_pool = set(POOL_COLUMNS) <= set(pf.schema_arrow.names)
    except (pa.ArrowException, ValueError) as e:
        raise PoolFormatError(path, None, None, f"not a readable Parquet file ({e})") from None
    i = 0
    batches = pf.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
            rows = batch.to_pylist() if batch is not None else None
        except (pa.ArrowException, ValueError) as e:
            raise PoolFormatError(path, i, None, f"cannot read the Parquet data ({e})", unit="row") from None
        if rows is None:
            return
        for row in rows:
            err = None
            if is_pool and isinstance(row.get("meta"), str):
                try:
                    row["meta"] = json.loads(row["meta"] or "{}")
                except json.JSONDecodeError as e:
                    err = PoolFormatError(path, i, "meta", f"not valid JSON ({e.msg})", unit="row")
                else:
                    if not isinstance(row["meta"], dict):
                        err = PoolFormatError(path, i, "meta", f"expected a JSON object, got {type(row['meta']).__name__}", unit="row")
            yield i, row, "", err
            i += 1


def _iter_hf(name_or_path: str, split: str | None) -> Iterator[tuple[int, Any, str, Exception | None]]:
    """``(row, row dict, "", None)`` per row (0-based) of a ``save_to_disk`` folder or a hub dataset."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a core dependency
        raise ImportError("loading a Hugging Face dataset needs `pip install datasets`") from e
    p = Path(name_or_path)
    if _is_datasets_dir(p):
        ds = datasets.load_from_disk(str(p))
    else:
        ds = datasets.load_dataset(name_or_path, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        key = split or ("train" if "train" in ds else next(iter(ds)))
        ds = ds[key]
    for i, row in enumerate(ds):
        yield i, row, "", None


_DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_FILE_READERS = {
    ".jsonl": (iter_jsonl, "line"),
    ".ndjson": (iter_jsonl, "line"),
    ".json": (_iter_json, "element"),
    ".parquet": (_iter_parquet, "row"),
    ".pq": (_iter_parquet, "row"),
}


def _is_datasets_dir(p: Path) -> bool:
    return p.is_dir() and any((p / m).is_file() for m in _DATASETS_MARKERS)


def _shard_files(folder: Path) -> list[Path]:
    """The pool files of a folder of shards, in sorted name order."""
    return sorted(
        f for f in folder.iterdir()
        if f.is_file() and f.suffix in _FILE_READERS and not f.name.startswith((".", "_"))
        and not f.name.endswith(".rejects.jsonl")
    )


@dataclass(frozen=True)
class RowItem:
    """One row as a reader yields it: its file, position (in ``unit``), value, raw text and error."""

    path: str
    pos: int | None
    unit: str
    row: Any
    raw: str
    err: Exception | None


def _read_file(p: Path) -> Iterator[RowItem]:
    reader, unit = _FILE_READERS[p.suffix]
    for pos, row, raw, err in reader(p):
        yield RowItem(str(p), pos, unit, row, raw, err)


def read_items(path: str, split: str | None) -> Iterator[RowItem]:
    p = Path(path)
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    if p.is_file():
        if suffix in _FILE_READERS:
            return _read_file(p)
        raise PoolFormatError(path, None, None, f"unsupported file type {suffix!r}: use .jsonl, .json or .parquet")
    if p.is_dir():
        if _is_datasets_dir(p):
            return (RowItem(path, pos, "row", row, raw, err) for pos, row, raw, err in _iter_hf(path, split))
        shards = _shard_files(p)
        if not shards:
            raise PoolFormatError(
                path, None, None,
                f"a folder with no pool files ({', '.join('*' + s for s in _FILE_READERS)}) that is not a "
                f"`datasets` save_to_disk folder either (no {' / '.join(_DATASETS_MARKERS)})",
            )
        return (item for f in shards for item in _read_file(f))
    looks_like_file = suffix in _FILE_READERS or path.startswith((".", "/", "~"))
    if path.startswith("hf:") or ("/" in path and not looks_like_file):
        name = path.removeprefix("hf:")
        return (RowItem(path, pos, "row", row, raw, err) for pos, row, raw, err in _iter_hf(name, split))
    raise FileNotFoundError(f"pool file not found: {path} (for a hub dataset use 'hf:NAME')")


