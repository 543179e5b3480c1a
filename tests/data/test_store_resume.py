"""The signal store: shards, completion markers, and resume after SIGKILL with identical output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalKey, SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals.base import make_signal


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


# --------------------------------------------------------------------------- concurrent runs: nothing lost, nothing poisoned

_SLOW_SCORE = """
import sys, time
import thresher.engine.local as local
compute = local.compute_example_shard
def slow(signal, records):
    time.sleep({delay})
    return compute(signal, records)
local.compute_example_shard = slow
from thresher.cli import app
app(sys.argv[1:])
"""


def _slow_score(pool_file, store, shard_size, delay):
    """A real `thresher score` process for the cheap `text` signal, each shard slowed by `delay` s."""
    return [sys.executable, "-c", _SLOW_SCORE.format(delay=delay), "score", str(pool_file), "--signals", "text",
            "--model", "micro", "--store", str(store), "--shard-size", str(shard_size)]


def test_two_processes_with_different_shard_sizes_leave_one_complete_aligned_signal(tmp_path):
    pool = _pool(200)
    pool_file = pool.save(tmp_path / "pool.parquet")
    sig = make_signal("text", model="micro")
    key = sig.key(pool)
    ref = SignalStore(tmp_path / "ref")
    run_signal(sig, pool, ref, shard_size=7, show_progress=False)

    store = tmp_path / "store"
    # one thread: the shards stay in the process, where the slowed compute_example_shard runs them
    # (with more, the engine's forked shard workers would compute them unslowed)
    env = dict(os.environ, THRESHER_PROGRESS="0", THRESHER_THREADS="1")
    first = subprocess.Popen(_slow_score(pool_file, store, 5, 0.2), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and len(list(store.glob("*/*/shard-*.done"))) < 2:
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second could start"
    # the second run starts while the first is writing its shards, with another shard plan
    second = subprocess.Popen(_slow_score(pool_file, store, 16, 0.05), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "40 shards computed" in out1
    assert "cached" in out2  # it waited for the first run, then found the signal complete
    assert f"locked by another run (pid {first.pid})" in err2

    st = SignalStore(store)
    assert st.is_complete(key) and st.meta(key)["verified"] == "ids"
    d = st.path(key)
    assert sorted(p.name for p in d.glob("shard-*.parquet")) == [f"shard-{i:05d}.parquet" for i in range(40)]
    table = st.read_table(key)
    assert table.column("id").to_pylist() == pool.ids  # every pool id exactly once, in order
    assert table.to_pydict() == ref.read_table(key).to_pydict()
    got, want = read_signal(sig, pool, st), read_signal(sig, pool, ref)
    assert all(np.array_equal(got[c], want[c]) for c in sig.columns)


_HOLD_LOCK = """
import json, sys, time
from thresher.data.store import SignalKey, SignalStore
store = SignalStore(sys.argv[1])
key = SignalKey(**json.loads(sys.argv[2]))
with store.lock(key):
    print("locked", flush=True)
    time.sleep({hold})
"""


def test_a_locked_signal_waits_then_fails_naming_the_directory_and_the_holder(tmp_path):
    from thresher.errors import StoreError

    pool = _pool(20)
    sig = make_signal("text", model="micro")
    key = sig.key(pool)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK.format(hold=60), str(tmp_path), json.dumps(asdict(key))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = SignalStore(tmp_path, lock_timeout=0.5)
        with pytest.raises(StoreError, match=rf"{store.path(key)} is locked by another run \(pid {holder.pid}\)"):
            run_signal(sig, pool, store, shard_size=8, show_progress=False)
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            store.begin(key, 20, 8)  # nobody else may clear or write the directory meanwhile
        assert not store.is_complete(key)
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: the next run computes the signal
    run = run_signal(sig, pool, SignalStore(tmp_path, lock_timeout=0), shard_size=8, show_progress=False)
    assert run.computed_shards == 3


def test_finish_verifies_ids_and_unmarks_bad_shards(tmp_path):
    from thresher.errors import StoreError

    store = SignalStore(tmp_path)
    key = SignalKey("e" * 64, "x", 1)
    ids = [f"r{i}" for i in range(5)]
    store.begin(key, 5, 2)
    store.write_shard(key, 0, ids[:2], {"v": np.zeros(2)})
    store.write_shard(key, 1, ["r2", "r2"], {"v": np.zeros(2)})  # a shard of the wrong rows
    store.write_shard(key, 2, ids[4:], {"v": np.zeros(1)})
    with pytest.raises(StoreError, match=r"5 rows, 4 unique ids, 1 of the pool's 5 ids missing.*shards \[1\] were unmarked"):
        store.finish(key, 3, ids=ids)
    assert not store.is_complete(key) and store.done_shards(key) == {0, 2}
    store.write_shard(key, 1, ["r2", "r2"], {"v": np.zeros(2)})
    with pytest.raises(StoreError, match=r"shards \[1\]"):  # without the pool's ids: a repeated id is caught too
        store.finish(key, 3)
    store.write_shard(key, 1, ids[2:4], {"v": np.zeros(2)})
    store.finish(key, 3, ids=ids)
    assert store.read_table(key).column("id").to_pylist() == ids


def test_a_poisoned_complete_signal_is_refused_on_read_and_healed_by_a_rerun(tmp_path):
    from thresher.errors import StoreError

    pool = _pool(50)
    store = SignalStore(tmp_path)
    sig = make_signal("text", model="micro")
    key = sig.key(pool)
    run_signal(sig, pool, store, shard_size=16, show_progress=False)
    want = store.read_table(key).to_pydict()
    d = store.path(key)
    # what two interleaved runs used to leave: a shard of the other plan, and a COMPLETE written without checking
    store.write_shard(key, 1, pool.ids[10:20], {c: store.read_table(key).column(c).to_numpy()[10:20] for c in sig.columns})
    (d / "COMPLETE").write_text('{"n_shards": 4}')
    with pytest.raises(StoreError, match=rf"not aligned with pool .*delete {d} and rerun"):
        read_signal(sig, pool, store)
    run = run_signal(sig, pool, store, shard_size=16, show_progress=False)
    assert (run.computed_shards, run.skipped_shards) == (1, 3)
    assert store.meta(key)["verified"] == "ids"
    assert store.read_table(key).to_pydict() == want
