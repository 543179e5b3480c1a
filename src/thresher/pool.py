"""The pool: the fixed set of candidate SFT examples.

Every input format is normalised into one record::

    {"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "source": str, "meta": {...}}

Supported inputs: JSONL, JSON (a list, or ``{"data": [...]}``), Parquet, and Hugging
Face ``datasets`` (a local ``save_to_disk`` directory or a hub name). Each row may be
Alpaca (``instruction``/``input``/``output``), ShareGPT (``conversations`` with
``from``/``value``), OpenAI chat (``messages`` with ``role``/``content``) or a
question/answer pair (``question``/``answer``, e.g. GSM8K; format ``"qa"``).

Bad input raises :class:`PoolFormatError` naming the file, the line (or row) and the
field. With ``on_error="skip"`` the rejected rows are written to a rejects file and
counted instead.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class PoolFormatError(ValueError):
    """A malformed pool row: names the file, the line (1-based) or row, and the field."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, message: str):
        self.path = str(path) if path is not None else "<memory>"
        self.line = line
        self.field = field
        self.reason = message
        where = self.path
        if line is not None:
            where += f":{line}"
        if field:
            where += f" field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass
class Reject:
    path: str
    line: int | None
    field: str | None
    reason: str
    raw: str


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


def _require_str(row: dict, key: str, path, line, *, allow_empty: bool = True, prefix: str = "") -> str:
    if key not in row:
        raise PoolFormatError(path, line, prefix + key, "missing required field")
    val = row[key]
    if val is None:
        raise PoolFormatError(path, line, prefix + key, "is null, expected a string")
    if not isinstance(val, str):
        raise PoolFormatError(path, line, prefix + key, f"expected a string, got {type(val).__name__}")
    if not allow_empty and not val.strip():
        raise PoolFormatError(path, line, prefix + key, "is empty")
    return val


def _from_alpaca(row: dict, path, line) -> list[dict[str, str]]:
    instruction = _require_str(row, "instruction", path, line, allow_empty=False)
    inp = row.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise PoolFormatError(path, line, "input", f"expected a string, got {type(inp).__name__}")
    output = _require_str(row, "output", path, line, allow_empty=False)
    user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def _from_qa(row: dict, path, line) -> list[dict[str, str]]:
    question = _require_str(row, "question", path, line, allow_empty=False)
    answer = _require_str(row, "answer", path, line, allow_empty=False)
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return msgs


def _turns(row: dict, key: str, role_key: str, content_key: str, role_map: dict | None, path, line):
    turns = row[key]
    if not isinstance(turns, list):
        raise PoolFormatError(path, line, key, f"expected a list of turns, got {type(turns).__name__}")
    if not turns:
        raise PoolFormatError(path, line, key, "empty conversation")
    msgs = []
    for j, t in enumerate(turns):
        where = f"{key}[{j}]."
        if not isinstance(t, dict):
            raise PoolFormatError(path, line, f"{key}[{j}]", f"expected an object, got {type(t).__name__}")
        role = _require_str(t, role_key, path, line, prefix=where)
        role_norm = (role_map or {}).get(role.lower(), role.lower()) if role_map else role.lower()
        if role_norm not in ROLES:
            raise PoolFormatError(path, line, where + role_key, f"unknown role {role!r}")
        content = _require_str(t, content_key, path, line, prefix=where)
        msgs.append({"role": role_norm, "content": content})
    return msgs


def _check_conversation(msgs: list[dict[str, str]], field_name: str, path, line) -> None:
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise PoolFormatError(path, line, field_name, "no non-empty assistant turn")
    if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
        raise PoolFormatError(path, line, field_name, "no non-empty user turn")


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


