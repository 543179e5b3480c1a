"""LSH banding of MinHash signatures (:mod:`thresher.signals.minhash`), vectorised: the candidate
pairs datasketch's ``MinHashLSH(threshold, num_perm)`` returns, found by sorting.

- bands: the (b, r) ``MinHashLSH`` chooses for ``threshold`` (:func:`optimal_bands`), lowered in
  steps of 0.05 where it cannot band (:func:`lsh_bands`);
- candidates: two signatures equal on all r values of one band; verified: ``>= threshold *
  num_perm`` equal values;
- :func:`near_duplicate_edges`: a pool against itself, as edges whose connected components are
  the clusters; :class:`BandIndex`: query texts against a fixed indexed set (decontamination).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from thresher.progress import progress

_PAIR_FLUSH = 1 << 16   # verified pairs held (at least) before they are folded into component labels


def _band_fp(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _band_fn(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (b, r), b * r <= num_perm, minimising 0.5 * P(false positive) + 0.5 * P(false negative)
    of banding at ``threshold`` (each the integral of the banding S-curve below / above the
    threshold; the first minimum in b-major, r-minor order): ``MinHashLSH``'s choice."""
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = 0.5 * _band_fp(threshold, b, r) + 0.5 * _band_fn(threshold, b, r)
            if err < best:
                best, opt = err, (b, r)
    return opt


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r) for ``threshold``, or, where the optimum there has fewer than 2 bands (e.g. 0.99
    with 128 permutations), for the largest lower threshold in steps of 0.05 (down to 0.5) whose
    optimum has 2 or more, as ``thresher.signals.dedup._lsh_index`` lowers a ``MinHashLSH``.
    A lower index threshold only adds candidates; each is verified at ``threshold`` itself."""
    t = threshold
    while t >= 0.5 - 1e-9:
        b, r = optimal_bands(t, num_perm)
        if b >= 2:
            return b, r
        t = round(t - 0.05, 10)
    raise ValueError(f"minhash: no LSH banding with >= 2 bands for threshold {threshold} with num_perm={num_perm}; "
                     "use more permutations")


def row_keys(sig: np.ndarray, rows: np.ndarray, cols: slice) -> np.ndarray:
    """A 64-bit hash of the values ``sig[row, cols]`` of each of ``rows`` (equal values, equal key; the
    rare unequal values with an equal key are told apart by comparing the values themselves)."""
    width = len(range(*cols.indices(sig.shape[1])))
    step = max(1024, (1 << 20) // max(width, 1))
    out = np.empty(len(rows), dtype=np.uint64)
    for lo in range(0, len(rows), step):
        block = sig[rows[lo:lo + step], cols]
        h = np.full(block.shape[0], 0x243F6A8885A308D3, dtype=np.uint64)
        for col in range(width):
            h ^= block[:, col]
            h *= np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(31)
        out[lo:lo + step] = h
    return out


def _band(band: int, r: int) -> slice:
    return slice(band * r, (band + 1) * r)


def _pairs_where(sig_a: np.ndarray, i: np.ndarray, sig_b: np.ndarray, j: np.ndarray, cols: slice,
                 need: float | None = None, chunk: int = 1 << 16) -> np.ndarray:
    """Mask of the pairs (sig_a[i], sig_b[j]) equal on ``cols`` and, when ``need`` is given, with
    ``>= need`` equal values in all (checked in chunks of pairs: bounded memory)."""
    out = np.zeros(len(i), dtype=bool)
    for lo in range(0, len(i), chunk):
        ii, jj = i[lo:lo + chunk], j[lo:lo + chunk]
        ok = (sig_a[ii, cols] == sig_b[jj, cols]).all(axis=1)
        if need is not None and ok.any():
            ok[ok] = _equal_counts(sig_a[ii[ok]], sig_b[jj[ok]]) >= need
        out[lo:lo + chunk] = ok
    return out


def _equal_counts(sig_i: np.ndarray, sig_j: np.ndarray) -> np.ndarray:
    return np.count_nonzero(sig_i == sig_j, axis=1)


def _smallest_labels(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per node, the smallest node of its connected component (edges left[i] - right[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


class _Components:
    """Connected components grown from edge batches; ``label[i]`` = smallest node linked so far,
    refreshed (``refreshes`` counts it) once ``max(2^16, n / 8)`` edges are held, or by
    :meth:`flush`. Pairs already in one component need no verification."""

    def __init__(self, n: int):
        self.n = n
        self.label = np.arange(n, dtype=np.int64)
        self.refreshes = 0
        self._limit = max(_PAIR_FLUSH, n // 8)
        self._left: list[np.ndarray] = []
        self._right: list[np.ndarray] = []
        self._held = 0

    def add(self, left: np.ndarray, right: np.ndarray) -> None:
        if len(left):
            self._left.append(left)
            self._right.append(right)
            self._held += len(left)
            if self._held >= self._limit:
                self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        node = np.arange(self.n, dtype=np.int64)
        self.label = _smallest_labels(self.n, np.concatenate([node, *self._left]),
                                      np.concatenate([self.label, *self._right]))
        self._left, self._right, self._held = [], [], 0
        self.refreshes += 1

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(node, its label) for every node not its own label: edges with the same components."""
        self.flush()
        moved = np.flatnonzero(self.label != np.arange(self.n))
        return moved, self.label[moved]


