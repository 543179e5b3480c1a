"""Duplicate keys: exact (normalised text hash), near (MinHash-LSH) and semantic (embeddings).

A signal never decides: these give every example a key or group id; a dedup operator
keeps one example per group. Group ids are the smallest pool position in the group, so
they are deterministic and the representative an operator keeps by default (the first
occurrence) is the example whose position equals its group id.

- ``exact_dedup`` (example scope): ``exact_key``, the SHA-256 hex digest of the
  normalised user and answer text (lower-case, whitespace runs collapsed to one space,
  stripped).
- ``minhash`` (pool scope): near-duplicate clusters: MinHash over word 5-gram shingles,
  LSH candidate pairs kept when their estimated Jaccard similarity reaches the threshold,
  clusters = connected components of those pairs (datasketch's hash values and banding,
  computed vectorised by :mod:`thresher.signals.minhash`).
- ``semantic_dedup`` (pool scope): within each k-means cluster, examples whose
  embeddings have cosine >= threshold are linked; groups = connected components.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field

from thresher.data.pool import assistant_text, user_text
from thresher.progress import progress
from thresher.signals.base import VECTORS, Signal, SignalParams, register_signal
from thresher.signals.embed import encoder_identity
from thresher.signals.geometry import (
    Backend,
    EmbeddingInput,
    KMeansClusters,
    embedding_for,
    resolve_backend,
    unit_rows,
    with_train_cap_for,
)
from thresher.signals.minhash import minhash_signatures
from thresher.signals.minhash_lsh import lsh_bands, near_duplicate_edges

_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"\w+")


# --------------------------------------------------------------------------- groups from pairs


def groups_from_pairs(n: int, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph on n nodes with edges (left[i], right[i]).

    Returns (group id = smallest node of the component, component size), both int64 [n].
    The same partition a union-find over the pairs gives, computed by scipy in one pass.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    sizes = np.bincount(comp)
    return smallest[comp], sizes[comp].astype(np.int64)


# --------------------------------------------------------------------------- exact


def normalise_for_dedup(text: str) -> str:
    """Lower-case, collapse every whitespace run to one space, strip."""
    return _SPACES.sub(" ", text.lower()).strip()


def exact_key(record: dict) -> str:
    """SHA-256 hex of the normalised user turns and answer turns (a separator keeps the two sides apart)."""
    payload = normalise_for_dedup(user_text(record)) + "\x1e" + normalise_for_dedup(assistant_text(record))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@register_signal
class ExactDedup(Signal):
    name = "exact_dedup"
    version = 1
    family = "dedup"
    columns = ("exact_key",)
    Params = SignalParams
    description = "SHA-256 hex of the normalised (lower-cased, whitespace-collapsed, stripped) user + answer text: equal keys = exact duplicates"
    default_shard_size = 16384
    process_shards = True

    def compute(self, records: list[dict]) -> dict[str, Any]:
        return {"exact_key": [exact_key(r) for r in records]}


# --------------------------------------------------------------------------- MinHash


def dedup_text(record: dict, text: str) -> str:
    if text == "user":
        return user_text(record)
    if text == "answer":
        return assistant_text(record)
    if text == "all":
        return user_text(record) + "\n\n" + assistant_text(record)
    raise ValueError(f"text must be 'user', 'answer' or 'all', got {text!r}")


def word_shingles(text: str, ngram: int = 5) -> list[bytes]:
    """Distinct lower-cased word n-grams of ``text`` (``\\w+`` words joined by a space), as UTF-8 bytes.

    A text shorter than ``ngram`` words gives one shingle, all its words; a text with no
    word gives none.
    """
    words = _WORDS.findall(text.lower())
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words).encode("utf-8")]
    return sorted({" ".join(words[i:i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)})


def _lsh_index(lsh_class, threshold: float, num_perm: int):
    """A MinHashLSH whose banding finds candidates at ``threshold`` or, when datasketch cannot
    band ``num_perm`` permutations that high (it needs >= 2 bands: e.g. 0.99 with 128), at the
    largest lower threshold in steps of 0.05 that it can. A lower index threshold only adds
    candidates; each one is verified against ``threshold`` itself."""
    t = threshold
    while t >= 0.5 - 1e-9:
        try:
            return lsh_class(threshold=t, num_perm=num_perm)
        except ValueError:
            t = round(t - 0.05, 10)
    raise ValueError(f"minhash: datasketch cannot build an LSH index for threshold {threshold} with num_perm={num_perm}; "
                     "use more permutations")


MinHashBackend = Literal["numpy", "datasketch"]


def minhash_clusters(texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1,
                     backend: MinHashBackend = "numpy", show_progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Near-duplicate clusters of ``texts``: (cluster id = smallest position, cluster size, texts without words).

    Each text's MinHash is ``datasketch.MinHash(num_perm, seed)`` (datasketch >= 2.0) over its
    :func:`word_shingles`; texts i, j are linked when they share one band of the
    ``MinHashLSH(threshold, num_perm)`` banding (see :func:`_lsh_index` for thresholds above what
    datasketch can band) and their estimated Jaccard (share of equal hash values) is >= threshold;
    clusters are the connected components. Texts without any word get no MinHash and stay alone
    (their number is returned).

    ``backend="numpy"`` (default) computes exactly this, vectorised (:mod:`thresher.signals.minhash`
    and :mod:`thresher.signals.minhash_lsh`: the same hash values, bands and verification, hence
    the same clusters; memory: the uint32 signatures, 4 * num_perm bytes a text, 512 MB for 1M
    texts at 128); ``"datasketch"`` runs datasketch itself text by text (query the index, verify,
    insert): the reference, about 4x slower (``benchmarks/bench_minhash.py``); with datasketch
    older than 2.0 (its "legacy" hash scheme) its values and clusters differ.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"minhash: threshold must be in (0, 1], got {threshold}")
    if backend == "datasketch":
        return _minhash_clusters_datasketch(texts, threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed,
                                            show_progress=show_progress)
    if backend != "numpy":
        raise ValueError(f"minhash: backend must be 'numpy' or 'datasketch', got {backend!r}")
    bands = lsh_bands(threshold, num_perm)
    sig, has = minhash_signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed, show_progress=show_progress)
    left, right = near_duplicate_edges(sig, has, threshold, bands, show_progress=show_progress)
    ids, sizes = groups_from_pairs(len(texts), left, right)
    return ids, sizes, int(len(texts) - np.count_nonzero(has))


def _minhash_clusters_datasketch(texts: list[str], *, threshold: float, num_perm: int, ngram: int, seed: int,
                                 show_progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`minhash_clusters` by datasketch, text by text: before inserting text i, every earlier
    text j the index returns whose share of equal hash values is >= threshold is linked to i."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as e:
        raise ImportError("the minhash datasketch backend needs datasketch (pip install 'thresher[dedup]' or pip install "
                          "datasketch)") from e

    n = len(texts)
    lsh = _lsh_index(MinHashLSH, threshold, num_perm)
    hashvalues: np.ndarray | None = None
    left: list[int] = []
    right: list[int] = []
    empty = 0
    shingles = (word_shingles(t, ngram) for t in texts)
    with progress(total=n, desc="minhash", disable=not show_progress, unit="ex") as bar:
        for i, mh in enumerate(MinHash.generator(shingles, num_perm=num_perm, seed=seed)):
            bar.update(1)
            if mh.is_empty():
                empty += 1
                continue
            hv = mh.hashvalues
            if hashvalues is None:
                hashvalues = np.empty((n, num_perm), dtype=hv.dtype)
            hashvalues[i] = hv
            for j in lsh.query(mh):
                if np.count_nonzero(hashvalues[j] == hv) >= threshold * num_perm:
                    left.append(j)
                    right.append(i)
            lsh.insert(i, mh, check_duplication=False)
    ids, sizes = groups_from_pairs(n, np.array(left, dtype=np.int64), np.array(right, dtype=np.int64))
    return ids, sizes, empty


class MinHashParams(SignalParams):
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="estimated Jaccard similarity that links two examples")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, description="words per shingle")
    seed: int = Field(1, description="MinHash permutation seed")
    text: Literal["user", "answer", "all"] = Field("all", description="what is hashed: user turns, answer turns, or both")


@register_signal
class MinHashDedup(Signal):
    name = "minhash"
    version = 1
    scope = "pool"
    family = "dedup"
    columns = ("minhash_cluster", "minhash_cluster_size")
    Params = MinHashParams
    description = ("near-duplicate clusters: MinHash-LSH over word 5-gram shingles, pairs verified by estimated "
                   "Jaccard >= threshold, cluster id = smallest pool position of the connected component")

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        p = self.params
        ids, sizes, empty = minhash_clusters([dedup_text(r, p.text) for r in pool], threshold=p.threshold,
                                             num_perm=p.num_perm, ngram=p.ngram, seed=p.seed, show_progress=True)
        if empty:
            warnings.warn(f"minhash: {empty} of {len(pool)} examples have no word to shingle; each is its own cluster",
                          stacklevel=2)
        return {"minhash_cluster": ids, "minhash_cluster_size": sizes}


# --------------------------------------------------------------------------- semantic


def semantic_groups(x: np.ndarray, clusters: np.ndarray, threshold: float = 0.95, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Groups of near-identical meaning: (group id = smallest position, group size).

    Within each cluster, every pair of unit rows with cosine >= ``threshold`` is linked
    (row blocks of ``block`` x cluster size, never N x N); groups are the connected
    components. Exact; the cost is the sum of squared cluster sizes times d, about n^1.5
    with the default k = sqrt(n / 2): 1M x 384 embedding-like rows take about 32 s on one
    core (``benchmarks/bench_geometry_scale.py``), so no approximate variant is needed.
    """
    x = unit_rows(x)
    clusters = np.asarray(clusters)
    if clusters.shape != (x.shape[0],):
        raise ValueError(f"semantic_dedup: {clusters.shape} cluster ids for {x.shape[0]} embeddings")
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    order = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.diff(clusters[order])) + 1
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        xm = x[members]
        for s in range(0, len(members), block):
            sims = xm[s:s + block] @ xm.T
            r, c = np.nonzero(sims >= threshold)
            r = r + s
            upper = c > r
            left.append(members[r[upper]])
            right.append(members[c[upper]])
    lft = np.concatenate(left) if left else np.zeros(0, dtype=np.int64)
    rgt = np.concatenate(right) if right else np.zeros(0, dtype=np.int64)
    return groups_from_pairs(x.shape[0], lft, rgt)


