"""Engines run signals over a pool and write them to the store.

``local`` (default): in-process, shard by shard, with a progress bar; a CPU-bound, model-free
signal's shards go to one forked process per core (:mod:`thresher.engine.processes`). ``ray``: the same
shards as Ray tasks / an actor pool (see :mod:`thresher.engine.ray`). Both write the
same shards, so the stored signals are identical whichever engine computed them.
Example-scope signals resume after a kill: finished shards are skipped.

A run holds the signal directory's lock while it computes (see :mod:`thresher.data.store`):
a second run of the same signal waits for the first and then finds it complete, so two
runs with different shard sizes cannot interleave their shards. ``COMPLETE`` is written
only after the stored ids are checked against the pool's.

A run resolves the signal on the pool first (a scorer ``model="auto"`` becomes the model
it is there, :meth:`Signal.for_pool`), sets the process's threads
(:mod:`thresher.threads`), moves its bar as the signal reports progress within a shard
(per forward batch for the model signals), and records the signal's notes (e.g. how many
examples were truncated) in the store's metadata and :attr:`SignalRun.notes`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from thresher.data.pool import Pool
from thresher.data.store import SignalKey, SignalStore
from thresher.engine.processes import map_shards, shard_workers
from thresher.engine.ray import run_shards_ray
from thresher.engine.shards import (
    compute_example_shard,
    count_flags,
    run_note,
    shard_plan,
    write_shard,
)
from thresher.errors import StoreError
from thresher.models.load import describe_model
from thresher.progress import progress
from thresher.signals.base import VECTORS, Signal
from thresher.threads import apply_threads

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class SignalRun:
    signal: str
    key: SignalKey
    computed_shards: int
    skipped_shards: int
    seconds: float
    rows: int
    #: the model the signal used, as a line for people (``scorer: small (SmolLM2-135M-Instruct)``), or None
    scorer: str | None = None
    #: what the run noticed (``12 of 5000 examples truncated to 512 tokens``), also in the store's metadata
    notes: list[str] = field(default_factory=list)


def scorer_line(signal: Signal) -> str | None:
    """``scorer: small (SmolLM2-135M-Instruct)`` (``tokenizer: ...`` for the text signal) for a
    signal whose ``model`` is the scorer, resolved; None for any other signal."""
    if not getattr(signal, "scorer_model", False):
        return None
    describe = getattr(signal, "describe_scorer", None)
    if callable(describe):
        return describe()

    return f"{getattr(signal, 'scorer_role', 'scorer')}: {describe_model(signal.params.model)}"


def stored_notes(store: SignalStore, key: SignalKey) -> list[str]:
    notes = store.meta(key).get("notes") or []
    return [str(n) for n in notes] if isinstance(notes, list) else [str(notes)]


def run_signal(signal: Signal, pool: Pool, store: SignalStore, *, engine: str = "local", shard_size: int | None = None,
               show_progress: bool = True, ray_address: str | None = None, ray_actors: int | None = None) -> SignalRun:
    """Compute ``signal`` (and what it requires) over ``pool`` into ``store`` unless already there."""

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    signal = signal.for_pool(pool)  # a scorer "auto" becomes the model it is on this pool
    key = signal.key(pool)
    t0 = time.perf_counter()
    if hasattr(signal, "bind_pool"):
        signal.bind_pool(pool)
    scorer = scorer_line(signal)
    if store.is_complete(key) and store.meta(key).get("verified"):
        return SignalRun(signal.name, key, 0, 0, 0.0, len(pool), scorer, stored_notes(store, key))
    apply_threads()  # the user's --threads / THRESHER_THREADS, else the cores this process may use
    for dep in signal.requires():
        run_signal(dep, pool, store, engine=engine, shard_size=shard_size, show_progress=show_progress, ray_address=ray_address, ray_actors=ray_actors)

    with store.lock(key):  # another run of this signal finishes first; then it is complete
        if store.is_complete(key) and store.reopen(key, pool.ids):
            return SignalRun(signal.name, key, 0, 0, time.perf_counter() - t0, len(pool), scorer, stored_notes(store, key))
        if signal.scope == "pool":
            store.begin(key, len(pool), max(1, len(pool)))
            inputs = {dep.name: read_signal(dep, pool, store) for dep in signal.requires()}
            with progress(total=1, desc=f"signal {signal.name}", disable=not show_progress) as bar:
                signal.ensure_setup()
                cols = signal.compute_pool(pool, inputs)
                bar.update(1)
            write_shard(store, key, 0, pool.ids, cols, signal)
            cost = getattr(signal, "last_cost", None)  # a pool signal's own cost (e.g. trainings, steps, seconds)
            store.finish(key, 1, {"seconds": time.perf_counter() - t0, "engine": engine, **({"cost": cost} if cost else {})},
                         ids=pool.ids)
            return SignalRun(signal.name, key, 1, 0, time.perf_counter() - t0, len(pool), scorer)

        size = shard_size or signal.default_shard_size
        plan = shard_plan(len(pool), size)
        store.begin(key, len(pool), size)
        done = store.done_shards(key)
        todo = [p for p in plan if p[0] not in done]
        counts: dict[str, int] = {}
        if engine == "ray":
            run_shards_ray(signal, pool, store, key, todo, address=ray_address, actors=ray_actors, show_progress=show_progress,
                           counts=counts)
        elif (workers := shard_workers(signal, len(todo))) > 1:
            with progress(total=len(pool), desc=f"signal {signal.name} ({workers} processes)", disable=not show_progress,
                          unit="ex") as bar:
                bar.update(sum(e - s for i, s, e in plan if i in done))
                for i, ids, cols in map_shards(signal, pool, todo, workers):
                    count_flags(cols, counts)
                    write_shard(store, key, i, ids, cols, signal)
                    bar.update(len(ids))
        else:
            with progress(total=len(pool), desc=f"signal {signal.name}", disable=not show_progress, unit="ex") as bar:
                bar.update(sum(e - s for i, s, e in plan if i in done))
                for i, s, e in todo:
                    recs = pool.slice(s, e)
                    tick = _ShardTicker(bar, e - s)
                    signal.on_progress = tick  # the signal reports within the shard (Signal.advance)
                    try:
                        cols = compute_example_shard(signal, recs)
                    finally:
                        signal.on_progress = None
                    count_flags(cols, counts)
                    write_shard(store, key, i, [r["id"] for r in recs], cols, signal)
                    tick.finish()
        rows = sum(e - s for _, s, e in todo)
        note = run_note(signal, counts, rows)
        if note and len(todo) < len(plan):
            note += f" (in the {rows} rows computed now; {len(plan) - len(todo)} shards were resumed)"
        notes = [f"{signal.name}: {note}"] if note else []
        for n in notes:
            log.info("%s", n)
        meta = {"seconds": time.perf_counter() - t0, "engine": engine, **({"notes": notes} if notes else {})}
        store.finish(key, len(plan), meta, ids=pool.ids)
    return SignalRun(signal.name, key, len(todo), len(plan) - len(todo), time.perf_counter() - t0, len(pool), scorer, notes)


class _ShardTicker:
    """Moves a bar by whole examples as a signal reports (possibly fractional) progress within
    one shard of ``size`` rows, never past it; :meth:`finish` moves it to the shard's end."""

    def __init__(self, bar, size: int):
        self.bar, self.size, self.done, self.shown = bar, size, 0.0, 0

    def __call__(self, n: float) -> None:
        self.done = min(float(self.size), self.done + float(n))
        step = int(self.done) - self.shown
        if step > 0:
            self.bar.update(step)
            self.shown += step

    def finish(self) -> None:
        if self.size > self.shown:
            self.bar.update(self.size - self.shown)
        self.shown = self.size


def read_signal(signal: Signal, pool: Pool, store: SignalStore) -> dict[str, Any]:
    """A stored signal as {column: array aligned with pool order} (+ VECTORS for vector signals)."""
    key = signal.key(pool)
    table = store.read_table(key)
    ids = table.column("id").to_pylist()
    pool_ids = pool.ids
    if ids != pool_ids:
        d = store.path(key)
        missing = len(set(pool_ids) - set(ids))
        raise StoreError(f"signal {signal.name!r} in {d} is not aligned with pool {pool.name!r} ({len(ids)} rows, "
                         f"{len(set(ids))} unique ids, {missing} of the pool's {len(pool_ids)} ids missing): the stored "
                         f"signal is damaged; delete {d} and rerun `thresher score`")
    out: dict[str, Any] = {c: table.column(c).to_numpy(zero_copy_only=False) for c in signal.columns}
    if signal.kind == "vector":
        _, mat = store.read_vectors(key)
        out[VECTORS] = mat
    return out
