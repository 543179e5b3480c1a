"""THTB's hardness scores as pure functions (no signals, no pool): the Bloom term, interdisciplinary
complexity (IC), ``IHS = (Bloom + IC) / 2``, IREI, ``SC_norm`` and ``EHS = (IREI + SC_norm) / 2``.

Every min-max here is over the values passed in (the selector passes one stage's input);
``reference`` / ``paper`` pick the reference code's or the paper's form where they differ
(see :mod:`thresher.select.thtb.selector`).
"""
from __future__ import annotations

import math

import numpy as np

from thresher.signals.text import irei_lengths


def minmax_with(values, constant: float = 0.0) -> np.ndarray:
    """Min-max to [0, 1] over the non-NaN values; a constant column maps to ``constant``
    (THTB's reference code uses 0.5, the paper's formula leaves it undefined: 0 here);
    NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    out = np.full(v.shape, np.nan)
    if not ok.any():
        return out
    lo, hi = float(v[ok].min()), float(v[ok].max())
    out[ok] = constant if hi == lo else (v[ok] - lo) / (hi - lo)
    return out


def bloom_reference(scores) -> np.ndarray:
    """Reference-code Bloom term from the judge's 1..21 score: ``(score - 1) / 20``."""
    return (np.asarray(scores, dtype=np.float64) - 1.0) / 20.0


def bloom_paper(levels) -> np.ndarray:
    """Paper Bloom term: the level 1..6 min-max normalised over the given set (constant -> 0)."""
    return minmax_with(levels, 0.0)


