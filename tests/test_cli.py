"""The command line: --help on every command, named errors, and the select/score/train/eval round trip."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from thresher.cli import app

runner = CliRunner()
COMMANDS = ["load", "score", "signals", "select", "methods", "train", "eval", "demo", "make-arith", "bench", "report",
            "serve", "thtb-guide", "recipe", "recipe run"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    res = runner.invoke(app, [*cmd.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_load_bad_line_is_named_and_skip_writes_rejects(tmp_path):
    f = tmp_path / "pool.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n{"instruction": "d", "output": "e"}\n')
    res = runner.invoke(app, ["load", str(f)])
    assert res.exit_code == 2
    assert "pool.jsonl:2" in res.output and "'output'" in res.output
    rej = tmp_path / "rej.jsonl"
    res = runner.invoke(app, ["load", str(f), "--on-error", "skip", "--rejects", str(rej), "--out", str(tmp_path / "p.parquet")])
    assert res.exit_code == 0, res.output
    assert "3 rows read, 2 kept, 1 rejected" in res.output
    r = json.loads(rej.read_text())
    assert (r["line"], r["field"]) == (2, "output")
    assert (tmp_path / "p.parquet").exists()


def test_signals_and_methods_list():
    res = runner.invoke(app, ["signals"])
    assert res.exit_code == 0 and "ifd" in res.output and "lm" in res.output
    res = runner.invoke(app, ["methods"])
    assert res.exit_code == 0 and "random" in res.output and "topk" in res.output


def test_make_arith_score_select_train_eval(tmp_path):
    data = tmp_path / "arith"
    res = runner.invoke(app, ["make-arith", "--out", str(data), "--pool-size", "200"])
    assert res.exit_code == 0, res.output
    pool = data / "pool.jsonl"
    store = tmp_path / "store"
    res = runner.invoke(app, ["score", str(pool), "--signals", "text", "--store", str(store)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "sel.jsonl"
    res = runner.invoke(app, ["select", str(pool), "--method", "topk", "--budget", "0.1", "--out", str(out), "--store", str(store),
                              "--param", "signal=tokens_answer", "--param", "direction=high"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "sel.meta.json").read_text())
    assert meta["n_selected"] == 20 and meta["params"]["signal"] == "tokens_answer" and meta["budget"] == "0.1"
    # selecting on a signal that was never scored names the command to run
    res = runner.invoke(app, ["select", str(pool), "--method", "ifd", "--budget", "0.1", "--out", str(tmp_path / "x.jsonl"),
                              "--store", str(store)])
    assert res.exit_code == 2 and "thresher score POOL --signals lm" in res.output
    model_dir = tmp_path / "model"
    res = runner.invoke(app, ["train", str(out), "--out", str(model_dir), "--steps", "5", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert (model_dir / "config.json").exists()
    res = runner.invoke(app, ["eval", str(model_dir), "--task", "arith", "--limit", "12"])
    assert res.exit_code == 0, res.output
    assert "arith dev: accuracy" in res.output and "on 12 items" in res.output


def test_recipe_run_and_thtb_guide_on_an_arith_pool(tmp_path):
    data = tmp_path / "arith"
    assert runner.invoke(app, ["make-arith", "--out", str(data), "--pool-size", "200"]).exit_code == 0
    pool, store = data / "pool.jsonl", tmp_path / "store"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nsignals: {state: [tokens]}\nrecipe:\n  - exact_dedup: {}\n"
                      "  - ngram_entropy_filter: {fraction: 0.5}\n")
    out = tmp_path / "sub.jsonl"
    res = runner.invoke(app, ["recipe", "run", str(recipe), "--pool", str(pool), "--out", str(out), "--store", str(store)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    state = json.loads((tmp_path / "sub.state.json").read_text())
    # the arith pool has 5% exact duplicates (10 of 200): dedup leaves 190, the filter keeps half
    assert len(rows) == state["state"]["n_selected"] == 95
    assert state["state"]["retain_ratio"] == 95 / 200 and 0 < state["state"]["token_ratio"] < 1
    assert f"95 examples (retain ratio {95 / 200:.3f})" in res.output
    # a bad step is named with its line
    recipe.write_text("recipe:\n  - exact_dedup: {}\n  - no_such_op: {}\n")
    res = runner.invoke(app, ["recipe", "run", str(recipe), "--pool", str(pool), "--out", str(out), "--store", str(store)])
    assert res.exit_code == 2 and "no_such_op" in res.output

    prof = tmp_path / "guide.json"
    res = runner.invoke(app, ["thtb-guide", str(pool), "--store", str(store), "--json", str(prof)])
    assert res.exit_code == 0, res.output
    g = json.loads(prof.read_text())
    assert g["n"] == 200 and sum(d["count"] for d in g["bloom"]["levels"].values()) == 200
    assert "Under-represented" in res.output and g["ic"]["available"] is False


@pytest.mark.slow  # scores the default arith dev split (200 items) once per run
def test_select_with_a_measuring_method_builds_an_oracle_on_the_task(tmp_path):
    data = tmp_path / "arith"
    assert runner.invoke(app, ["make-arith", "--out", str(data), "--pool-size", "200"]).exit_code == 0
    pool, store, out = data / "pool.jsonl", tmp_path / "store", tmp_path / "harp.jsonl"
    args = ["select", str(pool), "--method", "harp-c", "--budget", "0.3", "--out", str(out), "--store", str(store),
            "-p", "leaf_size=50", "-p", "leaves_per_parent=2", "-p", "bootstrap=20", "--compute-missing"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--task" in res.output  # no task, no oracle: named, not guessed
    res = runner.invoke(app, [*args, "--task", "arith", "--oracle-steps", "4"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "harp.meta.json").read_text())
    # base model + one fine-tune per measured leaf, all on the task's dev split
    assert meta["cost"]["oracle"]["runs"] == 1 + len(meta["diagnostics"]["measured_leaves"]) >= 2
    assert 0 < meta["n_selected"] <= 60 and "cost:" in res.output
