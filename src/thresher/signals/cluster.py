"""The one k-means of the package: pure functions on arrays, no signal and no state.

Every clustering in thresher goes through :func:`kmeans`: the ``kmeans`` signal and THTB's
TF-IDF silhouette (:mod:`thresher.signals.geometry`), HARP's hierarchy
(:mod:`thresher.select.harp.hierarchy`) and TMAP's anchor points
(:mod:`thresher.select.tmap.proxy`). The callers differ only in the options they pass:

- ``backend``: ``faiss`` (``faiss.Kmeans``: random seeded init, ``n_iter`` Lloyd
  iterations) or ``sklearn`` (``KMeans(init="k-means++", n_init, max_iter=n_iter,
  random_state=seed)``, the only backend that takes a sparse matrix or keeps float64);
  ``auto`` is faiss when it imports, else scikit-learn (:func:`resolve_backend`). Each
  backend is deterministic for a seed; the two give different, equally valid partitions.
- ``train_points_per_centroid``: ``None`` trains on every row; a number caps the training
  rows at ``train_points_per_centroid * k`` (a seeded subsample, rows kept in pool order),
  so the cost stays linear in the rows.
- ``assign``: ``fit`` labels each row as the backend's fit does (scikit-learn's
  ``labels_``; faiss: one search of every row in the trained index); ``nearest`` assigns
  every row to its nearest centroid (L2, the centroids as float32) in row blocks (faiss
  ``IndexFlatL2``, or NumPy in float64) -- needed when training on a subsample.
- ``relabel``: ``raw`` backend ids (int64); ``compact`` ids 0..k'-1 in id order with empty
  clusters removed; ``first_seen`` ids in the order their first member appears
  (:func:`first_seen_labels`).
- ``parallel_work``: below this many ``rows x k x dims`` faiss runs single-threaded
  (OpenMP start-up costs more than the work on small inputs); 0 leaves the threads alone.
- ``quiet``: silence scikit-learn's ``ConvergenceWarning`` (e.g. fewer distinct points than
  clusters).

The numerical work is faiss's or scikit-learn's, so results are those libraries' for a
given seed; the options above only decide which rows they see and how labels come back.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

Backend = Literal["auto", "faiss", "sklearn"]
Assign = Literal["fit", "nearest"]
Relabel = Literal["raw", "compact", "first_seen"]

#: rows per block when assigning rows to their nearest centroid
ASSIGN_BLOCK = 65536


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when faiss imports, else ``sklearn``; a named backend must be importable."""
    if backend not in ("auto", "faiss", "sklearn"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'sklearn', got {backend!r}")
    if backend in ("auto", "faiss"):
        try:
            import faiss  # noqa: F401

            return "faiss"
        except ImportError:
            if backend == "faiss":
                raise ImportError("backend='faiss' needs faiss-cpu (pip install 'thresher[embed]' or pip install faiss-cpu)") from None
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ImportError("clustering needs scikit-learn (pip install scikit-learn) or faiss-cpu") from e
    return "sklearn"


def first_seen_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, 2, ... in the order their first member appears in the pool.

    Makes cluster ids independent of the backend's internal numbering; empty clusters
    vanish, so ids run from 0 to (number of non-empty clusters - 1).
    """
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    remap = np.empty(len(first), dtype=np.int64)
    remap[order] = np.arange(len(first))
    _, inverse = np.unique(labels, return_inverse=True)
    return remap[inverse]


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k'-1 in the order of the original ids (empty clusters removed)."""
    _, compact = np.unique(labels, return_inverse=True)
    return compact.astype(np.int64)


def relabelled(labels: np.ndarray, how: str) -> np.ndarray:
    """``raw`` (int64 as given), ``compact`` or ``first_seen`` labels."""
    if how == "raw":
        return np.asarray(labels).astype(np.int64)
    if how == "compact":
        return compact_labels(labels)
    if how == "first_seen":
        return first_seen_labels(labels)
    raise ValueError(f"kmeans: relabel must be 'raw', 'compact' or 'first_seen', got {how!r}")


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, backend: str, block: int = ASSIGN_BLOCK) -> np.ndarray:
    """Index of the nearest centroid (L2) of every row of ``x``, in row blocks.

    The centroids are taken as float32. ``faiss``: an exact ``IndexFlatL2`` search per block
    (rows as float32); ``sklearn`` (or any other name): NumPy, ``argmin(|c|^2 - 2 x.c)`` in
    float64.
    """
    cents = np.ascontiguousarray(centroids, dtype=np.float32)
    out = np.empty(x.shape[0], dtype=np.int64)
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(cents.shape[1])
        index.add(cents)
        for s in range(0, x.shape[0], block):
            _, i = index.search(np.ascontiguousarray(x[s:s + block], dtype=np.float32), 1)
            out[s:s + block] = i[:, 0]
        return out
    c = cents.astype(np.float64)
    cn = (c * c).sum(axis=1)
    for s in range(0, x.shape[0], block):
        xb = x[s:s + block].astype(np.float64)
        out[s:s + block] = np.argmin(cn[None, :] - 2.0 * xb @ c.T, axis=1)
    return out


