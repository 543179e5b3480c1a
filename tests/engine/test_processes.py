"""The local engine's worker processes: the same stored shards as the in-process loop."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine import processes
from thresher.engine.local import read_signal, run_signal
from thresher.signals.base import make_signal


def pool_of(n: int) -> Pool:
    words = ["alpha", "beta", "gamma", "delta", "Compute", "explain why", "42", "3.5", "don't", "café"]
    rows = [{"id": f"r{i}", "messages": [
        {"role": "user", "content": f"{words[i % 10]} {i} and {words[(i * 7) % 10]}?"},
        {"role": "assistant", "content": f"First, {words[(i * 3) % 10]} is {i * 2}.\nThen {words[i % 7]} = {i}.\n#### {i}"}],
        "source": "hand", "meta": {}} for i in range(n)]
    return Pool.from_records(rows)


def stored(store: SignalStore, sig, pool) -> list:
    d = store.path(sig.key(pool))
    return [pq.read_table(p).to_pylist() for p in sorted(d.glob("*.parquet"))]


@pytest.mark.parametrize("name,params", [("text", {"model": "small"}), ("unigram_entropy", {}), ("reasoning_steps", {}),
                                         ("exact_dedup", {}), ("bloom_heuristic", {})])
def test_worker_processes_store_what_the_loop_stores(tmp_path, monkeypatch, name, params):
    pool = pool_of(700)
    monkeypatch.setenv("THRESHER_THREADS", "2")
    sig = make_signal(name, **params)
    assert processes.shard_workers(sig, 7) == 2 and processes.shard_workers(sig, 1) == 1
    par, seq = SignalStore(tmp_path / "par"), SignalStore(tmp_path / "seq")
    run_signal(make_signal(name, **params), pool, par, shard_size=100, show_progress=False)
    monkeypatch.setattr(processes, "shard_workers", lambda signal, n: 1)
    run_signal(make_signal(name, **params), pool, seq, shard_size=100, show_progress=False)
    a, b = stored(par, sig, pool), stored(seq, sig, pool)
    assert len(a) == 7 and a == b
    cols = read_signal(sig, pool, par)
    assert len(next(iter(cols.values()))) == 700


def test_model_signals_and_transformer_encoders_keep_the_process(monkeypatch):
    monkeypatch.setenv("THRESHER_THREADS", "4")
    assert processes.shard_workers(make_signal("lm", model="micro"), 10) == 1
    assert processes.shard_workers(make_signal("embedding", model="minilm"), 10) == 1
    assert processes.shard_workers(make_signal("exact_dedup"), 10) == 4
    monkeypatch.setenv("THRESHER_THREADS", "1")
    assert processes.shard_workers(make_signal("text", model="small"), 10) == 1
