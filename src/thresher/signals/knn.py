"""Nearest neighbours of unit rows by inner product (= cosine): exact, and approximate at scale.

- :func:`exact_knn`: every row against every row, in row blocks: faiss ``IndexFlatIP``
  or scikit-learn brute force. Cost n^2 d: about 7 minutes for 100K x 384 on one core,
  about 10 hours for 1M.
- :func:`ivf_knn`: an inverted-file search whose distance work is dense matrix products.
  A two-level quantizer (:func:`train_quantizer`) cuts the space into ``n / list_size``
  cells; every row goes into the list of its nearest cell and probes its ``probes``
  nearest cells (:func:`probe_cells`); each list is then compared, in one matrix product,
  with every row that probes it, and per-row heaps (faiss ``ResultHeap``) keep the best
  ``k``. Work per row: about ``probes * list_size`` candidate rows (times the cells'
  imbalance, 1.5-2.5 on embedding-like data) -- constant, so this step, most of the time, is
  linear in n -- plus ``sqrt(n / list_size)`` coarse and about ``coarse_probes *
  sqrt(n / list_size)`` fine centroids, which grow as sqrt(n) per row.
  On embedding-like rows (384 dims, one core): 6 s for 100K (recall@10 0.97), 25 s for
  300K (0.95), 85 s for 1M (0.91; the mean distance to the 10 nearest off by 0.003 on
  average, Spearman 0.999 with the exact one).
- :func:`knn_recall`: recall@m of a search against exact search on a seeded sample of
  query rows, for the benchmark and the ``knn_diversity`` signal's log.

Deterministic: the quantizer is trained on a seeded sample with faiss k-means (seeded;
the same centroids for any faiss thread count, see tests), the lists are visited in a
fixed order, and ties in a heap are broken by that order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.signals.cluster import kmeans, resolve_backend

#: ``backend="auto"``: exact search up to this many rows, approximate above (exact at 20K x 384:
#: about 13 s on one core with faiss; approximate: about 1 s). Every pool the demo and the
#: shipped data build (2K-7.5K rows) stays exact, with the values and keys it always had.
KNN_EXACT_MAX_ROWS = 20_000
#: rows per block for exact search and for the probe step
ROW_BLOCK = 8192
#: query rows per matrix product in the list step
QUERY_BLOCK = 4096
#: the coarse k-means trains on at most this many sample rows per coarse centroid (then labels every sample row)
COARSE_TRAIN = 256
#: below this many rows x centroids x dims a quantizer k-means runs faiss single-threaded
#: (OpenMP start-up costs more than the work; as HARP's hierarchy)
PARALLEL_WORK = 50_000_000


@dataclass(frozen=True)
class IVFConfig:
    """Settings of :func:`ivf_knn` (the defaults were chosen by ``benchmarks/bench_geometry_scale.py``)."""

    list_size: int = 128  # rows per cell on average: n / list_size cells
    probes: int = 16  # cells each row is compared with (its nearest first)
    coarse_probes: int = 12  # top-level cells whose children are searched for the nearest cells
    train_per_list: int = 32  # sample rows per cell the quantizer trains on
    n_iter: int = 10  # k-means iterations (both levels)
    seed: int = 0

    def __post_init__(self):
        for name in ("list_size", "probes", "coarse_probes", "train_per_list", "n_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"ivf: {name} must be >= 1, got {getattr(self, name)}")


#: the settings :func:`ivf_knn` uses unless told otherwise
DEFAULT_IVF = IVFConfig()


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("approximate neighbours (backend='ann') need faiss-cpu (pip install faiss-cpu)") from e
    return faiss


def exact_knn(x: np.ndarray, k: int, backend: str = "faiss", queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest inner products of each query row with the rows of ``x``: (sims [q, k]
    float32, ids [q, k] int64), best first. ``queries`` defaults to ``x`` itself (each row then
    finds itself too). ``faiss``: ``IndexFlatIP``; ``sklearn``: brute-force Euclidean neighbours
    (``1 - d^2 / 2`` on unit rows)."""
    q = x if queries is None else queries
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    if backend == "faiss":
        faiss = _faiss()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(x, dtype=np.float32))
        for s in range(0, len(q), ROW_BLOCK):
            sims[s:s + ROW_BLOCK], ids[s:s + ROW_BLOCK] = index.search(np.ascontiguousarray(q[s:s + ROW_BLOCK]), k)
        return sims, ids
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(x)
    for s in range(0, len(q), ROW_BLOCK):
        d, i = nn.kneighbors(q[s:s + ROW_BLOCK])
        sims[s:s + ROW_BLOCK], ids[s:s + ROW_BLOCK] = 1.0 - d.astype(np.float64) ** 2 / 2.0, i
    return sims, ids