def training_rows(n: int, k: int, train_points_per_centroid: int | None, seed: int) -> np.ndarray | None:
    """The rows k-means trains on: None (all of them) unless a cap ``train_points_per_centroid * k``
    is below n, then a seeded sample of that many rows, in pool order."""
    if train_points_per_centroid is None:
        return None
    cap = train_points_per_centroid * k
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


@dataclass
class KMeansResult:
    labels: np.ndarray  # [N] int64 (relabelled as asked)
    centroids: np.ndarray  # [k, d] as the backend returns them (faiss float32; scikit-learn the input's dtype)
    backend: str  # the backend used


def kmeans(x, k: int, *, seed: int = 0, backend: str = "auto", n_iter: int = 25, n_init: int = 1,
           train_points_per_centroid: int | None = None, assign: Assign = "fit", relabel: Relabel = "raw",
           parallel_work: int = 0, quiet: bool = False) -> KMeansResult:
    """k-means of the rows of ``x`` into ``k`` clusters (see the module docs for the options).

    ``x``: an [N, d] array (faiss needs and gets float32; scikit-learn keeps the dtype and
    takes a scipy sparse matrix). ``k`` must be between 1 and N. ``n_iter``: faiss
    ``niter`` / scikit-learn ``max_iter``; ``n_init``: scikit-learn ``n_init`` / faiss
    ``nredo`` (the best of that many seeded runs).
    """
    import scipy.sparse as sp

    sparse = sp.issparse(x)
    if not sparse:
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"kmeans: expected an [N, d] matrix, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of examples ({n})")
    if n_iter < 1 or n_init < 1:
        raise ValueError(f"kmeans: n_iter and n_init must be >= 1, got {n_iter} and {n_init}")
    if assign not in ("fit", "nearest"):
        raise ValueError(f"kmeans: assign must be 'fit' or 'nearest', got {assign!r}")
    used = resolve_backend(backend)
    if sparse and used == "faiss":
        raise ValueError("kmeans: a sparse matrix needs backend='sklearn'")
    sub = training_rows(n, k, train_points_per_centroid, seed)
    if sub is not None and assign == "fit" and used == "sklearn":
        raise ValueError("kmeans: training on a subsample (train_points_per_centroid) needs assign='nearest' with scikit-learn")
    if used == "faiss":
        labels, centroids = _faiss(x, k, seed=seed, n_iter=n_iter, n_init=n_init, sub=sub,
                                   max_ppc=train_points_per_centroid, assign=assign, parallel_work=parallel_work)
    else:
        labels, centroids = _sklearn(x, k, seed=seed, n_iter=n_iter, n_init=n_init, sub=sub, assign=assign, quiet=quiet)
    return KMeansResult(relabelled(labels, relabel), centroids, used)


def _faiss(x, k, *, seed, n_iter, n_init, sub, max_ppc, assign, parallel_work):
    import faiss

    n, d = x.shape
    train = x if sub is None else x[sub]
    threads = faiss.omp_get_max_threads()
    single = bool(parallel_work) and train.shape[0] * k * d < parallel_work
    if single:
        faiss.omp_set_num_threads(1)
    try:
        # max_points_per_centroid never makes faiss subsample: the rows it sees are already capped
        km = faiss.Kmeans(d, k, niter=n_iter, nredo=n_init, seed=seed, verbose=False, spherical=False,
                          max_points_per_centroid=max_ppc if max_ppc is not None else max(1, n), min_points_per_centroid=1)
        km.train(np.ascontiguousarray(train, dtype=np.float32))
        centroids = np.asarray(km.centroids, dtype=np.float32)
        if assign == "fit":
            _, idx = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
            return idx[:, 0].astype(np.int64), centroids
        return nearest_centroid(x, centroids, "faiss"), centroids
    finally:
        if single:
            faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def _no_convergence_warnings():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _sklearn(x, k, *, seed, n_iter, n_init, sub, assign, quiet):
    from sklearn.cluster import KMeans

    train = x if sub is None else x[sub]
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=n_iter, random_state=seed)
    with _no_convergence_warnings() if quiet else contextlib.nullcontext():
        km.fit(train)
    if assign == "fit":
        return np.asarray(km.labels_).astype(np.int64), km.cluster_centers_
    return nearest_centroid(x, km.cluster_centers_, "sklearn"), km.cluster_centers_
