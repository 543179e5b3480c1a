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
check, :func:`validate_record`. Its conversation rules:

* at least one turn; roles are ``system``, ``user`` and ``assistant`` (ShareGPT's
  ``human``/``gpt``/... are mapped first); anything else is an unknown role;
* a system turn may only come first (so at most one);
* then the turns alternate, starting with ``user``: ``user``, ``assistant``, ``user``, ...;
  two turns of the same role in a row are an error (they are not merged);
* the last turn is the assistant's (there must be something to train on);
* every user and assistant turn has non-blank text (a system turn may be empty).

Alpaca and qa rows become ``[system,] user, assistant`` and meet these rules whenever
their instruction/question and output/answer are non-empty.

Bad input raises :class:`PoolFormatError` naming the file, where in it, and the field.
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
from thresher.errors import ConfigError, DataFormatError

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


#: what a position counts: a file line (1-based), a JSON array element or a table row (0-based)
UNITS = ("line", "element", "row")


def _location(path: str, unit: str, pos: int | None) -> str:
    if pos is None:
        return path
    if unit == "line":
        return f"{path}:{pos}"
    return f"{path} {unit} {pos}"


class PoolFormatError(DataFormatError):
    """A malformed pool row: names the file, where in it, and the field.

    ``line`` is the position and ``unit`` says what it counts: ``"line"`` (a 1-based file
    line), ``"element"`` (a 0-based JSON array index) or ``"row"`` (a 0-based Parquet or
    ``datasets`` row). ``column`` (1-based, within the line) is set for invalid JSON.
    """

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, message: str,
                 *, unit: str = "line", column: int | None = None):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.path = str(path) if path is not None else "<memory>"
        self.line = line
        self.unit = unit
        self.column = column
        self.field = field
        self.reason = message
        where = self.where
        if field:
            where += f" field '{field}'"
        super().__init__(f"{where}: {message}")

    @property
    def where(self) -> str:
        """``FILE:LINE``, ``FILE element N`` or ``FILE row N`` (just ``FILE`` for a file-level error)."""
        return _location(self.path, self.unit, self.line)


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
        return _location(self.path, self.unit, self.line)

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


def content_hash(messages: Sequence[dict[str, str]]) -> str:
    """A stable hash of a conversation's roles and contents (the default example id)."""
    h = hashlib.sha256()
    for m in messages:
        h.update(m["role"].encode())
        h.update(b"\x1f")
        h.update(m["content"].encode())
        h.update(b"\x1e")
    return h.hexdigest()


# --------------------------------------------------------------------------- normalise


@dataclass(frozen=True)
class _Loc:
    """Where a row came from, for error messages."""

    path: str | os.PathLike | None
    line: int | None
    unit: str = "line"

    def error(self, field: str | None, message: str) -> PoolFormatError:
        return PoolFormatError(self.path, self.line, field, message, unit=self.unit)


def _require_str(row: dict, key: str, loc: _Loc, *, allow_empty: bool = True, prefix: str = "") -> str:
    if key not in row:
        raise loc.error(prefix + key, "missing required field")
    val = row[key]
    if val is None:
        raise loc.error(prefix + key, "is null, expected a string")
    if not isinstance(val, str):
        raise loc.error(prefix + key, f"expected a string, got {type(val).__name__}")
    if not allow_empty and not val.strip():
        raise loc.error(prefix + key, "is empty")
    return val


def _from_alpaca(row: dict, loc: _Loc) -> list[dict[str, str]]:
    instruction = _require_str(row, "instruction", loc, allow_empty=False)
    inp = row.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise loc.error("input", f"expected a string, got {type(inp).__name__}")
    output = _require_str(row, "output", loc, allow_empty=False)
    user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def _from_qa(row: dict, loc: _Loc) -> list[dict[str, str]]:
    question = _require_str(row, "question", loc, allow_empty=False)
    answer = _require_str(row, "answer", loc, allow_empty=False)
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return msgs


