"""Paired statistics, written once: two models measured on the same evaluation items.

- :func:`seed_item_bootstrap`: the bench's comparison of a method with random over seeds;
  each draw resamples seeds, then items within a seed (the same items for both: paired).
- :func:`domain_effects`: HARP's per-domain effect of a run over a reference run on the
  same dev items, with a bootstrap variance (items resampled within their domain, in pairs).
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

    ``correct`` and ``reference`` are per-dev-item 0/1 outcomes of two runs on the same
    items; ``domains`` names each item's domain. Items are resampled within a domain, in
    pairs. The variance is floored at ``1 / n_d^2``. Returns two [D] arrays in ``names`` order.
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
    effect = np.empty(len(names))
    var = np.empty(len(names))
    for j, name in enumerate(names):
        diff = (correct - reference)[domains == name]
        if diff.size == 0:
            raise ValueError(f"domain_effects: domain {name!r} has no dev items")
        effect[j] = diff.mean()
        draws = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
        var[j] = max(float(draws.var(ddof=1)), 1.0 / diff.size ** 2)
    return effect, var
