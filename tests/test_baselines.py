"""The comparison baselines on hand cases and small real stores."""
from __future__ import annotations

import numpy as np
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import run_signal
from thresher.select.base import SignalView, make_selector
from thresher.select.baselines import hashed_ngrams, repr_filter
from thresher.select.quality import minmax, quality_source, rank_normalise
from thresher.signals.base import make_signal


def test_rank_and_minmax_normalisation():
    v = np.array([3.0, 1.0, np.nan, 3.0, 2.0])
    assert np.allclose(rank_normalise(v), [0.8333333, 0.0, np.nan, 0.8333333, 0.3333333], equal_nan=True)
    assert np.allclose(minmax(v), [1.0, 0.0, np.nan, 1.0, 0.5], equal_nan=True)
    assert np.allclose(rank_normalise(np.array([2.0, 2.0])), [0.5, 0.5])
    assert np.allclose(minmax(np.array([4.0, 4.0])), [0.0, 0.0])


def test_quality_specs():
    assert quality_source("judge").column == "quality_norm"
    q = quality_source("reward:some/reward-model")
    assert (q.signal.name, q.column, q.normalise) == ("reward", "reward_norm", "as_is")
    q = quality_source("loss:low", signal_params={"model": "micro", "warmup_examples": 10})
    assert (q.signal.name, q.column, q.direction) == ("lm", "loss", "low")
    with pytest.raises(ValueError, match="direction"):
        quality_source("loss:sideways")
    with pytest.raises(ValueError, match="unknown signal"):
        quality_source("nonsense")


def test_repr_filter_is_the_sequential_rule():
    ang = np.deg2rad([0, 10, 50, 55, 120, 121, 200])
    emb = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    # cos(10 deg)=0.985, cos(5 deg)=0.996, cos(1 deg)=0.9998: with threshold 0.9 the 2nd, 4th and 6th are redundant
    kept, scanned = repr_filter(emb, list(range(7)), k=10, threshold=0.9, block=3)
    assert kept == [0, 2, 4, 6] and scanned == 7
    kept, scanned = repr_filter(emb, list(range(7)), k=2, threshold=0.9, block=2)
    assert kept == [0, 2] and scanned == 3