def _band_pairs(sig: np.ndarray, reps: np.ndarray, cols: slice, need: float, comp: _Components) -> None:
    """Verify every pair of ``reps`` equal on ``cols`` that is not yet connected, adding the kept ones.

    The rows' keys are sorted; pass d pairs sorted positions p and p + d of one run of equal
    keys (so every pair of a run once). Labels are refreshed after about n / 2 pairs were
    looked at, and then runs whose rows are all connected are dropped (a large bucket of near
    copies costs a few passes, not all its pairs).
    """
    keys = row_keys(sig, reps, cols)
    at = np.argsort(keys, kind="stable")
    sk = keys[at]
    new_run = np.concatenate([[True], sk[1:] != sk[:-1]])
    run_of, run_start = np.cumsum(new_run) - 1, np.flatnonzero(new_run)
    pos = np.flatnonzero(~new_run[1:])  # positions whose next row has the same key
    d, seen, work = 1, -1, 0
    while len(pos):
        if work >= max(_PAIR_FLUSH, comp.n // 2):  # refresh what the passes so far linked (costs O(n))
            comp.flush()
            work = 0
        if comp.refreshes != seen:
            seen = comp.refreshes
            lab = comp.label[reps[at]]
            done = np.minimum.reduceat(lab, run_start) == np.maximum.reduceat(lab, run_start)
            pos = pos[~done[run_of[pos]]]
        i, j = reps[at[pos]], reps[at[pos + d]]
        open_ = comp.label[i] != comp.label[j]
        i, j = i[open_], j[open_]
        keep = _pairs_where(sig, i, sig, j, cols, need)
        comp.add(i[keep], j[keep])
        work += len(pos)
        d += 1
        pos = pos[pos + d < len(sk)]
        pos = pos[sk[pos + d] == sk[pos]]


def near_duplicate_edges(sig: np.ndarray, valid: np.ndarray, threshold: float, bands: tuple[int, int],
                         show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Edges (left, right), int64, whose connected components are those of every pair of valid rows
    that shares all ``r`` values of some band (a candidate) and has ``>= threshold * num_perm``
    equal values (verified): the pairs the query-then-insert loop over ``MinHashLSH`` links.

    Rows with an identical signature are linked to the first of them first (they are candidates
    and verified; whatever links one links all), then each band's pairs are checked
    (:func:`_band_pairs`), skipping pairs already connected.
    """
    n, num_perm = sig.shape
    b, r = bands
    comp = _Components(n)
    rows = np.flatnonzero(valid)
    if len(rows) < 2:
        return comp.edges()
    # identical signatures: each row to the first row of its run of equal keys, when truly equal
    keys = row_keys(sig, rows, slice(0, num_perm))
    at = np.argsort(keys, kind="stable")
    order, sk = rows[at], keys[at]
    head = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    head_of = order[np.repeat(head, np.diff(np.append(head, len(order))))]
    dup = np.flatnonzero(order != head_of)
    dup = dup[_pairs_where(sig, order[dup], sig, head_of[dup], slice(0, num_perm))]
    comp.add(order[dup], head_of[dup])
    reps = np.setdiff1d(rows, order[dup])
    with progress(total=b, desc="minhash bands", disable=not show_progress, unit="band") as bar:
        for band in range(b):
            comp.flush()
            _band_pairs(sig, reps, _band(band, r), threshold * num_perm, comp)
            bar.update(1)
    return comp.edges()


class BandIndex:
    """Signatures of a fixed set of texts banded for lookups (decontamination's eval texts):
    :meth:`query` gives the (query row, indexed row, equal values) of candidate pairs."""

    def __init__(self, sig: np.ndarray, valid: np.ndarray, bands: tuple[int, int]):
        self.sig = sig
        self.b, self.r = bands
        rows = np.flatnonzero(valid)
        self.keys, self.rows = [], []
        for band in range(self.b):
            k = row_keys(sig, rows, _band(band, self.r))
            at = np.argsort(k, kind="stable")
            self.keys.append(k[at])
            self.rows.append(rows[at])

    def query(self, qsig: np.ndarray, qvalid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query row q, indexed row j) that shares all values of some band, once, with the
        number of equal values of the two signatures; invalid (empty) query rows get none."""
        qrows = np.flatnonzero(qvalid)
        qs, js = [], []
        for band in range(self.b):
            cols = _band(band, self.r)
            k = row_keys(qsig, qrows, cols)
            lo = np.searchsorted(self.keys[band], k, "left")
            cnt = np.searchsorted(self.keys[band], k, "right") - lo
            q = np.repeat(qrows, cnt)
            at = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(int(cnt.sum()))
            j = self.rows[band][at]
            ok = _pairs_where(qsig, q, self.sig, j, cols)
            qs.append(q[ok])
            js.append(j[ok])
        q = np.concatenate(qs).astype(np.int64) if qs else np.zeros(0, dtype=np.int64)
        j = np.concatenate(js).astype(np.int64) if js else np.zeros(0, dtype=np.int64)
        if len(q):
            pair = np.unique(np.stack([q, j], axis=1), axis=0)
            q, j = pair[:, 0], pair[:, 1]
        same = np.concatenate([_equal_counts(qsig[q[s:s + 65536]], self.sig[j[s:s + 65536]])
                               for s in range(0, len(q), 65536)]) if len(q) else np.zeros(0, dtype=np.int64)
        return q, j, same