# --------------------------------------------------------------------------- quantizer


@dataclass
class Quantizer:
    """Two-level cells: ``coarse`` centroids [c, d]; ``fine`` centroids [nlist, d], grouped by
    coarse parent (``fine[start[j]:start[j + 1]]`` are the children of coarse centroid j)."""

    coarse: np.ndarray
    fine: np.ndarray
    start: np.ndarray

    @property
    def nlist(self) -> int:
        return len(self.fine)


def _nearest(x: np.ndarray, cents: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest (L2) centroids of each row, nearest first (ties: lower index), in row blocks."""
    cents = np.ascontiguousarray(cents, dtype=np.float32)
    half_norm = 0.5 * (cents ** 2).sum(axis=1)  # |x - c|^2 = |x|^2 - 2 (x.c - |c|^2 / 2)
    out = np.empty((len(x), k), dtype=np.int64)
    for s in range(0, len(x), ROW_BLOCK):
        score = x[s:s + ROW_BLOCK] @ cents.T - half_norm
        if k < score.shape[1]:
            top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            ranked = np.take_along_axis(top, _rank(np.take_along_axis(score, top, axis=1), top), axis=1)
        else:
            ranked = _rank(score, np.broadcast_to(np.arange(score.shape[1]), score.shape))
        out[s:s + ROW_BLOCK] = ranked
    return out


def train_quantizer(x: np.ndarray, cfg: IVFConfig) -> Quantizer:
    """The cells for ``x``: ``nlist = round(n / list_size)`` fine centroids under ``round(sqrt(nlist))``
    coarse ones.

    A seeded sample of ``train_per_list * nlist`` rows (all rows when fewer) is split by a
    coarse k-means (:func:`thresher.signals.cluster.kmeans`, faiss, ``n_iter`` iterations,
    trained on at most :data:`COARSE_TRAIN` sample rows per centroid, seed ``seed``); the
    sample rows of coarse cell j then train that cell's own k-means (seed ``seed + 1 + j``)
    with ``round(members / train_per_list)`` centroids (at least 1), so fine cells hold about
    ``list_size`` rows in dense regions too (one k-means over the whole sample leaves a few
    cells with many times more). Cost: sample x sqrt(nlist) x d per iteration at each level.
    """
    n = len(x)
    nlist = max(1, round(n / cfg.list_size))
    rng = np.random.default_rng(cfg.seed)
    m = min(n, cfg.train_per_list * nlist)
    sample = x[np.sort(rng.choice(n, m, replace=False))] if m < n else x
    n_coarse = max(1, round(np.sqrt(nlist)))
    top = kmeans(sample, n_coarse, seed=cfg.seed, backend="faiss", n_iter=cfg.n_iter, train_points_per_centroid=COARSE_TRAIN,
                 assign="nearest", parallel_work=PARALLEL_WORK)
    coarse, owner = np.asarray(top.centroids, dtype=np.float32), top.labels
    parts, start, kept = [], [0], []
    for j in range(len(coarse)):
        members = sample[owner == j]
        if len(members) == 0:
            continue  # a cell no sample row is nearest to: no children, never probed
        k = max(1, round(len(members) / cfg.train_per_list))
        sub = kmeans(members, k, seed=cfg.seed + 1 + j, backend="faiss", n_iter=cfg.n_iter, parallel_work=PARALLEL_WORK)
        parts.append(np.asarray(sub.centroids, dtype=np.float32))
        start.append(start[-1] + len(parts[-1]))
        kept.append(j)
    return Quantizer(coarse[kept], np.concatenate(parts), np.asarray(start, dtype=np.int64))


def _bucket(probes: np.ndarray, nbuckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows sorted by the bucket they name, bucket limits): the rows of bucket b are
    ``rows[lims[b]:lims[b + 1]]``; a row appears once per bucket it names (-1 = none)."""
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    lims = np.searchsorted(flat[order], np.arange(nbuckets + 1))
    return order // probes.shape[1], lims


def _heap_search(x: np.ndarray, probes: np.ndarray, members: list[np.ndarray], vectors: np.ndarray,
                 k: int, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``, the ``k`` best of ``vectors[i] . x_row - bias[i]`` over every i in
    ``members[b]`` for the buckets b the row probes: one matrix product per bucket and query
    block, kept in per-row heaps (faiss ``ResultHeap``). Missing results have id -1."""
    faiss = _faiss()
    rows, lims = _bucket(probes, len(members))
    heap = faiss.ResultHeap(len(x), k, keep_max=True)
    for b, ids in enumerate(members):
        qs = rows[lims[b]:lims[b + 1]]
        if len(ids) == 0 or len(qs) == 0:
            continue
        block = vectors[ids]
        for s in range(0, len(qs), QUERY_BLOCK):
            qq = qs[s:s + QUERY_BLOCK]
            sims = x[qq] @ block.T
            if bias is not None:
                sims -= bias[ids][None, :]
            heap.add_result_subset(qq, sims, ids)
    heap.finalize()
    return heap.D, heap.I


def probe_cells(x: np.ndarray, quant: Quantizer, probes: int, coarse_probes: int) -> np.ndarray:
    """The ``probes`` nearest fine cells (L2) of each row [n, probes], nearest first: searched among
    the children of the row's ``coarse_probes`` nearest coarse centroids (-1 where there are fewer)."""
    top = _nearest(x, quant.coarse, min(coarse_probes, len(quant.coarse)))
    children = [np.arange(quant.start[j], quant.start[j + 1]) for j in range(len(quant.coarse))]
    half_norm = 0.5 * (quant.fine.astype(np.float32) ** 2).sum(axis=1)  # |x - c|^2 = |x|^2 - 2 (x.c - |c|^2 / 2)
    _, cells = _heap_search(x, top, children, quant.fine, min(probes, quant.nlist), bias=half_norm)
    return cells


def ivf_knn(x: np.ndarray, k: int, cfg: IVFConfig = DEFAULT_IVF) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``k`` largest inner products of every row of ``x`` with the rows of ``x``
    (itself included): (sims [n, k] float32, ids [n, k] int64), best first.

    Each row is compared with the rows listed in its ``probes`` nearest cells (see the module
    docs); the sims returned are exact float32 inner products, only the candidate set is
    approximate. A row whose probed cells hold fewer than ``k`` rows (tiny pools) gets an exact
    search instead.
    """
    _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"ivf: k={k} must be between 1 and the number of rows ({n})")
    quant = train_quantizer(x, cfg)
    cells = probe_cells(x, quant, cfg.probes, cfg.coarse_probes)
    primary = cells[:, 0]
    order = np.argsort(primary, kind="stable")
    lims = np.searchsorted(primary[order], np.arange(quant.nlist + 1))
    lists = [order[lims[b]:lims[b + 1]] for b in range(quant.nlist)]
    sims, ids = _heap_search(x, cells, lists, x, k)
    short = np.flatnonzero((ids < 0).any(axis=1))
    if len(short):
        sims[short], ids[short] = top_k_exact(x, x[short], k)
    return sims, ids


def top_k_exact(x: np.ndarray, queries: np.ndarray, k: int, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` largest inner products of each query with the rows of ``x`` (sims float32,
    ids int64, best first), by NumPy matrix products over blocks of ``x`` -- for a few
    queries against many rows (recall checks, fallbacks)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(x))
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for s in range(0, len(x), block):
        sims = queries @ x[s:s + block].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        order = _rank(cand_s, cand_i)[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_s, best_i


def _rank(sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Column order of each row: sims descending, ties by id ascending."""
    by_id = np.argsort(ids, axis=1, kind="stable")
    by_sim = np.argsort(-np.take_along_axis(sims, by_id, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_id, by_sim, axis=1)


def knn_recall(x: np.ndarray, sample: int = 1000, m: int = 10, seed: int = 0, found: tuple[np.ndarray, np.ndarray] | None = None,
               cfg: IVFConfig = DEFAULT_IVF) -> float:
    """Recall@m of the approximate search against exact search, over ``sample`` query rows
    drawn with ``seed`` (all rows when fewer).

    For each sampled row (itself excluded), the share of its ``m`` approximate neighbours whose
    cosine is at least that of its exact ``m``-th neighbour (minus 1e-6, so an exact tie counts as
    found), averaged. ``found``: the (sims, ids) of :func:`ivf_knn` with at least m + 1 columns
    (computed here with ``cfg`` when None).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    m = min(m, n - 1)
    if m < 1:
        raise ValueError(f"knn_recall needs at least 2 rows, got {n}")
    sims, ids = found if found is not None else ivf_knn(x, m + 1, cfg)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    ex_sims, ex_ids = top_k_exact(x, x[rows], m + 1)
    hits = 0.0
    for j, r in enumerate(rows):
        cut = _without_self(ex_sims[j], ex_ids[j], r, m)[m - 1] - 1e-6
        hits += np.count_nonzero(_without_self(sims[r], ids[r], r, m) >= cut) / m
    return hits / len(rows)


def _without_self(sims: np.ndarray, ids: np.ndarray, row: int, m: int) -> np.ndarray:
    keep = ids != row
    if keep.all():
        keep[-1] = False
    return sims[keep][:m]


def neighbour_sims(sims: np.ndarray, ids: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` neighbour sims of each row from a self-inclusive search with ``m + 1`` columns:
    the row itself is dropped by position; where it is not among the results (ties with
    duplicates), the last (farthest) column is dropped instead. [n, m] float64."""
    n = len(ids)
    keep = ids != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False
    return sims[keep].reshape(n, m).astype(np.float64)


def knn_backend(backend: str, n: int) -> str:
    """The search ``knn_diversity`` runs on ``n`` rows: ``faiss`` / ``sklearn`` (exact) or ``ann``.

    ``auto``: exact (faiss when it imports, else scikit-learn) up to :data:`KNN_EXACT_MAX_ROWS`
    rows, ``ann`` above (exact search there costs n^2: about 2.5 hours for 1M x 384 on one core).
    """
    if backend not in ("auto", "faiss", "sklearn", "ann"):
        raise ValueError(f"knn_diversity: backend must be 'auto', 'faiss', 'sklearn' or 'ann', got {backend!r}")
    if backend == "ann" or (backend == "auto" and n > KNN_EXACT_MAX_ROWS):
        return "ann"
    return resolve_backend(backend)


def knn_search(x: np.ndarray, m: int, *, backend: str = "auto", ivf: IVFConfig = DEFAULT_IVF) -> tuple[np.ndarray, np.ndarray]:
    """The ``m + 1`` nearest rows of each unit row, itself included: (sims [n, m+1], ids [n, m+1]).

    Exact: faiss ``IndexFlatIP`` or scikit-learn brute force (:func:`exact_knn`);
    ``ann``: the inverted-file search :func:`ivf_knn` with ``ivf``.
    """
    used = knn_backend(backend, len(x))
    if used == "ann":
        return ivf_knn(x, m + 1, ivf)
    return exact_knn(x, m + 1, used)
