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

Identical results: a worker sets torch to the driver's intra-op thread count (Ray would
otherwise give it ``OMP_NUM_THREADS`` = its CPU share), and a signal with a driver-side
step (``prepare(pool)``, e.g. the LM scorer's warm-up) runs that step once in the driver
and hands the workers its state (``use_prepared(state)``), so every actor loads the very
same cached weights instead of training its own.

Oracle runs (:func:`run_oracle_jobs_ray`): each job is one Ray task running
:func:`thresher.oracle._run_job` with the job's thread count as its CPUs (and one GPU
per job on a cluster that has GPUs); results come back in job order.

The cluster: ``address`` connects to a running cluster; otherwise a local one is
started with every core of this machine and kept for the rest of the process (starting
one costs seconds). :func:`shutdown_ray` stops only a cluster this module started.
"""
from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .progress import progress
from .signals.base import VECTORS, Signal

log = logging.getLogger(__name__)

#: environment variables a worker must share with the driver (cache location, offline mode, progress)
FORWARDED_ENV = ("THRESHER_CACHE", "THRESHER_PROGRESS", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

_started_here = False


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray engine needs Ray: pip install 'thresher[ray]'") from e
    return ray


def connect(address: str | None = None):
    """The ``ray`` module, connected: to ``address``, to the cluster this process already
    uses, or to a new local cluster with every core of this machine."""
    global _started_here
    ray = _import_ray()
    if ray.is_initialized():
        log.info("ray engine: using the Ray cluster this process is already connected to")
        if address:
            log.warning("ray engine: already connected to a Ray cluster; address %r is not used", address)
        return ray
    if address:
        ray.init(address=address)
        log.info("ray engine: connected to the Ray cluster at %s", address)
    else:
        cpus = os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True)
        _started_here = True
        log.info("ray engine: started a local Ray cluster with %d CPUs", cpus)
    return ray


def shutdown_ray() -> bool:
    """Shut down the Ray cluster if (and only if) this module started it; True when it did."""
    global _started_here
    if not _started_here:
        return False
    ray = _import_ray()
    if ray.is_initialized():
        ray.shutdown()
    _started_here = False
    log.info("ray engine: shut down the local Ray cluster it had started")
    return True


def worker_env() -> dict[str, str]:
    """The driver's values of :data:`FORWARDED_ENV` (only those that are set)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def driver_threads() -> int:
    """torch's intra-op thread count in this (driver) process: what the local engine computes with."""
    import torch

    return torch.get_num_threads()


def cluster_resources(ray) -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


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


# --------------------------------------------------------------------------- artifacts for other nodes


def pack_dir(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file under ``path`` as {relative path: bytes} (a prepared model to ship to other nodes)."""
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack_dir(files: dict[str, bytes], name: str) -> Path:
    """Write shipped files once into this node's cache (``<cache>/ray-artifacts/<name>``); return the directory."""
    from .models.load import cache_root

    out = cache_root() / "ray-artifacts" / name
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    for rel, data in files.items():
        target = tmp / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"shipped artifact {name!r} has an unsafe path {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (tmp / ".complete").write_text("ok")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- signals


class ShardWorker:
    """A Ray Data actor: builds the signal once (its setup loads a model once per actor),
    then turns batches of shard indices into encoded shard results."""

    def __init__(self, signal_cls: type[Signal], params: dict, state: dict | None, shard_records: dict,
                 threads: int | None, env: dict[str, str], artifact=None):
        os.environ.update(env)
        if threads:
            import torch

            torch.set_num_threads(threads)
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
                   gpus_per_actor: float | None = None, ship_artifacts: bool | None = None) -> int:
    """Compute the shards ``todo`` = [(shard index, start, stop), ...] of an example-scope
    signal on Ray and write each one to ``store`` as the local engine does; returns how many.

    ``actors``: size of the actor pool (default: as many as the cluster's CPUs allow at
    ``threads`` each, at most one per shard). ``threads``: torch threads per actor
    (default: the driver's, so float results equal the local engine's). ``gpus_per_actor``:
    default 1 for heavy (model) signals on a cluster with GPUs, else 0. ``ship_artifacts``:
    send a prepared model's files through the object store instead of relying on a shared
    disk (default: only when the cluster has more than one node).
    """
    from .engine import _write

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
                    _write(store, key, i, ids, cols, signal)
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


# --------------------------------------------------------------------------- oracle runs


def run_oracle_job(job: dict, env: dict[str, str]) -> dict:
    """One oracle run inside a Ray worker: the driver's environment, then :func:`thresher.oracle._run_job`."""
    os.environ.update(env)
    from .oracle import _run_job

    return _run_job(job)


def run_oracle_jobs_ray(jobs: list[dict], *, address: str | None = None, gpus_per_job: float | None = None,
                        show_progress: bool = True) -> list[dict]:
    """Run oracle jobs (the dicts ``Oracle._job`` builds) as Ray tasks; results in job order.

    Each task reserves the job's ``threads`` CPUs (a job without a thread count gets the
    driver's torch thread count, as it would in-process) and ``gpus_per_job`` GPUs
    (default: 1 when the cluster has GPUs, else 0).
    """
    if not jobs:
        return []
    ray = connect(address)
    cpus, gpus = cluster_resources(ray)
    if gpus_per_job is None:
        gpus_per_job = 1.0 if gpus >= 1 else 0.0
    default_threads = driver_threads()
    env = worker_env()
    remote = ray.remote(run_oracle_job)
    refs = []
    for job in jobs:
        job = dict(job, progress=False)
        job["threads"] = job.get("threads") or default_threads
        refs.append(remote.options(num_cpus=min(float(job["threads"]), cpus), num_gpus=gpus_per_job).remote(job, env))
    log.info("ray engine: %d oracle runs (%g GPUs each)", len(refs), gpus_per_job)
    pending = list(refs)
    with progress(total=len(refs), desc="oracle runs (ray)", disable=not show_progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            bar.update(len(ready))
    return ray.get(refs)
