"""HARP: the hierarchy, empirical Bayes, the envelopes, the greedy best prefix and the selector.

Hand-computed cases for the maths; a synthetic dev objective (accuracy = share of the
subset that teaches the item's skill) for the selector, so the test stays fast; one slow
run with the real micro oracle.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.data.ledger import CostLedger, LedgerEntry
from thresher.data.pool import Pool, user_text
from thresher.data.store import SignalStore
from thresher.engine.local import run_signal
from thresher.errors import ConfigError
from thresher.oracle.core import Score
from thresher.select.base import SignalView, make_selector
from thresher.select.harp.envelope import (
    best_prefix,
    emit_points,
    envelope_value,
    greedy_leaves,
)
from thresher.select.harp.hierarchy import (
    Hierarchy,
    HierarchyConfig,
    build_hierarchy,
    default_measured_count,
    measurement_order,
    nearest_measured,
)
from thresher.select.harp.posterior import empirical_bayes, leaf_posteriors
from thresher.signals.base import make_signal
from thresher.tasks.base import DevTask, TaskItem

# --------------------------------------------------------------------------- empirical Bayes (hand cases)


def test_eb_posterior_hand_case_global_prior():
    # domain 1: y = .1 .3 .5, s2 = .01 -> m = .3, sum r^2 / (3 - 1) = .04, tau2 = .04 - .01 = .03, w = .75
    # domain 2: y = 0 0 .3, s2 = .01 .04 .01 -> m = .1, sum r^2 / 2 = .03, tau2 = .03 - .02 = .01, w = .5 .2 .5
    # domain 3: no spread beyond noise -> tau2 = floor, everything shrinks to the mean
    y = np.array([[0.1, 0.0, 0.2], [0.3, 0.0, 0.2], [0.5, 0.3, 0.2]])
    s2 = np.array([[0.01, 0.01, 0.01], [0.01, 0.04, 0.01], [0.01, 0.01, 0.01]])
    eb = empirical_bayes(y, s2, tau2_floor=1e-6)
    np.testing.assert_allclose(eb.tau2, [0.03, 0.01, 1e-6], atol=1e-12)
    np.testing.assert_allclose(eb.prior_mean[0], [0.3, 0.1, 0.2])
    np.testing.assert_allclose(eb.mean[:, 0], [0.15, 0.3, 0.45])
    np.testing.assert_allclose(eb.var[:, 0], [0.0075] * 3)
    np.testing.assert_allclose(eb.mean[:, 1], [0.05, 0.08, 0.2])
    np.testing.assert_allclose(eb.var[:, 1], [0.005, 0.008, 0.005])
    np.testing.assert_allclose(eb.mean[:, 2], [0.2] * 3)
    np.testing.assert_allclose(eb.var[:, 2], [1e-6 * 0.01 / (0.01 + 1e-6)] * 3)


def test_eb_group_prior_means_and_fallback_to_global():
    # two groups of 3: means .2 and .6, residuals +-.1 four times -> .04 / (6 - 2) - .001 = .009, w = .9
    y = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.7])[:, None]
    eb = empirical_bayes(y, np.full((6, 1), 0.001), np.array([0, 0, 0, 1, 1, 1]), min_group=3)
    assert eb.grouped.all()
    np.testing.assert_allclose(eb.tau2, [0.009])
    np.testing.assert_allclose(eb.mean[:, 0], [0.11, 0.2, 0.29, 0.51, 0.6, 0.69])
    np.testing.assert_allclose(eb.var[:, 0], [0.0009] * 6)
    # a group below min_group takes the global mean; dof = 4 - 2 means
    y = np.array([0.1, 0.2, 0.3, 0.9])[:, None]
    eb = empirical_bayes(y, np.zeros((4, 1)), np.array([0, 0, 0, 1]), min_group=3)
    assert list(eb.grouped) == [True, True, True, False]
    np.testing.assert_allclose(eb.prior_mean[:, 0], [0.2, 0.2, 0.2, 0.375])
    np.testing.assert_allclose(eb.tau2, [(0.01 + 0 + 0.01 + 0.525 ** 2) / 2])
    np.testing.assert_allclose(eb.mean[:, 0], y[:, 0])  # zero noise: the posterior is the measurement


def test_eb_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        empirical_bayes(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=">= 0"):
        empirical_bayes(np.zeros((2, 1)), -np.ones((2, 1)))
    with pytest.raises(ValueError, match="groups has shape"):
        empirical_bayes(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(3))


def _hand_tree() -> Hierarchy:
    """4 leaves of 10 points in 2-d: leaves 0, 1 in parent 0, leaves 2, 3 in parent 1, one large region."""
    cents = np.array([[0.0, 0.0], [0.3, 0.4], [3.0, 0.0], [3.0, 2.0]], dtype=np.float32)
    leaf_of = np.repeat(np.arange(4), 10).astype(np.int32)
    return Hierarchy(leaf_of=leaf_of, order=np.arange(40), offsets=np.arange(0, 41, 10), leaf_parent=np.array([0, 0, 1, 1], np.int32),
                     parent_large=np.array([0, 0], np.int32), leaf_centroids=cents,
                     parent_centroids=np.array([[0.15, 0.2], [3.0, 1.0]], np.float32), large_centroids=cents.mean(0, keepdims=True),
                     config=HierarchyConfig(leaf_size=10, min_leaf=5, max_leaf=25))


def test_unmeasured_leaves_inherit_with_distance_inflated_variance():
    # measured 0 and 2: y = .1 .5, s2 = .01 -> m = .3, tau2 = .08 - .01 = .07, w = .875, means .125 .475, var .00875
    # leaf 1 inherits from 0 at distance .5: var + .07 * (.5 / 1)^2; leaf 3 from 2 at distance 2: var + .07 (capped)
    h = _hand_tree()
    post = leaf_posteriors(h, np.array([0, 2]), np.array([[0.1], [0.5]]), np.array([[0.01], [0.01]]), scale=1.0)
    assert list(post.source) == [0, 0, 2, 2] and list(post.measured) == [True, False, True, False]
    np.testing.assert_allclose(post.distance, [0, 0.5, 0, 2.0], atol=1e-6)
    np.testing.assert_allclose(post.tau2, [0.07])
    np.testing.assert_allclose(post.mean[:, 0], [0.125, 0.125, 0.475, 0.475])
    np.testing.assert_allclose(post.var[:, 0], [0.00875, 0.00875 + 0.07 * 0.25, 0.00875, 0.00875 + 0.07], rtol=1e-6)
    assert np.isnan(post.raw[1, 0]) and post.raw[2, 0] == 0.5
    # a parent with no measured leaf borrows from the nearest measured leaf of the large region
    src, dist = nearest_measured(h, np.array([1]))
    assert list(src) == [1, 1, 1, 1]
    np.testing.assert_allclose(dist[3], np.hypot(2.7, 1.6), rtol=1e-6)


# --------------------------------------------------------------------------- envelopes (3 leaves by hand)

PHI = np.array([[0.3, -0.1],    # A
                [0.2, 0.1],     # B
                [-0.25, 0.5]])  # C
BASE = np.array([0.3, 0.2])


def test_envelopes_on_three_leaves():
    # HARP-C {A,B}: d1 .3 + max(.3,.2) = .6; d2 .2 + .1 - .1 = .2.  HARP-E {A,B}: .3 + .5 = .8; .2 + 0 = .2
    np.testing.assert_allclose(envelope_value("conservative", PHI[[0, 1]], BASE), [0.6, 0.2])
    np.testing.assert_allclose(envelope_value("expansive", PHI[[0, 1]], BASE), [0.8, 0.2])
    # all three: C: .3 + .3 - .25 = .35; .2 + .5 - .1 = .6.  E: .3 + .25 = .55; .2 + .5 = .7
    np.testing.assert_allclose(envelope_value("conservative", PHI, BASE), [0.35, 0.6])
    np.testing.assert_allclose(envelope_value("expansive", PHI, BASE), [0.55, 0.7])
    np.testing.assert_allclose(envelope_value("conservative", PHI[:0], BASE), BASE)  # empty set: the base
    # clipping to [0, 1]
    np.testing.assert_allclose(envelope_value("expansive", PHI[[0, 1]], np.array([0.9, 0.05])), [1.0, 0.05])
    np.testing.assert_allclose(envelope_value("conservative", PHI[[2]], np.array([0.1, 0.0])), [0.0, 0.5])
    with pytest.raises(ValueError, match="envelope must be"):
        envelope_value("middle", PHI, BASE)


def test_envelopes_clip_to_the_metric_range_loglik_is_not_clipped_to_0_1():
    from thresher.tasks.base import METRIC_RANGE

    # the gold-answer log-likelihood lives in (-inf, 0]: a base of -1.37 nats with leaf effects of +0.05,
    # +0.12 and -0.02 must rank the leaves; clipped to [0, 1] every envelope would be 0 and every gain 0
    phi, base = np.array([[0.05], [0.12], [-0.02]]), np.array([-1.37])
    ll = METRIC_RANGE["loglik"]
    np.testing.assert_allclose(envelope_value("expansive", phi[[0, 1]], base, ll), [-1.20])
    np.testing.assert_allclose(envelope_value("conservative", phi, base, ll), [-1.27])  # best +.12, harm .02
    tr = greedy_leaves("conservative", phi, base, bounds=ll)
    assert list(tr.order) == [1, 0, 2] and tr.start == pytest.approx(-1.37)
    np.testing.assert_allclose(tr.gain, [0.12, 0.0, -0.02])
    assert best_prefix(tr.gain) == 1
    te = greedy_leaves("expansive", phi, base, bounds=ll)
    assert list(te.order) == [1, 0, 2] and best_prefix(te.gain) == 2  # the two helpful leaves add up
    assert np.all(greedy_leaves("expansive", phi, base).gain == 0)  # the old [0, 1] clip: blind on loglik
    np.testing.assert_allclose(envelope_value("expansive", np.array([[0.5]]), np.array([-0.2]), ll), [0.0])  # capped at 0


def test_greedy_and_best_prefix_on_three_leaves():
    # HARP-C: F(empty) = .25; singles A .35, B .4, C .375 -> B; then +A .4, +C (.25 + .7) / 2 = .475 -> C;
    # then +A: (.35 + .6) / 2 = .475, gain 0 -> the best prefix stops at {B, C}
    tr = greedy_leaves("conservative", PHI, BASE)
    assert list(tr.order) == [1, 2, 0] and tr.start == pytest.approx(0.25)
    np.testing.assert_allclose(tr.value, [0.4, 0.475, 0.475])
    np.testing.assert_allclose(tr.gain, [0.15, 0.075, 0.0], atol=1e-12)
    assert best_prefix(tr.gain) == 2
    # HARP-E: singles .35 .4 .375 -> B; +A .5, +C (.25 + .8) / 2 = .525 -> C; +A (.55 + .7) / 2 = .625
    tr = greedy_leaves("expansive", PHI, BASE)
    assert list(tr.order) == [1, 2, 0]
    np.testing.assert_allclose(tr.value, [0.4, 0.525, 0.625])
    assert best_prefix(tr.gain) == 3
    # only domain 1 active: HARP-C takes A (.6) and stops (B adds nothing, C harms)
    tr = greedy_leaves("conservative", PHI, BASE, active=np.array([True, False]))
    assert tr.order[0] == 0 and best_prefix(tr.gain) == 1


def test_greedy_ties_go_to_the_better_known_leaf_then_the_lower_id():
    # leaves 0 and 2 have the same effect (2 inherits it from 0, measured); leaf 1 is worse
    phi = np.array([[0.2, 0.0], [0.1, 0.0], [0.2, 0.0]])
    base = np.array([0.3, 0.3])
    assert greedy_leaves("conservative", phi, base).order[0] == 0  # no tiebreak: lower id
    tr = greedy_leaves("conservative", phi, base, tiebreak=np.array([0.01, 0.0, 0.001]))
    assert tr.order[0] == 2  # the smaller posterior variance wins the tie, whatever the ids
    assert greedy_leaves("conservative", phi, base, tiebreak=np.array([0.001, 0.0, 0.001])).order[0] == 0
    tr = greedy_leaves("expansive", phi, base, tiebreak=np.array([0.0, 0.0, 0.0]))
    assert list(tr.order) == [0, 2, 1]  # not a tie: the objective decides
    with pytest.raises(ValueError, match="one value per leaf"):
        greedy_leaves("conservative", phi, base, tiebreak=np.zeros(2))


def test_best_prefix_rule():
    assert best_prefix([0.1, -0.05, 0.2, -0.3]) == 3  # cumulative .1 .05 .25 -.05
    assert best_prefix([0.1, -0.1, 0.1, 0.0]) == 1  # .1 reached first at step 1
    assert best_prefix([-0.2, -0.1]) == 1  # never empty: the least harmful single leaf
    assert best_prefix([0.0, 0.0, 0.3]) == 3
    with pytest.raises(ValueError):
        best_prefix([])


# --------------------------------------------------------------------------- hierarchy


def _blobs(n_per=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:3] * 20.0
    return np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)


def test_hierarchy_structure_sizes_and_determinism():
    x = _blobs()
    h = build_hierarchy(x, leaf_size=50, leaves_per_parent=2, parents_per_large=3, seed=0, show_progress=False)
    assert h.n_large == 3
    blob = np.repeat(np.arange(3), 300)
    large_of_point = h.leaf_large[h.leaf_of]
    for g in range(3):  # well-separated blobs: each large region is exactly one blob
        assert len(np.unique(blob[large_of_point == g])) == 1
    assert sorted(h.order.tolist()) == list(range(900))  # every point in exactly one leaf
    assert all(np.all(h.leaf_of[h.members(leaf)] == leaf) for leaf in range(h.n_leaves))
    sizes = h.leaf_sizes
    assert sizes.min() >= 25 and sizes.max() <= 125 and h.stats["small_leaves"] == 0
    assert np.all(np.diff(h.leaf_parent) >= 0) and np.all(np.diff(h.parent_large) >= 0)
    m = h.members(0)  # nearest-centroid first
    d = np.linalg.norm(x[m] - h.leaf_centroids[0], axis=1)
    assert np.all(np.diff(d) >= -1e-5)
    h2 = build_hierarchy(x, leaf_size=50, leaves_per_parent=2, parents_per_large=3, seed=0, show_progress=False)
    assert np.array_equal(h.leaf_of, h2.leaf_of) and np.array_equal(h.order, h2.order)


def test_hierarchy_sklearn_backend_gives_a_valid_tree():
    x = _blobs(n_per=100)
    h = build_hierarchy(x, leaf_size=40, leaves_per_parent=2, parents_per_large=2, seed=0, backend="sklearn", show_progress=False)
    assert h.stats["backend"] == "sklearn" and sorted(h.order.tolist()) == list(range(300))
    assert h.leaf_sizes.min() >= 20 and h.leaf_sizes.max() <= 100


def test_measurement_order_starts_with_nearest_leaf_per_parent():
    h = build_hierarchy(_blobs(seed=1), leaf_size=40, leaves_per_parent=4, parents_per_large=2, seed=0, show_progress=False)
    order = measurement_order(h)
    assert sorted(order.tolist()) == list(range(h.n_leaves))
    first = set(order[: h.n_parents].tolist())
    for p in range(h.n_parents):
        leaves = h.parent_leaves(p)
        d = np.linalg.norm(h.leaf_centroids[leaves] - h.parent_centroids[p], axis=1)
        assert int(leaves[np.argmin(d)]) in first
    counts = np.bincount(h.leaf_parent)
    assert default_measured_count(h, 2) == int(np.ceil(counts / 2).sum())
    assert default_measured_count(h, 1000) == h.n_parents


def test_hierarchy_duplicates_and_bad_input():
    x = np.ones((400, 4), dtype=np.float32)  # inseparable points: chunked in pool order
    h = build_hierarchy(x, leaf_size=100, leaves_per_parent=8, seed=0, show_progress=False, max_leaf=150)
    assert h.leaf_sizes.max() <= 150 and h.leaf_sizes.sum() == 400
    with pytest.raises(ValueError, match="NaN or inf"):
        build_hierarchy(np.full((5, 2), np.nan), show_progress=False)
    with pytest.raises(ValueError, match="min_leaf"):
        HierarchyConfig(leaf_size=10, min_leaf=20)
    with pytest.raises(ValueError, match="leaf_size"):
        HierarchyConfig(leaf_size=0)


# --------------------------------------------------------------------------- the selector with a synthetic objective

SKILL_WORDS = {"add": "gets", "sub": "loses"}


class SkillShareOracle:
    """A dev objective with a known answer: an item of skill s is correct iff
    ``share_s * min(1, n / 150)`` exceeds the item's threshold (thresholds spread over
    (0.05, 0.95)), with ``share_s`` the share of the subset whose question uses s's verb and
    ``n`` its size. So accuracy on s grows with how many s-examples a subset has; the base
    model (no data) gets nothing right. Cached by subset, logged in a real ledger."""

    def __init__(self, task: DevTask, pool: Pool):
        self.task, self.pool, self.ledger = task, pool, CostLedger()
        self.thresholds = np.array([(i * 0.61803) % 1.0 * 0.9 + 0.05 for i in range(len(task.dev))])
        self._seen: set[frozenset] = set()

    def _score(self, ids, label) -> Score:
        texts = [user_text(self.pool.get(i)) for i in ids]
        size = min(1.0, len(texts) / 150)
        share = {s: (size * sum(w in t for t in texts) / len(texts) if texts else 0.0) for s, w in SKILL_WORDS.items()}
        correct = [bool(share.get(it.domain, 0.0) > th) for it, th in zip(self.task.dev, self.thresholds)]
        per = {d: float(np.mean([c for c, it in zip(correct, self.task.dev) if it.domain == d])) for d in self.task.domains}
        key = frozenset(ids)
        cached = key in self._seen
        self._seen.add(key)
        self.ledger.record(LedgerEntry(kind="oracle", label=label, cached=cached, extra={"subset_size": len(ids)}))
        return Score(value=float(np.mean(correct)), split="dev", per_domain=per, n_examples=len(ids), tokens=0, seconds=0.0,
                     cached=cached, key=str(hash(key)), n_items=len(correct), correct=correct)

    def score(self, ids, label=""):
        return self._score(list(ids), label)

    def score_many(self, id_lists, labels=None, workers=None):
        return [self._score(list(ids), lab) for ids, lab in zip(id_lists, labels or [""] * len(id_lists))]

    def base_score(self):
        return self._score([], "base")


@pytest.fixture(scope="module")
def skill_pool(tmp_path_factory):
    """240 arith-like examples of two skills plus 60 off-task ones, embedded with the real MiniLM encoder."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        a, b = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        if i % 5 == 4:
            q, r = f"Spell word number {i} backwards.", "drow"
        elif i % 5 < 2:
            q, r = f"Ann has {a} pens, gets {b}. How many now?", f"{a}+{b}={a + b}. The answer is {a + b}."
        else:
            q, r = f"Bob has {a + b} cups, loses {b}. How many now?", f"{a + b}-{b}={a}. The answer is {a}."
        rows.append({"id": f"ex-{i:04d}", "instruction": q, "output": r})
    pool = Pool.from_records(rows, name="skills")
    dev = [TaskItem(id=f"dev-{i}", question="q", answer="1", domain=("add", "sub", "mix")[i % 3]) for i in range(90)]
    task = DevTask("skills", dev)
    store = SignalStore(tmp_path_factory.mktemp("harp-store"))
    run_signal(make_signal("embedding"), pool, store, show_progress=False)
    return pool, task, store


