"""The signal store: shards, completion markers, and resume after SIGKILL with identical output."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.engine import read_signal, run_signal
from thresher.pool import Pool
from thresher.signals.base import make_signal
from thresher.store import SignalKey, SignalStore


def _pool(n=50):
    return Pool.from_records([{"instruction": f"q{i} " + "w " * (i % 7), "output": f"answer {i}"} for i in range(n)])


def test_shards_markers_and_complete(tmp_path):
    pool = _pool(50)
    store = SignalStore(tmp_path)
    sig = make_signal("text", model="micro")
    run = run_signal(sig, pool, store, shard_size=16, show_progress=False)
    assert run.computed_shards == 4 and run.skipped_shards == 0
    d = store.path(sig.key(pool))
    assert sorted(p.name for p in d.glob("shard-*.done")) == [f"shard-{i:05d}.done" for i in range(4)]
    assert (d / "COMPLETE").exists()
    cols = read_signal(sig, pool, store)
    assert cols["chars_answer"].tolist() == [len(f"answer {i}") for i in range(50)]
    # a second run computes nothing
    again = run_signal(sig, pool, store, shard_size=16, show_progress=False)
    assert again.computed_shards == 0


def test_resume_skips_done_shards_and_recomputes_partial_ones(tmp_path):
    pool = _pool(50)
    store = SignalStore(tmp_path)
    sig = make_signal("text", model="micro")
    key = sig.key(pool)
    run_signal(sig, pool, store, shard_size=16, show_progress=False)
    full = store.read_table(key)
    d = store.path(key)
    # simulate a run killed while writing shard 2: marker gone, a half-written tmp file left, no COMPLETE
    (d / "COMPLETE").unlink()
    (d / "shard-00002.done").unlink()
    (d / "shard-00002.parquet").write_bytes(b"garbage")
    (d / "shard-00003.parquet.tmp999").write_bytes(b"partial")
    run = run_signal(sig, pool, store, shard_size=16, show_progress=False)
    assert (run.computed_shards, run.skipped_shards) == (1, 3)
    assert store.read_table(key).equals(full)
    assert not list(d.glob("*.tmp*"))


def test_vectors_roundtrip_and_key_identity(tmp_path):
    store = SignalStore(tmp_path)
    key = SignalKey("f" * 64, "emb", 1, {"dim": 3}, "m")
    store.begin(key, 5, 3)
    m = np.arange(15, dtype=np.float32).reshape(5, 3)
    store.write_shard(key, 0, ["a", "b", "c"], {"norm": np.ones(3)}, m[:3])
    store.write_shard(key, 1, ["d", "e"], {"norm": np.ones(2)}, m[3:])
    store.finish(key, 2)
    ids, got = store.read_vectors(key)
    assert ids == list("abcde") and got.dtype == np.float32 and np.array_equal(got, m)
    assert SignalKey("f" * 64, "emb", 1, {"dim": 3}, "m") == key
    assert SignalKey("f" * 64, "emb", 1, {"dim": 4}, "m").digest != key.digest
    with pytest.raises(ValueError, match="2 vectors for 3 ids"):
        store.write_shard(key, 0, ["a", "b", "c"], {"norm": np.ones(3)}, m[:2])


def _score_cmd(pool_file, store, shard_size):
    return [sys.executable, "-m", "thresher.cli", "score", str(pool_file), "--signals", "lm", "--store", str(store),
            "--model", "micro", "--param", "warmup_examples=60", "--param", "warmup_steps=20", "--shard-size", str(shard_size)]


def test_sigkill_midrun_then_rerun_is_identical_to_uninterrupted(tmp_path, arith_small):
    full_pool, _, _ = arith_small
    pool = full_pool.subset(full_pool.ids[:200])
    pool_file = pool.save(tmp_path / "pool.parquet")
    env = dict(os.environ, THRESHER_PROGRESS="0")
    # warm the scorer once so both runs only do the sharded scoring
    ref_store = tmp_path / "ref"
    subprocess.run(_score_cmd(pool_file, ref_store, 5), check=True, env=env, capture_output=True)

    killed_store = tmp_path / "killed"
    proc = subprocess.Popen(_score_cmd(pool_file, killed_store, 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline:
        done = list(killed_store.glob("*/*/shard-*.done"))
        if len(done) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done_at_kill = len(list(killed_store.glob("*/*/shard-*.done")))
    assert 3 <= n_done_at_kill < 40, f"the kill did not land mid-run ({n_done_at_kill} of 40 shards done)"
    assert not list(killed_store.glob("*/*/COMPLETE"))

    out = subprocess.run(_score_cmd(pool_file, killed_store, 5), check=True, env=env, capture_output=True, text=True)
    assert "resumed" in out.stdout
    ref = sorted(Path(ref_store).glob("*/*/shard-*.parquet"))
    got = sorted(Path(killed_store).glob("*/*/shard-*.parquet"))
    assert [p.name for p in ref] == [p.name for p in got] and len(ref) == 40
    assert pq.read_table(ref[0]).num_rows == 5
    for a, b in zip(ref, got):
        assert pq.read_table(a).equals(pq.read_table(b)), a.name
    total_rows = sum(pq.read_table(p).num_rows for p in got)
    assert total_rows == len(pool)
