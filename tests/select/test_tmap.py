"""TMAP: the simplex Bayesian optimisation, the anchor medoids, the ICL proxy, the
``weighted`` and ``tmap`` selectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.data.ledger import CostLedger
from thresher.select.base import SignalView, make_selector
from thresher.select.bayesopt import (
    BayesianOptimiser,
    Box,
    Simplex,
    expected_improvement,
    maximise,
    upper_confidence_bound,
)
from thresher.select.quality import rank_normalise
from thresher.select.tmap.anchors import anchor_points, medoids, tiny_vs_full
from thresher.select.tmap.proxy import ICLProxy, last_turn_mask
from thresher.select.tmap.selector import TMAPParams, spread_trials

# --------------------------------------------------------------------------- search


def test_bo_finds_a_planted_optimum_on_the_simplex():
    planted = np.array([0.55, 0.30, 0.15, 0.0, 0.0])

    def f(w):
        return -float(np.sum((w - planted) ** 2))

    opt = maximise(f, Simplex(5), 24, seed=0, n_init=6)
    best = np.asarray(opt.best.x)
    assert np.abs(best - planted).sum() < 0.1, best  # within 0.1 in L1
    assert abs(best.sum() - 1) < 1e-9 and (best >= 0).all()
    assert [t.phase for t in opt.trials[:6]] == ["init"] * 6 and all(t.phase == "bo" for t in opt.trials[6:])
    # random search with the same budget gets nowhere near (the GP is doing the work)
    rand = Simplex(5).sample(24, np.random.default_rng(0))
    assert max(f(r) for r in rand) < opt.best.value - 0.01
    # deterministic: the same seed gives the same trace
    again = maximise(f, Simplex(5), 9, seed=0, n_init=6)
    assert [t.x for t in again.trials] == [t.x for t in opt.trials[:9]]


def test_bo_on_a_box_and_initial_points_come_first():
    def f(x):
        return -float((x[0] - 0.7) ** 2 + (x[1] + 0.2) ** 2)

    opt = maximise(f, Box((-1.0, -1.0), (1.0, 1.0)), 18, seed=1, n_init=3, initial_points=[[0.0, 0.0]])
    assert opt.trials[0].x == [0.0, 0.0]
    assert np.hypot(opt.best.x[0] - 0.7, opt.best.x[1] + 0.2) < 0.1


def test_acquisitions_match_hand_values():
    # EI at mu=1, sigma=1, best=0: 1 * Phi(1) + phi(1) = 0.841345 + 0.241971
    ei = expected_improvement(np.array([1.0, 0.5, -1.0]), np.array([1.0, 0.0, 0.0]), best=0.0)
    assert ei[0] == pytest.approx(1.083316, abs=1e-6)
    assert ei[1] == pytest.approx(0.5) and ei[2] == 0.0  # no uncertainty: plain improvement
    assert upper_confidence_bound(np.array([1.0]), np.array([2.0]), beta=1.5)[0] == pytest.approx(4.0)


def test_optimiser_protocol_errors():
    opt = BayesianOptimiser(Simplex(3), n_init=1)
    with pytest.raises(RuntimeError, match="without a matching ask"):
        opt.tell(np.array([1, 0, 0]), 1.0)
    x, _ = opt.ask()
    with pytest.raises(RuntimeError, match="twice"):
        opt.ask()
    with pytest.raises(ValueError, match="returned nan"):
        opt.tell(x, float("nan"))
    with pytest.raises(ValueError, match="not on the simplex"):
        BayesianOptimiser(Simplex(3), initial_points=[[0.5, 0.6, 0.0]])
    with pytest.raises(ValueError, match="acquisition"):
        BayesianOptimiser(Simplex(3), acquisition="pi")


# --------------------------------------------------------------------------- anchors


def test_anchor_medoids_and_weights_by_hand():
    # cluster A: x in {0, 1, 2} on y = 0; cluster B: x = 10, y in {0, 1, 3, 4}; interleaved
    pts = np.array([[0, 0], [10, 0], [1, 0], [10, 1], [2, 0], [10, 3], [10, 4]], dtype=float)
    a = anchor_points(pts, 2, seed=0, metric="euclidean")
    assert a.labels == [0, 1, 0, 1, 0, 1, 1]  # clusters numbered by first appearance
    # A: summed distances 3, 2, 3 -> position 2; B (positions 1, 3, 5, 6): 8, 6, 6, 8 -> tie, earliest = 3
    assert a.positions == [2, 3]
    assert a.weights == pytest.approx([3 / 7, 4 / 7])
    assert medoids(pts, np.array(a.labels)) == [2, 3]
    # the anchors' weighted accuracy: items 2 and 3 right / wrong
    assert a.tiny_accuracy([0, 0, 1, 0, 0, 1, 1]) == pytest.approx(3 / 7)
    # k >= n: every item is its own anchor
    every = anchor_points(pts, 10)
    assert every.positions == list(range(7)) and every.weights == pytest.approx([1 / 7] * 7)
    # identical points: fewer effective anchors than requested, weights still sum to 1
    dup = anchor_points(np.array([[0.0], [0.0], [0.0], [5.0]]), 3, seed=0)
    assert len(dup) == 2 and dup.requested == 3 and sum(dup.weights) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        anchor_points(pts, 0)


def test_tiny_vs_full_tracks_by_hand():
    pts = np.array([[0.0], [0.1], [5.0], [5.1]])
    a = anchor_points(pts, 2, seed=0)  # medoid ties -> positions 0 and 2, weights 1/2 each
    assert a.positions == [0, 2]
    runs = [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
    full = [0.5, 0.75, 0.0]
    out = tiny_vs_full(a, runs, full)
    assert out["tiny"] == [0.5, 1.0, 0.0]
    assert out["mean_abs_error"] == pytest.approx(round(0.25 / 3, 4))
    assert out["spearman"] == pytest.approx(1.0)


def test_last_turn_mask():
    assert last_turn_mask([False, True, True, False, True, True, False]) == [False] * 4 + [True, True, False]
    assert last_turn_mask([False, False]) == [False, False]


def test_spread_trials_picks_quantiles_and_the_best():
    trials = [{"index": i, "value": v, "subset": s} for i, (v, s) in enumerate(
        [(0.1, "a"), (0.5, "b"), (0.5, "b"), (0.9, "c"), (0.3, "d"), (0.7, "e")])]
    got = spread_trials(trials, 3)
    assert [t["subset"] for t in got] == ["a", "b", "c"]  # lowest, middle, best of 5 distinct subsets
    assert len(spread_trials(trials, 10)) == 5


# --------------------------------------------------------------------------- proxy (real micro model)


@pytest.fixture(scope="module")
def micro_lm():
    from thresher.models.load import load_model

    return load_model("micro", seed=0)


def test_icl_proxy_loglik_equals_a_per_prompt_computation(arith_small, micro_lm):
    import torch

    from thresher.models.chat import encode_conversation

    pool, task, _ = arith_small
    dev = task.dev_view()
    a = anchor_points(np.arange(len(dev.dev), dtype=float)[:, None], 3, seed=0)
    ledger = CostLedger()
    proxy = ICLProxy(dev, a, model="micro", demos=2, draws=2, seed=5, max_length=256, ledger=ledger, loaded=micro_lm)
    ids = pool.ids[10:60]
    sc = proxy.score_ids(pool, ids, label="t")
    assert sc.n_prompts == 6 and len(sc.per_draw) == 2 and sc.subset_size == 50

    # recompute by hand: one unbatched forward pass per prompt, mean log-prob of the last turn
    recs = [pool[p] for p in sorted(pool.positions(ids))]
    per = np.zeros((2, 3))
    for d in range(2):
        pos = proxy.demo_positions(50, d)
        for j, item in enumerate(a.items(dev.dev)):
            msgs = [t for p in pos[j] for t in recs[p]["messages"]] + dev.demo_messages(item)
            enc = encode_conversation(micro_lm.tokenizer, msgs, turn_end=False)  # content tokens, no end-of-turn
            mask = torch.tensor(last_turn_mask(enc.answer_mask))
            with torch.inference_mode():
                logp = torch.log_softmax(micro_lm.model(input_ids=torch.tensor([enc.input_ids])).logits[0].double(), -1)
            tgt = torch.tensor(enc.input_ids[1:])
            lp = logp[:-1].gather(-1, tgt[:, None]).squeeze(-1)[mask[1:]]
            per[d, j] = float(lp.mean())
    assert sc.per_anchor == pytest.approx(list(per.mean(axis=0)), abs=1e-4)
    assert sc.value == pytest.approx(float(np.dot(a.weights, per.mean(axis=0))), abs=1e-4)

    # a repeat (any order of the same ids) is answered from memory and logged as cached
    again = proxy.score_ids(pool, list(reversed(ids)), label="t2")
    assert again.cached and again.value == sc.value
    kinds = [(e.kind, e.cached) for e in ledger.entries]
    assert kinds == [("proxy", False), ("proxy", True)]
    assert ledger.summary()["proxy"]["runs"] == 1


def test_demo_draws_are_common_random_numbers(arith_small, micro_lm):
    _pool, task, _ = arith_small
    dev = task.dev_view()
    a = anchor_points(np.arange(len(dev.dev), dtype=float)[:, None], 4, seed=0)
    per_q = ICLProxy(dev, a, model="micro", demos=3, draws=2, seed=1, loaded=micro_lm)
    shared = ICLProxy(dev, a, model="micro", demos=3, draws=2, seed=1, sharing="shared", loaded=micro_lm)
    p0, p1 = per_q.demo_positions(100, 0), per_q.demo_positions(100, 1)
    assert p0.shape == (4, 3) and not np.array_equal(p0, p1)
    assert len({tuple(r) for r in p0}) > 1  # each question its own demos
    assert (p0 == per_q.demo_positions(100, 0)).all()  # same positions for any subset of that size
    s0 = shared.demo_positions(100, 0)
    assert all((row == s0[0]).all() for row in s0)
    with pytest.raises(ValueError, match="metric"):
        ICLProxy(dev, a, metric="bleu")
    with pytest.raises(ValueError, match="empty subset"):
        per_q.score([])


@pytest.mark.parametrize("sharing,max_length,budget", [("shared", 2048, 300), ("shared", 2048, 64), ("shared", 150, 4096),
                                                       ("per_question", 2048, 4096)])
def test_shared_prefix_equals_the_per_prompt_path(arith_small, micro_lm, sharing, max_length, budget):
    """The prefix run once on a KV cache, anchors (of different lengths) on top: the same
    values as one full forward pass per prompt, the same identity, fewer tokens through the model."""
    pool, task, _ = arith_small
    dev = task.dev_view()
    a = anchor_points(np.arange(len(dev.dev), dtype=float)[:, None], 6, seed=0)
    assert len({len(it.question) for it in a.items(dev.dev)}) > 1
    for ids, demos in ((pool.ids[10:80], 3), (pool.ids[200:240], 2), (pool.ids[:5], 5)):
        kw = {"model": "micro", "demos": demos, "draws": 2, "seed": 5, "sharing": sharing, "token_budget": budget,
              "max_length": max_length, "loaded": micro_lm}
        new, old = ICLProxy(dev, a, **kw), ICLProxy(dev, a, share_prefix=False, **kw)
        assert new.identity() == old.identity()
        sn, so = new.score_ids(pool, ids), old.score_ids(pool, ids)
        assert sn.per_anchor == pytest.approx(so.per_anchor, abs=1e-4)
        assert sn.value == pytest.approx(so.value, abs=1e-4)
        assert (sn.tokens, sn.n_prompts, sn.demos_dropped_for_length) == (so.tokens, so.n_prompts, so.demos_dropped_for_length)
        x = sn.extra
        assert x["prefix_shared"] + x["prefix_unshared"] + x["prefix_boundary_fallback"] == sn.n_prompts
        assert x["prefix_boundary_fallback"] == 0
        if sharing == "shared" and max_length == 2048:
            assert x["prefix_shared"] == sn.n_prompts and x["prefix_groups"] == 2  # one prefix per draw
            assert x["forward_tokens"] < so.extra["forward_tokens"] == so.tokens
        if sharing == "per_question":
            assert x["prefix_shared"] == 0  # each prompt its own demos: nothing to share
    if max_length == 150:
        assert sn.demos_dropped_for_length > 0  # (the length cut changes some prefixes: still equal)


def test_shared_prefix_checks_the_token_boundary(arith_small, micro_lm, monkeypatch):
    """A prefix tokenised on its own that is not the first tokens of the full prompt (the
    template's tokenisation merging across the boundary) sends that prompt the old way, counted."""
    from thresher.select.tmap import proxy as proxy_mod

    pool, task, _ = arith_small
    dev = task.dev_view()
    a = anchor_points(np.arange(len(dev.dev), dtype=float)[:, None], 4, seed=0)
    kw = {"model": "micro", "demos": 3, "draws": 1, "seed": 2, "sharing": "shared", "loaded": micro_lm}
    ids = pool.ids[:60]
    ref = ICLProxy(dev, a, share_prefix=False, **kw).score_ids(pool, ids)
    good = ICLProxy(dev, a, **kw)
    # the real prefix is token-for-token the start of every full prompt
    groups = good._demo_groups([pool[p] for p in sorted(pool.positions(ids))])
    for _, j, demos in groups:
        full, mask, _, _, msgs = good._encode_loglik(demos, good.items[j], with_messages=True)
        pre = good.prefix_ids(good.prefix_messages(good.items[j], msgs))
        assert full[: len(pre)] == pre and not any(mask[: len(pre) + 1])

    calls = {"n": 0}
    real = proxy_mod.ICLProxy.prefix_ids

    def merged(self, pre):  # the last prefix token "merged" with the next one: not a token prefix any more
        out = real(self, pre)
        calls["n"] += 1
        return out[:-1] + [out[-1] + 1] if out else out

    bad = ICLProxy(dev, a, **kw)
    monkeypatch.setattr(proxy_mod.ICLProxy, "prefix_ids", merged)
    sb = bad.score_ids(pool, ids)
    assert calls["n"] >= 1
    assert sb.extra["prefix_boundary_fallback"] == sb.n_prompts == 4 and sb.extra["prefix_shared"] == 0
    assert sb.per_anchor == pytest.approx(ref.per_anchor, abs=1e-4)
    # a prefix reaching into the scored answer is refused too
    monkeypatch.setattr(proxy_mod.ICLProxy, "prefix_ids", lambda self, pre: None)
    assert ICLProxy(dev, a, **kw).score_ids(pool, ids).extra["prefix_unshared"] == 4
    seqs = [([1, 2, 3, 4], [False, False, True, True]), ([1, 2, 3, 5], [False, False, False, True])]
    monkeypatch.setattr(proxy_mod.ICLProxy, "prefix_ids", lambda self, pre: [1, 2])
    shared, rest, info = ICLProxy(dev, a, **kw).plan_prefixes(seqs, [(0, [{"role": "user", "content": "q"}])] * 2)
    assert shared == {} and rest == [0, 1] and info["prefix_boundary_fallback"] == 1 and info["prefix_unshared"] == 1


# --------------------------------------------------------------------------- selectors


@pytest.fixture(scope="module")
def cheap_store(arith_small, tmp_path_factory):
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.signals.base import make_signal

    pool, task, labels = arith_small
    store = SignalStore(tmp_path_factory.mktemp("tmap-store"))
    for s in (make_signal("reasoning_steps"), make_signal("bloom_heuristic"), make_signal("text", model="micro")):
        run_signal(s, pool, store, show_progress=False)
    return pool, task, labels, store


def test_weighted_selector_matches_a_hand_computed_score(cheap_store):
    pool, _, _, store = cheap_store
    view = SignalView(pool, store)
    steps = view.column("reasoning_steps")
    length = view.column("tokens_answer", model="micro")
    score = 0.25 * rank_normalise(steps) + 0.75 * rank_normalise(length)
    expect = [pool.ids[i] for i in np.argsort(-score, kind="stable")[:40]]
    sel = make_selector("weighted", scorer="micro", weights={"reasoning_steps": 1, "length": 3}).select(pool, view, 40)
    assert sel.ids == expect
    assert sel.diagnostics["weights"] == {"reasoning_steps": 0.25, "length": 0.75}
    # a single indicator = top-k of that column (same tie order as topk)
    one = make_selector("weighted", scorer="micro", weights={"length": 1}).select(pool, view, 30)
    top = make_selector("topk", signal="tokens_answer", direction="high", scorer="micro").select(pool, view, 30)
    assert one.ids == top.ids
    # an orientation suffix flips it
    low = make_selector("weighted", scorer="micro", weights={"length:low": 1}).select(pool, view, 30)
    assert max(length[pool.positions(low.ids)]) <= np.sort(length)[29]


@pytest.mark.parametrize("params,msg", [
    ({"indicators": ["nope"]}, "not a built-in indicator"),
    ({"indicators": ["ifd:sideways"]}, "orientation"),
    ({"indicators": ["ifd", "ifd"]}, "listed twice"),
    ({"weights": {"ifd": -1}}, "finite and >= 0"),
    ({"weights": {"ifd": 0}}, "all be zero"),
    ({"weights": {"nope": 1}}, "not a built-in indicator"),
])
def test_weighted_params_are_checked(params, msg):
    with pytest.raises(ValueError, match=msg):
        make_selector("weighted", **params)


def test_tmap_params_are_checked():
    with pytest.raises(ValueError, match="two anchor_models"):
        make_selector("tmap", anchor_by="correctness", anchor_models=["small"])
    with pytest.raises(ValueError, match="at least one evaluation"):
        make_selector("tmap", init_corners=False, n_init=0, n_iter=0)
    assert TMAPParams(indicators=["ifd", "bloom"], n_init=2, n_iter=3).budget() == 3 + 2 + 3


@pytest.mark.slow
def test_tmap_end_to_end_on_micro(cheap_store, tmp_path):
    """The whole search on a 400-example pool with the micro model as proxy and oracle:
    the selection is the top-k under the reported weights, corners come first, every proxy
    call is in the ledger, fidelity runs the oracle, the artifacts exist."""
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _, store = cheap_store
    view = SignalView(pool, store)
    ledger = CostLedger()
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=10), cache_dir=tmp_path / "oracle",
                    ledger=ledger, show_progress=False)
    sel = make_selector("tmap", indicators=["reasoning_steps", "bloom", "length"], scorer="micro", proxy_model="micro",
                        anchors=5, demos=2, draws=1, proxy_max_length=256, n_init=1, n_iter=2, check_fidelity=3).select(
        pool, view, 60, task=task, seed=0, oracle=oracle.dev_view(), artifacts_dir=tmp_path / "art")
    d = sel.diagnostics
    assert len(sel) == 60 and len(d["trace"]) == 4 + 1 + 2
    assert [t["phase"] for t in d["trace"]] == ["init"] * 5 + ["bo"] * 2
    assert d["trace"][0]["weights"] == pytest.approx({"reasoning_steps": 1 / 3, "bloom": 1 / 3, "length": 1 / 3}, abs=1e-4)
    assert d["best_single_indicator"]["indicator"] in ("reasoning_steps", "bloom", "length")
    assert d["best_proxy"] == pytest.approx(max(t["value"] for t in d["trace"]), abs=1e-6)
    # the selection is the top-k under the learned weights
    w = d["weights"]
    redo = make_selector("weighted", scorer="micro", weights=w).select(pool, view, 60)
    assert set(redo.ids) == set(sel.ids)
    # every proxy call was logged; fresh + cached = calls
    proxy_entries = [e for e in ledger.entries if e.kind == "proxy"]
    assert len(proxy_entries) == len(d["trace"]) == d["proxy"]["calls"]
    assert sum(not e.cached for e in proxy_entries) == d["proxy"]["fresh_calls"] == d["search"]["distinct_subsets"]
    fid = d["fidelity"]
    assert fid["n"] == min(3, d["search"]["distinct_subsets"]) and fid["oracle_runs"] >= 1
    assert len(fid["tiny_vs_full"]["tiny"]) == fid["n"]
    assert sel.cost["oracle"]["calls"] == fid["n"]
    art = tmp_path / "art"
    assert set(d["artifacts"]) == {"tmap_trace.json", "tmap_weights.png", "tmap_trace.png", "tmap_fidelity.png"}
    assert all((art / a).stat().st_size > 0 for a in d["artifacts"])
    assert len(json.loads((art / "tmap_trace.json").read_text())["trace"]) == len(d["trace"])


