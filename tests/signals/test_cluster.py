"""The one k-means (thresher.signals.cluster): backends, subsampling, assignment, relabelling.

Planted blobs for correctness; the scikit-learn and faiss calls it stands for, made by hand,
for "the numbers are the library's"; the options each caller relies on (subsample + nearest
assignment for HARP, first-seen ids and quiet restarts for TMAP, sparse input for THTB).
"""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from thresher.signals.cluster import (
    compact_labels,
    first_seen_labels,
    kmeans,
    nearest_centroid,
    relabelled,
    resolve_backend,
    training_rows,
)

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss-cpu is not installed")
BACKENDS = ["sklearn", pytest.param("faiss", marks=needs_faiss)]


def blobs(seed: int = 0, n: int = 300, d: int = 8, c: int = 3, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = np.eye(c, d) * 4.0
    truth = rng.integers(0, c, n)
    return (centres[truth] + rng.normal(0.0, spread, (n, d))).astype(np.float32), truth


def same_partition(a, b) -> bool:
    return np.array_equal(first_seen_labels(a), first_seen_labels(b))


def test_resolve_backend():
    assert resolve_backend("sklearn") == "sklearn"
    assert resolve_backend("auto") in ("faiss", "sklearn")
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("cuml")


def test_relabelling_by_hand():
    labels = np.array([5, 5, 2, 9, 2])
    assert first_seen_labels(labels).tolist() == [0, 0, 1, 2, 1]
    assert compact_labels(labels).tolist() == [1, 1, 0, 2, 0]
    assert relabelled(labels, "raw").tolist() == [5, 5, 2, 9, 2] and relabelled(labels, "raw").dtype == np.int64
    with pytest.raises(ValueError, match="relabel must be"):
        relabelled(labels, "sorted")


def test_training_rows_are_a_seeded_sorted_cap():
    assert training_rows(100, 4, None, 0) is None
    assert training_rows(100, 4, 25, 0) is None  # cap 100 >= n
    rows = training_rows(1000, 4, 25, 3)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, training_rows(1000, 4, 25, 3)) and not np.array_equal(rows, training_rows(1000, 4, 25, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_planted_blobs_and_is_deterministic(backend):
    x, truth = blobs()
    res = kmeans(x, 3, seed=1, backend=backend)
    assert res.backend == backend and res.labels.dtype == np.int64 and res.centroids.shape == (3, 8)
    assert same_partition(res.labels, truth)
    again = kmeans(x, 3, seed=1, backend=backend)
    assert np.array_equal(res.labels, again.labels) and np.array_equal(res.centroids, again.centroids)
    # trained on a subsample, every row assigned to its nearest centroid: the same blobs
    sub = kmeans(x, 3, seed=1, backend=backend, train_points_per_centroid=10, assign="nearest", relabel="compact")
    assert same_partition(sub.labels, truth) and set(sub.labels.tolist()) == {0, 1, 2}
    assert np.array_equal(sub.labels, compact_labels(nearest_centroid(x, sub.centroids, backend)))
    fs = kmeans(x, 3, seed=1, backend=backend, relabel="first_seen")
    assert fs.labels[0] == 0 and np.array_equal(fs.labels, first_seen_labels(res.labels))


def test_sklearn_backend_is_scikit_learns_kmeans():
    from sklearn.cluster import KMeans

    x, _ = blobs(seed=2, spread=1.0)
    res = kmeans(x, 4, seed=5, backend="sklearn", n_iter=7, n_init=3)
    km = KMeans(n_clusters=4, init="k-means++", n_init=3, max_iter=7, random_state=5).fit(x)
    assert np.array_equal(res.labels, km.labels_) and np.array_equal(res.centroids, km.cluster_centers_)
    # float64 stays float64 (TMAP's anchors), sparse input works (THTB's TF-IDF)
    x64 = x.astype(np.float64)
    assert kmeans(x64, 4, seed=5, backend="sklearn").centroids.dtype == np.float64
    sparse = sp.csr_matrix(x64)
    km = KMeans(n_clusters=4, init="k-means++", n_init=1, max_iter=300, random_state=0).fit(sparse)
    assert np.array_equal(kmeans(sparse, 4, backend="sklearn", n_iter=300).labels, km.labels_)


@needs_faiss
def test_faiss_backend_is_faiss_kmeans_and_keeps_the_thread_count():
    import faiss

    x, _ = blobs(seed=3, spread=1.0)
    threads = faiss.omp_get_max_threads()
    res = kmeans(x, 5, seed=2, backend="faiss", n_iter=9, parallel_work=10**12)  # forced single-threaded
    assert faiss.omp_get_max_threads() == threads
    km = faiss.Kmeans(8, 5, niter=9, seed=2, verbose=False, spherical=False, max_points_per_centroid=len(x), min_points_per_centroid=1)
    km.train(x)
    _, idx = km.index.search(x, 1)
    assert np.array_equal(res.labels, idx[:, 0]) and np.array_equal(res.centroids, km.centroids)
    assert kmeans(x, 5, seed=2, backend="faiss", n_init=3).labels.shape == (len(x),)  # restarts (nredo)
    with pytest.raises(ValueError, match="sparse matrix needs backend='sklearn'"):
        kmeans(sp.csr_matrix(x), 2, backend="faiss")


def test_nearest_centroid_backends_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    c = rng.normal(size=(7, 6)).astype(np.float32)
    expected = np.argmin(((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    assert np.array_equal(nearest_centroid(x, c, "sklearn", block=64), expected)
    if HAS_FAISS:
        assert np.array_equal(nearest_centroid(x, c, "faiss", block=64), expected)


def test_errors_and_warnings():
    x, _ = blobs(n=20)
    with pytest.raises(ValueError, match="k=21 must be between 1 and the number of examples"):
        kmeans(x, 21)
    with pytest.raises(ValueError, match="k=0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="needs assign='nearest'"):
        kmeans(x, 2, backend="sklearn", train_points_per_centroid=2)
    with pytest.raises(ValueError, match="assign must be"):
        kmeans(x, 2, assign="soft")
    dup = np.repeat(np.eye(2, dtype=np.float32), 5, axis=0)  # 2 distinct points, 3 clusters asked
    with pytest.warns(Warning, match="Number of distinct clusters"):
        kmeans(dup, 3, backend="sklearn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kmeans(dup, 3, backend="sklearn", quiet=True)