def _turns(row: dict, key: str, role_key: str, content_key: str, role_map: dict | None, loc: _Loc):
    turns = row[key]
    if not isinstance(turns, list):
        raise loc.error(key, f"expected a list of turns, got {type(turns).__name__}")
    if not turns:
        raise loc.error(key, "empty conversation")
    msgs = []
    for j, t in enumerate(turns):
        where = f"{key}[{j}]."
        if not isinstance(t, dict):
            raise loc.error(f"{key}[{j}]", f"expected an object, got {type(t).__name__}")
        role = _require_str(t, role_key, loc, prefix=where)
        role_norm = (role_map or {}).get(role.lower(), role.lower()) if role_map else role.lower()
        if role_norm not in ROLES:
            raise loc.error(where + role_key, f"unknown role {role!r}")
        content = _require_str(t, content_key, loc, prefix=where)
        msgs.append({"role": role_norm, "content": content})
    return msgs


def _check_turn_order(msgs: list[dict[str, str]], loc: _Loc, key: str = "messages", role_key: str = "role",
                      content_key: str = "content") -> None:
    """The conversation rules of the module docstring; errors name ``key[j].role_key`` (or ``.content_key``)."""
    if not msgs:
        raise loc.error(key, "empty conversation")
    prev: str | None = None  # the role of the previous user/assistant turn
    for j, m in enumerate(msgs):
        role = m["role"]
        if role == "system":
            if j > 0:
                raise loc.error(f"{key}[{j}].{role_key}", f"a system turn may only come first (found at turn {j})")
            continue
        if prev is None and role != "user":
            raise loc.error(f"{key}[{j}].{role_key}",
                            f"the conversation starts with an {role} turn; the first turn (after an optional "
                            "system turn) must be the user's")
        if role == prev:
            raise loc.error(f"{key}[{j}].{role_key}",
                            f"two {role} turns in a row (turns {j - 1} and {j}); turns must alternate user/assistant")
        if not m["content"].strip():
            raise loc.error(f"{key}[{j}].{content_key}", f"is empty ({role} turn {j})")
        prev = role
    if prev is None:
        raise loc.error(key, "no user turn (only a system turn)")
    if prev != "assistant":
        raise loc.error(f"{key}[{len(msgs) - 1}].{role_key}",
                        "the conversation ends on a user turn; the last turn must be the assistant's")


