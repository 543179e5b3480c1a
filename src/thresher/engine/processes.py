"""The local engine's worker processes: shards of a CPU-bound, model-free example signal
(text statistics, hashes, static embeddings) computed in forked processes, one thread each.

Such signals are Python loops over strings (regular expressions, dictionaries, counters): one
process uses one core whatever its thread settings. With ``n`` cores (the ``--threads`` /
``$THRESHER_THREADS`` budget, else the cores this process may run on) the engine forks ``n``
workers that inherit the pool and the set-up signal (copy-on-write, nothing pickled but the
shard plan and the computed columns) and compute shards in parallel; the parent writes each
shard to the store as it comes back, in plan order, so the store holds exactly what the
sequential loop writes. A signal opts in with ``process_shards = True`` (a class attribute, or
a property that looks at its parameters, e.g. the embedding signal only with the static
encoder: a transformer encoder uses every core by itself). Only where ``fork`` exists (Linux);
elsewhere, and for a single shard or a budget of one thread, the loop stays in-process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any

from thresher.engine.shards import compute_example_shard
from thresher.signals.base import Signal
from thresher.threads import ENV, apply_threads, threads_for

#: (signal, pool) of the running map, read by the forked workers
_JOB: tuple[Signal, Any] | None = None


def shard_workers(signal: Signal, n_shards: int) -> int:
    """Processes for ``n_shards`` shards of ``signal``: 1 unless it opts in, fork exists, and the
    thread budget and the shards allow more."""
    if not getattr(signal, "process_shards", False) or n_shards < 2 or "fork" not in mp.get_all_start_methods():
        return 1
    return max(1, min(threads_for(1), n_shards))


def _start() -> None:
    os.environ[ENV] = "1"  # one core a worker: the Rust tokenizers, torch and BLAS too
    apply_threads(1)


def _compute(plan: tuple[int, int, int]) -> tuple[int, list[str], dict[str, Any]]:
    i, s, e = plan
    signal, pool = _JOB
    recs = pool.slice(s, e)
    return i, [r["id"] for r in recs], compute_example_shard(signal, recs)


def map_shards(signal: Signal, pool, todo: list[tuple[int, int, int]], workers: int) -> Iterator[tuple[int, list[str], dict]]:
    """(shard index, ids, columns) of each shard of ``todo``, in order, computed by ``workers``
    forked processes (the signal is set up once, here, before the fork)."""
    global _JOB
    signal.ensure_setup()
    _JOB = (signal, pool)
    try:
        with mp.get_context("fork").Pool(workers, initializer=_start) as procs:
            yield from procs.imap(_compute, todo)
    finally:
        _JOB = None
