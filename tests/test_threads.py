"""Threads: one decision (thresher.threads) from the cores available, the workers at once and
the user's --threads / THRESHER_THREADS, applied wherever thresher starts work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from thresher.errors import ConfigError
from thresher.threads import ENV, available_cores, resolve_threads, user_threads


@pytest.mark.parametrize("workers, user, cores, current, want", [
    (1, None, 2, None, 2),      # a 2-core box, nothing else said: both cores
    (2, None, 2, None, 1),      # two oracle workers share them
    (3, None, 8, None, 2),      # 8 // 3
    (4, None, 1, None, 1),      # never below one thread
    (1, None, 16, 4, 4),        # torch's own count (OMP_NUM_THREADS, physical cores) caps the affinity mask
    (1, None, 2, 8, 2),         # ... and the affinity mask caps torch's count (taskset, container CPU sets)
    (1, 1, 16, 16, 1),          # --threads 1 beside another heavy process
    (2, 6, 2, 2, 3),            # the user's budget, shared by the workers
    (4, 2, 8, 8, 1),            # a budget smaller than the workers: one each
    (1, 12, 2, 2, 12),          # the user's setting wins even over the cores seen
])
def test_resolve_threads_hand_cases(workers, user, cores, current, want):
    assert resolve_threads(workers, user=user, cores=cores, current=current) == want


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ValueError):
        resolve_threads(0, cores=2)
    with pytest.raises(ConfigError, match="threads"):
        resolve_threads(1, user=0)
    monkeypatch.setenv(ENV, "two")
    with pytest.raises(ConfigError, match=ENV):
        user_threads()
    monkeypatch.setenv(ENV, " 3 ")
    assert user_threads() == 3
    monkeypatch.delenv(ENV)
    assert user_threads() is None
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def test_parallel_oracle_workers_share_the_users_budget(arith_small, monkeypatch, tmp_path):
    """score_many gives each of w workers budget // w threads (the budget: THRESHER_THREADS, not every core)."""
    from thresher.oracle.core import Oracle

    pool, task, _ = arith_small
    oracle = Oracle(task, pool, model="micro", cache_dir=tmp_path, workers=2, show_progress=False)
    seen = []

    def fake_run(jobs, workers=1):
        seen.append((workers, [j.threads for j in jobs]))
        return [{"accuracy": 0.0, "per_domain": {}, "correct": [], "n_items": 0, "seconds": 0.0} for _ in jobs]

    monkeypatch.setattr(oracle, "_run", fake_run)
    monkeypatch.setenv(ENV, "6")
    oracle.score_many([pool.ids[:5], pool.ids[5:10]])
    assert seen == [(2, [3, 3])]


SPY = textwrap.dedent("""
    import json, os, sys
    import torch
    import thresher.models.evaluate as ev
    from threadpoolctl import threadpool_info

    seen = {}
    real = ev.evaluate

    def spy(*a, **k):  # inside the command, while it works
        seen["torch"] = torch.get_num_threads()
        seen["pools"] = sorted({p["num_threads"] for p in threadpool_info()})
        seen["env"] = os.environ.get("THRESHER_THREADS")
        return real(*a, **k)

    ev.evaluate = spy
    from thresher.cli import app

    app(sys.argv[1:], standalone_mode=False)
    print("SEEN " + json.dumps(seen))
""")


def test_threads_option_sets_torch_and_blas_inside_the_command(tmp_path):
    """`thresher eval ... --threads 1`: torch and every BLAS / OpenMP pool run one thread while it works."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    args = [sys.executable, "-c", SPY, "eval", "micro", "--task", "arith", "--limit", "2", "--threads", "1"]
    out = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.split("SEEN ", 1)[1])
    assert seen == {"torch": 1, "pools": [1], "env": "1"}


def test_threads_option_is_on_every_heavy_command():
    from typer.testing import CliRunner

    from thresher.cli import app

    for cmd in ("score", "select", "train", "eval", "bench", "demo"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "--threads" in res.output, cmd


def test_tokenizer_threads_enables_rust_parallelism_inside_the_block_only(monkeypatch):
    from thresher.threads import tokenizer_threads

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with tokenizer_threads(1) as n:
        assert n == 1 and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    with tokenizer_threads(2) as n:
        assert n == 2 and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with pytest.raises(RuntimeError):
        with tokenizer_threads(2):
            raise RuntimeError("boom")
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    with pytest.raises(ConfigError):
        with tokenizer_threads(0):
            pass


def test_token_counts_do_not_depend_on_tokenizer_threads():
    from thresher.models.load import load_tokenizer
    from thresher.threads import tokenizer_threads

    tok = load_tokenizer("small")
    texts = [f"Item {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 7) for i in range(300)]
    one = [len(t) for t in tok(texts, add_special_tokens=False)["input_ids"]]
    with tokenizer_threads(2):
        two = [len(t) for t in tok(texts, add_special_tokens=False)["input_ids"]]
    assert one == two and sum(one) > 3000