@pytest.mark.slow
def test_accuracy_proxy_without_demos_is_the_dev_accuracy(arith_small):
    """With every dev item its own anchor and no demonstrations, the accuracy proxy asks the
    model exactly what the evaluator asks: the two must agree item for item."""
    from thresher.api import train
    from thresher.models.evaluate import evaluate

    pool, task, labels = arith_small
    dev = task.dev_view()
    clean = [r for r in pool if labels[r["id"]] == "clean"]
    lm, _ = train(clean, model="micro", steps=200, show_progress=False)
    every = anchor_points(np.arange(len(dev.dev), dtype=float)[:, None], len(dev.dev))
    proxy = ICLProxy(dev, every, model="micro", metric="accuracy", demos=0, draws=1, gen_batch_size=64, loaded=lm,
                     show_progress=False)
    sc = proxy.score(clean[:20])
    ev = evaluate(lm.model, lm.tokenizer, dev, dev.dev, batch_size=64, show_progress=False)
    assert sc.per_anchor == [1.0 if c else 0.0 for c in ev.correct]
    assert sc.value == pytest.approx(ev.accuracy)
    assert 0 < sc.value  # the trained model gets some right: the check is not vacuous
    # with demonstrations: prompts carry them (more tokens), values stay accuracies
    two = ICLProxy(dev, every, model="micro", metric="accuracy", demos=1, draws=1, gen_batch_size=64, loaded=lm,
                   show_progress=False).score(clean[:20])
    assert two.tokens > sc.tokens and all(v in (0.0, 1.0) for v in two.per_anchor)
