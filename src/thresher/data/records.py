"""One SFT record: the normalised form every input row becomes, the check every record passes,
and the errors that name the file, the position in it and the field.

Every input format is normalised into one record::

    {"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "source": str, "meta": {...}}

Each row may be Alpaca (``instruction``/``input``/``output``), ShareGPT
(``conversations`` with ``from``/``value``), OpenAI chat (``messages`` with
``role``/``content``) or a question/answer pair (``question``/``answer``, e.g. GSM8K;
format ``"qa"``), or a record already normalised (``id``/``messages``/``source``/``meta``).
The conversation rules of :func:`validate_record` are in :mod:`thresher.data.pool`.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thresher.errors import DataFormatError

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


def location(path: str, unit: str, pos: int | None) -> str:
    """Where a row is, as errors and rejects name it: ``FILE:LINE``, ``FILE element N``, ``FILE row N``
    (just ``FILE`` without a position)."""
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
        return location(self.path, self.unit, self.line)



#: the columns of a normalised record (and of a pool written by :meth:`~thresher.data.pool.Pool.save`)
POOL_COLUMNS = ("id", "messages", "source", "meta")


def content_hash(messages: Sequence[dict[str, str]]) -> str:
    """A stable hash of a conversation's roles and contents (the default example id)."""
    h = hashlib.sha256()
    for m in messages:
        h.update(m["role"].encode())
        h.update(b"\x1f")
        h.update(m["content"].encode())
        h.update(b"\x1e")
    return h.hexdigest()



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


