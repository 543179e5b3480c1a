"""Selectors on stored signals, the Selection file format, the oracle's cache and ledger."""
from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.data.ledger import CostLedger
from thresher.models.train import TrainConfig
from thresher.oracle.core import DevOracle, Oracle
from thresher.select.base import Budget, Selection, SignalView, make_selector, top_by


@pytest.mark.parametrize("raw,n,expect", [("0.3", 1000, 300), (0.3, 1000, 300), ("30%", 1000, 300), ("1500", 1000, 1000),
                                          (250, 1000, 250), ("1", 10, 1), ("1.0", 10, 10), (1.0, 10, 10), (0.001, 10, 1)])
def test_budget_parse(raw, n, expect):
    assert Budget.parse(raw).size(n) == expect


@pytest.mark.parametrize("bad", ["-1", "0", "abc", 1.5, 0.0, True])
def test_budget_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Budget.parse(bad)


def test_top_by_direction_nan_and_stable_ties():
    ids = list("abcdef")
    v = np.array([3.0, np.nan, 1.0, 3.0, 2.0, np.nan])
    assert top_by(v, ids, 3, descending=True) == (["a", "d", "e"], 2)
    assert top_by(v, ids, 2, descending=False) == (["c", "e"], 2)
    assert top_by(v, ids, 10)[0] == ["a", "d", "e", "c"]


def test_random_is_seeded_and_sized(micro_scored):
    pool, *_ , store, _, _ = micro_scored
    view = SignalView(pool, store)
    a = make_selector("random").select(pool, view, 0.25, seed=1)
    b = make_selector("random").select(pool, view, 0.25, seed=1)
    c = make_selector("random").select(pool, view, 0.25, seed=2)
    assert a.ids == b.ids and a.ids != c.ids and len(a) == 100 and len(set(a.ids)) == 100


def test_topk_and_ifd_follow_the_stored_values(micro_scored):
    pool, _, _, store, lm, _ = micro_scored
    view = SignalView(pool, store)
    sp = {"scorer": "micro", "scorer_warmup": 120, "scorer_warmup_steps": 40}
    loss = view.column("loss", **lm.params.model_dump())
    low = make_selector("topk", signal="loss", direction="low", **sp).select(pool, view, 50)
    pos = pool.positions(low.ids)
    assert max(loss[pos]) <= np.nanmin(np.delete(loss, pos))  # nothing outside is lower
    ans_len = view.column("tokens_answer", model="micro")
    longest = make_selector("topk", signal="tokens_answer", direction="high", **sp).select(pool, view, 40)
    assert min(ans_len[pool.positions(longest.ids)]) >= np.sort(ans_len)[-40]

    ifd = view.column("ifd", **lm.params.model_dump())
    sel = make_selector("ifd", **sp).select(pool, view, 0.5)
    kept = ifd[pool.positions(sel.ids)]
    assert (kept < 1).all()
    assert list(kept) == sorted(kept, reverse=True)
    assert sel.diagnostics["dropped_ifd_ge_threshold"] == int((ifd >= 1).sum())
    assert len(sel) == min(200, int((ifd < 1).sum()))


def test_missing_signal_is_an_error_naming_the_command(micro_scored):
    pool, _, _, store, _, _ = micro_scored
    view = SignalView(pool, store)
    with pytest.raises(KeyError, match="thresher score POOL --signals lm"):
        make_selector("ifd", scorer="micro", scorer_warmup=999).select(pool, view, 0.1)
    with pytest.raises(KeyError, match="unknown selection method 'nope'"):
        make_selector("nope")
    with pytest.raises(ValueError, match="parameter .direction."):
        make_selector("topk", signal="loss", direction="sideways")


def test_selection_file_and_meta_roundtrip(micro_scored, tmp_path):
    pool, _, _, store, _, _ = micro_scored
    sel = make_selector("random").select(pool, SignalView(pool, store), 7, seed=3)
    out, meta = sel.save(tmp_path / "sel.jsonl", pool)
    assert meta.name == "sel.meta.json"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == sel.ids and rows[0]["messages"] == pool.get(sel.ids[0])["messages"]
    m = json.loads(meta.read_text())
    assert (m["method"], m["budget"], m["seed"], m["pool_fingerprint"], m["n_selected"]) == ("random", "7", 3, pool.fingerprint, 7)
    assert Selection.load(out).ids == sel.ids
    assert not list(tmp_path.glob("*.tmp*"))


def test_oracle_caches_records_costs_and_scores_test_once(arith_small, tmp_path):
    pool, task, labels = arith_small
    ledger = CostLedger(tmp_path / "ledger.jsonl")
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=15, batch_size=16),
                    cache_dir=tmp_path / "oracle", ledger=ledger, show_progress=False)
    ids = [i for i in pool.ids if labels[i] == "clean"][:80]
    s1 = oracle.score(ids, label="clean80")
    s2 = oracle.score(list(reversed(ids)), label="again")  # same set -> same key
    assert not s1.cached and s2.cached and s1.value == s2.value and s1.key == s2.key
    assert 0.0 <= s1.value <= 1.0 and s1.n_items == len(task.dev) and len(s1.correct) == len(task.dev)
    assert s1.n_examples == 15 * 16 and s1.tokens > 0
    assert set(s1.per_domain) == {"add", "sub", "mix"}
    summ = ledger.summary()
    assert summ["oracle"]["calls"] == 2 and summ["oracle"]["runs"] == 1 and summ["oracle"]["cached"] == 1
    t1 = oracle.score_test(ids, label="final")
    t2 = oracle.score_test(ids, label="final")
    assert t1.split == "test" and t1.n_items == task.test_size and t2.cached and t1.value == t2.value
    log = (tmp_path / "oracle" / "test_log.jsonl").read_text().splitlines()
    assert len(log) == 1  # scored once
    assert ledger.summary()["oracle"]["runs"] == 1  # test scoring reused the trained weights
    # the reloaded ledger file has the same entries
    assert len(CostLedger(tmp_path / "ledger.jsonl").entries) == len(ledger.entries)


def test_selection_code_only_sees_dev(arith_small, tmp_path):
    pool, task, _ = arith_small
    oracle = Oracle(task, pool, model="micro", cache_dir=tmp_path, show_progress=False)
    dev_oracle = oracle.dev_view()
    assert isinstance(dev_oracle, DevOracle) and not hasattr(dev_oracle, "score_test")
    dv = task.dev_view()
    assert not hasattr(dv, "_sealed_test") and dv.dev == task.dev

    seen = {}

    from thresher.select.base import Selector

    class SpySelector(Selector):
        name = "spy-test-only"
        uses_task = True
        uses_oracle = True

        def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
            seen["task"], seen["oracle"] = task, oracle
            return pool.ids[:k], {}

    SpySelector().select(pool, None, 3, task=task, oracle=oracle)
    assert not hasattr(seen["task"], "_sealed_test")
    assert not hasattr(seen["oracle"], "score_test")
