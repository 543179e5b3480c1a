"""Paired statistics, written once: two models measured on the same evaluation items.

- :func:`seed_item_bootstrap`: the bench's comparison of a method with random over seeds;
  each draw resamples seeds, then items within a seed (the same items for both: paired).
- :func:`domain_effects`: HARP's per-domain effect of a run over a reference run on the
  same dev items, with a bootstrap variance (items resampled within their domain, in pairs).
- :func:`oracle_fidelity`: how well a cheap inner oracle ranks subsets as the full one does
  (Spearman over the subsets both scored).

Per-item values may be 0/1 outcomes (``accuracy``) or real numbers (``loglik``: the mean
log-probability per gold-answer token); both functions above take float arrays.
"""
from __future__ import annotations

import numpy as np


def seed_item_bootstrap(a: list[list[int]], b: list[list[int]], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy difference a - b over seeds and its 95% CI.

    ``a[s]`` and ``b[s]`` are the per-item correctness of the two models of seed ``s`` on
    the same test items. Each bootstrap draw resamples seeds, then items within each
    drawn seed (the same items for both models: paired).
    """
    rng = np.random.default_rng(seed)
    A = [np.asarray(x, dtype=np.float64) for x in a]
    B = [np.asarray(x, dtype=np.float64) for x in b]
    point = float(np.mean([x.mean() - y.mean() for x, y in zip(A, B)]))
    S = len(A)
    stats = np.empty(n_boot)
    for t in range(n_boot):
        ss = rng.integers(0, S, S)
        diffs = []
        for s in ss:
            idx = rng.integers(0, len(A[s]), len(A[s]))
            diffs.append(A[s][idx].mean() - B[s][idx].mean())
        stats[t] = np.mean(diffs)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def domain_effects(correct: np.ndarray, reference: np.ndarray, domains: np.ndarray, names: list[str],
                     n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain effect ``acc(correct) - acc(reference)`` and its bootstrap variance.

    ``correct`` and ``reference`` are per-dev-item values of two runs on the same items
    (0/1 outcomes, or real values such as the ``loglik`` metric's per-item log-probabilities); ``domains``
    names each item's domain. Items are resampled within a domain, in pairs. For 0/1 outcomes the
    variance is floored at ``1 / n_d^2`` (one item's flip: all-equal pairs do not mean a noiseless
    effect); real values keep their bootstrap variance (a unit floor would swamp effects of a few
    hundredths of a nat), floored only at 1e-12. Returns two [D] arrays in ``names`` order.
    """
    correct = np.asarray(correct, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    domains = np.asarray(domains)
    if not (correct.shape == reference.shape == domains.shape):
        raise ValueError(f"domain_effects: correct {correct.shape}, reference {reference.shape} and domains "
                         f"{domains.shape} must have one entry per dev item")
    if n_boot < 2:
        raise ValueError(f"domain_effects: n_boot={n_boot} must be >= 2")
    rng = np.random.default_rng(seed)
    binary = bool(np.isin(correct, (0.0, 1.0)).all() and np.isin(reference, (0.0, 1.0)).all())
    effect = np.empty(len(names))
    var = np.empty(len(names))
    for j, name in enumerate(names):
        diff = (correct - reference)[domains == name]
        if diff.size == 0:
            raise ValueError(f"domain_effects: domain {name!r} has no dev items")
        effect[j] = diff.mean()
        draws = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
        var[j] = max(float(draws.var(ddof=1)), 1.0 / diff.size ** 2 if binary else 1e-12)
    return effect, var


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman: two equal-length 1-d arrays expected, got {a.shape} and {b.shape}")
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if den == 0.0:
        return None
    return float((ra * rb).sum() / den)


def oracle_fidelity(inner: dict, full: dict) -> dict:
    """How faithfully an inner (cheaper) oracle ranks subsets: ``{spearman, n, pairs}``.

    ``inner`` and ``full`` map a subset key (e.g. the oracle's ids digest) to that subset's
    score under each oracle; only subsets scored by both count (``pairs``: ``[key, inner,
    full]`` sorted by key; NaN scores are left out). ``spearman`` is None for fewer than 3
    pairs (or when one side is constant).
    """
    keys = sorted(k for k in set(inner) & set(full)
                  if not (np.isnan(float(inner[k])) or np.isnan(float(full[k]))))
    pairs = [[k, float(inner[k]), float(full[k])] for k in keys]
    rho = spearman([p[1] for p in pairs], [p[2] for p in pairs]) if pairs else None
    return {"spearman": rho, "n": len(pairs), "pairs": pairs}
