"""HARP: Hierarchical Active Region Pruning (seed 000; arXiv 2606.07690).

A train-based selector that fine-tunes only a few subsets:

1. **Hierarchy** (:mod:`thresher.select.harp.hierarchy`): the pool's embeddings are clustered into
   large regions -> parents -> leaves (leaves of ~100-500 examples by default).
2. **Measure representatives**: the leaves of :func:`~thresher.select.harp.hierarchy.measurement_order`
   (the leaf nearest each parent centroid, more for parents with many leaves) are each
   fine-tuned *alone* through the oracle and scored on every dev domain ``d``; ``oracle_budget``
   (the bench passes its own) caps these fine-tunes, a ``random_leaf`` reference included, at a
   prefix of that order (``measure="all"`` refuses a budget below the leaf count). The main
   effect is ``phi_r(d) = acc(leaf_r, d) - b_d``; its noise variance is a paired bootstrap
   over the domain's dev items (leaf run vs reference run, item by item), floored at
   ``1 / n_d^2`` (as if one item flipped) so a domain where both runs score all-equal still
   carries some noise.
3. **Empirical Bayes** per domain (normal-normal): the prior mean is the mean measured
   effect of the leaf's large region (when it holds at least ``min_group`` measured
   leaves) or else the global mean; the prior variance ``tau2`` is the method-of-moments
   estimate ``max(tau2_floor, sum(residual^2) / dof - mean(noise))``; a measured leaf's
   posterior is ``m + w (y - m)`` with variance ``w s2``, ``w = tau2 / (tau2 + s2)``. An
   unmeasured leaf inherits the posterior mean of the nearest measured leaf of its parent
   (else of its large region, else anywhere) with variance
   ``var_source + tau2 * min(1, (dist / scale)^2)``: the local-smoothness assumption, with
   ``scale`` (default) the median distance between parent centroids, the distance at which
   two regions count as unrelated.
4. **Envelopes** for a set ``S`` of leaves, per domain:

   - HARP-C (``harp-c``): ``y_d(S) = clip(b_d + max_{g in S} phi+_g(d) - sum_{g in S} phi-_g(d))``
   - HARP-E (``harp-e``): ``y_d(S) = clip(b_d + sum_{g in S} phi_g(d))``

   with ``clip`` to the range of the task's metric (:data:`thresher.tasks.base.METRIC_RANGE`):
   [0, 1] for accuracy, (-inf, 0] for the gold-answer log-likelihood.

   with ``phi`` the posterior mean minus ``risk`` posterior standard deviations
   (``risk = 0``: the posterior mean).
5. **Selection**: active domains are those where some leaf has ``phi > 0``; greedy over
   leaves maximising the mean envelope over active domains (ties: the leaf with the smaller
   mean posterior variance, so a measured leaf before the unmeasured ones that inherit its
   effect; then the lower leaf id); the
   best prefix is the first one with the largest cumulative gain (at least one leaf:
   a selection cannot be empty); the points of those leaves are emitted in greedy order
   (each leaf nearest-centroid first) up to the budget ``k``. If the prefix holds fewer
   than ``k`` points, ``fill="none"`` stops short and records the shortfall (the paper's
   behaviour: fewer examples), ``fill="posterior"`` adds the remaining leaves by their mean
   ``phi`` over active domains, best first, up to ``k``.

``measure="all"`` is the exhaustive version of the same method: every leaf is measured
(no inference), with the same EB, envelopes and greedy; comparing it with
``measure="representatives"`` at the same budget tells what the inference costs.

What the effects mean with the micro tier. The micro oracle trains a model from scratch,
so the "base model" is an untrained network scoring ~0 on every domain and
``phi_r(d)`` is the accuracy a model reaches on domain ``d`` when trained on leaf ``r``
alone: a *stand-alone* value of the region, not its marginal effect on a capable model.
Effects are then almost never negative (nothing scores below 0), so HARP-C sees no harm
and keeps the best leaf per domain, and HARP-E's sum of stand-alone accuracies overcounts
(two leaves that each reach 0.4 do not reach 0.8); the clip at 1 bounds it.
``baseline="random_leaf"`` measures effects against a model trained on a seeded random
sample of the median leaf size instead (one more oracle run), so ``phi < 0`` means
"worse than a random region of the same size" and HARP-C's harm term has something to
count. With a pretrained model and LoRA (the ``small`` tier) ``baseline="base"`` is the
paper's setting.

Artifacts (when the selector has an ``artifacts_dir``): ``leaf_posteriors.csv`` and
``.json`` (one row per leaf and domain), ``greedy_trace.json`` and ``leaf_effects.png``
(measured effects, their posteriors and every leaf's inferred effect with its 95% band).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from thresher.errors import ConfigError
from thresher.select.base import Selector, SelectorParams, register_selector
from thresher.select.harp.hierarchy import (
    Hierarchy,
    HierarchyConfig,
    build_hierarchy,
    default_measured_count,
    measurement_order,
    nearest_measured,
)
from thresher.signals.base import make_signal
from thresher.stats import domain_effects
from thresher.tasks.base import METRIC_RANGE

Envelope = Literal["conservative", "expansive"]


# --------------------------------------------------------------------------- measured effects


# --------------------------------------------------------------------------- empirical Bayes


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


# --------------------------------------------------------------------------- envelopes and greedy


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


# --------------------------------------------------------------------------- the selector


class HarpParams(SelectorParams):
    measure: Literal["representatives", "all"] = Field("representatives", description="measure the representative leaves (HARP) or every leaf (the exhaustive version)")
    leaf_size: int = Field(200, ge=1, description="target examples per leaf")
    leaves_per_parent: int = Field(4, ge=1, description="target leaves per parent")
    parents_per_large: int = Field(8, ge=1, description="target parents per large region")
    min_leaf: int | None = Field(None, ge=1, description="smallest leaf before merging (default leaf_size/2)")
    max_leaf: int | None = Field(None, ge=1, description="largest leaf before splitting (default 2.5 x leaf_size)")
    leaves_per_rep: int = Field(4, ge=1, description="a parent with m leaves gets ceil(m / leaves_per_rep) measured leaves")
    max_measured: int | None = Field(None, ge=1, description="measure this many leaves in total instead (a prefix of the measurement order)")
    oracle_budget: int | None = Field(None, ge=1, description="fine-tunes the measurements may spend: measured leaves plus a random_leaf reference (the base model is scored, not trained); caps the measured leaves at a prefix of the measurement order; measure=all needs one per leaf (the bench passes its oracle_budget)")
    baseline: Literal["base", "random_leaf"] = Field("base", description="reference of the effects: the base model, or a model trained on a random sample of the median leaf size")
    bootstrap: int = Field(1000, ge=2, description="bootstrap resamples of the dev items per effect")
    prior: Literal["large", "global"] = Field("large", description="EB prior mean: the leaf's large region (with >= min_group measured leaves) or the global mean")
    min_group: int = Field(3, ge=1, description="measured leaves a large region needs for its own prior mean")
    tau2_floor: float = Field(1e-6, gt=0, description="smallest prior variance (keeps shrinkage from being total)")
    smoothness_scale: float | None = Field(None, gt=0, description="distance at which an inherited effect's extra variance reaches tau2 (default: median parent-centroid distance)")
    risk: float = Field(0.0, ge=0, description="envelopes use posterior mean - risk x posterior sd")
    fill: Literal["none", "posterior"] = Field("none", description="if the best prefix holds fewer than k points: stop short (none) or add leaves by posterior effect (posterior)")
    embed_model: str = Field("minilm", description="sentence encoder of the embedding signal")
    embed_text: Literal["user", "answer", "all"] = Field("all", description="what the embedding signal embeds")
    workers: int = Field(1, ge=1, description="parallel oracle runs for the leaf measurements")

    def hierarchy_config(self, seed: int) -> HierarchyConfig:
        return HierarchyConfig(leaf_size=self.leaf_size, leaves_per_parent=self.leaves_per_parent,
                               parents_per_large=self.parents_per_large, min_leaf=self.min_leaf, max_leaf=self.max_leaf, seed=seed)

    def embedding(self):
        return make_signal("embedding", model=self.embed_model, text=self.embed_text, normalize=True)


class HarpSelector(Selector):
    """Shared machinery of HARP-C and HARP-E (they differ only in the envelope)."""

    envelope: ClassVar[Envelope] = "conservative"
    Params = HarpParams
    uses_task = True
    uses_oracle = True

    def required_signals(self):
        return [self.params.embedding()]

    # --- steps
    def _measured_count(self, h: Hierarchy) -> tuple[int, int]:
        """(leaves to measure, leaves the params ask for before the oracle budget caps them)."""
        p = self.params
        if p.measure == "all":
            wanted = h.n_leaves
        else:
            wanted = min(h.n_leaves, p.max_measured or default_measured_count(h, p.leaves_per_rep))
        if p.oracle_budget is None:
            return wanted, wanted
        room = p.oracle_budget - _reference_trainings(p)
        if p.measure == "all" and room < wanted:
            raise ConfigError(f"{self.name}: measure=all trains all {wanted} leaves"
                              f"{' and the random_leaf reference' if _reference_trainings(p) else ''}, more than "
                              f"oracle_budget={p.oracle_budget}; raise oracle_budget or measure representatives")
        if room < 1:
            raise ConfigError(f"{self.name}: oracle_budget={p.oracle_budget} leaves no leaf run after the random_leaf reference")
        return min(wanted, room), wanted

    def _measure(self, pool, h: Hierarchy, leaves: np.ndarray, oracle, task, seed: int):
        """Reference run and one oracle run per measured leaf; effects and noise per domain."""
        p = self.params
        names = sorted({it.domain for it in task.dev})
        domains = np.array([it.domain for it in task.dev])
        base = oracle.base_score()
        reference = base
        if p.baseline == "random_leaf":
            size = round(float(np.median(h.leaf_sizes)))
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(len(pool), size=min(size, len(pool)), replace=False))
            ids = pool.ids
            reference = oracle.score([ids[i] for i in pick], label=f"harp reference random {size}")
        for sc, what in ((base, "base"), (reference, "reference")):
            if len(sc.correct) != len(task.dev):
                raise RuntimeError(f"harp: the oracle's {what} score has {len(sc.correct)} per-item outcomes for "
                                   f"{len(task.dev)} dev items")
        ids = pool.ids
        subsets = [[ids[i] for i in h.members(int(leaf))] for leaf in leaves]
        scores = oracle.score_many(subsets, labels=[f"harp leaf {int(leaf)}" for leaf in leaves], workers=p.workers)
        y = np.empty((len(leaves), len(names)))
        s2 = np.empty_like(y)
        for r, sc in enumerate(scores):
            if len(sc.correct) != len(task.dev):
                raise RuntimeError(f"harp: the oracle's score of leaf {int(leaves[r])} has {len(sc.correct)} per-item "
                                   f"outcomes for {len(task.dev)} dev items")
            y[r], s2[r] = domain_effects(np.asarray(sc.correct), np.asarray(reference.correct), domains, names,
                                           n_boot=p.bootstrap, seed=seed + r)
        b = np.array([float(np.mean(np.asarray(reference.correct, dtype=float)[domains == d])) for d in names])
        return names, b, y, s2, base

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        p = self.params
        x = np.asarray(signals.signal(p.embedding())["__vectors__"], dtype=np.float32)
        h = build_hierarchy(x, p.hierarchy_config(seed))
        order = measurement_order(h)
        n_measure, wanted = self._measured_count(h)
        measured = order[:n_measure]
        mark = oracle.ledger.mark()
        names, b, y, s2, base = self._measure(pool, h, measured, oracle, task, seed)
        post = leaf_posteriors(h, measured, y, s2, prior_groups=p.prior, min_group=p.min_group,
                               tau2_floor=p.tau2_floor, scale=p.smoothness_scale)
        phi = post.mean - p.risk * np.sqrt(post.var)
        uncertainty = post.var.mean(axis=1)  # ties: the better-known leaf first (measured before inherited)
        active = phi.max(axis=0) > 0
        no_active = not active.any()
        if no_active:  # no leaf helps anywhere: rank by all domains rather than select nothing
            active = np.ones(len(names), dtype=bool)
        bounds = METRIC_RANGE[getattr(task, "metric", "accuracy")]  # accuracy in [0, 1], loglik <= 0
        trace = greedy_leaves(self.envelope, phi, b, active, bounds, tiebreak=uncertainty)
        t = best_prefix(trace.gain)
        chosen = [int(v) for v in trace.order[:t]]
        picked = emit_points(h, chosen, k)
        emitted = chosen[: _leaves_touched(h, chosen, len(picked))]
        filled: list[int] = []
        if len(picked) < k and p.fill == "posterior":
            rank = phi[:, active].mean(axis=1)
            taken = set(chosen)
            rest = [int(v) for v in np.lexsort((np.arange(h.n_leaves), uncertainty, -rank)) if int(v) not in taken]
            added = emit_points(h, rest, k - len(picked))
            picked += added
            filled = rest[: _leaves_touched(h, rest, len(added))]
            emitted += filled
        ids = pool.ids
        cost = oracle.ledger.summary(mark).get("oracle", {})
        n_ref = 1 + _reference_trainings(p)  # the base model (scored) and the random_leaf reference (trained)
        diag = {
            "envelope": self.envelope, "measure": p.measure, "domains": names, "active_domains": [n for n, a in zip(names, active) if a],
            "no_active_domain": no_active, "base_score": {d: float(base.per_domain.get(d, np.nan)) for d in names},
            "reference": p.baseline, "reference_score": dict(zip(names, map(float, b))),
            "hierarchy": h.summary(), "measured_leaves": [int(v) for v in measured],
            "tau2": dict(zip(names, map(float, post.tau2))), "smoothness_scale": post.scale,
            "greedy_order": [int(v) for v in trace.order], "greedy_gain": [float(v) for v in trace.gain],
            "best_prefix": t, "chosen_leaves": chosen, "chosen_points": sum(len(h.members(c)) for c in chosen),
            "filled_leaves": filled, "emitted_leaves": emitted, "predicted_objective": float(trace.value[t - 1]), "objective_start": trace.start,
            "shortfall": k - len(picked),
            "cost": {
                "leaf_runs_needed": int(n_measure), "reference_runs_needed": n_ref, "leaves": h.n_leaves,
                "runs_needed": int(n_measure) + n_ref, "runs_if_every_leaf_measured": h.n_leaves + n_ref,
                "measured_fraction": n_measure / h.n_leaves, "oracle_budget": p.oracle_budget,
                "leaves_cut_by_budget": wanted - n_measure,
                "fresh_oracle_runs": int(cost.get("runs", 0)), "cached_oracle_calls": int(cost.get("cached", 0)),
            },
        }
        if self.artifacts_dir is not None:
            diag["artifacts"] = write_artifacts(self.artifacts_dir, h, post, phi, names, trace, t, chosen, emitted, self.envelope, b)
        return [ids[i] for i in picked], diag


def _reference_trainings(p: HarpParams) -> int:
    return int(p.baseline == "random_leaf")


def _leaves_touched(h: Hierarchy, leaves: list[int], n_points: int) -> int:
    """How many leaves of ``leaves`` (in order) the first ``n_points`` emitted points touch."""
    used, n = 0, 0
    for leaf in leaves:
        if used >= n_points:
            break
        used += len(h.members(leaf))
        n += 1
    return n


@register_selector
class HarpC(HarpSelector):
    name = "harp-c"
    description = ("HARP-C: hierarchy of embedding regions, fine-tune representative leaves alone, empirical-Bayes "
                   "effects per dev domain, conservative envelope (best helpful leaf + all harms), greedy best prefix")
    envelope = "conservative"


@register_selector
class HarpE(HarpSelector):
    name = "harp-e"
    description = ("HARP-E: as HARP-C with the expansive envelope (effects of complementary regions add up)")
    envelope = "expansive"


# --------------------------------------------------------------------------- artifacts


def posterior_rows(h: Hierarchy, post: LeafPosterior, phi: np.ndarray, names: list[str], chosen: list[int],
                   emitted: list[int]) -> list[dict]:
    """One row per (leaf, domain): the per-leaf posterior table. ``chosen``: in the best
    prefix; ``emitted``: some of its points are in the selection (the budget may cut the
    prefix short, ``fill`` may add leaves beyond it)."""
    chosen_set, emitted_set = set(chosen), set(emitted)
    rows = []
    for leaf in range(h.n_leaves):
        for j, d in enumerate(names):
            rows.append({
                "leaf": leaf, "parent": int(h.leaf_parent[leaf]), "large": int(h.leaf_large[leaf]),
                "size": int(h.leaf_sizes[leaf]), "domain": d, "measured": bool(post.measured[leaf]),
                "source": int(post.source[leaf]), "distance": float(post.distance[leaf]),
                "raw_effect": _num(post.raw[leaf, j]), "noise_var": _num(post.noise[leaf, j]),
                "prior_mean": _num(post.prior_mean[leaf, j]), "post_mean": float(post.mean[leaf, j]),
                "post_var": float(post.var[leaf, j]), "phi": float(phi[leaf, j]), "chosen": leaf in chosen_set,
                "emitted": leaf in emitted_set,
            })
    return rows


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def write_artifacts(out, h: Hierarchy, post: LeafPosterior, phi: np.ndarray, names: list[str], trace: GreedyTrace,
                    t: int, chosen: list[int], emitted: list[int], envelope: str, base: np.ndarray) -> list[str]:
    """Posterior table (CSV + JSON), greedy trace and the leaf-effects plot; returns file names."""
    rows = posterior_rows(h, post, phi, names, chosen, emitted)
    with open(out / "leaf_posteriors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "leaf_posteriors.json").write_text(json.dumps({"domains": names, "tau2": post.tau2.tolist(), "scale": post.scale,
                                                         "reference": base.tolist(), "rows": rows}))
    (out / "greedy_trace.json").write_text(json.dumps({
        "envelope": envelope, "start": trace.start, "order": trace.order.tolist(), "value": trace.value.tolist(),
        "gain": trace.gain.tolist(), "best_prefix": t, "chosen": chosen, "emitted": emitted}))
    files = ["leaf_posteriors.csv", "leaf_posteriors.json", "greedy_trace.json"]
    plot_leaf_effects(out / "leaf_effects.png", post, names, chosen, emitted, envelope)
    files.append("leaf_effects.png")
    return files


def plot_leaf_effects(path, post: LeafPosterior, names: list[str], chosen: list[int], emitted: list[int], title: str) -> None:
    """Per domain: every leaf's posterior mean with a 95% band (measured leaves filled, inferred
    ones open), the raw measured effects (x); leaves in the selection shaded gold, leaves of
    the best prefix the budget cut off shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_dom = len(names)
    fig, axes = plt.subplots(1, n_dom, figsize=(4.2 * n_dom, 3.6), squeeze=False, sharey=True)
    for j, (ax, d) in enumerate(zip(axes[0], names)):
        order = np.argsort(-post.mean[:, j], kind="stable")
        xs = np.arange(len(order))
        sd = np.sqrt(post.var[order, j])
        m = post.measured[order]
        for x_i, leaf in zip(xs, order):
            if leaf in emitted:
                ax.axvspan(x_i - 0.5, x_i + 0.5, color="gold", alpha=0.35, lw=0)
            elif leaf in chosen:
                ax.axvspan(x_i - 0.5, x_i + 0.5, color="lightgray", alpha=0.4, lw=0)
        ax.errorbar(xs[m], post.mean[order, j][m], yerr=1.96 * sd[m], fmt="o", color="tab:blue", ms=5, capsize=2,
                    label="measured: posterior")
        ax.errorbar(xs[~m], post.mean[order, j][~m], yerr=1.96 * sd[~m], fmt="o", mfc="white", color="tab:gray", ms=5,
                    capsize=2, label="inferred (inherits)")
        ax.plot(xs[m], post.raw[order, j][m], "x", color="tab:red", label="measured: raw effect")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"domain {d}")
        ax.set_xlabel("leaves (by posterior mean)")
        ax.set_xticks(xs, [str(int(v)) for v in order], fontsize=6)
    axes[0][0].set_ylabel("effect on dev accuracy")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"HARP leaf effects ({title} envelope; gold = in the selection, grey = best prefix cut by the budget)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
