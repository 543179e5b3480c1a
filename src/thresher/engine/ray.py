"""The Ray engine: the local engine's shards, computed by a Ray actor pool; oracle runs as Ray tasks.

Signals (:func:`run_shards_ray`): the shards still to do become a Ray Dataset of shard
descriptors, mapped with ``map_batches(ShardWorker, batch_size=1)`` over a fixed-size
actor pool. Each :class:`ShardWorker` builds the signal once from its class and params,
so a model signal loads its model once per actor, then computes whole shards: the same
shard boundaries, and so the same batches inside a shard, as the local engine. Each
result comes back to the driver as Arrow IPC bytes (plus ``.npy`` bytes for vectors,
nothing pickled), and the driver writes the shards in completion order through the same
store call as the local engine. A killed run leaves its finished shards marked done, and
the next run (on either engine) computes only the rest.

Identical results: a worker sets torch (and, through :mod:`thresher.threads`, the BLAS /
OpenMP pools) to the driver's intra-op thread count (Ray would otherwise give it
``OMP_NUM_THREADS`` = its CPU share; the driver's count is the user's ``--threads`` /
``THRESHER_THREADS`` when set), and a signal with a driver-side
step (``prepare(pool)``, e.g. the LM scorer's warm-up) runs that step once in the driver
and hands the workers its state (``use_prepared(state)``), so every actor loads the very
same cached weights instead of training its own.
"""
from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from thresher.engine.cluster import (
    cluster_resources,
    connect,
    driver_threads,
    pack_dir,
    unpack_dir,
    worker_env,
)
from thresher.engine.shards import count_flags, write_shard
from thresher.progress import progress
from thresher.signals.base import VECTORS, Signal
from thresher.threads import apply_threads

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shard transport


def encode_shard(signal_name: str, shard: int, ids: list[str], cols: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """A computed shard as (Arrow IPC bytes of id + columns, ``.npy`` bytes of the vectors or None).

    Columns become Arrow arrays the way the store converts them (lists as lists, anything
    else through ``numpy.asarray``), so :func:`decode_shard` can hand the store values that
    convert back to the very same arrays.
    """
    import pyarrow as pa

    cols = dict(cols)
    vectors = cols.pop(VECTORS, None)
    arrays = {"id": pa.array(ids, pa.string())}
    for name, values in cols.items():
        arr = pa.array(values) if isinstance(values, list) else pa.array(np.asarray(values))
        if len(arr) != len(ids):
            raise ValueError(f"signal {signal_name!r}: column {name!r} of shard {shard} has {len(arr)} rows for {len(ids)} ids")
        arrays[name] = arr
    table = pa.table(arrays)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    vec_bytes = None
    if vectors is not None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(vectors), allow_pickle=False)
        vec_bytes = buf.getvalue()
    return sink.getvalue().to_pybytes(), vec_bytes


def _store_value(column):
    """An Arrow column as the value the store converts back to the same Arrow array."""
    import pyarrow as pa

    t = column.type
    nested = pa.types.is_nested(t) or pa.types.is_dictionary(t)
    if column.null_count or nested:
        return column.to_pylist()
    return column.to_numpy(zero_copy_only=False)


def decode_shard(payload: bytes, vectors: bytes | None) -> tuple[list[str], dict[str, Any]]:
    """Inverse of :func:`encode_shard`: (ids, {column: values} + VECTORS when present)."""
    import pyarrow as pa

    table = pa.ipc.open_stream(payload).read_all()
    ids = table.column("id").to_pylist()
    cols = {name: _store_value(table.column(name)) for name in table.column_names if name != "id"}
    if vectors is not None:
        cols[VECTORS] = np.load(io.BytesIO(vectors), allow_pickle=False)
    return ids, cols


# --------------------------------------------------------------------------- signals


class ShardWorker:
    """A Ray Data actor: builds the signal once (its setup loads a model once per actor),
    then turns batches of shard indices into encoded shard results."""

    def __init__(self, signal_cls: type[Signal], params: dict, state: dict | None, shard_records: dict,
                 threads: int | None, env: dict[str, str], artifact=None):
        os.environ.update(env)
        if threads:
            apply_threads(threads)
        self.signal = signal_cls(**params)
        if state is not None:
            state = dict(state)
            if artifact is not None:
                import ray

                state["artifact_dir"] = str(unpack_dir(ray.get(artifact), Path(state["artifact_dir"]).name))
            self.signal.use_prepared(state)
        self.signal.ensure_setup()
        self.shard_records = shard_records

    def __call__(self, batch):
        import pyarrow as pa
        import ray

        shards, payloads, vectors = [], [], []
        for i in batch.column("shard").to_pylist():
            records = ray.get(self.shard_records[i])
            cols = self.signal.compute(records)
            payload, vec = encode_shard(self.signal.name, i, [r["id"] for r in records], cols)
            shards.append(i)
            payloads.append(payload)
            vectors.append(vec)
        return pa.table({"shard": pa.array(shards, pa.int64()), "payload": pa.array(payloads, pa.large_binary()),
                         "vectors": pa.array(vectors, pa.large_binary())})


