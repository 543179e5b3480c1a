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
3. **Empirical Bayes** (:mod:`thresher.select.harp.posterior`) per domain (normal-normal): the
   prior mean is the mean measured effect of the leaf's large region (when it holds at least
   ``min_group`` measured leaves) or else the global mean; the prior variance ``tau2`` is the
   method-of-moments estimate ``max(tau2_floor, sum(residual^2) / dof - mean(noise))``; a measured leaf's
   posterior is ``m + w (y - m)`` with variance ``w s2``, ``w = tau2 / (tau2 + s2)``. An
   unmeasured leaf inherits the posterior mean of the nearest measured leaf of its parent
   (else of its large region, else anywhere) with variance
   ``var_source + tau2 * min(1, (dist / scale)^2)``: the local-smoothness assumption, with
   ``scale`` (default) the median distance between parent centroids, the distance at which
   two regions count as unrelated.
4. **Envelopes** (:mod:`thresher.select.harp.envelope`, with the greedy of step 5) for a set
   ``S`` of leaves, per domain:

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

Artifacts (:mod:`thresher.select.harp.artifacts`; when the selector has an ``artifacts_dir``):
``leaf_posteriors.csv`` and ``.json`` (one row per leaf and domain), ``greedy_trace.json`` and ``leaf_effects.png``
(measured effects, their posteriors and every leaf's inferred effect with its 95% band).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from thresher.errors import ConfigError
from thresher.select.base import Selector, SelectorParams, register_selector
from thresher.select.harp.artifacts import write_artifacts
from thresher.select.harp.envelope import (
    Envelope,
    best_prefix,
    emit_points,
    greedy_leaves,
)
from thresher.select.harp.hierarchy import (
    Hierarchy,
    HierarchyConfig,
    build_hierarchy,
    default_measured_count,
    measurement_order,
)
from thresher.select.harp.posterior import leaf_posteriors
from thresher.signals.base import make_signal
from thresher.stats import domain_effects
from thresher.tasks.base import METRIC_RANGE


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

    @property
    def reference_trainings(self) -> int:
        """Fine-tunes the reference costs: one for ``random_leaf``; the base model is scored, not trained."""
        return int(self.baseline == "random_leaf")

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
        room = p.oracle_budget - p.reference_trainings
        if p.measure == "all" and room < wanted:
            raise ConfigError(f"{self.name}: measure=all trains all {wanted} leaves"
                              f"{' and the random_leaf reference' if p.reference_trainings else ''}, more than "
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
        n_ref = 1 + p.reference_trainings  # the base model (scored) and the random_leaf reference (trained)
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