def normalise_row(row: Any, *, path=None, line=None, default_source: str = "", fmt: str | None = None) -> dict:
    """Turn one raw row (Alpaca, ShareGPT, OpenAI messages or question/answer) into a pool record."""
    if not isinstance(row, dict):
        raise PoolFormatError(path, line, None, f"expected a JSON object per example, got {type(row).__name__}")
    fmt = fmt or detect_format(row)
    if fmt is None:
        raise PoolFormatError(
            path, line, None,
            "cannot tell the format: expected 'messages' (OpenAI), 'conversations' (ShareGPT), "
            f"'instruction'/'output' (Alpaca) or 'question'/'answer' (qa); found keys {sorted(row)[:8]}",
        )
    if fmt == "alpaca":
        msgs = _from_alpaca(row, path, line)
        conv_field = "output"
    elif fmt == "sharegpt":
        msgs = _turns(row, "conversations", "from", "value", _SHAREGPT_ROLES, path, line)
        conv_field = "conversations"
    elif fmt == "messages":
        msgs = _turns(row, "messages", "role", "content", None, path, line)
        conv_field = "messages"
    elif fmt == "qa":
        msgs = _from_qa(row, path, line)
        conv_field = "answer"
    else:
        raise ValueError(f"unknown pool format {fmt!r}; known: {list(FORMATS)}")
    _check_conversation(msgs, conv_field, path, line)

    rid = row.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = content_hash(msgs)[:16]
    elif isinstance(rid, (int, str)) and not isinstance(rid, bool):
        rid = str(rid)
    else:
        raise PoolFormatError(path, line, "id", f"expected a string or integer id, got {type(rid).__name__}")
    source = row.get("source", default_source)
    if source is None:
        source = default_source
    if not isinstance(source, str):
        raise PoolFormatError(path, line, "source", f"expected a string, got {type(source).__name__}")
    skip = _KNOWN_KEYS[fmt] | {"id", "source"}
    meta = {k: v for k, v in row.items() if k not in skip}
    if isinstance(row.get("meta"), dict):
        meta.pop("meta")
        meta.update(row["meta"])
    return {"id": rid, "messages": msgs, "source": source, "meta": meta}


