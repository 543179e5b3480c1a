"""Shards: the unit of work and of storage for example-scope signals.

A pool of n examples is cut into fixed-size shards (``shard_plan``); each shard is
computed by one worker (``compute_example_shard``, the same call on every engine) and
written to the store (``write_shard``) after checking the signal returned every
declared column.
"""
from __future__ import annotations

from typing import Any

from thresher.data.store import SignalKey, SignalStore
from thresher.signals.base import VECTORS, Signal


def shard_plan(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    return [(i, s, min(s + shard_size, n)) for i, s in enumerate(range(0, n, shard_size))] or [(0, 0, 0)]


def write_shard(store: SignalStore, key: SignalKey, i: int, ids: list[str], cols: dict[str, Any], signal: Signal) -> None:
    cols = dict(cols)
    vectors = cols.pop(VECTORS, None)
    missing = [c for c in signal.columns if c not in cols]
    if missing:
        raise RuntimeError(f"signal {signal.name!r} did not return columns {missing}")
    if signal.kind == "vector" and vectors is None:
        raise RuntimeError(f"vector signal {signal.name!r} returned no vectors")
    store.write_shard(key, i, ids, {c: cols[c] for c in signal.columns}, vectors)


def compute_example_shard(signal: Signal, records: list[dict]) -> dict[str, Any]:
    """``signal.compute(records)`` after its setup (the local engine sets ``signal.on_progress``
    around it, so the signal can report within the shard: :meth:`Signal.advance`)."""
    signal.ensure_setup()
    return signal.compute(records)


def is_flag(name: str) -> bool:
    """A per-row flag a signal returns beside its columns (``__name__``, not the vectors):
    counted by the engine into the run's notes, never stored."""
    return name.startswith("__") and name.endswith("__") and name != VECTORS


def count_flags(cols: dict[str, Any], counts: dict[str, int]) -> None:
    """Add the rows set in each flag of a computed shard to ``counts``."""
    import numpy as np

    for name, values in cols.items():
        if is_flag(name):
            counts[name] = counts.get(name, 0) + int(np.count_nonzero(np.asarray(values)))


def run_note(signal: Signal, counts: dict[str, int], rows: int) -> str | None:
    """The signal's line about this run's flags (e.g. how many examples were truncated), or None."""
    note = getattr(signal, "run_note", None)
    return note(counts, rows) if callable(note) and rows else None