HP = {"leaf_size": 30, "leaves_per_parent": 3, "bootstrap": 200}


def test_harp_selector_measures_representatives_and_writes_the_table(skill_pool, tmp_path):
    pool, task, store = skill_pool
    view = SignalView(pool, store)
    oracle = SkillShareOracle(task, pool)
    sel = make_selector("harp-c", **HP).select(pool, view, 120, task=task, oracle=oracle, seed=0, artifacts_dir=tmp_path)
    dg = sel.diagnostics
    h = dg["hierarchy"]
    n_meas = len(dg["measured_leaves"])
    assert dg["cost"]["leaves"] == h["leaves"] and n_meas < h["leaves"]
    assert dg["cost"]["runs_needed"] == n_meas + 1 and dg["cost"]["runs_if_every_leaf_measured"] == h["leaves"] + 1
    assert dg["cost"]["fresh_oracle_runs"] == n_meas + 1  # base + one run per measured leaf
    assert dg["active_domains"] == ["add", "sub"]  # nothing in the pool teaches "mix"
    assert set(dg["artifacts"]) == {"leaf_posteriors.csv", "leaf_posteriors.json", "greedy_trace.json", "leaf_effects.png"}
    table = json.loads((tmp_path / "leaf_posteriors.json").read_text())
    rows = table["rows"]
    assert len(rows) == h["leaves"] * 3
    # measured raw effects are the synthetic objective itself (base = 0): rebuild the same tree
    x = view.signal(make_signal("embedding"))["__vectors__"]
    tree = build_hierarchy(x, HierarchyConfig(leaf_size=30, leaves_per_parent=3, seed=0), show_progress=False)
    assert tree.n_leaves == h["leaves"]
    probe = SkillShareOracle(task, pool)
    n_checked = 0
    for r in rows:
        if r["measured"]:
            acc = probe.score([pool.ids[i] for i in tree.members(r["leaf"])]).per_domain[r["domain"]]
            assert r["raw_effect"] == pytest.approx(acc)
            n_checked += 1
    assert n_checked == n_meas * 3
    assert all((r["raw_effect"] is None) == (not r["measured"]) for r in rows)
    # HARP-C keeps the best helpful leaf per active domain and stops: the prefix is short and
    # its points are a leaf-ordered prefix of the selection
    assert 1 <= dg["best_prefix"] <= 2 and dg["shortfall"] == 120 - len(sel.ids) >= 0
    assert len(sel.ids) == min(120, dg["chosen_points"])
    chosen_rows = {r["leaf"] for r in rows if r["chosen"]}
    assert chosen_rows == set(dg["chosen_leaves"])
    verbs = [user_text(pool.get(i)) for i in sel.ids]
    assert not any("Spell" in t for t in verbs)  # the off-task region is never chosen
    again = make_selector("harp-c", **HP).select(pool, view, 120, task=task, oracle=SkillShareOracle(task, pool), seed=0)
    assert again.ids == sel.ids  # deterministic


