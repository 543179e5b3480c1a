"""The Ray cluster thresher's engines run on: connect (or start a local one), what a worker
inherits from the driver, and files shipped to other nodes.

The cluster: ``address`` connects to a running cluster; otherwise a local one is
started with every core this process may run on and kept for the rest of the process (starting
one costs seconds). :func:`shutdown_ray` stops only a cluster this module started.
Ray itself is imported on first use (it is an optional extra: ``thresher[ray]``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from thresher.data.io import atomic_dir
from thresher.data.paths import cache_root
from thresher.threads import available_cores

log = logging.getLogger(__name__)

#: environment variables a worker must share with the driver (cache location, offline mode, progress)
FORWARDED_ENV = ("THRESHER_CACHE", "THRESHER_PROGRESS", "THRESHER_THREADS", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                 "TRANSFORMERS_OFFLINE")

_started_here = False


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray engine needs Ray: pip install 'thresher[ray]'") from e
    return ray


def connect(address: str | None = None):
    """The ``ray`` module, connected: to ``address``, to the cluster this process already
    uses, or to a new local cluster with every core this process may run on."""
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

        cpus = available_cores()  # the cores this process may run on (its affinity mask)
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


# --------------------------------------------------------------------------- artifacts for other nodes


def pack_dir(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file under ``path`` as {relative path: bytes} (a prepared model to ship to other nodes)."""
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack_dir(files: dict[str, bytes], name: str) -> Path:
    """Write shipped files once into this node's cache (``<cache>/ray-artifacts/<name>``); return the directory."""
    out = cache_root() / "ray-artifacts" / name
    if (out / ".complete").exists():
        return out

    def fill(tmp: Path) -> None:
        for rel, data in files.items():
            target = tmp / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"shipped artifact {name!r} has an unsafe path {rel!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / ".complete").write_text("ok")

    return atomic_dir(out, fill)
