"""HARP's decision (steps 4 and 5 of :mod:`thresher.select.harp.selector`): the conservative and
expansive envelopes of a set of leaves, the greedy order over leaves, its best prefix, and the
points it emits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from thresher.select.harp.hierarchy import Hierarchy

Envelope = Literal["conservative", "expansive"]


def envelope_value(kind: Envelope, phi: np.ndarray, base: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """``y_d(S)`` per domain for the leaves whose effects are the rows of ``phi`` ([|S|, D]),
    clipped to ``bounds`` (the metric's range)."""
    lo, hi = bounds
    phi = np.asarray(phi, dtype=np.float64).reshape(-1, len(base))
    base = np.asarray(base, dtype=np.float64)
    if kind == "conservative":
        best = np.maximum(phi, 0.0).max(axis=0) if len(phi) else np.zeros_like(base)
        harm = np.maximum(-phi, 0.0).sum(axis=0)
        return np.clip(base + best - harm, lo, hi)
    if kind == "expansive":
        return np.clip(base + phi.sum(axis=0), lo, hi)
    raise ValueError(f"envelope must be 'conservative' or 'expansive', got {kind!r}")


@dataclass
class GreedyTrace:
    order: np.ndarray  # [L] leaves in greedy order
    value: np.ndarray  # [L] objective after adding each leaf
    gain: np.ndarray  # [L] marginal gain of each step
    start: float  # objective of the empty set


def greedy_leaves(kind: Envelope, phi: np.ndarray, base: np.ndarray, active: np.ndarray | None = None,
                  bounds: tuple[float, float] = (0.0, 1.0), tiebreak: np.ndarray | None = None,
                  tol: float = 1e-12) -> GreedyTrace:
    """Greedy order of all leaves by the mean envelope over active domains, each domain's
    envelope clipped to ``bounds`` (the metric's range: [0, 1] for accuracy).

    Each step adds the leaf with the largest objective; among leaves within ``tol`` of it the
    one with the smallest ``tiebreak`` (HARP passes the posterior variance: a measured leaf
    before the unmeasured ones that inherit its effect), then the lower leaf id. The trace
    keeps every step's objective and marginal gain. ``O(L^2 D)`` time, ``O(L D)`` memory.
    """
    phi = np.asarray(phi, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[1] != base.shape[0]:
        raise ValueError(f"greedy_leaves: phi {phi.shape} must be [leaves, {base.shape[0]} domains]")
    if kind not in ("conservative", "expansive"):
        raise ValueError(f"envelope must be 'conservative' or 'expansive', got {kind!r}")
    active = np.ones(base.shape[0], dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if not active.any():
        raise ValueError("greedy_leaves: no active domain")
    p, b = phi[:, active], base[active]
    pos, neg = np.maximum(p, 0.0), np.maximum(-p, 0.0)
    n = p.shape[0]
    best = np.zeros(p.shape[1])
    harm = np.zeros(p.shape[1])
    total = np.zeros(p.shape[1])
    remaining = np.arange(n)
    order, value = np.empty(n, dtype=np.int64), np.empty(n)
    lo, hi = bounds
    if tiebreak is not None:
        tiebreak = np.asarray(tiebreak, dtype=np.float64)
        if tiebreak.shape != (n,):
            raise ValueError(f"greedy_leaves: tiebreak {tiebreak.shape} must have one value per leaf ({n},)")
    start = float(np.clip(b, lo, hi).mean())
    for step in range(n):
        if kind == "conservative":
            cand = np.clip(b + np.maximum(best, pos[remaining]) - harm - neg[remaining], lo, hi).mean(axis=1)
        else:
            cand = np.clip(b + total + p[remaining], lo, hi).mean(axis=1)
        tied = np.flatnonzero(cand >= cand.max() - tol)  # remaining is sorted: the first is the lower leaf id
        j = int(tied[0] if tiebreak is None or len(tied) == 1 else tied[np.argmin(tiebreak[remaining[tied]])])
        leaf = int(remaining[j])
        order[step], value[step] = leaf, cand[j]
        best = np.maximum(best, pos[leaf])
        harm += neg[leaf]
        total += p[leaf]
        remaining = np.delete(remaining, j)
    gain = np.diff(np.concatenate([[start], value]))
    return GreedyTrace(order=order, value=value, gain=gain, start=start)


def best_prefix(gains: np.ndarray, tol: float = 1e-12) -> int:
    """Length of the prefix with the largest cumulative gain: the shortest one within ``tol``
    of the maximum (a zero-gain step does not lengthen the prefix), and at least 1 leaf."""
    gains = np.asarray(gains, dtype=np.float64)
    if gains.size == 0:
        raise ValueError("best_prefix: no greedy steps")
    cum = np.cumsum(gains)
    return int(np.nonzero(cum >= cum.max() - tol)[0][0]) + 1


def emit_points(h: Hierarchy, leaves, k: int) -> list[int]:
    """Point positions of ``leaves`` in that order (each leaf nearest-centroid first), at most ``k``."""
    out: list[int] = []
    for leaf in leaves:
        if len(out) >= k:
            break
        out.extend(int(i) for i in h.members(int(leaf))[: k - len(out)])
    return out