def test_harp_exhaustive_and_fill(skill_pool):
    pool, task, store = skill_pool
    view = SignalView(pool, store)
    oracle = SkillShareOracle(task, pool)
    rep = make_selector("harp-e", **HP).select(pool, view, 150, task=task, oracle=oracle, seed=0)
    exh = make_selector("harp-e", measure="all", **HP).select(pool, view, 150, task=task, oracle=oracle, seed=0)
    n_leaves = exh.diagnostics["hierarchy"]["leaves"]
    assert len(exh.diagnostics["measured_leaves"]) == n_leaves
    # the exhaustive run re-uses the representative runs (same subsets): only the rest are fresh
    n_rep = len(rep.diagnostics["measured_leaves"])
    assert exh.diagnostics["cost"]["fresh_oracle_runs"] == n_leaves - n_rep
    assert exh.diagnostics["cost"]["cached_oracle_calls"] == n_rep + 1
    # exhaustive HARP-E: every skill leaf helps, the off-task leaves do not; the prefix covers k
    ids = exh.ids
    assert len(ids) == 150 and not any("Spell" in user_text(pool.get(i)) for i in ids)
    # fill: HARP-C stops short with fill=none; fill=posterior tops up to k by posterior effect
    short = make_selector("harp-c", **HP).select(pool, view, 200, task=task, oracle=oracle, seed=0)
    full = make_selector("harp-c", fill="posterior", **HP).select(pool, view, 200, task=task, oracle=oracle, seed=0)
    assert short.diagnostics["shortfall"] > 0 and len(short.ids) < 200
    assert len(full.ids) == 200 and full.diagnostics["shortfall"] == 0 and full.diagnostics["filled_leaves"]
    assert full.ids[: len(short.ids)] == short.ids
    assert sum("Spell" in user_text(pool.get(i)) for i in full.ids) == 0  # 240 skill examples rank above off-task


