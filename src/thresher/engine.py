"""Engines run signals over a pool and write them to the store.

``local`` (default): in-process, shard by shard, with a progress bar. ``ray``: the same
shards as Ray tasks / an actor pool (see :mod:`thresher.ray_engine`). Both write the
same shards, so the stored signals are identical whichever engine computed them.
Example-scope signals resume after a kill: finished shards are skipped.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pool import Pool
from .progress import progress
from .signals.base import VECTORS, Signal, resolve
from .store import SignalKey, SignalStore

ENGINES = ("local", "ray")


@dataclass
class SignalRun:
    signal: str
    key: SignalKey
    computed_shards: int
    skipped_shards: int
    seconds: float
    rows: int


def shard_plan(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    return [(i, s, min(s + shard_size, n)) for i, s in enumerate(range(0, n, shard_size))] or [(0, 0, 0)]


def _write(store: SignalStore, key: SignalKey, i: int, ids: list[str], cols: dict[str, Any], signal: Signal) -> None:
    cols = dict(cols)
    vectors = cols.pop(VECTORS, None)
    missing = [c for c in signal.columns if c not in cols]
    if missing:
        raise RuntimeError(f"signal {signal.name!r} did not return columns {missing}")
    if signal.kind == "vector" and vectors is None:
        raise RuntimeError(f"vector signal {signal.name!r} returned no vectors")
    store.write_shard(key, i, ids, {c: cols[c] for c in signal.columns}, vectors)


def compute_example_shard(signal: Signal, records: list[dict]) -> dict[str, Any]:
    signal.ensure_setup()
    return signal.compute(records)


def run_signal(signal: Signal, pool: Pool, store: SignalStore, *, engine: str = "local", shard_size: int | None = None,
               show_progress: bool = True, ray_address: str | None = None, ray_actors: int | None = None) -> SignalRun:
    """Compute ``signal`` (and what it requires) over ``pool`` into ``store`` unless already there."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    key = signal.key(pool)
    t0 = time.perf_counter()
    if hasattr(signal, "bind_pool"):
        signal.bind_pool(pool)
    if store.is_complete(key):
        return SignalRun(signal.name, key, 0, 0, 0.0, len(pool))
    for dep in signal.requires():
        run_signal(dep, pool, store, engine=engine, shard_size=shard_size, show_progress=show_progress, ray_address=ray_address, ray_actors=ray_actors)

    if signal.scope == "pool":
        store.begin(key, len(pool), max(1, len(pool)))
        inputs = {dep.name: read_signal(dep, pool, store) for dep in signal.requires()}
        with progress(total=1, desc=f"signal {signal.name}", disable=not show_progress) as bar:
            signal.ensure_setup()
            cols = signal.compute_pool(pool, inputs)
            bar.update(1)
        _write(store, key, 0, pool.ids, cols, signal)
        store.finish(key, 1, {"seconds": time.perf_counter() - t0, "engine": engine})
        return SignalRun(signal.name, key, 1, 0, time.perf_counter() - t0, len(pool))

    size = shard_size or signal.default_shard_size
    plan = shard_plan(len(pool), size)
    store.begin(key, len(pool), size)
    done = store.done_shards(key)
    todo = [p for p in plan if p[0] not in done]
    if engine == "ray":
        from .ray_engine import run_shards_ray

        run_shards_ray(signal, pool, store, key, todo, address=ray_address, actors=ray_actors, show_progress=show_progress)
    else:
        with progress(total=len(pool), desc=f"signal {signal.name}", disable=not show_progress, unit="ex") as bar:
            bar.update(sum(e - s for i, s, e in plan if i in done))
            for i, s, e in todo:
                recs = pool.slice(s, e)
                cols = compute_example_shard(signal, recs)
                _write(store, key, i, [r["id"] for r in recs], cols, signal)
                bar.update(e - s)
    store.finish(key, len(plan), {"seconds": time.perf_counter() - t0, "engine": engine})
    return SignalRun(signal.name, key, len(todo), len(plan) - len(todo), time.perf_counter() - t0, len(pool))


def read_signal(signal: Signal, pool: Pool, store: SignalStore) -> dict[str, Any]:
    """A stored signal as {column: array aligned with pool order} (+ VECTORS for vector signals)."""
    key = signal.key(pool)
    table = store.read_table(key)
    ids = table.column("id").to_pylist()
    if ids != pool.ids:
        raise RuntimeError(f"signal {signal.name!r} in the store is not aligned with pool {pool.name!r}")
    out: dict[str, Any] = {c: table.column(c).to_numpy(zero_copy_only=False) for c in signal.columns}
    if signal.kind == "vector":
        _, mat = store.read_vectors(key)
        out[VECTORS] = mat
    return out


def ensure_signals(names_or_signals, pool: Pool, store: SignalStore, params: dict | None = None, **run_kw) -> dict[str, Signal]:
    """Compute every requested signal (names, columns or Signal objects); return them by name."""
    from .signals.base import make_signal

    out: dict[str, Signal] = {}
    for s in names_or_signals:
        sig = s if isinstance(s, Signal) else make_signal(s, **(params or {}))
        if sig.name not in out:
            run_signal(sig, pool, store, **run_kw)
            out[sig.name] = sig
    return out


def signal_frame(pool: Pool, store: SignalStore, signals: list[Signal]):
    """A pandas DataFrame (index = pool ids, in pool order) with the scalar columns of ``signals``."""
    import pandas as pd

    data: dict[str, np.ndarray] = {}
    for sig in signals:
        cols = read_signal(sig, pool, store)
        for c in sig.columns:
            data[c] = cols[c]
    return pd.DataFrame(data, index=pd.Index(pool.ids, name="id"))


def frame_from_store(pool: Pool, store: SignalStore, names: list[str], params: dict | None = None):
    """Read already-computed signals (by signal or column name) into a frame; never computes.

    Raises a KeyError naming the missing signal and the command that computes it.
    """
    from .signals.base import make_signal

    sigs: dict[str, Signal] = {}
    for n in names:
        cls, _ = resolve(n)
        if cls.name not in sigs:
            sigs[cls.name] = make_signal(cls.name, **(params or {}))
    for s in sigs.values():
        if not store.is_complete(s.key(pool)):
            raise KeyError(
                f"signal {s.name!r} ({s.key_params()}) is not in the store {store.root} for this pool; "
                f"compute it first: thresher score POOL --signals {s.name} --store {store.root}"
            )
    return signal_frame(pool, store, list(sigs.values()))


def n_shards(n: int, shard_size: int) -> int:
    return max(1, math.ceil(n / shard_size))
