"""The pool: the fixed set of candidate SFT examples.

Every input format is normalised into one record::

    {"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "source": str, "meta": {...}}

Supported inputs: JSONL, JSON (a list, or ``{"data": [...]}``), Parquet, a folder of
such files (shards: loaded as the concatenation of its ``*.jsonl``/``*.ndjson``/
``*.json``/``*.parquet``/``*.pq`` files in sorted name order; hidden files, ``_*`` files
and ``*.rejects.jsonl`` are skipped; the records' default source is the folder's name),
and Hugging Face ``datasets`` (a local ``save_to_disk`` directory, recognised by its
``dataset_info.json``/``state.json``/``dataset_dict.json``, or a hub name ``hf:NAME``).
Each row may be Alpaca (``instruction``/``input``/``output``), ShareGPT
(``conversations`` with ``from``/``value``), OpenAI chat (``messages`` with
``role``/``content``) or a question/answer pair (``question``/``answer``, e.g. GSM8K;
format ``"qa"``). A Parquet file with ``id``/``messages``/``source``/``meta`` columns is
a pool written by :meth:`Pool.save`; its rows are checked like any other.

Every record, whatever it was read from (and :meth:`Pool.from_records` too), passes one
check, :func:`~thresher.data.records.validate_record` (the record, its formats and its errors live
in :mod:`thresher.data.records`, the file readers in :mod:`thresher.data.readers`). Its
conversation rules:

* at least one turn; roles are ``system``, ``user`` and ``assistant`` (ShareGPT's
  ``human``/``gpt``/... are mapped first); anything else is an unknown role;
* a system turn may only come first (so at most one);
* then the turns alternate, starting with ``user``: ``user``, ``assistant``, ``user``, ...;
  two turns of the same role in a row are an error (they are not merged);
* the last turn is the assistant's (there must be something to train on);
* every user and assistant turn has non-blank text (a system turn may be empty).

Alpaca and qa rows become ``[system,] user, assistant`` and meet these rules whenever
their instruction/question and output/answer are non-empty.

Bad input raises :class:`~thresher.data.records.PoolFormatError` naming the file, where in it, and the field.
Where is ``FILE:LINE`` for JSONL and for JSON syntax errors (1-based; an invalid-JSON
error also names the 1-based column within that line), ``FILE element N`` for the elements of a JSON array and ``FILE
row N`` for Parquet and ``datasets`` rows (both 0-based: the index you would use in
Python or jq). A file that cannot be read at all (a ``.parquet`` that is not Parquet, a
``.json`` that is not JSON) names just the file. With ``on_error="skip"`` the rejected
rows are counted and kept in the load report instead, and written to the rejects file
named by ``rejects_path`` (``thresher load`` puts it beside its output, ``<out
stem>.rejects.jsonl``, never beside the input, whose folder may be read-only). Each
rejects line is ``{"file", "line"|"element"|"row", "field", "reason", "raw"}`` (plus
``"column"`` for invalid JSON). A clean load removes a stale rejects file at that path,
so a rejects file always belongs to the latest load.

:meth:`Pool.save` writes ``.parquet``/``.pq`` or ``.jsonl``; any other suffix is a
:class:`~thresher.errors.ConfigError` raised before anything is written
(:func:`check_save_path` makes the same check up front, before a load reads its input).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.data.io import atomic_write
from thresher.data.readers import iter_jsonl, read_items
from thresher.data.records import (
    POOL_COLUMNS,
    PoolFormatError,
    content_hash,
    location,
    normalise_row,
)
from thresher.errors import ConfigError


@dataclass
class Reject:
    path: str
    #: the position in ``path``, counted in ``unit`` (see :class:`PoolFormatError`)
    line: int | None
    field: str | None
    reason: str
    raw: str
    unit: str = "line"
    column: int | None = None

    @property
    def where(self) -> str:
        """``FILE:LINE``, ``FILE element N`` or ``FILE row N``."""
        return location(self.path, self.unit, self.line)

    def as_row(self) -> dict:
        """The rejects-file line: ``{"file", "line"|"element"|"row", "field", "reason", "raw"}`` (+ ``"column"``)."""
        row: dict[str, Any] = {"file": self.path, self.unit: self.line}
        if self.column is not None:
            row["column"] = self.column
        row.update(field=self.field, reason=self.reason, raw=self.raw)
        return row


@dataclass
class LoadReport:
    """What a load did: how many rows were read, kept and rejected (with where/why)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    rejects: list[Reject] = field(default_factory=list)
    rejects_path: str | None = None
    #: rows dropped as repeats of an earlier id (only with ``dedupe_ids=True``)
    duplicates_dropped: int = 0
    #: a rejects file of an earlier load that this clean load removed
    stale_rejects_removed: str | None = None

    @property
    def rows_rejected(self) -> int:
        return len(self.rejects)


