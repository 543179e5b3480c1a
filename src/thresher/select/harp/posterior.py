"""HARP's inference (step 3 of :mod:`thresher.select.harp.selector`): empirical-Bayes shrinkage of
the measured leaves' effects per dev domain, and every leaf's posterior, the unmeasured ones
inheriting from the nearest measured leaf with distance-inflated variance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.select.harp.hierarchy import Hierarchy, nearest_measured


@dataclass
class Shrinkage:
    """Per-domain normal-normal EB over measured leaves (arrays [R, D] unless noted)."""

    mean: np.ndarray
    var: np.ndarray
    prior_mean: np.ndarray
    tau2: np.ndarray  # [D]
    grouped: np.ndarray  # [R] bool: prior mean from the leaf's group (else global)


def empirical_bayes(y: np.ndarray, s2: np.ndarray, groups: np.ndarray | None = None, *, min_group: int = 3,
                    tau2_floor: float = 1e-6) -> Shrinkage:
    """Normal-normal shrinkage per domain (column) of measured effects ``y`` with noise ``s2``.

    Prior mean: the mean of ``y`` over the leaf's group if that group has at least
    ``min_group`` measured leaves, else the mean over all. Prior variance (method of moments):
    ``tau2 = max(tau2_floor, sum((y - m)^2) / (R - n_means) - mean(s2))`` where ``n_means``
    counts the distinct means used (so a single global mean uses ``R - 1``). With one
    measured leaf there is no spread to estimate: ``tau2 = max(tau2_floor, s2)``.
    Posterior: ``w = tau2 / (tau2 + s2)``, mean ``m + w (y - m)``, variance ``w s2``.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(s2, dtype=np.float64))
    if y.shape != s2.shape:
        raise ValueError(f"empirical_bayes: effects {y.shape} and noise {s2.shape} differ in shape")
    if (s2 < 0).any() or not np.isfinite(s2).all() or not np.isfinite(y).all():
        raise ValueError("empirical_bayes: effects must be finite and noise variances finite and >= 0")
    r = y.shape[0]
    if r == 0:
        raise ValueError("empirical_bayes: no measured leaves")
    if tau2_floor <= 0:
        raise ValueError(f"empirical_bayes: tau2_floor={tau2_floor} must be > 0")
    groups = np.zeros(r, dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != (r,):
        raise ValueError(f"empirical_bayes: groups has shape {groups.shape}, expected ({r},)")
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    grouped = counts[inv] >= min_group
    n_means = int((counts >= min_group).sum()) + int((~grouped).any())
    if r - n_means < 1:  # too few leaves to spare a degree of freedom: global mean only
        grouped[:] = False
        n_means = 1
    global_mean = y.mean(axis=0)
    prior = np.tile(global_mean, (r, 1))
    for g in range(len(uniq)):
        rows = (inv == g) & grouped
        if rows.any():
            prior[rows] = y[rows].mean(axis=0)
    if r == 1:
        tau2 = np.maximum(tau2_floor, s2[0])
    else:
        tau2 = np.maximum(tau2_floor, ((y - prior) ** 2).sum(axis=0) / (r - n_means) - s2.mean(axis=0))
    w = tau2[None, :] / (tau2[None, :] + s2)
    return Shrinkage(mean=prior + w * (y - prior), var=w * s2, prior_mean=prior, tau2=tau2, grouped=grouped)


@dataclass
class LeafPosterior:
    """Every leaf's effect posterior (arrays [L, D] unless noted)."""

    mean: np.ndarray
    var: np.ndarray
    raw: np.ndarray  # measured effect, NaN where not measured
    noise: np.ndarray  # bootstrap variance, NaN where not measured
    prior_mean: np.ndarray  # NaN where not measured
    measured: np.ndarray  # [L] bool
    source: np.ndarray  # [L] the measured leaf it inherits from (itself if measured)
    distance: np.ndarray  # [L] centroid distance to the source
    tau2: np.ndarray  # [D]
    scale: float


def smoothness_scale(h: Hierarchy, max_parents: int = 2000, seed: int = 0) -> float:
    """Median distance between parent centroids (a seeded sample of at most ``max_parents``);
    with one parent, twice the median distance from a leaf centroid to it."""
    if h.n_parents < 2:
        d = np.linalg.norm(h.leaf_centroids.astype(np.float64) - h.parent_centroids[h.leaf_parent].astype(np.float64), axis=1)
        return float(max(2.0 * np.median(d), 1e-12))
    idx = np.arange(h.n_parents)
    if len(idx) > max_parents:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_parents, replace=False))
    c = h.parent_centroids[idx].astype(np.float64)
    d2 = (c * c).sum(1)[:, None] - 2.0 * c @ c.T + (c * c).sum(1)[None, :]
    iu = np.triu_indices(len(idx), k=1)
    return float(max(np.median(np.sqrt(np.maximum(d2[iu], 0.0))), 1e-12))


def leaf_posteriors(h: Hierarchy, measured: np.ndarray, y: np.ndarray, s2: np.ndarray, *, prior_groups: str = "large",
                    min_group: int = 3, tau2_floor: float = 1e-6, scale: float | None = None) -> LeafPosterior:
    """EB over the measured leaves (rows of ``y``/``s2`` follow ``measured``) and inheritance
    for the others (see the module docstring)."""
    measured = np.asarray(measured, dtype=np.int64)
    if len(np.unique(measured)) != len(measured):
        raise ValueError("leaf_posteriors: a leaf is measured twice")
    if prior_groups not in ("large", "global"):
        raise ValueError(f"leaf_posteriors: prior_groups must be 'large' or 'global', got {prior_groups!r}")
    groups = h.leaf_large[measured] if prior_groups == "large" else None
    eb = empirical_bayes(y, s2, groups, min_group=min_group, tau2_floor=tau2_floor)
    n_dom = eb.mean.shape[1]
    src, dist = nearest_measured(h, measured)
    row_of = np.full(h.n_leaves, -1, dtype=np.int64)
    row_of[measured] = np.arange(len(measured))
    rows = row_of[src]
    scale = smoothness_scale(h, seed=h.config.seed) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"leaf_posteriors: smoothness scale {scale} must be > 0")
    inflate = np.minimum(1.0, (dist / scale) ** 2)
    is_m = np.zeros(h.n_leaves, dtype=bool)
    is_m[measured] = True
    nan = np.full((h.n_leaves, n_dom), np.nan)
    raw, noise, prior = nan.copy(), nan.copy(), nan.copy()
    raw[measured], noise[measured], prior[measured] = np.atleast_2d(y), np.atleast_2d(s2), eb.prior_mean
    return LeafPosterior(mean=eb.mean[rows], var=eb.var[rows] + inflate[:, None] * eb.tau2[None, :], raw=raw, noise=noise,
                         prior_mean=prior, measured=is_m, source=src, distance=dist, tau2=eb.tau2, scale=scale)
