"""Training-dynamics signals: cross-fitted loss (no example scored by a model that saw it) and the data map."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals import dynamics
from thresher.signals.base import COLUMN_OWNERS, make_signal
from thresher.signals.dynamics import assign_folds, cartography, ids_digest

TINY = {"model": "micro", "steps": 6, "batch_size": 8}  # a few seconds per training on 2 shared cores


@pytest.fixture(scope="module")
def tiny_pool(arith_small):
    """60 arith examples plus an exact copy (new id) of the first: duplicates must share a fold."""
    pool = arith_small[0]
    recs = [pool[i] for i in range(60)]
    recs.append({**recs[0], "id": "copy-of-" + recs[0]["id"]})
    return Pool(recs, name="arith-tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("THRESHER_CACHE", str(d))
    return d


def test_columns_registered_once_and_keys():
    for c in ("xfit_loss", "xfit_loss_max", "xfit_loss_final", "xfit_fold"):
        assert COLUMN_OWNERS[c] == "crossfit_loss"
    for c in ("dm_confidence", "dm_variability", "dm_correctness"):
        assert COLUMN_OWNERS[c] == "datamap"
    pool = Pool([{"id": "a", "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
                  "source": "arith", "meta": {}}])
    k = make_signal("crossfit_loss", **TINY).key(pool)
    assert k.model == "micro" and k.version == 1
    assert k.params["train"]["steps"] == 6 and k.params["train"]["mode"] == "scratch" and "token_budget" not in k.params
    assert make_signal("crossfit_loss", **TINY, token_budget=4096).key(pool) == k  # batching is no part of the key
    assert make_signal("crossfit_loss", **TINY, folds=4).key(pool) != k
    assert make_signal("crossfit_loss", **{**TINY, "steps": 7}).key(pool) != k
    # auto resolves on the pool: the arith testbed's scorer is micro
    assert make_signal("crossfit_loss", steps=6, batch_size=8).key(pool) == k
    # defaults are keyed as what they are (tier defaults spelt out)
    assert make_signal("datamap", model="micro").key(pool).params["train"]["steps"] == dynamics.DATAMAP_STEPS["micro"]
    with pytest.raises(ValueError, match="steps or epochs"):
        make_signal("datamap", model="micro", steps=5, epochs=1.0)


def test_assign_folds_balanced_deterministic_grouped(tiny_pool):
    f = assign_folds(tiny_pool, 5, seed=0)
    assert f.min() == 0 and f.max() == 4
    assert np.bincount(f).max() - np.bincount(f).min() <= 2  # the largest group has 2 rows
    assert f[0] == f[-1]  # the exact copy shares its original's fold
    assert (assign_folds(tiny_pool, 5, seed=0) == f).all()
    assert (assign_folds(tiny_pool, 5, seed=1) != f).any()
    # independent of pool order: a fold belongs to the example
    rev = Pool(list(reversed(list(tiny_pool))), name="rev")
    assert (assign_folds(rev, 5, seed=0)[::-1] == f).all()
    g = assign_folds(tiny_pool, 5, seed=0, group_duplicates=False)
    assert np.bincount(g).max() - np.bincount(g).min() <= 1
    with pytest.raises(ValueError, match="at least"):
        assign_folds(Pool(list(tiny_pool)[:3]), 5, seed=0)


def test_cartography_reduction_by_hand():
    probs = np.array([[0.2, 0.4, 0.6, 0.8],
                      [0.9, 0.9, 0.9, 0.9],
                      [0.1, np.nan, 0.3, 0.3]])
    correct = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=bool)
    out = cartography(probs, correct)
    # row 0: mean 0.5; deviations -0.3 -0.1 0.1 0.3 -> var (0.09+0.01+0.01+0.09)/4 = 0.05
    assert out["dm_confidence"][0] == pytest.approx(0.5)
    assert out["dm_variability"][0] == pytest.approx(math.sqrt(0.05))
    assert out["dm_correctness"][0] == pytest.approx(0.5)
    assert out["dm_confidence"][1] == pytest.approx(0.9) and out["dm_variability"][1] == pytest.approx(0.0)
    assert out["dm_correctness"][1] == 1.0
    assert all(np.isnan(out[c][2]) for c in out)  # a checkpoint without answer tokens: no values
    assert dynamics.per_token_probability(np.array([0.0, math.log(2)])) == pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="shape"):
        cartography(probs, correct[:, :2])


def test_datamap_checkpoint_steps():
    d = make_signal("datamap", model="micro", checkpoints=4)
    assert d.checkpoint_steps(100) == [25, 50, 75, 100]
    assert d.checkpoint_steps(6) == [2, 3, 4, 6]
    with pytest.raises(ValueError, match="checkpoints"):
        d.checkpoint_steps(3)


def test_crossfit_never_scores_a_seen_example_and_matches_a_direct_fold(tiny_pool, tmp_path, cache, monkeypatch):
    import thresher.models.train as train_mod
    from thresher.models.load import load_model
    from thresher.models.train import TrainConfig
    from thresher.signals.dynamics import AnswerScorer

    trained_on: list[list[str]] = []
    real = train_mod.finetune

    def spy(model, tok, records, cfg, **kw):
        trained_on.append([r["id"] for r in records])
        return real(model, tok, records, cfg, **kw)

    monkeypatch.setattr(train_mod, "finetune", spy)
    K = 3
    sig = make_signal("crossfit_loss", **TINY, folds=K)
    store = SignalStore(tmp_path / "store")
    run_signal(sig, tiny_pool, store, show_progress=False)
    v = read_signal(sig, tiny_pool, store)
    ids = np.asarray(tiny_pool.ids)
    fold = v["xfit_fold"]
    assert sorted(set(fold.tolist())) == list(range(K)) and len(trained_on) == K
    assert np.isfinite(v["xfit_loss"]).all() and (v["xfit_loss"] > 0).all()
    assert (v["xfit_loss_max"] >= v["xfit_loss"] - 1e-9).all()
    # the run record: per fold, digests of the ids the model trained on and scored
    cost = store.meta(sig.key(tiny_pool))["cost"]
    assert cost["trainings"] == K and cost["train_steps"] == K * 6 and cost["folds_resumed"] == 0
    for f, rec in enumerate(cost["folds"]):
        held = ids[fold == f].tolist()
        # what the model of fold f really trained on (spied), never an example it scored
        assert not set(trained_on[f]) & set(held)
        assert sorted(trained_on[f] + held) == sorted(ids.tolist())
        assert rec["train_ids_sha256"] == ids_digest(trained_on[f]) == ids_digest(ids[fold != f].tolist())
        assert rec["heldout_ids_sha256"] == ids_digest(held)
        assert sig.fold_ids[f] == (trained_on[f], held)
    # every example: its own fold's training set does not contain it (nor its exact copy)
    for i, x in enumerate(ids):
        assert x not in set(trained_on[fold[i]])
    assert fold[0] == fold[-1]

    # one fold computed directly: same seed (seed + fold), same training rows in pool order, same scoring
    f = 1
    train = [tiny_pool[i] for i in np.flatnonzero(fold != f)]
    held = [tiny_pool[i] for i in np.flatnonzero(fold == f)]
    lm = load_model("micro", seed=f)
    real(lm.model, lm.tokenizer, train, TrainConfig.for_tier("micro", steps=6, batch_size=8, seed=f), show_progress=False)
    direct = AnswerScorer(lm.tokenizer, held, max_length=512).score(lm.model)
    for c in ("loss", "loss_max", "loss_final"):
        np.testing.assert_allclose(v[f"xfit_{c}"][fold == f], direct[c], rtol=1e-5, atol=1e-6)
    # and the lm signal's own statistics agree with the scorer's (same tokens, same reduction)
    from thresher.models.chat import encode_pair
    from thresher.signals.lm import batched_answer_stats

    seqs = [(p.cond.input_ids, p.cond.answer_mask) for p in (encode_pair(lm.tokenizer, r["messages"], max_length=512) for r in held)]
    sums, counts = batched_answer_stats(lm.model, seqs, lm.tokenizer.pad_token_id or 0, 1024, full=False)
    np.testing.assert_allclose(v["xfit_loss"][fold == f], sums[:, 0] / counts, rtol=1e-5, atol=1e-6)


def test_crossfit_resumes_per_fold_and_is_deterministic(tiny_pool, tmp_path, cache):
    K = 3
    sig = make_signal("crossfit_loss", **TINY, folds=K)
    a = SignalStore(tmp_path / "a")
    run_signal(sig, tiny_pool, a, show_progress=False)
    va = read_signal(sig, tiny_pool, a)
    files = sorted(sig.fold_cache(tiny_pool).glob("fold-*.json"))
    assert len(files) == K
    # a run killed after two folds: only the third trains again, with the same values
    files[2].unlink()
    b = SignalStore(tmp_path / "b")
    run_signal(make_signal("crossfit_loss", **TINY, folds=K), tiny_pool, b, show_progress=False)
    cost = b.meta(sig.key(tiny_pool))["cost"]
    assert (cost["trainings"], cost["folds_resumed"]) == (1, 2)
    assert [r["resumed"] for r in cost["folds"]] == [True, True, False]
    vb = read_signal(sig, tiny_pool, b)
    for c in va:
        np.testing.assert_allclose(vb[c], va[c], rtol=1e-6, atol=1e-7)
    # a stale fold file (other ids) is recomputed, never trusted
    got = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({**got, "heldout_ids_sha256": "0" * 64, "loss": [99.0] * len(got["loss"])}))
    c = SignalStore(tmp_path / "c")
    run_signal(make_signal("crossfit_loss", **TINY, folds=K), tiny_pool, c, show_progress=False)
    assert c.meta(sig.key(tiny_pool))["cost"]["trainings"] == 1
    np.testing.assert_allclose(read_signal(sig, tiny_pool, c)["xfit_loss"], va["xfit_loss"], rtol=1e-6, atol=1e-7)


def test_crossfit_asserts_that_no_model_saw_a_copy(tiny_pool, cache, monkeypatch):
    # folds that split an exact duplicate (as without grouping) are refused before any training
    def split_copies(pool, k, seed, group=True):
        f = np.arange(len(pool)) % k
        f[-1] = (f[0] + 1) % k  # row 60, the copy of row 0, in another fold
        return f

    monkeypatch.setattr(dynamics, "assign_folds", split_copies)
    sig = make_signal("crossfit_loss", **TINY, folds=2)
    with pytest.raises(AssertionError, match="copy"):
        sig.compute_pool(tiny_pool, {})


def test_datamap_end_to_end(arith_small, tmp_path, cache):
    pool = arith_small[0]
    sig = make_signal("datamap", model="micro", steps=9, checkpoints=3, batch_size=8)
    store = SignalStore(tmp_path / "store")
    run_signal(sig, pool, store, show_progress=False)
    v = read_signal(sig, pool, store)
    conf, var, cor = v["dm_confidence"], v["dm_variability"], v["dm_correctness"]
    assert np.isfinite(conf).all() and ((conf > 0) & (conf <= 1)).all()
    assert (var >= 0).all() and (var <= 0.5).all()  # the std of values in [0, 1]
    assert ((cor >= 0) & (cor <= 1)).all()
    cost = store.meta(sig.key(pool))["cost"]
    assert cost["trainings"] == 1 and cost["checkpoints"] == [3, 6, 9] and cost["scored_examples"] == 3 * len(pool)
    assert conf.std() > 0  # examples differ


def test_quality_source_accepts_dynamics_and_localised_columns():
    from thresher.select.quality import quality_source

    sp = {"model": "micro", "warmup_examples": 10, "warmup_steps": 5}
    for spec, name, col, direction in (("xfit_loss:low", "crossfit_loss", "xfit_loss", "low"),
                                       ("xfit_loss_final:low", "crossfit_loss", "xfit_loss_final", "low"),
                                       ("dm_confidence:high", "datamap", "dm_confidence", "high"),
                                       ("dm_variability", "datamap", "dm_variability", "high"),
                                       ("loss_final:low", "lm", "loss_final", "low"),
                                       ("loss_max:low", "lm", "loss_max", "low")):
        q = quality_source(spec, signal_params=sp)
        assert (q.signal.name, q.column, q.direction, q.normalise) == (name, col, direction, "rank")
        assert q.signal.params.model == "micro"  # the selector's scorer
    with pytest.raises(ValueError, match="several columns"):
        quality_source("datamap:high")
    with pytest.raises(ValueError, match="unknown signal 'xfit_los'.*did you mean"):
        quality_source("xfit_los:low")

    class View:
        def __init__(self, cols):
            self.cols = cols

        def signal(self, sig):
            return self.cols

    q = quality_source("dm_confidence:low")
    np.testing.assert_allclose(q.values(View({"dm_confidence": np.array([0.9, 0.1, np.nan])})), [0.0, 1.0, np.nan])
    q = quality_source("exact_key")
    with pytest.raises(ValueError, match="not a numeric column"):
        q.values(View({"exact_key": np.array(["ab", "cd"], dtype=object)}))
