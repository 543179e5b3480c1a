"""The signal store: Parquet shards keyed by (pool fingerprint, signal, version, params, model).

Layout under the store root::

    <root>/<pool fingerprint[:16]>/<signal>-v<version>-<key digest[:12]>/
        key.json                    the full key (human-readable)
        shard-00000.parquet         rows [0, shard_size) of the pool, column "id" + signal columns
        shard-00000.npy             (vector signals) the float32 matrix of those rows
        shard-00000.done            completion marker, written last
        COMPLETE                    written once every shard is done

A shard is written to a temporary name, fsynced and renamed, and only then marked
done; a run killed at any moment (SIGKILL included) leaves at worst an unmarked or
temporary shard that the next run recomputes. Reading concatenates the marked shards
in order, so the result of an interrupted-and-resumed run is identical to an
uninterrupted one. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


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


def _fsync_dir(path: Path) -> None:
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SignalStore:
    """Parquet/NumPy shards with completion markers, keyed by :class:`SignalKey`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- paths
    def path(self, key: SignalKey) -> Path:
        return self.root / key.pool_fingerprint[:16] / key.dirname()

    def _shard(self, key: SignalKey, i: int, ext: str) -> Path:
        return self.path(key) / f"shard-{i:05d}.{ext}"

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

    def begin(self, key: SignalKey, n_rows: int, shard_size: int) -> None:
        """Create the directory and key file; clear leftovers of a different shard plan."""
        d = self.path(key)
        d.mkdir(parents=True, exist_ok=True)
        plan = {"key": asdict(key), "n_rows": n_rows, "shard_size": shard_size}
        kf = d / "key.json"
        if kf.exists():
            old = json.loads(kf.read_text())
            if old.get("n_rows") != n_rows or old.get("shard_size") != shard_size:
                for p in d.iterdir():
                    if p.name != "key.json":
                        p.unlink()
        _atomic_write_bytes(kf, json.dumps(plan, indent=1, sort_keys=True).encode())
        for p in d.glob("*.tmp*"):  # partial files of a killed run
            p.unlink()

    def plan(self, key: SignalKey) -> dict:
        return json.loads((self.path(key) / "key.json").read_text())

    # --- writing
    def write_shard(self, key: SignalKey, i: int, ids: list[str], columns: dict[str, Any], vectors: np.ndarray | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = self.path(key)
        table = pa.table({"id": pa.array(ids, pa.string()), **{k: pa.array(np.asarray(v)) if not isinstance(v, list) else pa.array(v) for k, v in columns.items()}})
        if table.num_rows != len(ids):
            raise ValueError(f"signal {key.signal}: shard {i} has {table.num_rows} rows for {len(ids)} ids")
        target = self._shard(key, i, "parquet")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        if vectors is not None:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.shape[0] != len(ids):
                raise ValueError(f"signal {key.signal}: shard {i} has {vectors.shape[0]} vectors for {len(ids)} ids")
            vt = self._shard(key, i, "npy")
            vtmp = vt.with_name(vt.name + f".tmp{os.getpid()}.npy")
            np.save(vtmp, vectors)
            with open(vtmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(vtmp, vt)
        _fsync_dir(d)
        _atomic_write_bytes(self._shard(key, i, "done"), b"ok")

    def finish(self, key: SignalKey, n_shards: int, meta: dict | None = None) -> None:
        missing = [i for i in range(n_shards) if not self.shard_done(key, i)]
        if missing:
            raise RuntimeError(f"signal {key.signal}: shards {missing[:5]} are not done")
        _atomic_write_bytes(self.path(key) / "COMPLETE", json.dumps({"n_shards": n_shards, **(meta or {})}).encode())

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
        return pa.concat_tables([pq.read_table(self._shard(key, i, "parquet")) for i in range(n)])

    def read_vectors(self, key: SignalKey, mmap: bool = False) -> tuple[list[str], np.ndarray]:
        table = self.read_table(key)
        n = self._n_shards(key)
        mats = [np.load(self._shard(key, i, "npy"), mmap_mode="r" if mmap else None) for i in range(n)]
        mat = mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0)
        return table.column("id").to_pylist(), mat

    def meta(self, key: SignalKey) -> dict:
        c = self.path(key) / "COMPLETE"
        return json.loads(c.read_text()) if c.exists() else {}

    def entries(self) -> list[dict]:
        """Every complete signal in the store with its key."""
        out = []
        for kf in sorted(self.root.glob("*/*/key.json")):
            plan = json.loads(kf.read_text())
            out.append({**plan["key"], "n_rows": plan["n_rows"], "complete": (kf.parent / "COMPLETE").exists(), "path": str(kf.parent)})
        return out

    def drop(self, key: SignalKey) -> None:
        d = self.path(key)
        if d.exists():
            shutil.rmtree(d)