def validate_record(rec: Any, *, path=None, line: int | None = None, unit: str = "line",
                    names: tuple[str, str, str] = ("messages", "role", "content")) -> dict:
    """Check one normalised record (the shape in the module docstring) and return it.

    The one check every reader (and :meth:`Pool.from_records`) applies: field types, a
    non-empty string id, known roles and the conversation rules of the module docstring.
    ``names`` are the (conversation, role, content) field names errors use, so a
    ShareGPT row's error names ``conversations[j].from``. Raises :class:`PoolFormatError`.
    """
    loc = _Loc(path, line, unit)
    if not isinstance(rec, dict):
        raise loc.error(None, f"expected a record object, got {type(rec).__name__}")
    for key in ("id", "messages", "source", "meta"):
        if key not in rec:
            raise loc.error(key, "missing required field")
    rid = rec["id"]
    if not isinstance(rid, str):
        raise loc.error("id", f"expected a string id, got {type(rid).__name__}")
    if not rid.strip():
        raise loc.error("id", "is empty")
    if not isinstance(rec["source"], str):
        raise loc.error("source", f"expected a string, got {type(rec['source']).__name__}")
    if not isinstance(rec["meta"], dict):
        raise loc.error("meta", f"expected an object, got {type(rec['meta']).__name__}")
    key, role_key, content_key = names
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise loc.error(key, f"expected a list of turns, got {type(msgs).__name__}")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise loc.error(f"{key}[{j}]", f"expected an object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise loc.error(f"{key}[{j}].{role_key}", f"unknown role {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise loc.error(f"{key}[{j}].{content_key}", f"expected a string, got {type(m.get('content')).__name__}")
    _check_turn_order(msgs, loc, key, role_key, content_key)
    return rec


_KNOWN_KEYS = {
    "alpaca": {"instruction", "input", "output", "system"},
    "sharegpt": {"conversations"},
    "messages": {"messages"},
    "qa": {"question", "answer", "system"},
}
FORMATS = tuple(_KNOWN_KEYS)


def detect_format(row: dict) -> str | None:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "question" in row or "answer" in row:
        return "qa"
    return None


def normalise_row(row: Any, *, path=None, line=None, default_source: str = "", fmt: str | None = None,
                  unit: str = "line") -> dict:
    """Turn one raw row (Alpaca, ShareGPT, OpenAI messages or question/answer) into a pool record.

    ``line`` is the row's position in ``path``, counted in ``unit`` (see :class:`PoolFormatError`).
    The record passes :func:`validate_record`.
    """
    loc = _Loc(path, line, unit)
    if not isinstance(row, dict):
        raise loc.error(None, f"expected a JSON object per example, got {type(row).__name__}")
    fmt = fmt or detect_format(row)
    if fmt is None:
        raise loc.error(
            None,
            "cannot tell the format: expected 'messages' (OpenAI), 'conversations' (ShareGPT), "
            f"'instruction'/'output' (Alpaca) or 'question'/'answer' (qa); found keys {sorted(row)[:8]}",
        )
    names = ("messages", "role", "content")
    if fmt == "alpaca":
        msgs = _from_alpaca(row, loc)
    elif fmt == "sharegpt":
        if "conversations" not in row:
            raise loc.error("conversations", "missing required field")
        names = ("conversations", "from", "value")
        msgs = _turns(row, *names, _SHAREGPT_ROLES, loc)
    elif fmt == "messages":
        if "messages" not in row:
            raise loc.error("messages", "missing required field")
        msgs = _turns(row, *names, None, loc)
    elif fmt == "qa":
        msgs = _from_qa(row, loc)
    else:
        raise ValueError(f"unknown pool format {fmt!r}; known: {list(FORMATS)}")

    rid = row.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = content_hash(msgs)[:16]
    elif isinstance(rid, (int, str)) and not isinstance(rid, bool):
        rid = str(rid)
    else:
        raise loc.error("id", f"expected a string or integer id, got {type(rid).__name__}")
    source = row.get("source", default_source)
    if source is None:
        source = default_source
    if not isinstance(source, str):
        raise loc.error("source", f"expected a string, got {type(source).__name__}")
    skip = _KNOWN_KEYS[fmt] | {"id", "source"}
    meta = {k: v for k, v in row.items() if k not in skip}
    if isinstance(row.get("meta"), dict):
        meta.pop("meta")
        meta.update(row["meta"])
    elif "meta" in row and row["meta"] is None:
        meta.pop("meta")
    rec = {"id": rid, "messages": msgs, "source": source, "meta": meta}
    return validate_record(rec, path=path, line=line, unit=unit, names=names)


# --------------------------------------------------------------------------- readers


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
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


POOL_COLUMNS = ("id", "messages", "source", "meta")


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
    ".jsonl": (_iter_jsonl, "line"),
    ".ndjson": (_iter_jsonl, "line"),
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
class _Item:
    """One row as a reader yields it: its file, position (in ``unit``), value, raw text and error."""

    path: str
    pos: int | None
    unit: str
    row: Any
    raw: str
    err: Exception | None


def _read_file(p: Path) -> Iterator[_Item]:
    reader, unit = _FILE_READERS[p.suffix]
    for pos, row, raw, err in reader(p):
        yield _Item(str(p), pos, unit, row, raw, err)


def _reader(path: str, split: str | None) -> Iterator[_Item]:
    p = Path(path)
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    if p.is_file():
        if suffix in _FILE_READERS:
            return _read_file(p)
        raise PoolFormatError(path, None, None, f"unsupported file type {suffix!r}: use .jsonl, .json or .parquet")
    if p.is_dir():
        if _is_datasets_dir(p):
            return (_Item(path, pos, "row", row, raw, err) for pos, row, raw, err in _iter_hf(path, split))
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
        return (_Item(path, pos, "row", row, raw, err) for pos, row, raw, err in _iter_hf(name, split))
    raise FileNotFoundError(f"pool file not found: {path} (for a hub dataset use 'hf:NAME')")


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

    def subset(self, ids: Iterable[str], name: str | None = None) -> "Pool":
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
    def from_records(cls, records: Iterable[dict], name: str = "pool", source: str = "") -> "Pool":
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
    for item in _reader(path, split):
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
                         else _location(first_path, first_unit, first_pos))
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
    for line, row, _raw, err in _iter_jsonl(Path(path)):
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


def as_pool(pool: "Pool | str | os.PathLike", **load_kw) -> Pool:
    """``pool`` itself, or the pool loaded from a path (see :func:`load_pool`)."""
    if isinstance(pool, Pool):
        return pool
    p, _ = load_pool(pool, **load_kw)
    return p
