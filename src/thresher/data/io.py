"""The one atomic write: a file (or folder) appears whole under its name, or not at all.

Every file thresher writes that a later run reads (store shards, markers, selections,
oracle results, traces, reports, plots) goes through here: written to a temporary name
in the same folder, fsynced, then renamed over the target. A run killed at any moment
leaves the old file or the new one, never half of one; leftovers are named
``<name>.tmp<pid>...`` and ignored by readers.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tmp_path(path: Path, suffix: str = "") -> Path:
    """The temporary sibling of ``path`` this process writes to (``suffix`` keeps an extension
    that a writer insists on, e.g. ``.npy`` for ``np.save``)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}{suffix}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary path, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path, suffix)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kw) -> Path:
    """``json.dumps(obj, **dumps_kw)`` written atomically (defaults: indent=1, default=str)."""
    dumps_kw.setdefault("indent", 1)
    dumps_kw.setdefault("default", str)
    return atomic_write_text(path, json.dumps(obj, **dumps_kw))


def atomic_dir(path: str | os.PathLike, fill: Callable[[Path], Any], *, replace: bool = True) -> Path:
    """Build a folder with ``fill(tmp_dir)`` and rename it into place (replacing an old one).

    ``replace=False`` is for content-addressed caches: when the folder is already there once
    ``fill`` is done (another process built it meanwhile), the new copy is discarded and the
    folder that readers may be reading is left untouched."""
    path = Path(path)
    tmp = tmp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if not replace:
            try:
                os.rename(tmp, path)  # fails when a non-empty folder is there: the first build wins
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            return path
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
