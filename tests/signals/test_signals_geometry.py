"""Embeddings (real all-MiniLM-L6-v2), k-means, kNN diversity, task relevance and the TF-IDF silhouette."""
from __future__ import annotations

import numpy as np
import pytest

from thresher.data.pool import Pool, user_text
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals import geometry, knn
from thresher.signals.base import VECTORS, make_signal
from thresher.signals.dedup import SemanticDedup
from thresher.signals.embed import Embedding, embed_text, encode_texts, load_encoder
from thresher.signals.geometry import (
    KMeansClusters,
    KNNDiversity,
    TaskRelevance,
    cosine_to_centroid,
    default_k,
    first_seen_labels,
    kmeans_cluster,
    knn_cosine_distance,
    silhouette_cosine_unit,
    tfidf_query_text,
    tfidf_silhouette,
    top_m_mean_cosine,
)
from thresher.signals.knn import (
    IVFConfig,
    exact_knn,
    ivf_knn,
    knn_backend,
    knn_recall,
    top_k_exact,
)

TEXTS = [
    ("How do I cook pasta?", "Boil salted water, add the pasta and cook it for ten minutes."),
    ("How do I cook pasta?", "Boil salted water, add the pasta and cook it for ten minutes."),  # same text as ex0
    ("What is the best way to prepare spaghetti?", "Bring a pot of salted water to a boil and simmer the noodles."),
    ("Why did the stock market fall today?", "Shares dropped after the central bank raised interest rates."),
    ("Ann has 3 pens, gets 4. How many now?", "3+4=7. The answer is 7."),
    ("Write a haiku about the ocean.", "Waves fold into foam, the tide keeps its slow promise."),
]


def chat(i: int, user: str, answer: str) -> dict:
    return {"id": f"ex{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "source": "hand", "meta": {}}


@pytest.fixture(scope="module")
def pool() -> Pool:
    return Pool.from_records([chat(i, u, a) for i, (u, a) in enumerate(TEXTS)])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SignalStore:
    return SignalStore(tmp_path_factory.mktemp("geometry-store"))


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --------------------------------------------------------------------------- embeddings


def test_embedding_store_round_trip_shape_dtype_alignment(pool, store):
    sig = Embedding(batch_size=4)
    run_signal(sig, pool, store, show_progress=False)
    out = read_signal(sig, pool, store)
    mat = out[VECTORS]
    assert mat.shape == (len(pool), 384) and mat.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    # the raw (pre-normalisation) norm of MiniLM's mean-pooled vectors is well above 1
    assert (out["embedding_norm"] > 1.5).all()
    # rows are aligned with the pool: each equals the text encoded on its own
    encoder = load_encoder("minilm")
    for i in (5, 0, 3):
        alone, norm = encode_texts(encoder, [embed_text(pool[i], "all")])
        np.testing.assert_allclose(mat[i], alone[0], atol=2e-5)
        assert out["embedding_norm"][i] == pytest.approx(norm[0], rel=1e-4)
    # model id in the key; batch size only changes speed, so it is not in the key
    key = sig.key(pool)
    assert "all-MiniLM-L6-v2" in key.model
    assert Embedding(batch_size=64).key(pool) == key
    assert Embedding(text="user").key(pool) != key


def test_same_text_identical_paraphrase_closer_than_unrelated(pool, store):
    sig = make_signal("embedding", text="user")
    run_signal(sig, pool, store, show_progress=False)
    mat = read_signal(sig, pool, store)[VECTORS]
    assert np.array_equal(mat[0], mat[1])  # ex0 and ex1 carry the same text
    paraphrase = float(mat[0] @ mat[2])    # pasta / spaghetti
    unrelated = float(mat[0] @ mat[3])     # pasta / stock market
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)


def test_unnormalised_vectors_keep_their_norm(pool, store):
    sig = make_signal("embedding", normalize=False, text="answer")
    run_signal(sig, pool, store, show_progress=False)
    out = read_signal(sig, pool, store)
    np.testing.assert_allclose(np.linalg.norm(out[VECTORS], axis=1), out["embedding_norm"], rtol=1e-5)


# --------------------------------------------------------------------------- k-means


