"""Geometry of the pool in embedding space (and THTB's TF-IDF silhouette).

Pool-scope signals; all but ``tfidf_silhouette`` read the ``embedding`` signal (unit
vectors, so a dot product is a cosine):

- ``kmeans``: a cluster id per example and its cosine distance to its cluster's centroid
  (trained on a seeded sample above :data:`KMEANS_FULL_FIT_MAX_ROWS` rows);
- ``knn_diversity``: mean cosine distance to the ``m`` nearest other examples (exact search
  up to :data:`KNN_EXACT_MAX_ROWS` rows, approximate above: :mod:`thresher.signals.knn`);
- ``task_relevance``: mean of the top-``m`` cosines to a task's dev items;
- ``tfidf_silhouette``: THTB's silhouette of each query in a k-means clustering of
  TF-IDF query vectors.

The k-means itself is :func:`thresher.signals.cluster.kmeans`, the package's one
clustering implementation (``resolve_backend`` and ``first_seen_labels`` live there too).

Memory stays linear in the pool: nearest neighbours come from faiss (or scikit-learn
in row blocks), similarities to dev items and to cluster sums are taken in row blocks;
no N x N matrix is ever built.

Cost on one core, 1M x 384 embedding-like rows (``benchmarks/bench_geometry_scale.py``):
k-means with the default k = round(sqrt(n / 2)) about 60 s (it trains on
``train_points_per_centroid * k`` sampled rows above :data:`KMEANS_FULL_FIT_MAX_ROWS`,
linear in n, but assigns every row to its nearest of k centroids, n x k: n^1.5); kNN
diversity about 85 s (approximate above :data:`KNN_EXACT_MAX_ROWS` rows; exact search would
take about 11 hours); task relevance against 500 dev items about 12 s (n x dev); the dense
silhouette about 18 s (n x k).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
from pydantic import Field

from thresher.data.pool import user_text
from thresher.signals.base import (
    VECTORS,
    ReadsTaskDev,
    Signal,
    SignalParams,
    register_signal,
)
from thresher.signals.cluster import first_seen_labels, kmeans, resolve_backend
from thresher.signals.embed import (
    AUTO_ENCODER,
    STATIC_MIN_POOL,
    Embedding,
    EmbedText,
    encode_texts,
    encoder_identity,
    load_encoder,
)
from thresher.signals.knn import (
    DEFAULT_IVF,
    KNN_EXACT_MAX_ROWS,
    IVFConfig,
    knn_backend,
    knn_recall,
    knn_search,
    neighbour_sims,
)

Backend = Literal["auto", "faiss", "sklearn"]
KNNBackend = Literal["auto", "faiss", "sklearn", "ann"]
ROW_BLOCK = 8192
#: pools up to this many rows train k-means on every row (every pool before this limit existed did;
#: a full fit of 100K x 384 takes about 25 s on one core, a subsampled fit of 300K about 14 s)
KMEANS_FULL_FIT_MAX_ROWS = 100_000
#: query rows the ``knn_diversity`` signal checks its approximate neighbours on (logged recall)
KNN_RECALL_SAMPLE = 256

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared helpers


def default_k(n: int) -> int:
    """The usual cluster count for n points: round(sqrt(n / 2)), at least 1."""
    return max(1, round(math.sqrt(n / 2)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 and C-contiguous."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class EmbeddingInput(SignalParams):
    embed_model: str = Field(AUTO_ENCODER, description=f"sentence encoder of the embedding signal this reads: auto (static "
                                                       f"for pools of at least {STATIC_MIN_POOL:,} examples, else minilm), "
                                                       "minilm, static, or a sentence-transformers name or path")
    embed_text: EmbedText = Field("all", description="what the embedding signal embeds: user, answer or all")


def embedding_for(params: EmbeddingInput) -> Embedding:
    """The (unit-vector) embedding signal a geometry signal reads."""
    return Embedding(model=params.embed_model, text=params.embed_text, normalize=True)


# --------------------------------------------------------------------------- k-means


def kmeans_cluster(x: np.ndarray, k: int, *, seed: int = 0, backend: str = "auto", n_iter: int = 25,
                   train_points_per_centroid: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """k-means on the rows of ``x``: (labels [N] int64, centroids [k, d] float32, backend used).

    :func:`thresher.signals.cluster.kmeans` on float32 rows. ``faiss``: ``faiss.Kmeans(d, k,
    niter=n_iter, seed=seed)``; ``sklearn``: ``KMeans(k, init="k-means++", n_init=1,
    max_iter=n_iter, random_state=seed)``. Each backend is deterministic for a seed; the
    two give different (equally valid) partitions. Labels are raw backend ids (see
    :func:`first_seen_labels`).

    ``train_points_per_centroid=None``: every row is trained on and labelled as the backend's
    fit labels it. A number: k-means trains on a seeded sample of that many rows per centroid
    (when the pool has more) and every row goes to its nearest centroid, in row blocks.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if train_points_per_centroid is None:
        res = kmeans(x, k, seed=seed, backend=backend, n_iter=n_iter)
    else:
        res = kmeans(x, k, seed=seed, backend=backend, n_iter=n_iter, train_points_per_centroid=train_points_per_centroid,
                     assign="nearest")
    return res.labels, np.asarray(res.centroids, dtype=np.float32), res.backend