class SemanticDedupParams(EmbeddingInput):
    threshold: float = Field(0.95, gt=-1.0, le=1.0, description="cosine similarity that links two examples of one cluster")
    k: int | None = Field(None, ge=1, description="k-means clusters (see kmeans); default round(sqrt(n / 2))")
    seed: int = 0
    backend: Backend = "auto"
    n_iter: int = Field(25, ge=1)
    train_points_per_centroid: int | None = Field(64, ge=1, description="k-means training rows per cluster on large pools "
                                                                         "(the kmeans signal's param of that name)")


@register_signal
class SemanticDedup(Signal):
    name = "semantic_dedup"
    version = 1
    scope = "pool"
    family = "dedup"
    columns = ("semdup_group", "semdup_group_size")
    Params = SemanticDedupParams
    description = ("semantic duplicate groups: within each k-means cluster, examples with embedding cosine >= threshold "
                   "are linked; group id = smallest pool position of the connected component")

    def model_id(self) -> str | None:
        return encoder_identity(self.params.embed_model)

    def for_pool(self, pool) -> Signal:
        """As :meth:`Signal.for_pool`, with ``train_points_per_centroid`` resolved as the kmeans signal's
        (:func:`thresher.signals.geometry.with_train_cap_for`): the keys of full fits are unchanged."""
        return with_train_cap_for(super().for_pool(pool), pool)

    def key_params(self) -> dict:
        out = self.params.model_dump(mode="json")
        out["backend"] = resolve_backend(self.params.backend)
        if out["train_points_per_centroid"] is None:
            out.pop("train_points_per_centroid")
        return out

    def kmeans(self) -> KMeansClusters:
        p = self.params
        return KMeansClusters(embed_model=p.embed_model, embed_text=p.embed_text, k=p.k, seed=p.seed, backend=p.backend,
                              n_iter=p.n_iter, train_points_per_centroid=p.train_points_per_centroid)

    def requires(self) -> list[Signal]:
        return [embedding_for(self.params), self.kmeans()]

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        ids, sizes = semantic_groups(inputs["embedding"][VECTORS], inputs["kmeans"]["cluster"], self.params.threshold)
        return {"semdup_group": ids, "semdup_group_size": sizes}