def planted_blobs(per: int = 20, dim: int = 16, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3]
    x = np.concatenate([c + noise * rng.standard_normal((per, dim)) for c in centres])
    return unit(x).astype(np.float32)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_recovers_planted_blobs(backend):
    x = planted_blobs()
    sig = KMeansClusters(k=3, backend=backend, seed=7)
    cols = sig.compute_pool(None, {"embedding": {VECTORS: x}})
    # cluster ids in order of first appearance: the blobs are consecutive, so 0..0 1..1 2..2
    assert cols["cluster"].tolist() == [0] * 20 + [1] * 20 + [2] * 20
    assert (cols["dist_to_centroid"] >= 0).all() and cols["dist_to_centroid"].max() < 0.05
    again = KMeansClusters(k=3, backend=backend, seed=7).compute_pool(None, {"embedding": {VECTORS: x}})
    np.testing.assert_array_equal(again["cluster"], cols["cluster"])
    np.testing.assert_array_equal(again["dist_to_centroid"], cols["dist_to_centroid"])


def test_kmeans_helpers_by_hand():
    assert first_seen_labels(np.array([5, 5, 2, 9, 2])).tolist() == [0, 0, 1, 2, 1]
    assert [default_k(n) for n in (1, 2, 8, 50, 100_000)] == [1, 1, 2, 5, 224]
    with pytest.raises(ValueError, match="k=4"):
        kmeans_cluster(np.eye(3, dtype=np.float32), 4)
    # two points per cluster: the cosine distance to the centroid of (1,0) and (0,1) is 1 - cos 45 deg
    sig = KMeansClusters(k=1, backend="sklearn")
    cols = sig.compute_pool(None, {"embedding": {VECTORS: np.array([[1, 0], [0, 1]], dtype=np.float32)}})
    np.testing.assert_allclose(cols["dist_to_centroid"], [1 - np.sqrt(0.5)] * 2, atol=1e-6)