# --------------------------------------------------------------------------- readers


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors)
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, None, raw.decode("utf-8", "replace"), PoolFormatError(path, i, None, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                yield i, json.loads(text), text, None
            except json.JSONDecodeError as e:
                yield i, None, text, PoolFormatError(path, i, None, f"invalid JSON: {e.msg} (column {e.colno})")


def _iter_json(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PoolFormatError(path, line, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PoolFormatError(path, e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(obj, dict):
        for key in ("data", "examples", "rows", "train"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise PoolFormatError(path, 1, None, "expected a JSON list of examples (or an object with a 'data' list)")
    if not isinstance(obj, list):
        raise PoolFormatError(path, 1, None, f"expected a JSON list of examples, got {type(obj).__name__}")
    # report the element index as the "line" (1-based), which is what a user can find
    for i, row in enumerate(obj, start=1):
        yield i, row, "", None


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str, Exception | None]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    i = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            i += 1
            yield i, row, "", None


def _iter_hf(name_or_path: str, split: str | None) -> Iterator[tuple[int, Any, str, Exception | None]]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a core dependency
        raise ImportError("loading a Hugging Face dataset needs `pip install datasets`") from e
    p = Path(name_or_path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        ds = datasets.load_from_disk(str(p))
    else:
        ds = datasets.load_dataset(name_or_path, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        key = split or ("train" if "train" in ds else next(iter(ds)))
        ds = ds[key]
    for i, row in enumerate(ds, start=1):
        yield i, row, "", None


def _reader(path: str, split: str | None):
    p = Path(path)
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    if p.is_file():
        if suffix in (".jsonl", ".ndjson"):
            return _iter_jsonl(p)
        if suffix == ".json":
            return _iter_json(p)
        if suffix in (".parquet", ".pq"):
            return _iter_parquet(p)
        raise PoolFormatError(path, None, None, f"unsupported file type {suffix!r}: use .jsonl, .json or .parquet")
    looks_like_file = suffix in (".jsonl", ".ndjson", ".json", ".parquet", ".pq") or path.startswith((".", "/", "~"))
    if path.startswith("hf:") or p.is_dir() or ("/" in path and not looks_like_file):
        name = path[3:] if path.startswith("hf:") else path
        return _iter_hf(name, split)
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

    def position(self, example_id: str) -> int:
        return self._index[example_id]

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

        Any other suffix is refused: :func:`load_pool` picks the reader by suffix, so a
        Parquet file named ``.json`` (or with no suffix) could not be read back.
        """
        path = Path(path)
        if path.suffix not in (".parquet", ".pq", ".jsonl"):
            raise ValueError(f"Pool.save: {path} must end in .parquet, .pq or .jsonl (got {path.suffix or 'no suffix'!r})")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            return write_jsonl(path, self._records)
        import pyarrow.parquet as pq

        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            pq.write_table(self.to_arrow(), tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_records(cls, records: Iterable[dict], name: str = "pool", source: str = "") -> "Pool":
        out = []
        for i, r in enumerate(records, start=1):
            if isinstance(r, dict) and "messages" in r and "meta" in r and "source" in r and "id" in r:
                out.append({"id": str(r["id"]), "messages": r["messages"], "source": r["source"], "meta": r["meta"]})
            else:
                out.append(normalise_row(r, path=None, line=i, default_source=source))
        return cls(out, name=name)

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, n={len(self)}, fingerprint={self.fingerprint[:12]})"


def _is_pool_parquet(path: Path) -> bool:
    if path.suffix not in (".parquet", ".pq") or not path.is_file():
        return False
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return {"id", "messages", "source", "meta"} <= names


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
    """Load a pool from a file or dataset and normalise every row.

    on_error: ``"raise"`` (default) stops at the first bad row with a
    :class:`PoolFormatError`; ``"skip"`` writes each rejected row (with file, line,
    field and reason) to ``rejects_path`` (default ``<path>.rejects.jsonl``) and goes on.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = str(path)
    p = Path(path)
    name = p.stem if p.exists() else path.replace("/", "_")
    default_source = source if source is not None else name
    report = LoadReport(path=path)

    if _is_pool_parquet(p):  # a pool written by Pool.save: already normalised
        import pyarrow.parquet as pq

        t = pq.read_table(p)
        recs = []
        for r in t.to_pylist():
            recs.append({"id": r["id"], "messages": [dict(m) for m in r["messages"]], "source": r["source"], "meta": json.loads(r["meta"] or "{}")})
            if limit and len(recs) >= limit:
                break
        report.rows_read = report.rows_kept = len(recs)
        return Pool(recs, name=name), report

    records: list[dict] = []
    seen: dict[str, int] = {}
    for line, row, raw, err in _reader(path, split):
        if limit and len(records) >= limit:
            break
        report.rows_read += 1
        try:
            if err is not None:
                raise err
            rec = normalise_row(row, path=path, line=line, default_source=default_source, fmt=fmt)
            if rec["id"] in seen:
                if dedupe_ids:
                    report.duplicates_dropped += 1
                    continue
                raise PoolFormatError(path, line, "id", f"duplicate id {rec['id']!r} (first seen at line {seen[rec['id']]})")
            seen[rec["id"]] = line
            records.append(rec)
        except PoolFormatError as e:
            if on_error == "raise":
                raise
            if not raw:
                try:
                    raw = json.dumps(row, ensure_ascii=False, default=str)
                except (TypeError, ValueError):
                    raw = repr(row)
            report.rejects.append(Reject(path=path, line=e.line, field=e.field, reason=e.reason, raw=raw.rstrip("\n")))
    report.rows_kept = len(records)
    if report.rejects:
        rp = Path(rejects_path) if rejects_path else Path(str(p) + ".rejects.jsonl") if p.exists() else Path(f"{name}.rejects.jsonl")
        write_jsonl(rp, ({"file": r.path, "line": r.line, "field": r.field, "reason": r.reason, "raw": r.raw} for r in report.rejects))
        report.rejects_path = str(rp)
    if not records:
        raise PoolFormatError(path, None, None, f"no usable examples ({report.rows_rejected} rejected)" if report.rejects else "no examples found")
    return Pool(records, name=name), report


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON lines atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
