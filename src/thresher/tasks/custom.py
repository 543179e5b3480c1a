"""User-defined tasks from YAML (lm-evaluation-harness style).

A task file names a dev and a test split (JSONL, one item a line) and says which
fields hold the question, the gold answer and, optionally, a worked target and a
domain::

    name: my_math
    dev: data/dev.jsonl            # relative paths are relative to this YAML file
    test: data/test.jsonl
    question_field: question       # default "question"
    answer_field: answer           # default "answer"
    target_field: solution         # optional: gold worked response (demos, SFT)
    domain_field: topic            # optional: per-domain dev scores
    id_field: id                   # optional (default "id"): used when present in a row
    extractor: gsm8k               # one of thresher.tasks.base.EXTRACTORS
    system: "You are a careful solver."   # optional
    user_template: "Question: {question}\\nAnswer:"   # optional, must contain {question}
    max_new_tokens: 64
    metric: loglik                 # optional: accuracy (default) or loglik (gold-answer log-likelihood)
    both_metrics: false            # optional: also compute the other metric
    description: optional free text

The file is read with ``yaml.safe_load``. A missing or invalid key raises
:class:`TaskConfigError` naming the YAML file and the key; a bad data row raises
:class:`TaskDataError` naming the data file, the line and the field.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thresher.data.readers import iter_jsonl
from thresher.data.records import PoolFormatError
from thresher.errors import ConfigError, DataFormatError
from thresher.tasks.base import EXTRACTORS, METRICS, PromptFormat, Task, TaskItem

__all__ = [
    "CUSTOM_TASK_KEYS",
    "TaskConfigError",
    "TaskDataError",
    "iter_jsonl_rows",
    "load_custom_task",
]

#: every key a task YAML may hold, with its default (``...`` = required)
CUSTOM_TASK_KEYS: dict[str, Any] = {
    "name": ...,
    "dev": ...,
    "test": ...,
    "question_field": "question",
    "answer_field": "answer",
    "target_field": None,
    "domain_field": None,
    "id_field": "id",
    "extractor": "answer_is",
    "system": None,
    "user_template": "{question}",
    "max_new_tokens": 48,
    "metric": "accuracy",
    "both_metrics": False,
    "description": "",
}


class TaskConfigError(ConfigError):
    """A task definition problem: names the YAML file and the key."""

    def __init__(self, path: str | os.PathLike | None, key: str | None, message: str):
        self.path = str(path) if path is not None else "<params>"
        self.key = key
        self.reason = message
        where = self.path + (f" key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")


class TaskDataError(DataFormatError):
    """A bad row in a task's data file: names the file, the line (1-based) and the field."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path + (f":{line}" if line is not None else "") + (f" field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