def test_kmeans_subsamples_only_above_the_threshold(monkeypatch):
    x = structured(n=6000, d=16)
    full = KMeansClusters(k=60, backend="faiss").compute_pool(None, {"embedding": {VECTORS: x}})
    labels, cents, _ = kmeans_cluster(x, 60, backend="faiss")
    np.testing.assert_array_equal(full["cluster"], first_seen_labels(labels))  # a full fit, as always
    full_inertia = ((x - cents[labels]) ** 2).sum()
    monkeypatch.setattr(geometry, "KMEANS_FULL_FIT_MAX_ROWS", 5000)  # 6000 rows are now "large"
    sub = KMeansClusters(k=60, backend="faiss", train_points_per_centroid=32).compute_pool(None, {"embedding": {VECTORS: x}})
    labels, cents, _ = kmeans_cluster(x, 60, backend="faiss", train_points_per_centroid=32)  # trains on 1,920 rows
    np.testing.assert_array_equal(sub["cluster"], first_seen_labels(labels))
    assert sub["cluster"].shape == (6000,) and not np.array_equal(sub["cluster"], full["cluster"])
    # every row is labelled with its nearest centroid; the clusters are about as tight as the full fit's
    d2 = ((x[:, None, :] - cents[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(axis=1))
    assert ((x - cents[labels]) ** 2).sum() < 1.08 * full_inertia  # measured 1.043
    assert sub["dist_to_centroid"].mean() < 1.05 * full["dist_to_centroid"].mean()  # measured 1.023
    off = KMeansClusters(k=60, backend="faiss", train_points_per_centroid=None).compute_pool(None, {"embedding": {VECTORS: x}})
    np.testing.assert_array_equal(off["cluster"], full["cluster"])
    # above the threshold the cluster sums are taken per row block (no float64 copy of x): same distances
    big = structured(n=20000, d=8)
    lab = np.random.default_rng(0).integers(0, 50, len(big))
    blocked = cosine_to_centroid(big, lab)
    monkeypatch.setattr(geometry, "KMEANS_FULL_FIT_MAX_ROWS", 100_000)
    np.testing.assert_allclose(blocked, cosine_to_centroid(big, lab), rtol=0, atol=1e-12)


def test_kmeans_key_is_unchanged_unless_it_subsamples(monkeypatch):
    small = Pool.from_records([chat(i, f"question {i}", "answer") for i in range(30)])
    params = KMeansClusters().key(small).params
    assert "train_points_per_centroid" not in params  # the key every full fit had
    assert KMeansClusters(train_points_per_centroid=None).key(small) == KMeansClusters().key(small)
    semantic = SemanticDedup().key(small).params  # semantic dedup clusters with the kmeans signal: the same rule
    assert set(semantic) == {"embed_model", "embed_text", "threshold", "k", "seed", "backend", "n_iter"}
    monkeypatch.setattr(geometry, "KMEANS_FULL_FIT_MAX_ROWS", 20)
    assert KMeansClusters().key(small).params["train_points_per_centroid"] == 64
    assert KMeansClusters(train_points_per_centroid=None).key(small).params == params
    assert SemanticDedup().key(small).params["train_points_per_centroid"] == 64
    assert SemanticDedup(train_points_per_centroid=8).kmeans().key(small).params["train_points_per_centroid"] == 8


def test_kmeans_signal_end_to_end(pool, store):
    sig = make_signal("kmeans", k=3, seed=1)
    run_signal(sig, pool, store, show_progress=False)
    cols = read_signal(sig, pool, store)
    assert set(cols["cluster"].tolist()) == {0, 1, 2} and cols["cluster"][0] == 0
    assert cols["cluster"][0] == cols["cluster"][1]  # identical texts share a cluster
    assert sig.key(pool).params["backend"] in ("faiss", "sklearn")  # auto is resolved in the key


# --------------------------------------------------------------------------- kNN diversity


@pytest.mark.parametrize("backend", ["faiss", "sklearn", "ann"])  # ann: one cell holds every row here, so exact
def test_knn_distance_hand_case(backend):
    # a = b = (1, 0), c = (0, 1), d = (-1, 0); cosine distances: a-b 0, a-c 1, a-d 2, c-d 1
    x = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    np.testing.assert_allclose(knn_cosine_distance(x, 1, backend=backend), [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(knn_cosine_distance(x, 2, backend=backend), [0.5, 0.5, 1, 1.5], atol=1e-6)
    # m above n - 1 is capped: every other point
    np.testing.assert_allclose(knn_cosine_distance(x, 10, backend=backend), [1, 1, 1, 5 / 3], atol=1e-6)
    # angles 0, 60 and 180 degrees: nearest of 180 deg is 60 deg, cos 120 = -1/2
    y = np.array([[1, 0], [0.5, np.sqrt(3) / 2], [-1, 0]], dtype=np.float32)
    np.testing.assert_allclose(knn_cosine_distance(y, 1, backend=backend), [0.5, 0.5, 1.5], atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        knn_cosine_distance(x[:1], 1, backend=backend)


def structured(n: int = 8000, d: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Unit rows around ``centres`` flat blobs (6 main directions each), 2% exact duplicates."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, centres, n)
    basis = rng.standard_normal((centres, 6, d))
    x = rng.standard_normal((centres, d))[lab] + 0.4 * np.einsum("nk,nkd->nd", rng.standard_normal((n, 6)), basis[lab])
    x += 0.1 * rng.standard_normal((n, d))
    dup = rng.choice(n, n // 50, replace=False)
    x[dup] = x[rng.integers(0, n, len(dup))]
    return unit(x).astype(np.float32)


def test_ann_recall_exact_sims_and_determinism(monkeypatch):
    import faiss
    from threadpoolctl import threadpool_limits

    x = structured()
    sims, ids = ivf_knn(x, 11)
    assert sims.shape == ids.shape == (len(x), 11) and (ids >= 0).all()
    # the sims are the true inner products of the ids found, best first
    rows = np.arange(0, len(x), 97)
    np.testing.assert_allclose(sims[rows], np.einsum("rd,rkd->rk", x[rows], x[ids[rows]]), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()
    recall = knn_recall(x, sample=1000, m=10, seed=0, found=(sims, ids))
    assert recall >= 0.95, recall  # measured 0.986
    # fewer probed cells find fewer true neighbours: the search is approximate, not exact in disguise
    assert knn_recall(x, sample=1000, m=10, seed=0, cfg=IVFConfig(probes=1)) < recall - 0.1
    # exact search scores 1, and the NumPy exact search agrees with faiss's
    exact = exact_knn(x, 11, "faiss")
    assert knn_recall(x, sample=300, m=10, seed=1, found=exact) == 1.0
    np.testing.assert_allclose(top_k_exact(x, x[rows], 11)[0], exact[0][rows], atol=1e-5)
    # deterministic for a seed, whatever the thread counts (faiss k-means forced parallel, BLAS too);
    # another seed, other cells
    threads = faiss.omp_get_max_threads()
    monkeypatch.setattr(knn, "PARALLEL_WORK", 0)
    try:
        faiss.omp_set_num_threads(2 if threads == 1 else 1)
        with threadpool_limits(limits=2 if threads == 1 else 1):
            again = ivf_knn(x, 11)
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(again[0], sims) and np.array_equal(again[1], ids)
    other = ivf_knn(x, 11, IVFConfig(seed=1))
    assert not np.array_equal(other[1], ids)
    with pytest.raises(ValueError, match="probes must be >= 1"):
        IVFConfig(probes=0)
    # cells too small for k results (2 rows each, 1 probed): those rows fall back to exact search
    tiny = x[:60]
    got = ivf_knn(tiny, 11, IVFConfig(list_size=2, probes=1, train_per_list=2))
    np.testing.assert_allclose(got[0], exact_knn(tiny, 11, "faiss")[0], atol=1e-5)


def test_knn_auto_is_exact_up_to_the_threshold_then_ann(monkeypatch):
    x = structured(n=600)
    assert knn_backend("auto", knn.KNN_EXACT_MAX_ROWS) in ("faiss", "sklearn")
    assert knn_backend("auto", knn.KNN_EXACT_MAX_ROWS + 1) == "ann" and knn_backend("ann", 10) == "ann"
    with pytest.raises(ValueError, match="backend must be"):
        knn_backend("hnsw", 10)
    exact = knn_cosine_distance(x, 10, backend="faiss")
    np.testing.assert_array_equal(knn_cosine_distance(x, 10, backend="auto"), exact)
    monkeypatch.setattr(knn, "KNN_EXACT_MAX_ROWS", 500)  # 600 rows are now "large"
    ann = knn_cosine_distance(x, 10, backend="ann")
    np.testing.assert_array_equal(knn_cosine_distance(x, 10, backend="auto"), ann)
    assert not np.array_equal(ann, exact) and np.abs(ann - exact).mean() < 0.01


def test_knn_keys_exact_unchanged_ann_apart(monkeypatch):
    small = Pool.from_records([chat(i, f"question {i}", "answer") for i in range(30)])
    exact_key = KNNDiversity().key(small).params
    # exact search: the key it always had (no backend, no ann settings)
    assert KNNDiversity(backend="sklearn", ann_probes=3).key(small) == KNNDiversity().key(small)
    assert set(exact_key) == {"embed_model", "embed_text", "m"}
    ann_key = KNNDiversity(backend="ann").key(small).params
    assert ann_key["backend"] == "ann" and ann_key["ann"]["probes"] == IVFConfig().probes
    assert KNNDiversity(backend="ann", ann_probes=3).key(small) != KNNDiversity(backend="ann").key(small)
    monkeypatch.setattr(knn, "KNN_EXACT_MAX_ROWS", 20)  # the pool is now above the threshold: auto is ann
    assert KNNDiversity().key(small) == KNNDiversity(backend="ann").key(small)
    # the signal computes what its key says, and logs its recall
    x = structured(n=400)
    cols = KNNDiversity(m=5).compute_pool(None, {"embedding": {VECTORS: x}})
    np.testing.assert_array_equal(cols["knn_distance"], knn_cosine_distance(x, 5, backend="ann"))


def test_knn_signal_end_to_end(pool, store):
    sig = KNNDiversity(m=1)
    run_signal(sig, pool, store, show_progress=False)
    d = read_signal(sig, pool, store)["knn_distance"]
    assert d[0] == pytest.approx(0.0, abs=1e-5) and d[1] == pytest.approx(0.0, abs=1e-5)  # each other's twin
    assert d[5] > 0.3  # the haiku has no near neighbour


# --------------------------------------------------------------------------- task relevance


def test_top_m_mean_cosine_by_hand():
    refs = np.array([[1, 0], [0, 1], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
    x = np.array([[1, 0]], dtype=np.float32)  # cosines 1, 0, 0.7071
    np.testing.assert_allclose(top_m_mean_cosine(x, refs, 1), [1.0], atol=1e-6)
    np.testing.assert_allclose(top_m_mean_cosine(x, refs, 2), [(1 + np.sqrt(0.5)) / 2], atol=1e-6)
    np.testing.assert_allclose(top_m_mean_cosine(x, refs, 99), [(1 + np.sqrt(0.5)) / 3], atol=1e-6)


def test_task_relevance_orders_arith_above_unrelated(pool, store):
    sig = TaskRelevance(task="arith", task_params={"dev_size": 30}, m=5)  # 30 dev items keep the test quick
    assert len(sig.dev_items()) == 30
    run_signal(sig, pool, store, show_progress=False)
    rel = read_signal(sig, pool, store)["task_relevance"]
    arith, haiku, stocks = rel[4], rel[5], rel[3]
    assert arith > haiku + 0.2 and arith > stocks + 0.2, rel
    # a domain is its own key; an unknown domain names the known ones
    add = TaskRelevance(task="arith", task_params={"dev_size": 30}, m=5, domain="add")
    assert {it.domain for it in add.dev_items()} == {"add"}
    assert add.key(pool) != sig.key(pool)
    assert "task_fingerprint" in sig.key(pool).params
    with pytest.raises(ValueError, match="domains"):
        TaskRelevance(task="arith", domain="poetry").dev_items()


# --------------------------------------------------------------------------- TF-IDF silhouette


def test_silhouette_hand_case_matches_sklearn():
    from sklearn.metrics import silhouette_samples

    # x1 = (1, 0), x2 = (0.6, 0.8), x3 = (0, 1); d12 = 0.4, d13 = 1, d23 = 0.2; clusters {1, 2}, {3}
    x = np.array([[1, 0], [0.6, 0.8], [0, 1]])
    labels = np.array([0, 0, 1])
    # s1 = (1 - 0.4) / 1 = 0.6 ; s2 = (0.2 - 0.4) / 0.4 = -0.5 ; s3: singleton -> 0
    np.testing.assert_allclose(silhouette_cosine_unit(x, labels), [0.6, -0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(silhouette_cosine_unit(x, labels), silhouette_samples(x, labels, metric="cosine"), atol=1e-12)


def test_tfidf_silhouette_matches_sklearn_on_queries():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import silhouette_samples

    texts = ["Apple banana pie!", "apple banana cake", "Banana apple 42 smoothie", "dog cat fight",
             "Cat, dog & mouse.", "the dog chased the cat", "stock market crash", "market stock prices 2024"]
    s, labels = tfidf_silhouette(texts, k=3, seed=0, return_labels=True)
    x = TfidfVectorizer(max_features=100).fit_transform([tfidf_query_text(t) for t in texts])
    np.testing.assert_allclose(s, silhouette_samples(x, labels, metric="cosine"), atol=1e-9)
    assert len(set(labels.tolist())) == 3 and (s > -1).all() and (s <= 1).all()
    assert tfidf_query_text("Hello, World 42_x!").split() == ["hello", "world", "x"]
    np.testing.assert_array_equal(tfidf_silhouette(texts, k=3, seed=0), s)  # deterministic for a seed
    with pytest.raises(ValueError, match="at least 3"):
        tfidf_silhouette(texts[:2])
    with pytest.raises(ValueError, match="no words"):
        tfidf_silhouette(["123", "!!", "4 5"])


def test_tfidf_silhouette_signal(pool, store):
    sig = make_signal("tfidf_silhouette", k=2)
    run_signal(sig, pool, store, show_progress=False)
    cols = read_signal(sig, pool, store)
    expected = tfidf_silhouette([user_text(r) for r in pool], k=2, seed=0)
    np.testing.assert_allclose(cols["silhouette"], expected)
    np.testing.assert_allclose(cols["sc_norm"], (expected + 1) / 2)