def test_harp_random_leaf_reference_makes_harm_visible(skill_pool, tmp_path):
    pool, task, store = skill_pool
    view = SignalView(pool, store)
    oracle = SkillShareOracle(task, pool)
    sel = make_selector("harp-c", baseline="random_leaf", measure="all", **HP).select(
        pool, view, 120, task=task, oracle=oracle, seed=3, artifacts_dir=tmp_path)
    dg = sel.diagnostics
    n_leaves = dg["hierarchy"]["leaves"]
    assert dg["cost"]["runs_needed"] == n_leaves + 2 and dg["cost"]["fresh_oracle_runs"] == n_leaves + 2
    # the reference is a seeded random sample of the median leaf size, scored by the same objective
    x = view.signal(make_signal("embedding"))["__vectors__"]
    tree = build_hierarchy(x, HierarchyConfig(leaf_size=30, leaves_per_parent=3, seed=3), show_progress=False)
    size = round(float(np.median(tree.leaf_sizes)))
    pick = np.sort(np.random.default_rng(3).choice(len(pool), size=size, replace=False))
    probe = SkillShareOracle(task, pool)
    ref = probe.score([pool.ids[i] for i in pick]).per_domain
    assert dg["reference_score"] == pytest.approx({d: ref[d] for d in ("add", "mix", "sub")})
    # effects are relative to that sample: leaves of the other skill (and off-task ones) now harm
    rows = [r for r in json.loads((tmp_path / "leaf_posteriors.json").read_text())["rows"] if r["domain"] == "add"]
    for r in rows:
        acc = probe.score([pool.ids[i] for i in tree.members(r["leaf"])]).per_domain["add"]
        assert r["raw_effect"] == pytest.approx(acc - ref["add"])
    assert min(r["raw_effect"] for r in rows) < 0 < max(r["raw_effect"] for r in rows)
    assert not any("Spell" in user_text(pool.get(i)) for i in sel.ids)


