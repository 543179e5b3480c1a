"""The gsm8k-mix real-data testbed: labels, rates, defects, no dev leaks, determinism, CLI and bench wiring."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from thresher.data.pool import load_pool, read_jsonl
from thresher.errors import ConfigError
from thresher.tasks import get_task, gsm8k_task
from thresher.tasks.arith import defect_counts as arith_defect_counts
from thresher.tasks.arith import read_defect_labels as arith_read_defect_labels
from thresher.tasks.base import extract_gsm8k
from thresher.tasks.gsm8k import gsm8k_pool
from thresher.tasks.gsm8k_mix import (
    DEFECTS,
    GSM8KMixConfig,
    GSM8KMixTestbed,
    defect_counts,
    make_wrong_answer,
    near_duplicate,
    read_defect_labels,
    truncate_solution,
)


@pytest.fixture(scope="session")
def data_dir(shared_data) -> str:
    return str(shared_data)


@pytest.fixture(scope="session")
def mix(data_dir, tmp_path_factory):
    """The default testbed (4000 examples), written to disk: (bed, pool, task, labels, side rows by id, out dir)."""
    out = tmp_path_factory.mktemp("gsm8k-mix")
    bed = GSM8KMixTestbed(data_dir=data_dir)
    pool, task, labels = bed.write(out)
    side = {r["id"]: r for r in read_jsonl(out / "defects.jsonl")}
    return bed, pool, task, labels, side, out


@pytest.fixture(scope="session")
def originals(data_dir):
    """GSM8K train records (outside the default dev split) by id."""
    return {r["id"]: r for r in gsm8k_pool(data_dir)}


def _user(rec):
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def _assistant(rec):
    return [m["content"] for m in rec["messages"] if m["role"] == "assistant"][-1]


def test_default_counts_match_rates(mix):
    bed, pool, _, labels, _, _ = mix
    cfg = bed.config
    assert len(pool) == cfg.pool_size == 4000
    expected = {d: round(getattr(cfg, d) * 4000) for d in DEFECTS}
    expected["clean"] = 4000 - sum(expected.values())
    assert Counter(labels.values()) == expected
    assert expected["clean"] == 2400 and expected["wrong_answer"] == 480 and expected["off_task"] == 440
    assert defect_counts(pool.ids, labels) == {"clean": 2400, **{d: expected[d] for d in DEFECTS}}
    assert list(defect_counts(pool.ids, labels)) == ["clean", *DEFECTS]


def test_custom_rates_and_rounding(data_dir):
    cfg = GSM8KMixConfig(pool_size=333, seed=3, data_dir=data_dir, wrong_answer=0.3, truncated=0.01, no_reasoning=0.0,
                         off_task=0.2, sharegpt_share=0.5)
    _, _, labels = GSM8KMixTestbed(cfg).build()
    got = Counter(labels.values())
    for d in DEFECTS:
        assert got.get(d, 0) == round(getattr(cfg, d) * 333), d
    assert sum(got.values()) == 333 and "no_reasoning" not in got
    assert cfg.counts()["clean"] == got["clean"]


def test_schema_ids_sources_and_files(mix):
    _, pool, _, labels, side, out = mix
    ids = pool.ids
    assert len(set(ids)) == len(ids) == len(labels) and set(ids) == set(side)
    assert all(i.startswith("gsm8k-mix-0-") for i in ids)
    for rec in pool:
        assert set(rec) == {"id", "messages", "source", "meta"} and rec["meta"] == {}
        assert rec["source"] in ("gsm8k", "alpaca", "sharegpt")
        assert _user(rec).strip() and _assistant(rec).strip()
    # the file on disk is the same pool; labels and provenance live only in the side file
    disk, report = load_pool(out / "pool.jsonl")
    assert report.rows_rejected == 0 and disk.fingerprint == pool.fingerprint and list(disk) == list(pool)
    text = (out / "pool.jsonl").read_text()
    assert '"defect"' not in text and "gsm8k-train-" not in text
    assert read_defect_labels(out / "defects.jsonl") == labels
    assert arith_read_defect_labels(out / "defects.jsonl") == labels  # the shared reader


def test_deterministic_and_seeded(data_dir, tmp_path):
    a = GSM8KMixTestbed(pool_size=500, seed=4, data_dir=data_dir).write(tmp_path / "a")
    b = GSM8KMixTestbed(GSM8KMixConfig(pool_size=500, seed=4, data_dir=data_dir)).write(tmp_path / "b")
    for name in ("pool.jsonl", "defects.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a[0].fingerprint == b[0].fingerprint and a[2] == b[2]
    c_pool, c_task, _ = GSM8KMixTestbed(pool_size=500, seed=5, data_dir=data_dir).build()
    assert c_pool.fingerprint != a[0].fingerprint
    assert {_user(r) for r in c_pool} != {_user(r) for r in a[0]}
    assert c_task.fingerprint() != a[1].fingerprint()  # the seed also draws the dev split


def test_task_is_gsm8k_and_no_dev_problem_leaks(mix, data_dir):
    bed, pool, task, _, side, _ = mix
    ref = gsm8k_task(data_dir, dev_size=200, seed=0)
    assert task.name == "gsm8k" and task.extractor == "gsm8k"
    assert task.dev == ref.dev and task.fingerprint() == ref.fingerprint()
    dev_q = {it.question for it in task.dev}
    dev_ids = {it.id for it in task.dev}
    assert not dev_q & {_user(r) for r in pool}
    assert not dev_ids & {s["origin"] for s in side.values()}
    # the registered task and the bench's task spec give the same task
    assert get_task("gsm8k-mix", data_dir=data_dir).dev == task.dev
    assert bed.config.task_params() == {"dev_size": 200, "seed": 0, "path": data_dir}


def test_wrong_answers_are_wrong_and_clean_ones_right(mix, originals):
    _, pool, _, labels, side, _ = mix
    for rec in pool:
        s, ans = side[rec["id"]], _assistant(rec)
        label = labels[rec["id"]]
        if label in ("clean", "exact_dup", "near_dup"):
            assert ans.rstrip().endswith(f"#### {s['gold']}") and extract_gsm8k(ans) == s["gold"], rec["id"]
        elif label == "wrong_answer":
            got = extract_gsm8k(ans)
            assert got is not None and got != s["gold"] and got == s["detail"], rec["id"]
            orig = originals[s["origin"]]
            assert _user(rec) == _user(orig)
            # fluent: the same lines as the original except where the number changed
            a_lines, o_lines = ans.split("\n"), _assistant(orig).split("\n")
            assert len(a_lines) == len(o_lines) and sum(x != y for x, y in zip(a_lines, o_lines)) <= 2
        elif label == "truncated":
            orig_body = _assistant(originals[s["origin"]]).rpartition("####")[0]
            assert "####" not in ans and orig_body.startswith(ans) and len(ans) < len(orig_body.rstrip()), rec["id"]
        elif label == "no_reasoning":
            assert ans == f"#### {s['gold']}"
        elif label == "off_format":
            assert "####" not in ans and extract_gsm8k(ans) == s["gold"] and ans.endswith(s["detail"])


def test_duplicates_copy_clean_pool_examples(mix):
    _, pool, _, labels, side, _ = mix
    n_edits = Counter()
    for rec in pool:
        label = labels[rec["id"]]
        if label not in ("exact_dup", "near_dup"):
            continue
        src = pool.get(side[rec["id"]]["dup_of"])
        assert labels[src["id"]] == "clean" and src["id"] != rec["id"]
        if label == "exact_dup":
            assert rec["messages"] == src["messages"]
        else:
            assert rec["messages"] != src["messages"] and _user(rec) != _user(src)
            assert extract_gsm8k(_assistant(rec)) == extract_gsm8k(_assistant(src))
            n_edits.update(side[rec["id"]]["detail"].split("+"))
    assert {"name", "number", "synonym", "whitespace"} <= set(n_edits)


def test_off_task_rows_come_from_alpaca_and_sharegpt(mix):
    _, pool, _, labels, side, _ = mix
    by_source = Counter(r["source"] for r in pool if labels[r["id"]] == "off_task")
    assert set(by_source) == {"alpaca", "sharegpt"} and by_source["sharegpt"] == round(440 * 0.2)
    for rec in pool:
        assert (labels[rec["id"]] == "off_task") == (rec["source"] != "gsm8k")
        assert side[rec["id"]]["origin"].startswith(rec["source"])
    assert any(len(r["messages"]) > 2 for r in pool if r["source"] == "sharegpt")  # multi-turn kept


def test_defect_makers():
    rng = random.Random(0)
    sol = "He pays 2 x $1,000 = $2,000.00 for rent.\nSo he has $2,000.00 in total.\n#### 2000"
    for _ in range(30):
        wrong, w = make_wrong_answer(sol, "2000", rng)
        assert w != "2000" and wrong.endswith(f"#### {w}") and extract_gsm8k(wrong) == w
        assert wrong.startswith("He pays 2 x $1,000 = $2,000.00 for rent.\nSo he has $")
        assert wrong.split("\n")[1].endswith(".00 in total.")
    wrong, w = make_wrong_answer("3+4 = 7\n#### 7", "7", random.Random(1))
    assert wrong == f"3+4 = {w}\n#### {w}" and int(w) >= 0
    # truncation: at a line or sentence boundary, never the final answer
    sol = "First step. Second step.\nThird step.\n#### 5"
    cuts = {truncate_solution(sol, random.Random(s)) for s in range(40)}
    assert cuts == {"First step.", "First step. Second step."}
    q = "Mary bought 3 apples for $2 each at the store. How many apples does Mary have?"
    for s in range(20):
        q2, sol2, edits = near_duplicate(q, "Mary has 3 apples.\n#### 3", random.Random(s))
        assert q2 != q and sol2.endswith("#### 3") and edits
        if "name" in edits:
            assert "Mary" not in q2 and "Mary" not in sol2


@pytest.mark.parametrize("kw, match", [
    ({"wrong_answer": 0.5, "off_task": 0.5}, "sum to"),
    ({"wrong_answer": 0.9}, "must sum to less than 1"),
    ({"truncated": -0.1}, r"truncated=-0.1 must be in \[0, 1\)"),
    ({"near_dup": 1.0}, "near_dup"),
    ({"sharegpt_share": 1.5}, "sharegpt_share"),
    ({"pool_size": 0}, "pool_size"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"test_size": 0}, "test_size"),
])
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        GSM8KMixConfig(**kw)


def test_testbed_errors_are_config_errors(data_dir):
    with pytest.raises(ConfigError, match="unknown gsm8k-mix setting"):
        GSM8KMixTestbed(pool_sise=10)
    with pytest.raises(ConfigError, match="not both"):
        GSM8KMixTestbed(GSM8KMixConfig(), seed=1)
    with pytest.raises(ConfigError, match="dev_size"):
        GSM8KMixTestbed(dev_size=100_000, data_dir=data_dir).build()
    with pytest.raises(ConfigError, match="clean"):  # rounding leaves nothing for the duplicates to copy
        GSM8KMixTestbed(pool_size=2, wrong_answer=0.49, exact_dup=0.49, data_dir=data_dir).build()
    with pytest.raises(ConfigError, match="distinct GSM8K problems"):
        GSM8KMixTestbed(pool_size=20_000, data_dir=data_dir).build()


def test_defect_counts_are_shared_with_arith(mix):
    _, pool, _, labels, _, _ = mix
    kept = pool.ids[:1000]
    ours, theirs = defect_counts(kept, labels), arith_defect_counts(kept, labels)
    assert sum(ours.values()) == 1000
    for k, v in ours.items():  # arith's counter keeps its own keys and adds the labels it does not know
        assert theirs[k] == v
    assert theirs["trivial"] == 0


def test_bench_config_builds_the_testbed(data_dir):
    from thresher.bench.config import BenchConfig, build_pool_and_task

    cfg = BenchConfig.from_dict({"pool": {"gsm8k-mix": {"pool_size": 200, "data_dir": data_dir}}, "methods": ["random"],
                                 "budgets": [0.5], "seeds": [0]})
    pool, task, labels = build_pool_and_task(cfg)
    assert len(pool) == 200 and task.name == "gsm8k" and set(labels) == set(pool.ids)
    name, params = cfg.task_spec()
    assert name == "gsm8k-mix" and get_task(name, **params).dev == task.dev


def test_cli_make_pool_writes_pool_and_labels(data_dir, tmp_path):
    out = tmp_path / "gm"
    env = dict(os.environ, THRESHER_SHARED_DATA=data_dir)
    res = subprocess.run([sys.executable, "-m", "thresher.cli", "make-pool", "gsm8k-mix", "--out", str(out),
                          "--pool-size", "300", "--seed", "2"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "300 examples" in res.stdout
    rows = [json.loads(ln) for ln in (out / "pool.jsonl").read_text().splitlines()]
    labels = read_defect_labels(out / "defects.jsonl")
    assert len(rows) == 300 and [r["id"] for r in rows] == list(labels)
    _, _, expected = GSM8KMixTestbed(pool_size=300, seed=2, data_dir=data_dir).build()
    assert labels == expected
    bad = subprocess.run([sys.executable, "-m", "thresher.cli", "make-pool", "gsm8k-mix", "--out", str(tmp_path / "x"),
                          "-p", "wrong_answer=0.95"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and "sum to" in bad.stderr and not (tmp_path / "x").exists()
