"""The ``loglik`` oracle metric, metric-aware cache keys, inner-oracle fidelity and the small bench configs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from thresher.stats import (
    domain_effects,
    oracle_fidelity,
    seed_item_bootstrap,
    spearman,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_arith():
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    return ArithTestbed(ArithConfig(pool_size=120, dev_size=8, test_size=8)).build()


def _reference_loglik(model, tokenizer, task, items):
    """Plain forward per item, log_softmax, mean over the answer content tokens."""
    import torch

    from thresher.models.chat import encode_conversation

    out = []
    with torch.no_grad():
        for it in items:
            e = encode_conversation(tokenizer, task.demo_messages(it), turn_end=False)
            ids = torch.tensor([e.input_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            pos = [t for t in range(1, len(e.input_ids)) if e.answer_mask[t]]
            out.append(float(np.mean([logp[t - 1, e.input_ids[t]].item() for t in pos])))
    return out


def test_loglik_matches_a_plain_forward_reference(tiny_arith):
    from thresher.models.evaluate import evaluate_task, loglik_eval
    from thresher.models.load import load_model

    _, task, _ = tiny_arith
    lm = load_model("micro", device="cpu", seed=0)
    items = task.dev[:6]
    got = loglik_eval(lm.model, lm.tokenizer, task, items, token_budget=64)  # several batches
    ref = _reference_loglik(lm.model, lm.tokenizer, task, items)
    assert np.allclose(got.values, ref, atol=1e-4)
    assert got.loglik == pytest.approx(float(np.mean(ref)), abs=1e-4)
    assert all(c > 0 for c in got.answer_tokens)
    # the task's metric picks the oracle value; accuracy only when asked for
    ll = evaluate_task(lm.model, lm.tokenizer, task.with_metric("loglik"), items, show_progress=False)
    assert ll["metric"] == "loglik" and ll["accuracy"] is None and "correct" not in ll
    assert ll["value"] == pytest.approx(got.loglik, abs=1e-9) and np.allclose(ll["items"], got.values)
    both = evaluate_task(lm.model, lm.tokenizer, task.with_metric("loglik", both_metrics=True), items, show_progress=False)
    assert both["accuracy"] is not None and len(both["correct"]) == len(items) and both["value"] == pytest.approx(got.loglik)


def test_metric_is_validated_and_reaches_the_dev_view(tiny_arith):
    _, task, _ = tiny_arith
    with pytest.raises(ValueError, match="metric"):
        task.with_metric("bleu")
    t = task.with_metric("loglik")
    assert t.dev_view().metric == "loglik" and t.metric_tag() == "loglik" and task.metric_tag() is None
    sub = t.with_dev(t.dev[:3])
    assert len(sub.dev) == 3 and sub.metric == "loglik" and sub.test_size == t.test_size


def test_oracle_key_depends_on_the_metric_and_loglik_scores(tiny_arith, tmp_path):
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _ = tiny_arith
    train = TrainConfig.for_tier("micro", steps=2, batch_size=8)
    acc = Oracle(task, pool, model="micro", train=train, cache_dir=tmp_path, show_progress=False)
    ll = Oracle(task.with_metric("loglik"), pool, model="micro", train=train, cache_dir=tmp_path, show_progress=False)
    both = Oracle(task.with_metric("loglik", both_metrics=True), pool, model="micro", train=train, cache_dir=tmp_path,
                  show_progress=False)
    ids = pool.ids[:16]
    assert len({acc.key(ids), ll.key(ids), both.key(ids)}) == 3
    s = ll.score(ids)
    assert s.metric == "loglik" and not s.cached and s.value < 0
    assert len(s.correct) == len(task.dev) and s.value == pytest.approx(float(np.nanmean(s.correct)))
    assert "accuracy" not in s.metrics and set(s.per_item) == {"loglik"}
    assert ll.score(ids).cached and ll.history[-1] == (ids, s.value)
    t = ll.score_test(ids)
    assert t.metric == "loglik" and len(t.correct) == task.test_size
    b = both.score(ids)  # a separate cache entry, with both metrics recorded
    assert not b.cached and set(b.metrics) == {"accuracy", "loglik"} and b.value == pytest.approx(s.value, abs=1e-6)
    assert len(b.per_item["accuracy"]) == len(task.dev)


def test_spearman_and_oracle_fidelity_hand_cases():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    f = oracle_fidelity({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.0}, {"a": -1.0, "b": -0.5, "c": -0.7, "e": 9.0})
    assert f["n"] == 3 and f["pairs"] == [["a", 0.1, -1.0], ["b", 0.2, -0.5], ["c", 0.3, -0.7]]
    assert f["spearman"] == pytest.approx(0.5)
    assert oracle_fidelity({"a": 1, "b": 2}, {"a": 1, "b": 2}) == {"spearman": None, "n": 2, "pairs": [["a", 1.0, 1.0], ["b", 2.0, 2.0]]}
    assert oracle_fidelity({"a": 1, "b": math.nan, "c": 2, "d": 3}, {"a": 1, "b": 2, "c": 3, "d": 4})["n"] == 3


def test_paired_statistics_take_real_valued_items():
    rng = np.random.default_rng(0)
    ref = rng.normal(-1.5, 0.3, 40)
    run = ref + 0.2 + rng.normal(0, 0.01, 40)
    domains = np.array(["x"] * 20 + ["y"] * 20)
    eff, var = domain_effects(run, ref, domains, ["x", "y"], n_boot=200)
    assert np.allclose(eff, [np.mean((run - ref)[:20]), np.mean((run - ref)[20:])]) and np.all(var > 0)
    # real values keep their own bootstrap variance (~ var(diff) / n), not the 0/1 floor 1 / n^2 = 0.0025
    expect = [np.var((run - ref)[:20]) / 20, np.var((run - ref)[20:]) / 20]
    np.testing.assert_allclose(var, expect, rtol=0.35)
    assert var.max() < 1e-4
    d, lo, hi = seed_item_bootstrap([list(run)], [list(ref)], n_boot=200)
    assert d == pytest.approx(float(np.mean(run - ref))) and lo < d < hi and lo > 0


@pytest.mark.parametrize("name", ["bench-gsm8k-gpu.yaml", "bench-arith-gpu.yaml"])
def test_small_bench_configs_load(name):
    from thresher.bench.config import BenchConfig, method_params
    from thresher.bench.run import _plan
    from thresher.select.base import make_selector, selector_class

    cfg = BenchConfig.load(ROOT / "examples" / name)
    assert cfg.model == "small" and cfg.task["params"]["metric"] == "loglik"
    assert cfg.inner_oracle == {"steps": 5, "dev_size": 20, "fidelity_subsets": 3}
    names = {m.name for m in cfg.methods}
    assert {"random", "full", "ifd", "deita", "dsir", "alpagasus", "rds", "thtb", "tmap", "harp-c", "harp-e",
            "autoselection"} <= names
    for m in cfg.methods:  # every method's params validate
        make_selector(m.name, **method_params(selector_class(m.name).Params, m.params, cfg))
    assert cfg.references == ["clean-only", "base"] and len(_plan(cfg, 0)) == len(cfg.methods) + 2


def test_bench_config_rejects_bad_inner_oracle_and_metric():
    from thresher.bench.config import BenchConfig, BenchConfigError

    base = {"pool": {"arith": {}}, "methods": ["random"], "budgets": [0.1], "seeds": [0]}
    with pytest.raises(BenchConfigError, match="inner_oracle"):
        BenchConfig.from_dict({**base, "inner_oracle": {"steps": 0}})
    with pytest.raises(BenchConfigError, match="metric"):
        BenchConfig.from_dict({**base, "task": {"name": "arith", "params": {"metric": "bleu"}}})


def test_inner_oracle_and_fidelity(tiny_arith, tmp_path):
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _ = tiny_arith
    full = Oracle(task.with_metric("loglik"), pool, model="micro", train=TrainConfig.for_tier("micro", steps=3, batch_size=8),
                  cache_dir=tmp_path, show_progress=False)
    inner = full.inner(steps=1, dev_size=4)
    assert inner.train.steps == 1 and len(inner.task.dev) == 4 and inner.ledger is full.ledger
    subsets = [pool.ids[i: i + 12] for i in (0, 20, 40, 60)]
    inner.dev_view().score_many(subsets)
    f = full.fidelity(inner.history, max_subsets=3)
    assert f["inner_fidelity_n"] == 3 and len(f["inner_fidelity_pairs"]) == 3
    assert f["inner_fidelity"] is None or -1.0 <= f["inner_fidelity"] <= 1.0


def test_gpu_check_cpu_smoke_runs(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--reps", "1", "--json", str(out)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ratio to roofline" in r.stdout
    import json

    res = json.loads(out.read_text())
    assert res["models"]["tiny"]["lm_tokens_per_s"] > 0 and res["models"]["tiny"]["lora_step_s"] > 0