def kmeans_train_cap(n: int, train_points_per_centroid: int | None) -> int | None:
    """The ``train_points_per_centroid`` the ``kmeans`` signal uses on ``n`` rows: None (train on
    every row) up to :data:`KMEANS_FULL_FIT_MAX_ROWS` rows or when the param is None, else the param."""
    return train_points_per_centroid if n > KMEANS_FULL_FIT_MAX_ROWS else None


def with_train_cap_for(sig: Signal, pool) -> Signal:
    """``sig`` (params with a ``train_points_per_centroid``) as it runs on ``pool``: the param becomes
    None where it has no effect (pools of at most :data:`KMEANS_FULL_FIT_MAX_ROWS` rows), so a full
    fit keeps the key it always had (the key drops a None) and a subsampled fit has its own."""
    if pool is None or sig.params.train_points_per_centroid is None:
        return sig
    if kmeans_train_cap(len(pool), sig.params.train_points_per_centroid) is not None:
        return sig
    return type(sig)(**{**sig.params.model_dump(), "train_points_per_centroid": None})


def cosine_to_centroid(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine distance 1 - cos(x_i, c) of each row to the mean of its cluster (float64).

    Cluster sums (float64) come from one sparse membership product up to
    :data:`KMEANS_FULL_FIT_MAX_ROWS` rows (it makes a float64 copy of ``x``), above that
    from one product per row block; the distances are taken in row blocks, so no second
    N x d matrix is built.
    """
    import scipy.sparse as sp

    x = np.asarray(x)
    labels = np.asarray(labels, dtype=np.int64)
    n = x.shape[0]
    k = int(labels.max()) + 1
    if n <= KMEANS_FULL_FIT_MAX_ROWS:
        sums = np.asarray(sp.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n)) @ x, dtype=np.float64)
    else:
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        for s in range(0, n, ROW_BLOCK):
            lb = labels[s:s + ROW_BLOCK]
            member = sp.csr_matrix((np.ones(len(lb)), (lb, np.arange(len(lb)))), shape=(k, len(lb)))
            sums += member @ x[s:s + ROW_BLOCK].astype(np.float64)
    cents = sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None]
    cent_norms = np.linalg.norm(cents, axis=1)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, ROW_BLOCK):
        xb = x[s:s + ROW_BLOCK].astype(np.float64)
        lb = labels[s:s + ROW_BLOCK]
        denom = np.linalg.norm(xb, axis=1) * cent_norms[lb]
        dots = np.einsum("ij,ij->i", xb, cents[lb])
        cos = np.divide(dots, denom, out=np.zeros(len(xb)), where=denom > 0)
        out[s:s + ROW_BLOCK] = np.clip(1.0 - cos, 0.0, 2.0)
    return out


class KMeansParams(EmbeddingInput):
    k: int | None = Field(None, ge=1, description="number of clusters; default round(sqrt(n / 2))")
    seed: int = 0
    backend: Backend = Field("auto", description="auto (faiss if importable, else sklearn), faiss or sklearn")
    n_iter: int = Field(25, ge=1, description="k-means iterations (faiss niter / sklearn max_iter)")
    train_points_per_centroid: int | None = Field(
        64, ge=1, description=f"on pools of more than {KMEANS_FULL_FIT_MAX_ROWS:,} rows, train on a seeded sample of this many "
                              "rows per cluster and assign every row to its nearest centroid (None: train on every row)")


@register_signal
class KMeansClusters(Signal):
    name = "kmeans"
    version = 1
    scope = "pool"
    family = "geometry"
    columns = ("cluster", "dist_to_centroid")
    Params = KMeansParams
    description = ("k-means clusters of the embeddings (k = round(sqrt(n/2)) by default; ids in order of first "
                   "appearance) and the cosine distance of each example to its cluster's mean")

    def model_id(self) -> str | None:
        return encoder_identity(self.params.embed_model)

    def for_pool(self, pool) -> Signal:
        """As :meth:`Signal.for_pool`, with ``train_points_per_centroid`` resolved (:func:`with_train_cap_for`)."""
        return with_train_cap_for(super().for_pool(pool), pool)

    def key_params(self) -> dict:
        out = self.params.model_dump(mode="json")
        out["backend"] = resolve_backend(self.params.backend)  # auto means different things on different machines
        if out["train_points_per_centroid"] is None:
            out.pop("train_points_per_centroid")  # a full fit: the key every full fit had
        return out

    def requires(self) -> list[Signal]:
        return [embedding_for(self.params)]

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        x = unit_rows(inputs["embedding"][VECTORS])
        k = self.params.k or default_k(len(x))
        if k > len(x):
            raise ValueError(f"kmeans: param k={k} exceeds the pool size {len(x)}")
        labels, _, _ = kmeans_cluster(x, k, seed=self.params.seed, backend=self.params.backend, n_iter=self.params.n_iter,
                                      train_points_per_centroid=kmeans_train_cap(len(x), self.params.train_points_per_centroid))
        labels = first_seen_labels(labels)
        return {"cluster": labels, "dist_to_centroid": cosine_to_centroid(x, labels)}


# --------------------------------------------------------------------------- kNN diversity


def knn_cosine_distance(x: np.ndarray, m: int = 10, *, backend: str = "auto", ivf: IVFConfig = DEFAULT_IVF) -> np.ndarray:
    """Mean cosine distance (1 - cos) of each unit row to its ``m`` nearest other rows.

    ``m`` is capped at n - 1. The row itself is excluded by position (an exact
    duplicate elsewhere in the pool still counts, at distance 0). Search: see
    :func:`knn_search` (exact up to :data:`KNN_EXACT_MAX_ROWS` rows with ``auto``).
    """
    x = unit_rows(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"knn_diversity needs at least 2 examples, the pool has {n}")
    m = min(m, n - 1)
    sims, ids = knn_search(x, m, backend=backend, ivf=ivf)
    return np.clip(1.0 - neighbour_sims(sims, ids, m), 0.0, 2.0).mean(axis=1)


class KNNParams(EmbeddingInput):
    m: int = Field(10, ge=1, description="neighbours averaged (capped at n - 1)")
    backend: KNNBackend = Field("auto", description=f"auto (exact up to {KNN_EXACT_MAX_ROWS:,} rows: faiss if importable, else "
                                                    "sklearn; ann above), faiss or sklearn (exact), ann (approximate)")
    ann_probes: int = Field(IVFConfig.probes, ge=1, description="ann: cells of about 128 rows each row is compared with "
                                                               "(more = higher recall, proportionally slower)")
    seed: int = Field(0, description="ann: seed of the cells' k-means")

    def ivf(self) -> IVFConfig:
        return IVFConfig(probes=self.ann_probes, seed=self.seed)


@register_signal
class KNNDiversity(Signal):
    name = "knn_diversity"
    version = 1
    scope = "pool"
    family = "geometry"
    columns = ("knn_distance",)
    Params = KNNParams
    description = "mean cosine distance of each example's embedding to its m nearest neighbours in the pool (higher = more novel)"

    def model_id(self) -> str | None:
        return encoder_identity(self.params.embed_model)

    def for_pool(self, pool) -> Signal:
        """As :meth:`Signal.for_pool`, and ``backend="auto"`` becomes the search it runs on the pool
        (:func:`knn_backend`), so exact and approximate values never share a key."""
        sig = super().for_pool(pool)
        if pool is None or sig.params.backend != "auto":
            return sig
        return type(sig)(**{**sig.params.model_dump(), "backend": knn_backend("auto", len(pool))})

    def key_params(self) -> dict:
        out = self.params.model_dump(mode="json")
        for name in ("backend", "ann_probes", "seed"):
            out.pop(name)  # exact search: both backends give the same neighbours, the ann settings do nothing
        if self.params.backend == "ann":
            out["backend"] = "ann"
            out["ann"] = asdict(self.params.ivf())
        return out

    def requires(self) -> list[Signal]:
        return [embedding_for(self.params)]

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        x = unit_rows(inputs["embedding"][VECTORS])
        n = len(x)
        if n < 2:
            raise ValueError(f"knn_diversity needs at least 2 examples, the pool has {n}")
        m = min(self.params.m, n - 1)
        ivf = self.params.ivf()
        sims, ids = knn_search(x, m, backend=self.params.backend, ivf=ivf)
        if knn_backend(self.params.backend, n) == "ann":
            recall = knn_recall(x, sample=KNN_RECALL_SAMPLE, m=m, seed=ivf.seed, found=(sims, ids))
            log.info("knn_diversity: approximate neighbours (%d probes), recall@%d %.3f on %d sampled rows", ivf.probes, m,
                     recall, min(KNN_RECALL_SAMPLE, n))
        return {"knn_distance": np.clip(1.0 - neighbour_sims(sims, ids, m), 0.0, 2.0).mean(axis=1)}


# --------------------------------------------------------------------------- task relevance


def dev_item_text(item, text: str) -> str:
    """A dev item rendered like the pool side it is compared with: question, worked answer, or both."""
    answer = item.target or item.answer
    if text == "user":
        return item.question
    if text == "answer":
        return answer
    if text == "all":
        return item.question + "\n\n" + answer
    raise ValueError(f"task_relevance: embed_text must be 'user', 'answer' or 'all', got {text!r}")


def top_m_mean_cosine(x: np.ndarray, refs: np.ndarray, m: int) -> np.ndarray:
    """For each unit row of ``x``: the mean of its ``m`` largest cosines to the unit rows of ``refs``."""
    x = unit_rows(x)
    refs = unit_rows(refs)
    if refs.shape[0] == 0:
        raise ValueError("task_relevance: no reference items to compare with")
    m = min(m, refs.shape[0])
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], ROW_BLOCK):
        sims = x[s:s + ROW_BLOCK].astype(np.float64) @ refs.T.astype(np.float64)
        top = np.partition(sims, sims.shape[1] - m, axis=1)[:, sims.shape[1] - m:]
        out[s:s + ROW_BLOCK] = top.mean(axis=1)
    return out


class TaskRelevanceParams(EmbeddingInput):
    task: str = Field("arith", description="task name (thresher.tasks.get_task) or a task .yaml path; only its dev split is used")
    task_params: dict[str, Any] = Field(default_factory=dict, description="keyword params for the task factory (e.g. seed, dev_size)")
    m: int = Field(5, ge=1, description="average the top-m cosines (capped at the number of dev items)")
    domain: str | None = Field(None, description="compare only with dev items of this domain (None = all dev items)")


@register_signal
class TaskRelevance(ReadsTaskDev, Signal):
    name = "task_relevance"
    version = 1
    scope = "pool"
    family = "geometry"
    columns = ("task_relevance",)
    Params = TaskRelevanceParams
    description = ("mean of the top-m cosine similarities between an example's embedding and the target task's dev "
                   "items (same encoder; dev items rendered like the pool side: question / worked answer / both)")

    def dev_items(self) -> list:
        items = self.dev().dev
        if self.params.domain is None:
            return list(items)
        chosen = [it for it in items if it.domain == self.params.domain]
        if not chosen:
            raise ValueError(f"task_relevance: task {self.params.task!r} has no dev items of domain {self.params.domain!r}; "
                             f"its domains: {self.dev().domains}")
        return chosen

    def model_id(self) -> str | None:
        return encoder_identity(self.params.embed_model)

    def key_params(self) -> dict:
        out = self.params.model_dump(mode="json")
        out["task_fingerprint"] = self.dev().fingerprint()  # the dev items themselves, not only the task name
        return out

    def requires(self) -> list[Signal]:
        return [embedding_for(self.params)]

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        items = self.dev_items()
        encoder = load_encoder(self.params.embed_model)
        refs, _ = encode_texts(encoder, [dev_item_text(it, self.params.embed_text) for it in items], normalize=True)
        return {"task_relevance": top_m_mean_cosine(inputs["embedding"][VECTORS], refs, self.params.m)}


# --------------------------------------------------------------------------- TF-IDF silhouette (THTB)

_NOT_LETTER = re.compile(r"[^\w\s]|[\d_]")


def tfidf_query_text(text: str) -> str:
    """THTB's query preprocessing: lower-case, punctuation and digits replaced by spaces."""
    return _NOT_LETTER.sub(" ", text.lower())


def silhouette_cosine_unit(x, labels: np.ndarray) -> np.ndarray:
    """Silhouette of each row under cosine distance, for rows of unit (or zero) L2 norm.

    With ``d(i, j) = 1 - x_i . x_j`` the summed distance from i to a cluster C is
    ``|C| - x_i . S_C`` (S_C the sum of C's rows), so the silhouette needs only the
    n x k products with cluster sums, taken in row blocks: linear in n. It equals
    ``sklearn.metrics.silhouette_samples(x, labels, metric="cosine")`` to float
    precision (same conventions: the self term is in the intra sum, a zero row is at
    distance 1 from everything, a singleton cluster scores 0). Dense rows are taken to
    float64 one block at a time (no float64 copy of the whole matrix).
    """
    import scipy.sparse as sp

    dense = not sp.issparse(x)
    if dense:
        x = np.asarray(x)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"silhouette: {labels.shape[0] if labels.ndim else 0} labels for {x.shape[0]} rows")
    _, lab = np.unique(labels, return_inverse=True)
    k = int(lab.max()) + 1 if len(lab) else 0
    n = len(lab)
    if k < 2:
        return np.zeros(n, dtype=np.float64)
    sizes = np.bincount(lab, minlength=k).astype(np.float64)
    member = sp.csr_matrix((np.ones(n), (lab, np.arange(n))), shape=(k, n))
    if dense:
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        for s in range(0, n, ROW_BLOCK):
            sums += member[:, s:s + ROW_BLOCK] @ x[s:s + ROW_BLOCK].astype(np.float64)
    else:
        sums = member @ x
        sums = np.asarray(sums.toarray() if sp.issparse(sums) else sums, dtype=np.float64)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, ROW_BLOCK):
        block = x[s:s + ROW_BLOCK].astype(np.float64) if dense else x[s:s + ROW_BLOCK]
        dots = np.asarray(block @ sums.T, dtype=np.float64)
        dist = sizes[None, :] - dots  # summed distances to every cluster
        own = lab[s:s + ROW_BLOCK]
        rows = np.arange(len(own))
        own_size = sizes[own]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.maximum(dist[rows, own], 0.0) / (own_size - 1)
            other = np.maximum(dist, 0.0) / sizes[None, :]
            other[rows, own] = np.inf
            b = other.min(axis=1)
            sil = (b - a) / np.maximum(a, b)
        sil[own_size <= 1] = 0.0
        out[s:s + ROW_BLOCK] = np.nan_to_num(sil, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def tfidf_silhouette(texts: list[str], k: int | None = None, seed: int = 0, max_features: int = 100,
                     return_labels: bool = False):
    """THTB's query silhouette: s in [-1, 1] per text.

    Texts are lower-cased with punctuation and digits removed, turned into TF-IDF vectors
    (scikit-learn ``TfidfVectorizer(max_features=100)``, default word pattern, L2-normalised
    rows), clustered by scikit-learn's k-means (:func:`thresher.signals.cluster.kmeans`:
    k-means++, one init, at most 300 iterations, ``random_state=seed``) with k =
    round(sqrt(n / 2)) by default (clamped to [2, n - 1]), and scored by the silhouette
    under cosine distance (:func:`silhouette_cosine_unit`). Needs at least 3 texts.
    When k-means finds fewer than 2 distinct clusters (all vectors equal) every s is 0.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as e:
        raise ImportError("tfidf_silhouette needs scikit-learn (pip install scikit-learn)") from e
    n = len(texts)
    if n < 3:
        raise ValueError(f"tfidf_silhouette needs at least 3 texts, got {n}")
    if k is None:
        k = min(max(2, default_k(n)), n - 1)
    elif not 2 <= k <= n - 1:
        raise ValueError(f"tfidf_silhouette: k={k} must be between 2 and n - 1 = {n - 1}")
    vec = TfidfVectorizer(max_features=max_features, lowercase=False)
    try:
        x = vec.fit_transform([tfidf_query_text(t) for t in texts]).astype(np.float64).tocsr()
    except ValueError as e:  # every text empty after preprocessing
        raise ValueError(f"tfidf_silhouette: no words left after lower-casing and removing punctuation and digits ({e})") from None
    labels = kmeans(x, k, seed=seed, backend="sklearn", n_iter=300).labels  # scikit-learn's default max_iter
    s = silhouette_cosine_unit(x, labels)
    return (s, labels) if return_labels else s


class TfidfSilhouetteParams(SignalParams):
    k: int | None = Field(None, ge=2, description="k-means clusters; default round(sqrt(n / 2)) clamped to [2, n - 1]")
    seed: int = 0
    max_features: int = Field(100, ge=1, description="TF-IDF vocabulary size (THTB: 100)")


@register_signal
class TfidfSilhouette(Signal):
    name = "tfidf_silhouette"
    version = 1
    scope = "pool"
    family = "geometry"
    columns = ("silhouette", "sc_norm")
    Params = TfidfSilhouetteParams
    description = ("THTB: silhouette (cosine) of each query (user turns) in a k-means clustering of TF-IDF query "
                   "vectors (lower-case, no punctuation or digits, 100 features); sc_norm = (s + 1) / 2")

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        s = tfidf_silhouette([user_text(r) for r in pool], k=self.params.k, seed=self.params.seed,
                             max_features=self.params.max_features)
        return {"silhouette": s, "sc_norm": (s + 1.0) / 2.0}
