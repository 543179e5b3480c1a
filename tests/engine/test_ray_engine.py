"""The Ray engine on a real local Ray cluster gives exactly the local engine's results.

Signals (text, the warmed-up micro LM scorer) are computed by both engines into separate
stores and compared value for value (and Parquet file for file); a run started locally
and finished on Ray equals a full local run; oracle runs as Ray tasks equal in-process
ones. One 2-CPU cluster serves the whole module.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from thresher.data.store import SignalKey, SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.engine.shards import compute_example_shard, shard_plan, write_shard
from thresher.signals.base import VECTORS, make_signal
from thresher.tasks.arith import ArithTestbed

ray = pytest.importorskip("ray", reason="the ray engine needs the [ray] extra")

pytestmark = pytest.mark.ray

LM_PARAMS = {"model": "micro", "warmup_examples": 100, "warmup_steps": 30}


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    """Offline, a private model cache, and torch at every core (what Ray's oracle jobs use)."""
    import torch

    saved_env = {k: os.environ.get(k) for k in ("THRESHER_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "THRESHER_PROGRESS")}
    os.environ["THRESHER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["THRESHER_PROGRESS"] = "0"
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(saved_threads)
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(env):
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def arith():
    pool, task, _ = ArithTestbed(pool_size=300, dev_size=40, test_size=40).build()
    return pool, task


def parquet_bytes(store: SignalStore, key) -> list[bytes]:
    d = store.path(key)
    return [p.read_bytes() for p in sorted(d.glob("shard-*.parquet"))]


def assert_same_signal(sig, pool, local: SignalStore, other: SignalStore) -> dict:
    a, b = read_signal(sig, pool, local), read_signal(sig, pool, other)
    for col in sig.columns:
        assert a[col].dtype == b[col].dtype, col
        assert np.array_equal(a[col], b[col], equal_nan=a[col].dtype.kind == "f"), f"column {col} differs"
    assert local.read_table(sig.key(pool)).equals(other.read_table(sig.key(pool)))
    assert parquet_bytes(local, sig.key(pool)) == parquet_bytes(other, sig.key(pool))
    return a


def test_shard_transport_writes_the_same_files(tmp_path):
    """What comes back from a worker makes the store write byte-identical shards."""
    from thresher.engine.ray import decode_shard, encode_shard
    from thresher.signals.base import Signal

    class Mixed(Signal):
        name = "mixed-transport-check"
        kind = "vector"
        columns = ("f64", "f32", "i64", "flag", "label", "maybe")

    cols = {
        "f64": np.array([0.1, np.nan, -np.inf, 1e-310]), "f32": np.array([1.5, 2.25, -0.0, 3.4e38], dtype=np.float32),
        "i64": np.array([1, -2, 2**62, 0]), "flag": np.array([True, False, True, False]),
        "label": np.array(["a", "", "ünï", "z" * 40]), "maybe": [1, None, 3, None],
        VECTORS: np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
    }
    ids = ["x0", "x1", "x2", "x3"]
    payload, vec = encode_shard("mixed", 0, ids, cols)
    got_ids, got = decode_shard(payload, vec)
    assert got_ids == ids
    assert got["maybe"] == [1, None, 3, None]
    sig = Mixed()
    stores = [SignalStore(tmp_path / "direct"), SignalStore(tmp_path / "decoded")]
    key = SignalKey("f" * 64, sig.name, 1)
    for store, values in zip(stores, (cols, got), strict=True):
        store.begin(key, 4, 4)
        write_shard(store, key, 0, ids, values, sig)
        store.finish(key, 1)
    assert parquet_bytes(stores[0], key) == parquet_bytes(stores[1], key)
    assert np.array_equal(stores[0].read_vectors(key)[1], stores[1].read_vectors(key)[1])
    with pytest.raises(ValueError, match="column 'f64' of shard 3 has 4 rows for 2 ids"):
        encode_shard("mixed", 3, ids[:2], cols)


def test_text_signal_equal_on_both_engines(cluster, arith, tmp_path):
    pool, _ = arith
    local, on_ray = SignalStore(tmp_path / "local"), SignalStore(tmp_path / "ray")
    sig = make_signal("text")
    run_local = run_signal(sig, pool, local, engine="local", shard_size=64, show_progress=False)
    run_ray = run_signal(make_signal("text"), pool, on_ray, engine="ray", shard_size=64, show_progress=False)
    assert (run_local.computed_shards, run_ray.computed_shards) == (5, 5)
    cols = assert_same_signal(sig, pool, local, on_ray)
    first = pool[0]["messages"]
    answer = "\n\n".join(m["content"] for m in first if m["role"] == "assistant")
    assert cols["chars_answer"][0] == len(answer)  # the micro tokenizer is one token per character
    assert cols["tokens_answer"][0] == len(answer)
    assert on_ray.meta(sig.key(pool))["engine"] == "ray"


def test_lm_signal_exactly_equal_on_both_engines(cluster, arith, tmp_path):
    pool, _ = arith
    local, on_ray = SignalStore(tmp_path / "local"), SignalStore(tmp_path / "ray")
    sig = make_signal("lm", **LM_PARAMS)
    # local first: it warms the scorer up in memory (and caches it); the Ray actors load that cache
    run_signal(sig, pool, local, engine="local", shard_size=64, show_progress=False)
    run_signal(make_signal("lm", **LM_PARAMS), pool, on_ray, engine="ray", shard_size=64, show_progress=False)
    cols = assert_same_signal(sig, pool, local, on_ray)
    assert np.isfinite(cols["loss"]).mean() > 0.95
    assert (cols["answer_tokens"] > 0).mean() > 0.95
    ok = np.isfinite(cols["ifd"])
    assert np.allclose(cols["ifd"][ok], cols["loss"][ok] / cols["loss_alone"][ok], rtol=0, atol=0)

    # the prepared scorer shipped through the object store (how other nodes get it) gives the same values
    from thresher.engine.ray import run_shards_ray

    shipped = SignalStore(tmp_path / "shipped")
    sig2 = make_signal("lm", **LM_PARAMS).bind_pool(pool)
    key = sig2.key(pool)
    plan = shard_plan(len(pool), 64)
    shipped.begin(key, len(pool), 64)
    assert run_shards_ray(sig2, pool, shipped, key, plan, actors=1, show_progress=False, ship_artifacts=True) == len(plan)
    shipped.finish(key, len(plan))
    assert_same_signal(sig, pool, local, shipped)
    unpacked = list((Path(os.environ["THRESHER_CACHE"]) / "ray-artifacts").glob("*/config.json"))
    assert len(unpacked) == 1  # the worker wrote the shipped scorer into its own cache and loaded it from there


def test_ray_finishes_a_run_started_locally(cluster, arith, tmp_path):
    pool, _ = arith
    full, resumed = SignalStore(tmp_path / "full"), SignalStore(tmp_path / "resumed")
    sig = make_signal("text")
    run_signal(sig, pool, full, engine="local", shard_size=64, show_progress=False)

    # a local run that stopped after shards 0 and 2 (written exactly as the local engine writes them)
    key = sig.key(pool)
    plan = shard_plan(len(pool), 64)
    resumed.begin(key, len(pool), 64)
    for i, s, e in plan:
        if i in (0, 2):
            recs = pool.slice(s, e)
            write_shard(resumed, key, i, [r["id"] for r in recs], compute_example_shard(sig, recs), sig)
    kept = {p.name: p.stat().st_mtime_ns for p in resumed.path(key).glob("shard-0000[02].parquet")}
    assert not resumed.is_complete(key)

    run = run_signal(make_signal("text"), pool, resumed, engine="ray", shard_size=64, show_progress=False)
    assert (run.computed_shards, run.skipped_shards) == (3, 2)
    assert {p.name: p.stat().st_mtime_ns for p in resumed.path(key).glob("shard-0000[02].parquet")} == kept
    assert_same_signal(sig, pool, full, resumed)


def test_bad_actor_count_is_refused(cluster, arith, tmp_path):
    from thresher.engine.ray import run_shards_ray

    pool, _ = arith
    sig = make_signal("text")
    with pytest.raises(ValueError, match="ray_actors must be >= 1, got 0"):
        run_shards_ray(sig, pool, SignalStore(tmp_path), sig.key(pool), shard_plan(len(pool), 64), actors=0)


def test_oracle_runs_on_ray_equal_local_runs(cluster, arith, tmp_path):
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task = arith
    ids_a, ids_b = pool.ids[:120], pool.ids[100:260]
    train = TrainConfig.for_tier("micro", steps=20, batch_size=8)
    runs = {}
    for engine in ("local", "ray"):
        oracle = Oracle(task, pool, model="micro", train=train, engine=engine, cache_dir=tmp_path / engine, show_progress=False)
        runs[engine] = (oracle, oracle.score_many([ids_a, ids_b]))
    (lo, local), (ro, on_ray) = runs["local"], runs["ray"]
    for a, b in zip(local, on_ray, strict=True):
        assert not a.cached and not b.cached
        assert a.key == b.key
        assert (a.value, a.per_domain, a.correct, a.n_items) == (b.value, b.per_domain, b.correct, b.n_items)
        assert a.train_loss == b.train_loss and (a.n_examples, a.tokens) == (b.n_examples, b.tokens)
        assert a.n_items == len(task.dev) and len(a.correct) == len(task.dev)
        assert a.value == pytest.approx(sum(a.correct) / len(a.correct))
        # the first generated answers too, not just the scores
        assert lo._load(a.key, "dev")["outputs_head"] == ro._load(b.key, "dev")["outputs_head"]
        assert (tmp_path / "ray" / b.key / "model" / "config.json").exists()
    assert local[0].train_loss != local[1].train_loss  # two different subsets, two different runs


def test_train_free_chain_equal_on_both_engines(cluster, arith, tmp_path):
    """bench_million's chain at small size: every train-free signal, then selections read from
    each engine's store, give identical values and identical subsets."""
    from thresher.select.autoselection import RecipeSelector
    from thresher.select.base import Budget, SignalView, make_selector

    pool, task = arith
    local, on_ray = SignalStore(tmp_path / "local"), SignalStore(tmp_path / "ray")
    specs = [("text", {}), ("unigram_entropy", {}), ("reasoning_steps", {}), ("exact_dedup", {}), ("minhash", {}),
             ("embedding", {"model": "minilm"}), ("kmeans", {"embed_model": "minilm"}),
             ("knn_diversity", {"embed_model": "minilm"}), ("task_relevance", {"embed_model": "minilm", "task": "arith",
                                                                              "task_params": {"pool_size": 300, "dev_size": 40, "test_size": 40}})]
    for name, params in specs:
        run_signal(make_signal(name, **params), pool, local, engine="local", shard_size=128, show_progress=False)
        run_signal(make_signal(name, **params), pool, on_ray, engine="ray", shard_size=128, show_progress=False)
        assert_same_signal(make_signal(name, **params), pool, local, on_ray)
    assert len(set(read_signal(make_signal("minhash"), pool, local)["minhash_cluster"].tolist())) > 1

    budget = Budget.parse(0.2)
    picks = []
    for store in (local, on_ray):
        view = SignalView(pool, store)
        deita = make_selector("deita", quality="unigram_entropy", complexity="reasoning_steps", embed_model="minilm")
        dsir = make_selector("dsir")
        recipe = RecipeSelector(recipe=[{"exact_dedup": {}}, {"minhash_dedup": {}}, {"truncate": {"total": 40, "seed": 0}}],
                                signals={"scorer": "micro", "state": ["tokens"]})
        picks.append([deita.select(pool, view, budget, task=task, seed=0).ids, dsir.select(pool, view, budget, task=task, seed=0).ids,
                      recipe.select(pool, view, budget).ids])
    assert picks[0] == picks[1]
    assert [len(p) for p in picks[0]] == [60, 60, 40]