# --------------------------------------------------------------------------- Pool


class Pool:
    """An ordered, immutable collection of normalised SFT examples."""

    def __init__(self, records: Sequence[dict], name: str = "pool"):
        self.name = name
        self._records = list(records)
        self._index: dict[str, int] = {}
        for i, r in enumerate(self._records):
            if r["id"] in self._index:
                raise ValueError(
                    f"duplicate example id {r['id']!r} at rows {self._index[r['id']]} and {i} in pool {name!r}"
                )
            self._index[r["id"]] = i
        self._fingerprint: str | None = None

    # --- access
    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self._records)

    def __getitem__(self, i: int) -> dict:
        return self._records[i]

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self._records]

    def positions(self, ids: Iterable[str]) -> list[int]:
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in pool {self.name!r}, e.g. {missing[:3]}")
        return [self._index[i] for i in ids]

    def get(self, example_id: str) -> dict:
        return self._records[self._index[example_id]]

    def subset(self, ids: Iterable[str], name: str | None = None) -> Pool:
        return Pool([self._records[p] for p in self.positions(list(ids))], name=name or f"{self.name}-subset")

    def slice(self, start: int, stop: int) -> list[dict]:
        return self._records[start:stop]

    @property
    def sources(self) -> list[str]:
        return [r["source"] for r in self._records]

    @property
    def fingerprint(self) -> str:
        """A content hash of the pool (ids, roles and texts, in order)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for r in self._records:
                h.update(r["id"].encode())
                h.update(b"\x1d")
                h.update(content_hash(r["messages"]).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # --- persistence (Parquet)
    def to_arrow(self):
        import pyarrow as pa

        msg_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        return pa.table(
            {
                "id": pa.array([r["id"] for r in self._records], pa.string()),
                "messages": pa.array([r["messages"] for r in self._records], msg_type),
                "source": pa.array([r["source"] for r in self._records], pa.string()),
                "meta": pa.array([json.dumps(r["meta"], sort_keys=True, default=str) for r in self._records], pa.string()),
            }
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pool as Parquet (``.parquet``/``.pq``) or JSONL (``.jsonl``), atomically.

        Any other suffix is refused (:func:`check_save_path`) before anything is written:
        :func:`load_pool` picks the reader by suffix, so a Parquet file named ``.json`` (or
        with no suffix) could not be read back.
        """
        path = check_save_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            return write_jsonl(path, self._records)
        import pyarrow.parquet as pq

        atomic_write(path, lambda tmp: pq.write_table(self.to_arrow(), tmp))
        return path

    @classmethod
    def from_records(cls, records: Iterable[dict], name: str = "pool", source: str = "") -> Pool:
        """A pool from raw rows (any supported format) or normalised records, each checked by
        :func:`validate_record`; errors name the 0-based element."""
        out = []
        for i, r in enumerate(records):
            if isinstance(r, dict) and set(POOL_COLUMNS) <= r.keys():  # already normalised: extra keys are dropped
                r = {k: r[k] for k in POOL_COLUMNS}
            out.append(normalise_row(r, path=None, line=i, unit="element", default_source=source))
        return cls(out, name=name)

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, n={len(self)}, fingerprint={self.fingerprint[:12]})"


SAVE_SUFFIXES = (".parquet", ".pq", ".jsonl")