def iter_jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, row)`` for each JSON object in a JSONL file (blank lines skipped).

    Invalid UTF-8, invalid JSON or a non-object line raises :class:`TaskDataError`.
    """
    path = Path(path)
    for line, row, _raw, err in iter_jsonl(path):
        if err is not None:
            reason = err.reason if isinstance(err, PoolFormatError) else str(err)
            raise TaskDataError(path, line, None, reason)
        if not isinstance(row, dict):
            raise TaskDataError(path, line, None, f"expected a JSON object per item, got {type(row).__name__}")
        yield line, row


# --------------------------------------------------------------------------- config validation


def _check_str(cfg: dict, key: str, src, *, optional: bool, nonempty: bool = True) -> str | None:
    val = cfg.get(key)
    if val is None:
        if optional:
            return None
        raise TaskConfigError(src, key, "missing required key")
    if not isinstance(val, str):
        raise TaskConfigError(src, key, f"expected a string, got {type(val).__name__} ({val!r})")
    if nonempty and not val.strip():
        raise TaskConfigError(src, key, "is empty")
    return val


def _validate(cfg: dict, src) -> dict:
    unknown = sorted(set(cfg) - set(CUSTOM_TASK_KEYS))
    if unknown:
        raise TaskConfigError(src, unknown[0], f"unknown key (known keys: {', '.join(CUSTOM_TASK_KEYS)})")
    out: dict[str, Any] = {}
    for key in ("name", "dev", "test"):
        out[key] = _check_str(cfg, key, src, optional=False)
    for key in ("question_field", "answer_field", "id_field", "extractor", "user_template"):
        val = _check_str(cfg, key, src, optional=True)
        out[key] = CUSTOM_TASK_KEYS[key] if val is None else val
    for key in ("target_field", "domain_field"):
        out[key] = _check_str(cfg, key, src, optional=True)
    out["system"] = _check_str(cfg, "system", src, optional=True, nonempty=False) or None
    out["description"] = _check_str(cfg, "description", src, optional=True, nonempty=False) or ""

    if out["extractor"] not in EXTRACTORS:
        raise TaskConfigError(src, "extractor", f"unknown extractor {out['extractor']!r}; known: {sorted(EXTRACTORS)}")
    tmpl = out["user_template"]
    if "{question}" not in tmpl:
        raise TaskConfigError(src, "user_template", f"must contain '{{question}}', got {tmpl!r}")
    try:
        tmpl.format(question="")
    except (KeyError, IndexError, ValueError) as e:
        raise TaskConfigError(
            src, "user_template",
            f"is not a valid template ({type(e).__name__}: {e}); only {{question}} may appear in braces, write {{{{ }}}} for literal braces",
        ) from None
    mnt = cfg.get("max_new_tokens", CUSTOM_TASK_KEYS["max_new_tokens"])
    if isinstance(mnt, bool) or not isinstance(mnt, int) or mnt <= 0:
        raise TaskConfigError(src, "max_new_tokens", f"expected a positive integer, got {mnt!r}")
    out["max_new_tokens"] = mnt
    metric = cfg.get("metric", CUSTOM_TASK_KEYS["metric"])
    if metric not in METRICS:
        raise TaskConfigError(src, "metric", f"unknown metric {metric!r}; known: {list(METRICS)}")
    out["metric"] = metric
    both = cfg.get("both_metrics", False)
    if not isinstance(both, bool):
        raise TaskConfigError(src, "both_metrics", f"expected true or false, got {both!r}")
    out["both_metrics"] = both
    return out


# --------------------------------------------------------------------------- data


def _field_str(row: dict, key: str, path: Path, line: int, *, numbers_ok: bool = False) -> str:
    if key not in row:
        raise TaskDataError(path, line, key, "missing required field")
    val = row[key]
    if numbers_ok and isinstance(val, (int, float)) and not isinstance(val, bool):
        return str(val)
    if not isinstance(val, str):
        kind = "a string or a number" if numbers_ok else "a string"
        raise TaskDataError(path, line, key, f"expected {kind}, got {type(val).__name__}")
    if not val.strip():
        raise TaskDataError(path, line, key, "is empty")
    return val


def _read_split(path: Path, split: str, cfg: dict) -> list[TaskItem]:
    items: list[TaskItem] = []
    seen: dict[str, int] = {}
    for line, row in iter_jsonl_rows(path):
        question = _field_str(row, cfg["question_field"], path, line)
        answer = _field_str(row, cfg["answer_field"], path, line, numbers_ok=True).strip()
        target = _field_str(row, cfg["target_field"], path, line) if cfg["target_field"] else ""
        domain = _field_str(row, cfg["domain_field"], path, line) if cfg["domain_field"] else "all"
        if cfg["id_field"] in row and row[cfg["id_field"]] is not None:
            raw_id = row[cfg["id_field"]]
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                raise TaskDataError(path, line, cfg["id_field"], f"expected a string or integer id, got {type(raw_id).__name__}")
            item_id = str(raw_id)
        else:
            item_id = f"{cfg['name']}-{split}-{line:05d}"
        if item_id in seen:
            raise TaskDataError(path, line, cfg["id_field"], f"duplicate id {item_id!r} (first seen at line {seen[item_id]})")
        seen[item_id] = line
        items.append(TaskItem(id=item_id, question=question, answer=answer, target=target, domain=domain))
    if not items:
        raise TaskDataError(path, None, None, f"the {split} split has no items")
    return items


def load_custom_task(path: str | os.PathLike, **overrides) -> Task:
    """Build a :class:`Task` from a YAML definition; ``overrides`` replace YAML keys."""
    import yaml

    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"task file not found: {src}")
    try:
        cfg = yaml.safe_load(src.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise TaskConfigError(src, None, f"invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError as e:
        raise TaskConfigError(src, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise TaskConfigError(src, None, f"expected a mapping of keys at the top level, got {type(cfg).__name__}")
    cfg = {**cfg, **overrides}
    c = _validate(cfg, src)

    base = src.resolve().parent
    splits = {}
    for key in ("dev", "test"):
        p = Path(os.path.expanduser(c[key]))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise TaskConfigError(src, key, f"data file not found: {p}")
        splits[key] = _read_split(p, key, c)
    try:
        return Task(
            c["name"], splits["dev"], splits["test"],
            prompt=PromptFormat(system=c["system"], user_template=c["user_template"]),
            extractor=c["extractor"], max_new_tokens=c["max_new_tokens"], description=c["description"],
            metric=c["metric"], both_metrics=c["both_metrics"],
        )
    except ValueError as e:  # e.g. a test question that also appears in dev
        raise TaskConfigError(src, "test", str(e)) from None