def mean_pairwise_cosine_distance(vectors) -> float:
    """Mean of ``1 - cos(v_i, v_j)`` over the pairs i < j; 0 with fewer than 2 vectors."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2:
        return 0.0
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / np.where(norms > 0, norms, 1.0)
    sims = u @ u.T
    iu = np.triu_indices(len(v), 1)
    return float(np.mean(1.0 - sims[iu]))


def ic_scores(counts, mean_distances, formula: str = "reference") -> np.ndarray:
    """IC = minmax(#disciplines) + mean pairwise description distance, over the given set.

    ``reference``: a constant count column min-maxes to 0.5, and the sum is rounded to 2
    decimals when there are 2+ disciplines (the reference code's ``round(..., 2)``); with
    fewer the IC is the normalised count. ``paper``: a constant count column -> 0, no
    rounding. NaN counts (failed judge replies) stay NaN.
    """
    c = np.asarray(counts, dtype=np.float64)
    d = np.asarray(mean_distances, dtype=np.float64)
    if c.shape != d.shape:
        raise ValueError(f"ic_scores: counts {c.shape} and distances {d.shape} differ in shape")
    if formula == "reference":
        cn = minmax_with(c, 0.5)
        out = cn.copy()
        for i in np.nonzero(c > 1)[0]:
            out[i] = round(float(cn[i] + d[i]), 2)
        return out
    if formula == "paper":
        return minmax_with(c, 0.0) + np.where(c > 1, d, 0.0)
    raise ValueError(f"ic_scores: formula must be 'reference' or 'paper', got {formula!r}")


def ihs_scores(bloom, ic=None) -> np.ndarray:
    """``IHS = (Bloom + IC) / 2``; with IC unavailable (None) the Bloom term alone."""
    b = np.asarray(bloom, dtype=np.float64)
    if ic is None:
        return b.copy()
    return (b + np.asarray(ic, dtype=np.float64)) / 2.0


def _length_ratio(li: np.ndarray, lr: np.ndarray) -> np.ndarray:
    return np.divide(lr, li, out=np.zeros_like(lr), where=li > 0)


def irei_reference(len_inst, len_resp) -> np.ndarray:
    """Reference-code IREI: ``(minmax(L_inst + L_resp) + minmax(L_resp / L_inst)) / 2``,
    a constant column -> 0.5, the ratio 0 for an empty instruction."""
    li, lr = irei_lengths(len_inst, len_resp)
    return (minmax_with(li + lr, 0.5) + minmax_with(_length_ratio(li, lr), 0.5)) / 2.0


def irei_paper(len_inst, len_resp) -> np.ndarray:
    """Paper IREI: ``minmax(L_inst + L_resp) + L_resp / L_inst`` (the ratio is not
    normalised; constant length sums -> 0; the ratio 0 for an empty instruction)."""
    li, lr = irei_lengths(len_inst, len_resp)
    return minmax_with(li + lr, 0.0) + _length_ratio(li, lr)


def sc_norm(silhouette) -> np.ndarray:
    """``(s + 1) / 2``: the silhouette mapped from [-1, 1] to [0, 1]."""
    return (np.asarray(silhouette, dtype=np.float64) + 1.0) / 2.0


def ehs_scores(irei, sc_normalised) -> np.ndarray:
    """``EHS = (IREI + SC_norm) / 2``."""
    return (np.asarray(irei, dtype=np.float64) + np.asarray(sc_normalised, dtype=np.float64)) / 2.0


def silhouette_k(m: int, k: int | None = None, basis_n: int | None = None) -> int:
    """Clusters for m queries: ``k`` if given, else round(sqrt(basis_n / 2)) with basis_n
    = m by default; clamped to [2, m - 1]."""
    if m < 3:
        raise ValueError(f"the silhouette needs at least 3 queries, the stage has {m}")
    if k is None:
        k = max(1, round(math.sqrt((basis_n or m) / 2)))
    return int(min(max(2, k), m - 1))


# =========================================================================== IC: discipline embeddings


def canonical_subject(name: str) -> str:
    """The reference code's subject key: lower case, spaces -> underscores."""
    return name.strip().lower().replace(" ", "_")


def interdisciplinary_complexity(lists: list[list[dict[str, str]] | None], vectors: list[np.ndarray | None],
                                 formula: str = "reference") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(IC, discipline counts, mean pairwise distances, info) for a stage's examples.

    ``lists[i]`` is example i's discipline list, or None when its judge reply failed
    (IC NaN); ``vectors[i]`` the unit vectors of its descriptions, one row per item of
    ``lists[i]`` (the stored ``discipline_embeddings`` signal). ``paper``: the example's
    own descriptions. ``reference``: names are canonicalised (:func:`canonical_subject`,
    duplicates merged) and every subject stands for the first description it has in
    ``lists`` order.
    """
    if formula not in ("reference", "paper"):
        raise ValueError(f"ic: formula must be 'reference' or 'paper', got {formula!r}")
    if len(vectors) != len(lists):
        raise ValueError(f"ic: {len(vectors)} vector lists for {len(lists)} examples")
    n = len(lists)
    counts = np.full(n, np.nan)
    dists = np.full(n, np.nan)
    for i, items in enumerate(lists):
        if items is not None and (vectors[i] is None or len(vectors[i]) != len(items)):
            got = 0 if vectors[i] is None else len(vectors[i])
            raise ValueError(f"ic: example {i} lists {len(items)} disciplines but has {got} description vectors")
    if formula == "reference":
        first_desc: dict[str, str] = {}
        first_vec: dict[str, np.ndarray] = {}
        subjects: list[list[str] | None] = []
        for items, vecs in zip(lists, vectors):
            if items is None:
                subjects.append(None)
                continue
            names: list[str] = []
            for it, v in zip(items, vecs):
                key = canonical_subject(it["name"])
                if key not in names:
                    names.append(key)
                if key not in first_desc:
                    first_desc[key], first_vec[key] = it["description"], v
            subjects.append(names)
        for i, names in enumerate(subjects):
            if names is None:
                continue
            counts[i] = len(names)
            dists[i] = mean_pairwise_cosine_distance(np.stack([first_vec[s] for s in names])) if len(names) > 1 else 0.0
        info = {"descriptions_embedded": len(first_desc), "subjects": len(first_desc)}
    else:
        texts = set()
        for i, items in enumerate(lists):
            if items is None:
                continue
            m = len(items)
            counts[i] = m
            dists[i] = mean_pairwise_cosine_distance(vectors[i]) if m > 1 else 0.0
            texts.update(it["description"] for it in items)
        info = {"descriptions_embedded": len(texts)}
    return ic_scores(counts, dists, formula), counts, dists, info
