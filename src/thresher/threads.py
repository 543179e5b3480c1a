"""How many threads thresher's work uses: torch's intra-op pool and the BLAS / OpenMP pools.

One decision, made here and applied wherever thresher starts work (the local engine's
shards, the Ray engine's actors, oracle runs in-process, in worker processes or as Ray
tasks, ``train``, ``eval``, the scorer's warm-up)::

    threads per process = max(1, budget // workers)

- ``budget``: the user's setting when there is one: ``--threads N`` on every heavy
  command (score, select, train, eval, bench, demo) or ``THRESHER_THREADS=N`` in the
  environment (the option sets the variable, so worker processes inherit it). Without
  one: the cores this process may actually run on (``os.sched_getaffinity``, which honours
  ``taskset`` and container CPU sets), capped by torch's current thread count (its
  default: the physical cores, or ``OMP_NUM_THREADS``).
- ``workers``: how many processes compute at once (parallel oracle workers; 1 for the
  local engine). Ray actors use the driver's count (so a Ray run computes exactly what the
  local engine computes) and the actor pool is sized to fit the cluster's CPUs.

On a machine shared with another heavy process, torch's default (every core) makes
both fight over the same cores; ``--threads 1`` (or 2 on a larger box) is then several
times faster. The thread count does not enter any cache key.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from thresher.errors import ConfigError

log = logging.getLogger(__name__)

#: the environment variable holding the user's thread budget (``--threads`` sets it)
ENV = "THRESHER_THREADS"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _check(n, what: str) -> int:
    try:
        v = int(str(n).strip())
    except ValueError:
        v = 0
    if v < 1 or str(n).strip() not in (str(v), f"+{v}"):
        raise ConfigError(f"{what}: expected a whole number of threads >= 1, got {n!r}")
    return v


def user_threads() -> int | None:
    """The user's thread budget: ``$THRESHER_THREADS`` (set by ``--threads``), or None."""
    raw = os.environ.get(ENV, "").strip()
    return _check(raw, ENV) if raw else None


def resolve_threads(workers: int = 1, *, user: int | None = None, cores: int | None = None,
                    current: int | None = None) -> int:
    """Threads per process for ``workers`` processes computing at once.

    ``user``: the user's budget (wins when given); else the budget is ``cores`` (default:
    :func:`available_cores`) capped by ``current`` (torch's thread count, when known).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if user is not None:
        budget = _check(user, "threads")
    else:
        budget = cores if cores is not None else available_cores()
        if current:
            budget = min(budget, current)
    return max(1, int(budget) // int(workers))


def threads_for(workers: int = 1) -> int:
    """:func:`resolve_threads` on this machine: the user's setting, the affinity mask and torch's count."""
    import torch

    return resolve_threads(workers, user=user_threads(), cores=available_cores(), current=torch.get_num_threads())


def apply_threads(n: int | None = None, *, blas: bool = True) -> int:
    """Set torch's intra-op threads (and, with threadpoolctl, the BLAS / OpenMP pools) to ``n``
    (default: :func:`threads_for` one worker); returns ``n``."""
    import torch

    n = threads_for(1) if n is None else _check(n, "threads")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if blas:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency; torch's own pool is set above
            pass
        else:
            threadpool_limits(limits=n)
    log.debug("threads: %d per process (torch %d; %d cores available; %s=%s)", n, torch.get_num_threads(),
              available_cores(), ENV, os.environ.get(ENV, "unset"))
    return n


#: what BLAS / OpenMP libraries loaded later (scipy's OpenBLAS, MKL) read when they start
_LIB_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(n: int | None) -> int:
    """The user's budget for this process and the processes it starts (``--threads``):
    records it in ``$THRESHER_THREADS`` and applies it; None keeps the environment's and
    applies that (or the default). With a budget, the BLAS / OpenMP variables are set too,
    so a library loaded later starts with it. Returns the threads now in use."""
    if n is not None:
        os.environ[ENV] = str(_check(n, "--threads"))
    used = apply_threads()
    if user_threads() is not None:
        for var in _LIB_ENV:
            os.environ[var] = str(used)
    return used


@contextmanager
def tokenizer_threads(n: int | None = None) -> Iterator[int]:
    """Inside the block, Hugging Face's Rust tokenizers split a batch call over ``n`` threads
    (default: :func:`threads_for` one worker). thresher keeps ``TOKENIZERS_PARALLELISM=false``
    elsewhere (a forked worker must not inherit a running thread pool); here it is ``true`` and
    restored after. The pool's size is read once per process, when it first starts
    (``RAYON_NUM_THREADS``, set here if unset). With ``n == 1`` nothing changes. Yields ``n``."""
    n = threads_for(1) if n is None else _check(n, "threads")
    if n <= 1:
        yield 1
        return
    os.environ.setdefault("RAYON_NUM_THREADS", str(n))
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield n
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
