"""Decontamination: planted overlaps are found by each rule, a clean pool stays clean, and
``select`` / ``bench`` / the CLI leave out the test overlaps before selecting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from thresher.data.pool import Pool, load_pool
from thresher.decontam import (
    DecontaminationOffWarning,
    EvalIndex,
    decontaminate,
    exclude_test_overlap,
    gram_hashes,
    normalise_text,
)
from thresher.tasks.arith import ArithConfig, ArithTestbed
from thresher.tasks.base import TaskItem

ARITH = {"pool_size": 300, "dev_size": 40, "test_size": 60}


def rec(rid: str, user: str, answer: str = "Sure.") -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "source": "planted", "meta": {}}


def test_normalising_and_hashing():
    assert normalise_text("  What's 2+2?\n\tTell   ME!! ") == "what s 2 2 tell me"
    p = 0x9E3779B97F4A7C15
    v = np.array([5, 9, 11, 3, 7], dtype=np.uint64)

    def horner(seq):
        h = 0
        for x in seq:
            h = (h * p + int(x)) % 2**64
        return h

    assert [int(h) for h in gram_hashes(v, 3)] == [horner(v[i:i + 3]) for i in range(3)]
    assert len(gram_hashes(v, 6)) == 0


# --------------------------------------------------------------------------- real data: GSM8K items planted in Alpaca


@pytest.fixture(scope="module")
def gsm8k_planted(shared_data):
    """Alpaca-5000 (clean against GSM8K) plus planted copies of GSM8K test and dev items."""
    from thresher.tasks import get_task

    alpaca, _ = load_pool(shared_data / "alpaca" / "alpaca_5000.json", on_error="skip")
    task = get_task("gsm8k", path=shared_data / "gsm8k")
    test = task._sealed_test()  # the test plants test text on purpose
    long_q = next(it for it in test if len(it.question.split()) >= 45)
    words = long_q.question.split()
    planted = {
        # an exact copy modulo case and whitespace
        "p-exact": (rec("p-exact", "  " + test[3].question.upper().replace(" ", "  \n ") + "  "), test[3].id),
        # 13 words from the middle of a question, inside a longer instruction
        "p-13gram": (rec("p-13gram", "Consider this: " + " ".join(test[10].question.split()[2:16]) + ". Then write a poem "
                         "about autumn leaves."), test[10].id),
        # an answer that contains a test item's worked solution
        "p-answer": (rec("p-answer", "Tell me something interesting.", "Here is one.\n" + test[20].target), test[20].id),
        # a reworded near duplicate: the last word changed and the punctuation lost
        "p-near": (rec("p-near", " ".join(words[:-1]).replace(",", "").replace(".", "") + " exactly?"), long_q.id),
    }
    dev_item = task.dev[0]
    records = list(alpaca) + [r for r, _ in planted.values()] + [rec("p-dev", dev_item.question.lower())]
    return Pool(records, name="alpaca-planted"), task, {k: item for k, (_, item) in planted.items()}, dev_item.id


def test_a_clean_pool_has_no_overlap(shared_data):
    from thresher.tasks import get_task

    alpaca, _ = load_pool(shared_data / "alpaca" / "alpaca_5000.json", on_error="skip")
    report = decontaminate(alpaca, get_task("gsm8k", path=shared_data / "gsm8k"))
    for split in ("test", "dev"):
        assert report.splits[split].contaminated == 0 and report.splits[split].matches == {}, split
    assert report.splits["test"].items == 1319 and report.pool["size"] == len(alpaca)


def test_planted_gsm8k_items_are_found_by_their_rule(gsm8k_planted):
    pool, task, planted, dev_id = gsm8k_planted
    report = decontaminate(pool, task, examples=10)
    test, dev = report.splits["test"], report.splits["dev"]
    assert set(test.ids) == set(planted)  # every plant, and nothing of Alpaca
    for pid, item in planted.items():
        assert item in {i for ids in test.matches[pid].values() for i in ids}, pid
    assert "exact" in test.matches["p-exact"]
    assert set(test.matches["p-13gram"]) == {"ngram"}  # a 13-gram inside a longer text: not an exact copy
    assert "ngram" in test.matches["p-answer"]  # (and minhash: the answer is mostly the solution)
    assert "minhash" in test.matches["p-near"]
    assert test.by_side == {"user": 3, "assistant": 1} and test.items_hit == 4
    assert test.by_rule["exact"] == 1 and test.by_rule["ngram"] >= 3 and test.by_rule["minhash"] >= 1
    # examples quote the pool side: the answer plant's gram comes from the planted answer
    ex = {e["pool_id"]: e for e in test.examples}
    answer = normalise_text(pool.get("p-answer")["messages"][1]["content"])
    assert ex["p-answer"]["side"] == "assistant" and ex["p-answer"]["gram"] in answer
    # the dev plant is a dev overlap only
    assert dev.ids == ["p-dev"] and dev.matches["p-dev"]["exact"] == [dev_id]
    # the report is JSON as it is
    d = json.loads(json.dumps(report.to_dict()))
    assert d["splits"]["test"]["matches"]["p-exact"]["exact"] == [planted["p-exact"]]


def test_minhash_alone_finds_the_reworded_copy(gsm8k_planted):
    pool, task, planted, _ = gsm8k_planted
    sub = pool.subset(["p-near", "p-13gram"] + pool.ids[:500])
    only = decontaminate(sub, task, rules=("minhash",), splits=("test",))
    assert only.splits["test"].ids == ["p-near"]
    assert only.splits["test"].matches["p-near"] == {"minhash": [planted["p-near"]]}
    assert only.splits["test"].examples[0]["jaccard"] >= 0.8
    # with an n longer than the question, the n-gram rule needs the whole question: the reword escapes it
    long_n = decontaminate(sub.subset(["p-near"]), task, rules=("exact", "ngram"), n=200, splits=("test",))
    assert long_n.splits["test"].contaminated == 0


def datasketch_near_duplicates(ix: EvalIndex, texts: list[str]) -> list[list[tuple[int, float]]]:
    """The minhash rule as it was written on datasketch: index the eval texts' MinHashes in a
    ``MinHashLSH``, query each text, keep candidates with >= threshold * num_perm equal values."""
    from datasketch import MinHash, MinHashLSH

    from thresher.decontam import text_words
    from thresher.signals.dedup import _lsh_index, word_shingles

    evals = []  # (item, text): each question, and each solution of >= n words (EvalIndex's texts)
    for k, (_, it) in enumerate(ix.items):
        evals.append((k, " ".join(text_words(it.question))))
        if len(text_words(it.target)) >= ix.n:
            evals.append((k, " ".join(text_words(it.target))))
    lsh = _lsh_index(MinHashLSH, ix.threshold, ix.num_perm)
    sketches = {}
    for j, (_, t) in enumerate(evals):
        if len(t.split()) >= ix.shingle:
            sketches[j] = MinHash(num_perm=ix.num_perm, seed=ix.seed)
            sketches[j].update_batch(word_shingles(t, ix.shingle))
            lsh.insert(j, sketches[j])
    out = []
    for t in texts:
        m = MinHash(num_perm=ix.num_perm, seed=ix.seed)
        m.update_batch(word_shingles(t, ix.shingle))
        hits: dict[int, float] = {}
        for j in ([] if m.is_empty() else lsh.query(m)):
            same = int(np.count_nonzero(sketches[j].hashvalues == m.hashvalues))
            if same >= ix.threshold * ix.num_perm:
                k = evals[j][0]
                hits[k] = max(hits.get(k, 0.0), same / ix.num_perm)
        out.append(sorted(hits.items()))
    return out


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.99])
def test_minhash_rule_finds_what_the_datasketch_index_finds(threshold):
    pytest.importorskip("datasketch")
    rng = np.random.default_rng(5)
    vocab = [f"v{i}" for i in range(300)]
    items = []
    for k in range(40):
        q = " ".join(rng.choice(vocab, int(rng.integers(8, 60))))
        target = " ".join(rng.choice(vocab, 30)) if k % 4 == 0 else ""
        items.append(("test", TaskItem(id=f"t{k}", question=q, answer="1", target=target)))
    queries = []
    for k, (_, it) in enumerate(items):
        w = it.question.split()
        for changed in (0, 1, 2, 4):  # words replaced near the end: Jaccard falls with each
            queries.append(" ".join(w[:len(w) - changed] + ["new"] * changed).upper())
        if it.target:
            queries.append(it.target + " and that is all")
    queries += ["", "?!", "v1 v2", " ".join(rng.choice(vocab, 40))]
    ix = EvalIndex(items, rules=("minhash",), threshold=threshold)
    got = ix.near_duplicates(queries)
    assert got == datasketch_near_duplicates(ix, queries)
    found = sum(bool(g) for g in got)
    assert found == {0.6: 160, 0.8: 126, 0.99: 40}[threshold]  # the 40 case-changed copies, more as it falls


# --------------------------------------------------------------------------- arith: short questions


def arith_with_plants(**config):
    """An arith testbed pool (clean at these sizes) plus three test plants and one dev plant."""
    pool, task, _labels = ArithTestbed(ArithConfig(**(config or ARITH))).build()
    test = task._sealed_test()
    plants = [
        rec("plant-exact", test[0].question.upper()),
        # shorter than 13 words: the whole question is the gram, found inside a longer text
        rec("plant-inside", "Solve the next one. " + test[1].question + " Show your work step by step."),
        rec("plant-answer", "Give me a word problem about counting.", "Here: " + test[2].question),
        rec("plant-dev", "please solve: " + task.dev[0].question),
    ]
    return Pool(list(pool) + plants, name="arith-planted"), task, [r["id"] for r in plants[:3]], pool


def test_short_questions_are_one_gram_and_the_clean_testbed_stays_clean():
    full, task, test_plants, clean = arith_with_plants()
    assert decontaminate(clean, task).splits["test"].contaminated == 0
    report = decontaminate(full, task)
    test = report.splits["test"]
    assert test.ids == test_plants
    assert set(test.matches["plant-inside"]) == {"ngram"} and test.matches["plant-exact"].keys() >= {"exact", "ngram"}
    assert test.by_side["assistant"] == 1
    assert report.splits["dev"].ids == ["plant-dev"]
    # below min_words a question is left to the exact rule
    assert "plant-inside" not in decontaminate(full, task, min_words=50).splits["test"].ids


# --------------------------------------------------------------------------- select


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    from thresher.data.store import SignalStore

    full, task, test_plants, _ = arith_with_plants()
    return full, task, test_plants, SignalStore(tmp_path_factory.mktemp("store"))


def test_select_excludes_test_overlap_before_selecting(planted_store, tmp_path):
    from thresher import api
    from thresher.select.base import Selection

    pool, task, test_plants, store = planted_store
    out = tmp_path / "all.jsonl"
    sel = api.select(pool, "random", 1.0, store=store.root, task=task, out=out, show_progress=False)
    assert len(sel) == len(pool) - 3 and not set(test_plants) & set(sel.ids) and "plant-dev" in sel.ids
    assert sel.n_requested == len(pool) - 3 and sel.pool_fingerprint == pool.fingerprint
    meta = json.loads(out.with_name("all.meta.json").read_text())
    d = meta["decontamination"]
    assert d["test"]["excluded"] == 3 and d["test"]["ids"] == test_plants and d["dev"] == {
        "overlap": 1, "ids": ["plant-dev"], "by_rule": d["dev"]["by_rule"]}
    assert d["pool_size"] == len(pool) and d["selected_from"] == len(pool) - 3
    assert Selection.load(out).decontamination == d

    # a signal-reading method sees the signals of the remaining examples, aligned
    top = api.select(pool, "topk", 20, store=store.root, task=task, compute_missing=True, show_progress=False,
                     signal="chars_user", scorer="micro")
    chars = {r["id"]: len(r["messages"][0]["content"]) for r in pool}
    ranked = sorted((i for i in pool.ids if i not in test_plants), key=lambda i: -chars[i])
    assert not set(test_plants) & set(top.ids)
    assert sorted(chars[i] for i in top.ids) == sorted(chars[i] for i in ranked[:20])

    # off: loudly, and the plants can be selected
    with pytest.warns(DecontaminationOffWarning, match="decontamination is off"):
        off = api.select(pool, "random", 1.0, store=store.root, task=task, decontaminate=False, show_progress=False)
    assert len(off) == len(pool) and off.decontamination == {"off": True, "reason": "--no-decontaminate"}
    # no task: nothing to compare with, nothing recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecontaminationOffWarning)
        assert api.select(pool, "random", 1.0, store=store.root, show_progress=False).decontamination is None


def test_exclude_test_overlap_returns_the_pool_itself_when_clean():
    pool, task, _ = ArithTestbed(ArithConfig(**ARITH)).build()
    view, _report, meta = exclude_test_overlap(pool, task)
    assert view is pool and meta["test"] == {"excluded": 0, "ids": [], "by_rule": {"exact": 0, "ngram": 0, "minhash": 0}}
    dev_only, _, meta = exclude_test_overlap(pool, task.dev_view())
    assert dev_only is pool and "no test split" in meta["test"]["note"]


# --------------------------------------------------------------------------- bench


def test_bench_rows_state_their_contamination(tmp_path):
    from rich.console import Console

    from thresher.bench.config import BenchConfig
    from thresher.bench.run import _decontaminated, run_bench
    from thresher.data.store import SignalStore
    from thresher.select.base import SignalView

    sizes = {"pool_size": 120, "dev_size": 12, "test_size": 16}
    full, task, test_plants, _ = arith_with_plants(**sizes)
    full.save(tmp_path / "pool.jsonl")
    cfg = {"name": "decon", "pool": {"path": str(tmp_path / "pool.jsonl")},
           "task": {"name": "arith", "params": {"dev_size": 12, "test_size": 16}},
           "model": "micro", "train": {"steps": 2, "batch_size": 8}, "budgets": [1.0], "seeds": [0], "methods": ["full"]}
    rows = run_bench(BenchConfig.from_dict(cfg), tmp_path / "run", show_progress=False)
    assert rows[0]["decontamination"] == {"test": {"excluded": 3}, "dev": {"overlap": 1}}
    assert rows[0]["n_selected"] == len(full) - 3
    chosen = [json.loads(line)["id"] for line in (tmp_path / "run" / "selections" / "full__b1.0__s0.jsonl").open()]
    assert len(chosen) == len(full) - 3 and not set(test_plants) & set(chosen)
    report = json.loads((tmp_path / "run" / "decontamination.json").read_text())
    assert sorted(report["splits"]["test"]["matches"]) == sorted(test_plants)
    assert "decontamination: 3 pool examples overlapping test excluded" in (tmp_path / "run" / "table.md").read_text()

    # off (`decontaminate: false`, or `thresher bench --no-decontaminate`): the whole pool, and a warning line
    off = BenchConfig.from_dict({**cfg, "decontaminate": False})
    console = Console(record=True, width=200)
    pool, _view, meta = _decontaminated(full, task, SignalView(full, SignalStore(tmp_path / "st")), off, tmp_path, console)
    assert pool is full and meta["off"] and "warning: decontamination is off" in console.export_text()
    with pytest.raises(ValueError, match="decontaminate"):
        BenchConfig.from_dict({**cfg, "decontaminate": "no"})


# --------------------------------------------------------------------------- the command line, in a subprocess


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "THRESHER_PROGRESS": "0"}
    env.pop("THRESHER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "thresher.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, check=False)


def test_cli_decontaminate_and_select(tmp_path):
    # `--task arith` is the testbed task at its default sizes (dev 200, test 400): plant from that one
    full, _, test_plants, _ = arith_with_plants(pool_size=200)
    pool_path = full.save(tmp_path / "pool.jsonl")
    res = cli("decontaminate", pool_path, "--task", "arith", "--n", "13", "--out", tmp_path / "report.json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    test, dev = report["splits"]["test"], report["splits"]["dev"]
    assert (test["contaminated"], test["items"], dev["contaminated"], dev["items"]) == (3, 400, 1, 200)
    assert sorted(test["matches"]) == sorted(test_plants) and list(dev["matches"]) == ["plant-dev"]
    assert test["by_side"] == {"user": 2, "assistant": 1} and report["params"]["n"] == 13
    assert "test (400 items): 3 pool examples overlap 3 items" in res.stdout and "plant-inside" in res.stdout

    base = ["select", pool_path, "--method", "random", "--budget", "1.0", "--task", "arith", "--store", tmp_path / "st"]
    res = cli(*base, "--out", tmp_path / "sel.jsonl")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "decontamination: 3 pool examples that overlap the arith test split excluded" in res.stdout
    meta = json.loads((tmp_path / "sel.meta.json").read_text())
    assert meta["decontamination"]["test"]["excluded"] == 3 and meta["decontamination"]["dev"]["overlap"] == 1
    assert meta["n_selected"] == len(full) - 3 and not set(test_plants) & set(meta["ids"])

    res = cli(*base, "--out", tmp_path / "off.jsonl", "--no-decontaminate")
    assert res.returncode == 0, res.stdout + res.stderr
    warned = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(warned) == 1 and warned[0].startswith("warning: --no-decontaminate"), res.stderr
    assert json.loads((tmp_path / "off.meta.json").read_text())["n_selected"] == len(full)