def check_save_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :meth:`Pool.save` can write it (and :func:`load_pool`
    read it back); else a :class:`~thresher.errors.ConfigError` listing the supported suffixes.
    Cheap: call it before a load reads its input."""
    path = Path(path)
    if path.suffix not in SAVE_SUFFIXES:
        raise ConfigError(
            f"cannot write a pool to {path}: the output must end in .parquet, .pq or .jsonl "
            f"(got {path.suffix or 'no suffix'!r})"
        )
    return path


def load_pool(
    path: str | os.PathLike,
    *,
    on_error: str = "raise",
    rejects_path: str | os.PathLike | None = None,
    source: str | None = None,
    split: str | None = None,
    fmt: str | None = None,
    limit: int | None = None,
    dedupe_ids: bool = False,
) -> tuple[Pool, LoadReport]:
    """Load a pool from a file, a folder of shards or a dataset and normalise every row.

    Every row, whatever the format (a pool Parquet written by :meth:`Pool.save` too),
    passes :func:`validate_record`, and ids must be unique across the whole pool (across
    all shards of a folder). on_error: ``"raise"`` (default) stops at the first bad row
    with a :class:`PoolFormatError`; ``"skip"`` records each rejected row (with file,
    position, field and reason) in the report and goes on. A file that cannot be read at
    all raises either way. ``rejects_path``: where the rejected rows are written (JSON
    lines); None writes no file. A load that rejects nothing removes an old file at
    ``rejects_path``. A rejects file that cannot be written (or removed) raises
    :class:`~thresher.errors.ConfigError`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = str(path)
    p = Path(path)
    name = p.stem if p.exists() else path.replace("/", "_")
    default_source = source if source is not None else name
    report = LoadReport(path=path)

    records: list[dict] = []
    seen: dict[str, tuple[str, int | None, str]] = {}
    for item in read_items(path, split):
        if limit and len(records) >= limit:
            break
        report.rows_read += 1
        try:
            if item.err is not None:
                raise item.err
            rec = normalise_row(item.row, path=item.path, line=item.pos, unit=item.unit,
                                default_source=default_source, fmt=fmt)
            if rec["id"] in seen:
                if dedupe_ids:
                    report.duplicates_dropped += 1
                    continue
                first_path, first_pos, first_unit = seen[rec["id"]]
                first = (f"{first_unit} {first_pos}" if first_path == item.path
                         else location(first_path, first_unit, first_pos))
                raise PoolFormatError(item.path, item.pos, "id", f"duplicate id {rec['id']!r} (first seen at {first})",
                                      unit=item.unit)
            seen[rec["id"]] = (item.path, item.pos, item.unit)
            records.append(rec)
        except PoolFormatError as e:
            if on_error == "raise":
                raise
            raw = item.raw
            if not raw:
                try:
                    raw = json.dumps(item.row, ensure_ascii=False, default=str)
                except (TypeError, ValueError):
                    raw = repr(item.row)
            report.rejects.append(Reject(path=e.path, line=e.line, field=e.field, reason=e.reason,
                                         raw=raw.rstrip("\n"), unit=e.unit, column=e.column))
    report.rows_kept = len(records)
    _settle_rejects(report, rejects_path)
    if not records:
        raise PoolFormatError(path, None, None, f"no usable examples ({report.rows_rejected} rejected)" if report.rejects else "no examples found")
    return Pool(records, name=name), report


def rejects_path_for(out: str | os.PathLike) -> Path:
    """The default rejects file of a load written to ``out``: ``<out stem>.rejects.jsonl`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rejects.jsonl")


def _settle_rejects(report: LoadReport, rejects_path: str | os.PathLike | None) -> None:
    """Write the report's rejects to ``rejects_path``; with none, remove a stale file there."""
    if rejects_path is None:
        return
    rp = Path(rejects_path)
    try:
        if report.rejects:
            write_jsonl(rp, (r.as_row() for r in report.rejects))
            report.rejects_path = str(rp)
        elif rp.is_file():
            rp.unlink()
            report.stale_rejects_removed = str(rp)
    except OSError as e:
        what = "write the rejects file" if report.rejects else "remove the stale rejects file"
        raise ConfigError(f"cannot {what} {rp}: {e.strerror or e}; name a writable rejects file (--rejects)") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON lines atomically (tmp file + rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str))
                f.write("\n")

    return atomic_write(path, write)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    for line, row, _raw, err in iter_jsonl(Path(path)):
        if err is not None:
            raise err
        out.append(row)
    return out


# --------------------------------------------------------------------------- helpers on records


def user_text(record: dict) -> str:
    """The user side of a record (all user turns, joined)."""
    return "\n\n".join(m["content"] for m in record["messages"] if m["role"] == "user")


def assistant_text(record: dict) -> str:
    """The assistant side of a record (all assistant turns, joined)."""
    return "\n\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")


def record_text(record: dict) -> str:
    return "\n\n".join(m["content"] for m in record["messages"])


def as_pool(pool: Pool | str | os.PathLike, **load_kw) -> Pool:
    """``pool`` itself, or the pool loaded from a path (see :func:`load_pool`)."""
    if isinstance(pool, Pool):
        return pool
    p, _ = load_pool(pool, **load_kw)
    return p