def test_hashed_ngrams_are_stable_and_count_bigrams():
    a = hashed_ngrams("Ann has 3 pens", 1000, 2)
    assert len(a) == 4 + 3 and (a == hashed_ngrams("ann HAS 3 pens!", 1000, 2)).all()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 arith-like and 40 off-topic examples with embeddings + k-means in a store."""
    recs = []
    for i in range(40):
        recs.append({"instruction": f"Bob has {i % 9 + 1} cups, gets {i % 7 + 1}. How many now?",
                     "output": f"{i % 9 + 1}+{i % 7 + 1}={i % 9 + i % 7 + 2}. The answer is {i % 9 + i % 7 + 2}."})
        recs.append({"instruction": f"Write a short poem about the colour number {i}.", "output": f"Colour {i} is bright and calm, a quiet song."})
    pool = Pool.from_records(recs)
    store = SignalStore(tmp_path_factory.mktemp("store"))
    for name, params in (("embedding", {}), ("kmeans", {"k": 4}), ("text", {}), ("reasoning_steps", {})):
        run_signal(make_signal(name, **params), pool, store, show_progress=False)
    return pool, store


def test_dsir_prefers_examples_like_the_task_dev_split(mixed):
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    pool, store = mixed
    task = ArithTestbed(ArithConfig(pool_size=50, dev_size=30, test_size=30)).task()
    sel = make_selector("dsir").select(pool, SignalView(pool, store), 40, task=task, seed=0)
    arith_like = sum("How many now" in pool.get(i)["messages"][0]["content"] for i in sel.ids)
    assert arith_like >= 38
    assert make_selector("dsir").select(pool, SignalView(pool, store), 40, task=task, seed=0).ids == sel.ids


def test_car_takes_the_best_of_every_cluster_then_global_quality(mixed):
    pool, store = mixed
    view = SignalView(pool, store)
    sel = make_selector("car", quality="chars_answer", k_clusters=4).select(pool, view, 6)
    clusters = view.signal(make_signal("kmeans", k=4))["cluster"]
    q = view.column("chars_answer")
    best_per_cluster = {c: max(np.nonzero(clusters == c)[0], key=lambda i: (q[i], -i)) for c in range(4)}
    first4 = pool.positions(sel.ids[:4])
    assert sorted(first4) == sorted(best_per_cluster.values())
    rest = [i for i in np.argsort(-q, kind="stable") if i not in first4][:2]
    assert pool.positions(sel.ids[4:]) == [int(i) for i in rest]
    assert sel.diagnostics["clusters"] == 4


def test_deita_skips_near_copies(mixed):
    pool, store = mixed
    view = SignalView(pool, store)
    sel = make_selector("deita", quality="chars_answer", complexity="reasoning_steps", threshold=0.9).select(pool, view, 10)
    emb = view.vectors("embedding")
    pos = pool.positions(sel.ids)
    sims = emb[pos] @ emb[pos].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.9
    assert sel.diagnostics["rejected_as_redundant"] > 0


def test_alpagasus_and_superfiltering_read_their_signals(micro_scored):
    pool, _, _, store, lm, _ = micro_scored
    view = SignalView(pool, store)
    sp = {"scorer": "micro", "scorer_warmup": 120, "scorer_warmup_steps": 40}
    sel = make_selector("alpagasus", quality="loss:low", **sp).select(pool, view, 30)
    loss = view.column("loss", **lm.params.model_dump())
    assert pool.positions(sel.ids) == [int(i) for i in np.argsort(loss, kind="stable")[:30]]
    sf = make_selector("superfiltering", scorer_warmup=60, scorer_warmup_steps=20)
    assert sf.required_signals()[0].params.model == "micro-tiny"
    run_signal(sf.required_signals()[0], pool, store, show_progress=False)
    sel = sf.select(pool, view, 20)
    tiny_ifd = view.column("ifd", model="micro-tiny", warmup_examples=60, warmup_steps=20)
    kept = tiny_ifd[pool.positions(sel.ids)]
    assert (kept < 1).all() and list(kept) == sorted(kept, reverse=True)


def test_default_scorer_is_micro_on_arith_and_a_real_lm_elsewhere(micro_scored):
    """scorer="auto" (the default of every scorer-using baseline): the arith testbed keeps its micro
    scorer (the very signals already stored), any other pool gets SmolLM2 (small); the selection says which."""
    pool, _, _, store, lm, text = micro_scored
    alpaca = Pool.from_records([{"id": f"r{i}", "messages": [{"role": "user", "content": f"Q{i}?"},
                                                            {"role": "assistant", "content": f"A{i}."}]} for i in range(3)],
                               name="alpaca", source="alpaca")
    sp = {"scorer_warmup": 120, "scorer_warmup_steps": 40}
    for method, params in (("ifd", sp), ("alpagasus", {**sp, "quality": "loss:low"}), ("thtb", sp),
                           ("topk", {**sp, "signal": "tokens_answer"})):
        sel = make_selector(method, **params)
        assert sel.params.scorer == "auto"
        on_arith = {s.key(pool) for s in sel.required_signals() if s.name in ("lm", "text")}
        assert on_arith and on_arith <= {lm.key(pool), text.key(pool)}, method
        elsewhere = {s.name: s.key(alpaca) for s in sel.required_signals() if s.name in ("lm", "text")}
        assert elsewhere, method
        if "lm" in elsewhere:  # the scorer: a real LM
            assert elsewhere["lm"].params["model"] == "small" and elsewhere["lm"].model.startswith("small+warm120"), method
        if "text" in elsewhere:  # token counts keep the text signal's own tokenizer (stored text signals stay valid)
            assert elsewhere["text"] == make_signal("text").key(alpaca), method
    # a weak scorer stays the method's own
    assert make_selector("superfiltering").required_signals()[0].key(alpaca).params["model"] == "micro-tiny"
    # api.select names the scorer the stored signals were computed with
    from thresher.api import select

    got = select(pool, "ifd", 40, store=store.root, **sp)
    assert got.diagnostics["scorer"] == ("scorer: micro (~0.11M-parameter character model, trained here), "
                                         "warmed up on 120 pool examples x 40 steps")
    assert got.ids == make_selector("ifd", scorer="micro", **sp).select(pool, SignalView(pool, store), 40).ids