def test_harp_needs_task_oracle_and_valid_params(skill_pool):
    pool, task, store = skill_pool
    view = SignalView(pool, store)
    with pytest.raises(ValueError, match="needs the task"):
        make_selector("harp-c").select(pool, view, 10)
    with pytest.raises(ValueError, match="needs an oracle"):
        make_selector("harp-e").select(pool, view, 10, task=task)
    with pytest.raises(ValueError, match="parameter .measure.: Input should be .representatives. or .all."):
        make_selector("harp-c", measure="some")
    sig = make_selector("harp-c").required_signals()
    assert [s.name for s in sig] == ["embedding"]


def test_harp_oracle_budget_caps_the_leaf_runs_at_a_prefix_of_the_measurement_order(skill_pool):
    pool, task, store = skill_pool
    view = SignalView(pool, store)
    free = make_selector("harp-c", **HP).select(pool, view, 120, task=task, oracle=SkillShareOracle(task, pool), seed=0)
    n_free = len(free.diagnostics["measured_leaves"])
    assert n_free >= 3 and free.diagnostics["cost"]["leaves_cut_by_budget"] == 0
    capped = make_selector("harp-c", oracle_budget=2, **HP).select(pool, view, 120, task=task,
                                                                  oracle=SkillShareOracle(task, pool), seed=0)
    dg = capped.diagnostics
    assert dg["measured_leaves"] == free.diagnostics["measured_leaves"][:2]
    assert dg["cost"]["fresh_oracle_runs"] == 2 + 1 and dg["cost"]["leaves_cut_by_budget"] == n_free - 2  # + the base score
    # a random_leaf reference is a fine-tune too; the exhaustive version refuses a budget below its leaf count
    ref = make_selector("harp-c", oracle_budget=3, baseline="random_leaf", **HP).select(
        pool, view, 120, task=task, oracle=SkillShareOracle(task, pool), seed=0)
    assert len(ref.diagnostics["measured_leaves"]) == 2
    with pytest.raises(ConfigError, match="measure=all trains all .* leaves, more than oracle_budget=3"):
        make_selector("harp-c", oracle_budget=3, measure="all", **HP).select(pool, view, 120, task=task,
                                                                            oracle=SkillShareOracle(task, pool), seed=0)
    with pytest.raises(ConfigError, match="oracle_budget=1 leaves no leaf run"):
        make_selector("harp-c", oracle_budget=1, baseline="random_leaf", **HP).select(
            pool, view, 120, task=task, oracle=SkillShareOracle(task, pool), seed=0)


def test_emit_points_caps_at_k():
    h = _hand_tree()
    assert emit_points(h, [2, 0], 15) == list(range(20, 30)) + list(range(5))
    assert emit_points(h, [1], 100) == list(range(10, 20))


# --------------------------------------------------------------------------- the real micro oracle


@pytest.mark.slow
def test_harp_with_the_micro_oracle(arith_small, tmp_path):
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _ = arith_small
    store = SignalStore(tmp_path / "store")
    run_signal(make_signal("embedding"), pool, store, show_progress=False)
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=10, batch_size=16),
                    cache_dir=tmp_path / "oracle", show_progress=False)
    sel = make_selector("harp-c", leaf_size=100, leaves_per_parent=2, bootstrap=100, fill="posterior").select(
        pool, SignalView(pool, store), 0.3, task=task, oracle=oracle, seed=0)
    dg = sel.diagnostics
    assert len(sel.ids) == 120 and dg["domains"] == ["add", "mix", "sub"]
    assert dg["cost"]["fresh_oracle_runs"] == len(dg["measured_leaves"]) + 1
    assert sel.cost["oracle"]["runs"] == dg["cost"]["fresh_oracle_runs"]