def run_shards_ray(signal: Signal, pool, store, key, todo: list[tuple[int, int, int]], *, address: str | None = None,
                   actors: int | None = None, show_progress: bool = True, threads: int | None = None,
                   gpus_per_actor: float | None = None, ship_artifacts: bool | None = None,
                   counts: dict[str, int] | None = None) -> int:
    """Compute the shards ``todo`` = [(shard index, start, stop), ...] of an example-scope
    signal on Ray and write each one to ``store`` as the local engine does; returns how many.

    ``actors``: size of the actor pool (default: as many as the cluster's CPUs allow at
    ``threads`` each, at most one per shard). ``threads``: torch threads per actor
    (default: the driver's, so float results equal the local engine's). ``gpus_per_actor``:
    default 1 for heavy (model) signals on a cluster with GPUs, else 0. ``ship_artifacts``:
    send a prepared model's files through the object store instead of relying on a shared
    disk (default: only when the cluster has more than one node). ``counts``: filled with the
    rows set in each per-row flag the signal returned (see :func:`thresher.engine.shards.count_flags`).
    The bar moves per shard here (a worker's progress within a shard stays in the worker).
    """
    if actors is not None and actors < 1:
        raise ValueError(f"ray_actors must be >= 1, got {actors}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if signal.scope != "example":
        raise ValueError(f"signal {signal.name!r} is {signal.scope}-scoped: only example-scope signals run on Ray shards")
    done_rows = len(pool) - sum(e - s for _, s, e in todo)
    if not todo:
        return 0
    ray = connect(address)
    from ray import data as ray_data

    t0 = time.perf_counter()
    state = None
    if callable(getattr(signal, "prepare", None)):
        if not callable(getattr(signal, "use_prepared", None)):
            raise TypeError(f"signal {signal.name!r} has prepare(pool) but no use_prepared(state) for its workers")
        state = signal.prepare(pool)
    threads = threads or driver_threads()
    cpus, gpus = cluster_resources(ray)
    if cpus <= 0:
        raise RuntimeError("the Ray cluster reports no CPUs")
    n_actors = min(actors or max(1, int(cpus // threads)), len(todo))
    cpus_per_actor = min(float(threads), cpus / n_actors)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if (signal.heavy and gpus >= n_actors) else 0.0
    artifact = None
    if state is not None and state.get("artifact_dir"):
        if ship_artifacts is None:
            ship_artifacts = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
        if ship_artifacts:
            artifact = ray.put(pack_dir(state["artifact_dir"]))
    shard_records = {i: ray.put(pool.slice(s, e)) for i, s, e in todo}
    log.info("ray engine: signal %s, %d shards on %d actors (%.2g CPUs, %d torch threads, %g GPUs each)",
             signal.name, len(todo), n_actors, cpus_per_actor, threads, gpus_per_actor)

    ctx = ray_data.DataContext.get_current()  # quiet Ray Data's own bars and banners: the driver shows one bar
    quiet = {a: False for a in ("enable_progress_bars", "print_on_execution_start") if hasattr(ctx, a)}
    saved = {a: getattr(ctx, a) for a in quiet}
    for a, v in quiet.items():
        setattr(ctx, a, v)
    written = 0
    try:
        ds = ray_data.from_items([{"shard": i} for i, _, _ in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardWorker, batch_size=1, batch_format="pyarrow", compute=ray_data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
            fn_constructor_kwargs={"signal_cls": type(signal), "params": signal.params.model_dump(), "state": state,
                                   "shard_records": shard_records, "threads": threads, "env": worker_env(),
                                   "artifact": artifact},
        )
        with progress(total=len(pool), desc=f"signal {signal.name} (ray)", disable=not show_progress, unit="ex") as bar:
            bar.update(done_rows)
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for i, payload, vec in zip(block.column("shard").to_pylist(), block.column("payload").to_pylist(),
                                           block.column("vectors").to_pylist(), strict=True):
                    ids, cols = decode_shard(payload, vec)
                    if counts is not None:
                        count_flags(cols, counts)
                    write_shard(store, key, i, ids, cols, signal)
                    written += 1
                    bar.update(len(ids))
    except Exception as e:
        if written == len(todo):
            raise
        raise RuntimeError(f"signal {signal.name!r} on Ray failed after {written} of {len(todo)} shards were written "
                           f"(finished shards are kept; rerun to resume): {e}") from e
    finally:
        for a, v in saved.items():
            setattr(ctx, a, v)
    log.info("ray engine: signal %s, %d shards in %.1f s", signal.name, written, time.perf_counter() - t0)
    if written != len(todo):
        raise RuntimeError(f"signal {signal.name!r} on Ray returned {written} of {len(todo)} shards")
    return written
