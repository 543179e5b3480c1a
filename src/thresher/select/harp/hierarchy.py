"""HARP's data hierarchy: large regions -> parents -> leaves over the embedding space.

The tree is built top-down with k-means at each level:

1. the pool is split into ``ceil(N / (leaf_size * leaves_per_parent * parents_per_large))``
   *large* regions;
2. each large region into ``ceil(n / (leaf_size * leaves_per_parent))`` *parents*;
3. each parent into ``round(n / leaf_size)`` *leaves*; then leaf sizes are repaired
   inside the parent: a leaf above ``max_leaf`` is split again by k-means (or, when its
   points cannot be separated, e.g. exact duplicates, into equal chunks in pool order), and a
   leaf below ``min_leaf`` is merged into the nearest leaf of the same parent (nearest
   centroid whose merged size stays within ``max_leaf`` if there is one). A parent holding
   fewer than ``min_leaf`` points stays one (small) leaf; such leaves are counted.

Memory is linear in the pool: k-means at the top level trains on at most
``train_points_per_centroid * k`` points (faiss subsamples with the seed) and assigns every
point in row blocks; lower levels work on one node's rows at a time. No N x N matrix is
built. Ids are ordered so a parent's leaves (and a large region's parents) are contiguous,
and every leaf lists its points nearest-centroid first.

Representatives (what HARP measures) come from :func:`measurement_order`: first the leaf
nearest each parent's centroid (parents by size, largest first), then further leaves in the
order that most reduces the size-weighted distance from the leaves of a parent to their
nearest measured leaf (the greedy k-medoids "build" step), so big, spread-out parents get
their extra representatives first. Any prefix of that order is a valid measured set, and
growing the prefix only adds measurements (cached oracle runs are reused).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thresher.progress import progress
from thresher.signals.cluster import ASSIGN_BLOCK, kmeans, resolve_backend

# below this many distance evaluations x dims per k-means iteration, faiss runs single-threaded:
# OpenMP start-up and spinning cost far more than the work on small nodes (25x on a busy 2-core box)
PARALLEL_WORK = 50_000_000


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class HierarchyConfig:
    """Sizes of the tree. ``min_leaf`` / ``max_leaf`` default to leaf_size/2 and 2.5 x leaf_size
    (leaves of ~100-500 examples with the default leaf_size of 200)."""

    leaf_size: int = 200
    leaves_per_parent: int = 4
    parents_per_large: int = 8
    min_leaf: int | None = None
    max_leaf: int | None = None
    seed: int = 0
    n_iter: int = 20
    train_points_per_centroid: int = 256
    backend: str = "auto"

    def __post_init__(self):
        for name in ("leaf_size", "leaves_per_parent", "parents_per_large", "n_iter", "train_points_per_centroid"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"hierarchy: {name}={v!r} must be an integer >= 1")
        lo, hi = self.leaf_min, self.leaf_max
        if not 1 <= lo <= self.leaf_size <= hi:
            raise ValueError(f"hierarchy: need 1 <= min_leaf ({lo}) <= leaf_size ({self.leaf_size}) <= max_leaf ({hi})")
        if hi < 2 * lo - 1:
            raise ValueError(f"hierarchy: max_leaf ({hi}) must be at least 2 x min_leaf - 1 ({2 * lo - 1}) so merged leaves fit")
        if self.backend not in ("auto", "faiss", "sklearn"):
            raise ValueError(f"hierarchy: backend must be 'auto', 'faiss' or 'sklearn', got {self.backend!r}")

    @property
    def leaf_min(self) -> int:
        return self.min_leaf if self.min_leaf is not None else max(1, self.leaf_size // 2)

    @property
    def leaf_max(self) -> int:
        return self.max_leaf if self.max_leaf is not None else max(self.leaf_size, (5 * self.leaf_size) // 2)


# --------------------------------------------------------------------------- the tree


@dataclass
class Hierarchy:
    """A three-level tree over N points.

    ``order[offsets[l]:offsets[l + 1]]`` are the point positions of leaf ``l``, nearest to the
    leaf centroid first. ``leaf_parent[l]`` and ``parent_large[p]`` link the levels; centroids
    are the means of the member points (float32).
    """

    leaf_of: np.ndarray  # [N] int32
    order: np.ndarray  # [N] int64
    offsets: np.ndarray  # [L + 1] int64
    leaf_parent: np.ndarray  # [L] int32, non-decreasing
    parent_large: np.ndarray  # [P] int32, non-decreasing
    leaf_centroids: np.ndarray  # [L, d] float32
    parent_centroids: np.ndarray  # [P, d] float32
    large_centroids: np.ndarray  # [G, d] float32
    config: HierarchyConfig = field(default_factory=HierarchyConfig)
    stats: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(self.leaf_of.shape[0])

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_parent.shape[0])

    @property
    def n_parents(self) -> int:
        return int(self.parent_large.shape[0])

    @property
    def n_large(self) -> int:
        return int(self.large_centroids.shape[0])

    @property
    def leaf_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def leaf_large(self) -> np.ndarray:
        return self.parent_large[self.leaf_parent]

    def members(self, leaf: int) -> np.ndarray:
        """Point positions of a leaf, nearest to its centroid first."""
        if not 0 <= leaf < self.n_leaves:
            raise IndexError(f"leaf {leaf} out of range (the hierarchy has {self.n_leaves} leaves)")
        return self.order[self.offsets[leaf]:self.offsets[leaf + 1]]

    def parent_leaves(self, parent: int) -> np.ndarray:
        return np.nonzero(self.leaf_parent == parent)[0]

    def summary(self) -> dict:
        sizes = self.leaf_sizes
        return {
            "points": self.n_points, "large": self.n_large, "parents": self.n_parents, "leaves": self.n_leaves,
            "leaf_size_min": int(sizes.min()), "leaf_size_median": float(np.median(sizes)), "leaf_size_max": int(sizes.max()),
            "config": {k: getattr(self.config, k) for k in ("leaf_size", "leaves_per_parent", "parents_per_large", "seed")}
            | {"min_leaf": self.config.leaf_min, "max_leaf": self.config.leaf_max},
            **self.stats,
        }


# --------------------------------------------------------------------------- k-means


def _backend(name: str) -> str:
    return resolve_backend(name)


def kmeans_labels(x: np.ndarray, k: int, *, seed: int, n_iter: int, train_points_per_centroid: int, backend: str) -> np.ndarray:
    """k-means labels of the rows of ``x`` (compacted to 0..k'-1, empty clusters removed).

    :func:`thresher.signals.cluster.kmeans` trained on at most ``train_points_per_centroid * k``
    rows (a seeded subsample), every row assigned to its nearest centroid in blocks, so the
    cost is linear in the rows; small inputs run faiss single-threaded (``PARALLEL_WORK``).
    """
    n = x.shape[0]
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    return kmeans(x, k, seed=seed, backend=backend, n_iter=n_iter, train_points_per_centroid=train_points_per_centroid,
                  assign="nearest", relabel="compact", parallel_work=PARALLEL_WORK).labels


def _means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-label means of the rows of ``x`` (float64), accumulated in row blocks (a sparse
    membership product per block), so no float64 copy of ``x`` is made."""
    import scipy.sparse as sp

    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for s in range(0, x.shape[0], ASSIGN_BLOCK):
        lb = labels[s:s + ASSIGN_BLOCK]
        member = sp.csr_matrix((np.ones(len(lb)), (lb, np.arange(len(lb)))), shape=(k, len(lb)))
        sums += member @ x[s:s + ASSIGN_BLOCK].astype(np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return sums / np.maximum(counts, 1.0)[:, None]


# --------------------------------------------------------------------------- leaf repair


def _split_leaf(xs: np.ndarray, pos: np.ndarray, cfg: HierarchyConfig, backend: str, seed: int, stats: dict) -> list[np.ndarray]:
    """Split one oversized leaf (positions ``pos`` into ``xs``) into pieces within max_leaf."""
    pending, done = [pos], []
    while pending:
        cur = pending.pop()
        if len(cur) <= cfg.leaf_max:
            done.append(cur)
            continue
        k = math.ceil(len(cur) / cfg.leaf_size)
        lab = kmeans_labels(xs[cur], k, seed=seed, n_iter=cfg.n_iter, train_points_per_centroid=cfg.train_points_per_centroid,
                            backend=backend)
        if lab.max() == 0:  # inseparable (duplicates): equal chunks in pool order
            stats["chunk_splits"] = stats.get("chunk_splits", 0) + 1
            n_chunks = math.ceil(len(cur) / cfg.leaf_size)
            done.extend(np.array_split(np.sort(cur), n_chunks))
            continue
        stats["kmeans_splits"] = stats.get("kmeans_splits", 0) + 1
        pending.extend(cur[lab == j] for j in range(int(lab.max()) + 1))
    return done


def _merge_small(xs: np.ndarray, leaves: list[np.ndarray], cfg: HierarchyConfig, stats: dict) -> list[np.ndarray]:
    """Merge leaves below min_leaf into the nearest leaf of the same parent (smallest first)."""
    leaves = [lf for lf in leaves if len(lf)]
    while len(leaves) > 1:
        sizes = np.array([len(lf) for lf in leaves])
        small = int(np.argmin(sizes))
        if sizes[small] >= cfg.leaf_min:
            break
        cents = np.stack([xs[lf].astype(np.float64).mean(axis=0) for lf in leaves])
        d = np.linalg.norm(cents - cents[small], axis=1)
        d[small] = np.inf
        fits = (sizes + sizes[small] <= cfg.leaf_max) & np.isfinite(d)
        target = int(np.argmin(np.where(fits, d, np.inf))) if fits.any() else int(np.argmin(d))
        leaves[target] = np.concatenate([leaves[target], leaves[small]])
        del leaves[small]
        stats["merges"] = stats.get("merges", 0) + 1
    return leaves


# --------------------------------------------------------------------------- build


def build_hierarchy(x: np.ndarray, config: HierarchyConfig | None = None, *, show_progress: bool = True, **overrides) -> Hierarchy:
    """Cluster the rows of ``x`` (N x d embeddings) into large regions, parents and leaves.

    Pass a :class:`HierarchyConfig` or its fields as keywords. Deterministic for a seed
    (and a backend). See the module docstring for the procedure.
    """
    if config is not None and overrides:
        raise ValueError("build_hierarchy: pass a HierarchyConfig or keyword overrides, not both")
    cfg = config or HierarchyConfig(**overrides)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"build_hierarchy: expected a non-empty N x d matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"build_hierarchy: {bad} embedding rows contain NaN or inf")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    backend = _backend(cfg.backend)
    n = x.shape[0]
    stats: dict = {"backend": backend, "small_leaves": 0}

    per_large = cfg.leaf_size * cfg.leaves_per_parent * cfg.parents_per_large
    n_large = max(1, math.ceil(n / per_large))
    large_lab = kmeans_labels(x, n_large, seed=cfg.seed, n_iter=cfg.n_iter,
                              train_points_per_centroid=cfg.train_points_per_centroid, backend=backend)
    n_large = int(large_lab.max()) + 1
    large_order = np.argsort(large_lab, kind="stable")
    large_bounds = np.searchsorted(large_lab[large_order], np.arange(n_large + 1))

    leaf_chunks: list[np.ndarray] = []  # point positions per leaf, in final leaf-id order
    leaf_parent: list[int] = []
    parent_large: list[int] = []
    with progress(n_large, "hierarchy", disable=not show_progress) as bar:
        for g in range(n_large):
            gpos = large_order[large_bounds[g]:large_bounds[g + 1]]
            xg = x[gpos]
            n_par = max(1, math.ceil(len(gpos) / (cfg.leaf_size * cfg.leaves_per_parent)))
            plab = kmeans_labels(xg, n_par, seed=cfg.seed + 1, n_iter=cfg.n_iter,
                                 train_points_per_centroid=cfg.train_points_per_centroid, backend=backend)
            for p in range(int(plab.max()) + 1):
                local = np.nonzero(plab == p)[0]
                xp = xg[local]
                n_leaf = max(1, round(len(local) / cfg.leaf_size))
                llab = kmeans_labels(xp, n_leaf, seed=cfg.seed + 2, n_iter=cfg.n_iter,
                                     train_points_per_centroid=cfg.train_points_per_centroid, backend=backend)
                pieces: list[np.ndarray] = []
                for j in range(int(llab.max()) + 1):
                    pos = np.nonzero(llab == j)[0]
                    pieces.extend(_split_leaf(xp, pos, cfg, backend, cfg.seed + 3, stats) if len(pos) > cfg.leaf_max else [pos])
                pieces = _merge_small(xp, pieces, cfg, stats)
                pid = len(parent_large)
                parent_large.append(g)
                for piece in sorted(pieces, key=lambda a: int(a.min())):
                    if len(piece) < cfg.leaf_min:
                        stats["small_leaves"] += 1
                    leaf_chunks.append(gpos[local[piece]])
                    leaf_parent.append(pid)
            bar.update(1)

    n_leaves = len(leaf_chunks)
    leaf_of = np.empty(n, dtype=np.int32)
    for lid, pts in enumerate(leaf_chunks):
        leaf_of[pts] = lid
    leaf_parent_arr = np.asarray(leaf_parent, dtype=np.int32)
    parent_large_arr = np.asarray(parent_large, dtype=np.int32)
    leaf_cent = _means(x, leaf_of.astype(np.int64), n_leaves)
    sizes = np.bincount(leaf_of, minlength=n_leaves).astype(np.float64)
    n_parents = len(parent_large_arr)
    parent_sum = np.zeros((n_parents, x.shape[1]), dtype=np.float64)
    np.add.at(parent_sum, leaf_parent_arr, leaf_cent * sizes[:, None])
    parent_cent = parent_sum / np.bincount(leaf_parent_arr, weights=sizes, minlength=n_parents)[:, None]
    large_cent = _means(x, large_lab, n_large)

    # points of each leaf, nearest to the leaf centroid first (ties by position)
    order_parts, offsets = [], [0]
    for lid, pts in enumerate(leaf_chunks):
        pts = np.sort(pts)
        d = np.linalg.norm(x[pts].astype(np.float64) - leaf_cent[lid], axis=1)
        order_parts.append(pts[np.lexsort((pts, d))])
        offsets.append(offsets[-1] + len(pts))
    return Hierarchy(
        leaf_of=leaf_of, order=np.concatenate(order_parts).astype(np.int64), offsets=np.asarray(offsets, dtype=np.int64),
        leaf_parent=leaf_parent_arr, parent_large=parent_large_arr, leaf_centroids=leaf_cent.astype(np.float32),
        parent_centroids=parent_cent.astype(np.float32), large_centroids=large_cent.astype(np.float32), config=cfg, stats=stats,
    )


# --------------------------------------------------------------------------- representatives


def measurement_order(h: Hierarchy) -> np.ndarray:
    """All leaves in the order HARP measures them (see the module docstring).

    First, for every parent (largest first, ties by id), the leaf whose centroid is nearest
    the parent centroid. Then, repeatedly, the leaf that most reduces its parent's
    size-weighted sum of distances from each leaf to its nearest measured leaf (ties: lower
    leaf id), until every leaf is listed.
    """
    sizes = h.leaf_sizes.astype(np.float64)
    psizes = np.bincount(h.leaf_parent, weights=sizes, minlength=h.n_parents)
    groups = [h.parent_leaves(p) for p in range(h.n_parents)]
    first = []
    for p, leaves in enumerate(groups):
        d = np.linalg.norm(h.leaf_centroids[leaves].astype(np.float64) - h.parent_centroids[p].astype(np.float64), axis=1)
        first.append(int(leaves[np.lexsort((leaves, d))[0]]))
    parents_by_size = np.lexsort((np.arange(h.n_parents), -psizes))
    order = [first[p] for p in parents_by_size]

    # per parent: pairwise leaf-centroid distances (parents are small) and each leaf's
    # distance to its nearest measured leaf
    is_measured = np.zeros(h.n_leaves, dtype=bool)
    is_measured[order] = True
    dist, near = [], []
    gain, cand = np.full(h.n_parents, -np.inf), np.full(h.n_parents, -1)

    def best_in(p: int) -> None:
        leaves, dm, cur = groups[p], dist[p], near[p]
        open_ = ~is_measured[leaves]
        if not open_.any():
            gain[p], cand[p] = -np.inf, -1
            return
        red = (sizes[leaves][:, None] * np.maximum(cur[:, None] - dm, 0.0)).sum(axis=0)  # reduction if column j is added
        red[~open_] = -np.inf
        j = int(np.argmax(red))
        gain[p], cand[p] = red[j], j

    for p, leaves in enumerate(groups):
        c = h.leaf_centroids[leaves].astype(np.float64)
        dm = np.sqrt(np.maximum(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1), 0.0))
        dist.append(dm)
        near.append(dm[:, int(np.searchsorted(leaves, first[p]))].copy())
        best_in(p)
    while len(order) < h.n_leaves:
        p = int(np.argmax(gain))
        leaf = int(groups[p][cand[p]])
        order.append(leaf)
        is_measured[leaf] = True
        near[p] = np.minimum(near[p], dist[p][:, cand[p]])
        best_in(p)
    return np.asarray(order, dtype=np.int64)


def default_measured_count(h: Hierarchy, leaves_per_rep: int) -> int:
    """``sum over parents of ceil(leaves in the parent / leaves_per_rep)``: one measured leaf
    per parent, more for parents with many leaves."""
    if leaves_per_rep < 1:
        raise ValueError(f"leaves_per_rep={leaves_per_rep} must be >= 1")
    counts = np.bincount(h.leaf_parent, minlength=h.n_parents)
    return int(np.ceil(counts / leaves_per_rep).sum())


def nearest_measured(h: Hierarchy, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every leaf: the measured leaf it inherits from and the centroid distance to it.

    A leaf inherits from the nearest measured leaf of its own parent; if its parent has no
    measured leaf, from the nearest measured leaf of its large region, else from the nearest
    measured leaf anywhere. A measured leaf is its own source (distance 0).
    """
    measured = np.unique(np.asarray(measured, dtype=np.int64))
    if measured.size == 0:
        raise ValueError("nearest_measured: no measured leaves")
    src = np.full(h.n_leaves, -1, dtype=np.int64)
    dist = np.zeros(h.n_leaves, dtype=np.float64)
    src[measured] = measured
    mc = h.leaf_centroids[measured].astype(np.float64)
    m_parent = h.leaf_parent[measured]
    m_large = h.leaf_large[measured]
    leaf_large = h.leaf_large
    todo = np.nonzero(src < 0)[0]
    for s in range(0, len(todo), 4096):
        block = todo[s:s + 4096]
        c = h.leaf_centroids[block].astype(np.float64)
        d2 = (c * c).sum(1)[:, None] - 2.0 * c @ mc.T + (mc * mc).sum(1)[None, :]
        d = np.sqrt(np.maximum(d2, 0.0))
        same_parent = h.leaf_parent[block][:, None] == m_parent[None, :]
        same_large = leaf_large[block][:, None] == m_large[None, :]
        tier = np.where(same_parent, 0, np.where(same_large, 1, 2))
        best_tier = tier.min(axis=1)
        masked = np.where(tier == best_tier[:, None], d, np.inf)
        j = np.argmin(masked, axis=1)
        src[block] = measured[j]
        dist[block] = masked[np.arange(len(block)), j]
    return src, dist
