"""Oracle runs as Ray tasks: each :class:`~thresher.oracle.job.TrainEvalJob` runs as one task
with the job's thread count as its CPUs (and one GPU per job on a cluster that has GPUs);
results come back in job order.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from thresher.engine.cluster import (
    cluster_resources,
    connect,
    driver_threads,
    worker_env,
)
from thresher.oracle.job import TrainEvalJob, run_job
from thresher.progress import progress

log = logging.getLogger(__name__)


def run_oracle_job(job: TrainEvalJob, env: dict[str, str]) -> dict:
    """One oracle run inside a Ray worker: the driver's environment, then :func:`thresher.oracle.job.run_job`."""
    os.environ.update(env)
    return run_job(job)


def run_oracle_jobs_ray(jobs: list[TrainEvalJob], *, address: str | None = None, gpus_per_job: float | None = None,
                        show_progress: bool = True) -> list[dict]:
    """Run oracle jobs as Ray tasks; results in job order.

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
        job = dataclasses.replace(job, progress=False, threads=job.threads or default_threads)
        refs.append(remote.options(num_cpus=min(float(job.threads), cpus), num_gpus=gpus_per_job).remote(job, env))
    log.info("ray engine: %d oracle runs (%g GPUs each)", len(refs), gpus_per_job)
    pending = list(refs)
    with progress(total=len(refs), desc="oracle runs (ray)", disable=not show_progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            bar.update(len(ready))
    return ray.get(refs)
