"""The signal store: Parquet shards keyed by (pool fingerprint, signal, version, params, model).

Layout under the store root::

    <root>/<pool fingerprint[:16]>/<signal>-v<version>-<key digest[:12]>/
        key.json                    the full key and the shard plan (n_rows, shard_size)
        .lock                       the lock file of the run computing this signal (holder's pid)
        shard-00000.parquet         rows [0, shard_size) of the pool, column "id" + signal columns
        shard-00000.npy             (vector signals) the float32 matrix of those rows
        shard-00000.done            completion marker, written last
        COMPLETE                    written once every shard is done and verified

A shard is written to a temporary name, fsynced and renamed, and only then marked
done; a run killed at any moment (SIGKILL included) leaves at worst an unmarked or
temporary shard that the next run recomputes. Reading concatenates the marked shards
in order, so the result of an interrupted-and-resumed run is identical to an
uninterrupted one. Nothing is pickled.

Concurrent runs: a run computes a signal while holding an exclusive ``fcntl.flock`` on
the signal directory's ``.lock`` file (:meth:`SignalStore.lock`; the holder writes its
pid there). A second process that wants the same signal *waits* for the first, saying
so once (a logged warning naming the directory and the holder's pid), and then finds
the signal complete; it gives up with a :class:`~thresher.errors.StoreError` naming
the directory and the holder's pid after ``lock_timeout`` seconds (default
``$THRESHER_LOCK_TIMEOUT``, else one hour). The kernel drops the lock when its holder
exits, killed or not, so a stale ``.lock`` file never blocks anyone. Only the lock
holder may change the directory: :meth:`~SignalStore.begin` (which clears the files of
a different shard plan and the temporary files of killed runs) and
:meth:`~SignalStore.finish` refuse to run while another process holds the lock. The
lock is advisory and per process (a process may re-enter it); it needs a filesystem
with working ``flock`` (local disks do; some network filesystems do not).

Nothing poisoned: before ``COMPLETE`` is written, :meth:`~SignalStore.finish` reads
back every shard's ids and checks them against the plan (and, given the pool's ids,
that they are exactly those ids, once each, in order; vectors: one row per id). A
shard that fails is unmarked (the next run recomputes it) and a ``StoreError`` is
raised instead. ``COMPLETE`` records ``verified``; a ``COMPLETE`` written before that
check existed is re-verified by the engine on its next run. Reading a signal whose
rows do not match raises a ``StoreError`` that says to delete the directory and rerun.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.data.io import atomic_write, atomic_write_bytes, fsync_dir
from thresher.errors import StoreError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
DEFAULT_LOCK_TIMEOUT = 3600.0

# signal directories whose lock this process holds: resolved path -> (fd, depth)
_HELD: dict[str, tuple[int, int]] = {}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _lock_timeout_default() -> float:
    raw = os.environ.get("THRESHER_LOCK_TIMEOUT")
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return float(raw)
    except ValueError:
        raise StoreError(f"THRESHER_LOCK_TIMEOUT={raw!r}: expected a number of seconds") from None


@dataclass(frozen=True)
class SignalKey:
    pool_fingerprint: str
    signal: str
    version: int
    params: dict = field(default_factory=dict)
    model: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(asdict(self)).encode()).hexdigest()

    def dirname(self) -> str:
        return f"{self.signal}-v{self.version}-{self.digest[:12]}"

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, SignalKey) and self.digest == other.digest


class SignalStore:
    """Parquet/NumPy shards with completion markers, keyed by :class:`SignalKey`.

    ``lock_timeout``: seconds to wait for another process computing the same signal
    (default ``$THRESHER_LOCK_TIMEOUT``, else one hour; 0 fails at once).
    """

    def __init__(self, root: str | os.PathLike, lock_timeout: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout

    # --- paths
    def path(self, key: SignalKey) -> Path:
        return self.root / key.pool_fingerprint[:16] / key.dirname()

    def _shard(self, key: SignalKey, i: int, ext: str) -> Path:
        return self.path(key) / f"shard-{i:05d}.{ext}"

    # --- locking
    @contextmanager
    def lock(self, key: SignalKey, timeout: float | None = None) -> Iterator[None]:
        """Hold the signal directory's lock: wait for another process that holds it (a
        warning says whom), up to ``timeout`` seconds, then raise :class:`StoreError`."""
        d = self.path(key)
        d.mkdir(parents=True, exist_ok=True)
        name = str(d.resolve())
        if name in _HELD:  # re-entered by this process
            fd, depth = _HELD[name]
            _HELD[name] = (fd, depth + 1)
            try:
                yield
            finally:
                fd, depth = _HELD[name]
                _HELD[name] = (fd, depth - 1)
            return
        timeout = timeout if timeout is not None else self.lock_timeout
        timeout = _lock_timeout_default() if timeout is None else timeout
        fd = self._acquire(key, d, timeout)
        _HELD[name] = (fd, 1)
        try:
            yield
        finally:
            del _HELD[name]
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the file releases the flock

    def holds_lock(self, key: SignalKey) -> bool:
        """Whether this process holds the lock of ``key``'s directory."""
        return str(self.path(key).resolve()) in _HELD

    def _acquire(self, key: SignalKey, d: Path, timeout: float) -> int:
        fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + max(0.0, timeout)
            warned = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise StoreError(f"cannot lock the signal directory {d}: {e.strerror}") from None
                holder = _read_holder(fd)
                if time.monotonic() >= deadline:
                    waited = f"; waited {timeout:g}s (set THRESHER_LOCK_TIMEOUT to wait longer)" if timeout > 0 else ""
                    raise StoreError(f"signal {key.signal}: the store directory {d} is locked by another run (pid {holder}) "
                                     f"computing it{waited}; let that run finish, then retry")
                if not warned:
                    log.warning("signal %s: %s is locked by another run (pid %s); waiting for it (up to %gs)",
                                key.signal, d, holder, timeout)
                    warned = True
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextmanager
    def _exclusive(self, key: SignalKey) -> Iterator[None]:
        """The lock if this process holds it already, else taken without waiting: a
        caller outside :meth:`lock` may change the directory only when nobody else holds it."""
        if self.holds_lock(key):
            yield
            return
        with self.lock(key, timeout=0):
            yield

    # --- state
    def is_complete(self, key: SignalKey) -> bool:
        return (self.path(key) / "COMPLETE").exists()

    def shard_done(self, key: SignalKey, i: int) -> bool:
        return self._shard(key, i, "done").exists()

    def done_shards(self, key: SignalKey) -> set[int]:
        d = self.path(key)
        if not d.exists():
            return set()
        return {int(p.name[6:11]) for p in d.glob("shard-*.done")}

    def plan(self, key: SignalKey) -> tuple[int, int]:
        """(n_rows, shard_size) from key.json."""
        kf = self.path(key) / "key.json"
        try:
            plan = json.loads(kf.read_text())
            return int(plan["n_rows"]), int(plan["shard_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"signal {key.signal}: {kf} is missing or unreadable ({e}); delete {self.path(key)} and rerun") from None

    def begin(self, key: SignalKey, n_rows: int, shard_size: int) -> None:
        """Create the directory and key file; clear leftovers of a different shard plan.

        Runs under the directory's lock (taken here without waiting when the caller does
        not hold it), so it never deletes files another process is writing.
        """
        d = self.path(key)
        d.mkdir(parents=True, exist_ok=True)
        with self._exclusive(key):
            plan = {"key": asdict(key), "n_rows": n_rows, "shard_size": shard_size}
            kf = d / "key.json"
            if kf.exists():
                try:
                    old = json.loads(kf.read_text())
                except ValueError:
                    old = {}
                if old.get("n_rows") != n_rows or old.get("shard_size") != shard_size:
                    stale = [p for p in d.iterdir() if p.name not in ("key.json", LOCK_FILE)]
                    if stale:
                        log.info("signal %s: clearing %d files of another shard plan (%s rows of %s) in %s",
                                 key.signal, len(stale), old.get("n_rows"), old.get("shard_size"), d)
                    for p in stale:
                        p.unlink()
            atomic_write_bytes(kf, json.dumps(plan, indent=1, sort_keys=True).encode())
            for p in d.glob("*.tmp*"):  # partial files of a killed run
                p.unlink()

    # --- writing
    def write_shard(self, key: SignalKey, i: int, ids: list[str], columns: dict[str, Any], vectors: np.ndarray | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = self.path(key)
        table = pa.table({"id": pa.array(ids, pa.string()), **{k: pa.array(np.asarray(v)) if not isinstance(v, list) else pa.array(v) for k, v in columns.items()}})
        if table.num_rows != len(ids):
            raise ValueError(f"signal {key.signal}: shard {i} has {table.num_rows} rows for {len(ids)} ids")
        atomic_write(self._shard(key, i, "parquet"), lambda tmp: pq.write_table(table, tmp))
        if vectors is not None:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.shape[0] != len(ids):
                raise ValueError(f"signal {key.signal}: shard {i} has {vectors.shape[0]} vectors for {len(ids)} ids")
            atomic_write(self._shard(key, i, "npy"), lambda tmp: np.save(tmp, vectors), suffix=".npy")
        fsync_dir(d)
        atomic_write_bytes(self._shard(key, i, "done"), b"ok")

    def verify(self, key: SignalKey, n_shards: int, ids: Sequence[str] | None = None) -> tuple[list[int], str]:
        """Read back every shard's ids: the shards that do not hold their rows of the plan
        (given ``ids``: exactly ``ids[start:stop]``, in order), and a summary of what is there."""
        import pyarrow.parquet as pq

        n_rows, size = self.plan(key)
        if ids is not None and len(ids) != n_rows:
            raise StoreError(f"signal {key.signal}: the plan in {self.path(key)} is for {n_rows} rows, the pool has {len(ids)}")
        n_plan = max(1, -(-n_rows // size)) if size > 0 else 1
        if n_shards != n_plan:
            raise StoreError(f"signal {key.signal}: {n_shards} shards for a plan of {n_plan} ({n_rows} rows of {size}) in {self.path(key)}")
        bad: list[int] = []
        seen: list[str] = []
        has_vectors = any(self._shard(key, i, "npy").exists() for i in range(n_shards))
        for i in range(n_shards):
            start, stop = i * size, min((i + 1) * size, n_rows)
            try:
                got = pq.read_table(self._shard(key, i, "parquet"), columns=["id"]).column("id").to_pylist()
            except Exception:  # noqa: BLE001  (a missing or unreadable shard)
                bad.append(i)
                continue
            seen.extend(got)
            ok = got == list(ids[start:stop]) if ids is not None else len(got) == stop - start
            if ok and has_vectors:
                try:
                    ok = np.load(self._shard(key, i, "npy"), mmap_mode="r").shape[0] == len(got)
                except Exception:  # noqa: BLE001
                    ok = False
            if not ok:
                bad.append(i)
        unique = set(seen)
        if ids is None and not bad and len(unique) != len(seen):
            first: dict[str, int] = {}
            for pos, x in enumerate(seen):
                if x in first:
                    bad.append(pos // size)
                first.setdefault(x, pos)
            bad = sorted(set(bad))
        summary = f"{len(seen)} rows, {len(unique)} unique ids"
        if ids is not None:
            summary += f", {len(set(ids) - unique)} of the pool's {len(ids)} ids missing"
        else:
            summary += f" for a plan of {n_rows} rows"
        return bad, summary

    def finish(self, key: SignalKey, n_shards: int, meta: dict | None = None, ids: Sequence[str] | None = None) -> None:
        """Write ``COMPLETE`` once every shard is done and holds its rows (given the pool's
        ``ids``: exactly those, once each, in order). A shard that fails is unmarked, so
        the next run recomputes it, and :class:`StoreError` is raised instead."""
        d = self.path(key)
        with self._exclusive(key):
            missing = [i for i in range(n_shards) if not self.shard_done(key, i)]
            if missing:
                raise StoreError(f"signal {key.signal}: shards {missing[:5]} in {d} are not done")
            bad, summary = self.verify(key, n_shards, ids)
            if bad:
                for i in bad:
                    self._shard(key, i, "done").unlink(missing_ok=True)
                raise StoreError(
                    f"signal {key.signal}: the shards in {d} do not hold the pool's ids in order ({summary}); "
                    f"shards {bad[:5]}{' ...' if len(bad) > 5 else ''} were unmarked and COMPLETE was not written: "
                    f"rerun to recompute them, or delete {d} and rerun")
            n_rows, _ = self.plan(key)
            info = {"n_shards": n_shards, "n_rows": n_rows, "verified": "ids" if ids is not None else "rows", **(meta or {})}
            atomic_write_bytes(d / "COMPLETE", json.dumps(info).encode())

    def reopen(self, key: SignalKey, ids: Sequence[str]) -> bool:
        """Check a ``COMPLETE`` signal written without verification against the pool's ids
        (under the lock): mark it verified and return True when it holds them, else remove
        ``COMPLETE`` and unmark the bad shards so a run recomputes them, and return False."""
        d = self.path(key)
        with self._exclusive(key):
            meta = self.meta(key)
            if meta.get("verified"):
                return True
            try:
                bad, summary = self.verify(key, int(meta["n_shards"]), ids)
            except (StoreError, KeyError, ValueError, TypeError) as e:  # a plan that does not match COMPLETE
                bad, summary = sorted(self.done_shards(key)), str(e)
            if not bad:
                n_rows, _ = self.plan(key)
                atomic_write_bytes(d / "COMPLETE", json.dumps({**meta, "n_rows": n_rows, "verified": "ids"}).encode())
                return True
            log.warning("signal %s: %s was marked complete but does not hold the pool's ids (%s); recomputing %d shards",
                        key.signal, d, summary, len(bad))
            (d / "COMPLETE").unlink(missing_ok=True)
            for i in bad:
                self._shard(key, i, "done").unlink(missing_ok=True)
            return False

    # --- reading
    def _n_shards(self, key: SignalKey) -> int:
        c = self.path(key) / "COMPLETE"
        if not c.exists():
            raise KeyError(f"signal {key.signal} (v{key.version}, model={key.model}) is not complete in the store {self.root}")
        return json.loads(c.read_text())["n_shards"]

    def read_table(self, key: SignalKey):
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = self._n_shards(key)
        table = pa.concat_tables([pq.read_table(self._shard(key, i, "parquet")) for i in range(n)])
        n_rows = self.meta(key).get("n_rows")
        if n_rows is not None and table.num_rows != n_rows:
            raise StoreError(f"signal {key.signal}: {self.path(key)} holds {table.num_rows} rows for {n_rows} "
                             f"(the store is damaged): delete {self.path(key)} and rerun `thresher score`")
        return table

    def read_vectors(self, key: SignalKey, mmap: bool = False) -> tuple[list[str], np.ndarray]:
        table = self.read_table(key)
        n = self._n_shards(key)
        mats = [np.load(self._shard(key, i, "npy"), mmap_mode="r" if mmap else None) for i in range(n)]
        mat = mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0)
        if mat.shape[0] != table.num_rows:
            raise StoreError(f"signal {key.signal}: {self.path(key)} holds {mat.shape[0]} vectors for {table.num_rows} rows "
                             f"(the store is damaged): delete {self.path(key)} and rerun `thresher score`")
        return table.column("id").to_pylist(), mat

    def meta(self, key: SignalKey) -> dict:
        c = self.path(key) / "COMPLETE"
        return json.loads(c.read_text()) if c.exists() else {}


def _read_holder(fd: int) -> str:
    """The pid the lock's holder wrote into the lock file ("unknown" before it has)."""
    try:
        raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        raw = ""
    return raw if raw.isdigit() else "unknown"


#: where signals are stored unless a command names a store (``$THRESHER_STORE`` overrides it)
DEFAULT_STORE = ".thresher/store"


def default_store() -> str:
    return os.environ.get("THRESHER_STORE", DEFAULT_STORE)
