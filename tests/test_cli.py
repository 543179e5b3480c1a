"""The command line: --help on every command, named errors, and the select/score/train/eval round trip."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thresher.cli import app

runner = CliRunner()
COMMANDS = ["load", "score", "signals", "select", "methods", "train", "eval", "demo", "make-arith", "make-pool", "bench",
            "report", "serve", "thtb-guide", "recipe", "recipe run"]


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



# --------------------------------------------------------------------------- the real command line, in a subprocess


def cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m thresher.cli ARGS`` as a user runs it (the entry point's error handling included)."""
    full_env = {**os.environ, "THRESHER_PROGRESS": "0", **(env or {})}
    full_env.pop("THRESHER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "thresher.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, check=False)


def user_error(res: subprocess.CompletedProcess, *names: str, code: int = 2) -> str:
    """The run failed with exit ``code`` and one ``error:`` line on stderr that names ``names``; no traceback."""
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    assert res.returncode == code, both
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def arith200(tmp_path_factory) -> Path:
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    d = tmp_path_factory.mktemp("arith200")
    ArithTestbed(ArithConfig(pool_size=200)).build(d)
    return d / "pool.jsonl"


@pytest.mark.parametrize("args", [
    ["select", "no-such-pool.jsonl", "--method", "random", "--budget", "0.3", "--out", "s.jsonl"],
    ["score", "no-such-pool.jsonl", "--signals", "text"],
    ["train", "no-such-pool.jsonl", "--out", "model"],
    ["eval", "micro", "--task", "no-such-task.yaml"],
], ids=["select", "score", "train", "eval"])
def test_a_missing_pool_or_task_file_is_one_error_line(tmp_path, args):
    user_error(cli(*args, cwd=tmp_path), args[1] if args[0] != "eval" else "no-such-task.yaml")


def test_select_config_errors_name_the_file_and_field(tmp_path, arith200):
    base = ["select", arith200, "--method", "random", "--budget", "0.3", "--out", tmp_path / "s.jsonl", "--store", tmp_path / "st"]
    user_error(cli(*base, "--config", tmp_path / "nope.yaml"), "--config", "nope.yaml", "not found")
    listed = tmp_path / "list.yaml"
    listed.write_text("params: [1, 2]\n")
    user_error(cli(*base, "--config", listed), "list.yaml", "'params'", "mapping")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {a: [1, 2\n")
    user_error(cli(*base, "--config", bad), "bad.yaml", "invalid YAML")
    user_error(cli(*base, "-p", "no_equals_sign"), "--param", "no_equals_sign")
    # a config that parses: its params reach the method (and an unknown one is named)
    good = tmp_path / "good.yaml"
    good.write_text("params: {colour: red}\n")
    user_error(cli(*base, "--config", good), "colour")


def test_train_and_eval_errors_are_one_line(tmp_path, arith200):
    user_error(cli("eval", "micro", "--task", "UNKNOWN"), "UNKNOWN", "arith")
    user_error(cli("train", arith200, "--out", tmp_path / "m", "--steps", "0"), "--steps")
    user_error(cli("train", arith200, "--out", tmp_path / "m", "--epochs", "-1"), "--epochs")
    user_error(cli("eval", "micro", "--split", "train"), "--split")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    user_error(cli("train", empty, "--out", tmp_path / "m", "--steps", "2"), "empty.jsonl")


@pytest.mark.parametrize("args", [["train", "POOL", "--out", "m", "--model", "./no-such-dir"], ["eval", "./no-such-dir"],
                                  ["eval", "no-such-dir/"], ["eval", "~/no-such-thresher-dir/model"]])
def test_a_missing_model_directory_is_named_at_once(tmp_path, arith200, args):
    args = [str(arith200) if a == "POOL" else a for a in args]
    t0 = time.perf_counter()
    res = cli(*args, cwd=tmp_path)
    line = user_error(res, "model directory not found", args[-1] if args[0] == "eval" else "./no-such-dir")
    assert "Repo id" not in line
    assert time.perf_counter() - t0 < 60  # no hub lookup (it took >10 s); generous for a loaded machine


def test_a_store_that_cannot_be_written_is_named(tmp_path, arith200):
    a_file = tmp_path / "store-file"
    a_file.write_text("not a directory")
    user_error(cli("score", arith200, "--signals", "text", "--store", a_file), str(a_file), "not a directory", code=1)
    user_error(cli("score", arith200, "--signals", "text", "--store", a_file / "store"), str(a_file / "store"), code=1)
    user_error(cli("select", arith200, "--method", "topk", "-p", "signal=tokens_answer", "--budget", "0.3", "--compute-missing",
                   "--out", tmp_path / "s.jsonl", "--store", a_file), str(a_file), code=1)


def test_a_read_only_store_is_named_before_computing(tmp_path, arith200):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot make a directory read-only for root (the store-is-a-file "
                    "variant is tested in test_a_store_that_cannot_be_written_is_named)")
    ro = tmp_path / "ro-store"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        user_error(cli("score", arith200, "--signals", "text", "--store", ro), str(ro), "not writable", code=1)
    finally:
        ro.chmod(0o755)


def test_score_refuses_params_no_requested_signal_takes(tmp_path, arith200):
    store = tmp_path / "st"
    line = user_error(cli("score", arith200, "--signals", "text,irei", "--store", store, "-p", "modle=micro"), "'modle'",
                      "did you mean 'model'", "text: model", "irei: (no parameters)")
    assert "Accepted keys per signal" in line
    user_error(cli("score", arith200, "--signals", "text", "--store", store, "-p", "embedding.model=minilm"), "'embedding.model'")
    assert not store.exists() or not any(store.rglob("COMPLETE"))  # nothing was computed
    ok = cli("score", arith200, "--signals", "text", "--store", store, "-p", "model=micro")
    assert ok.returncode == 0, ok.stderr


def test_select_prints_and_records_the_resolved_budget(tmp_path, arith200):
    def run(budget, name):
        out = tmp_path / f"{name}.jsonl"
        res = cli("select", arith200, "--method", "random", "--budget", budget, "--out", out, "--store", tmp_path / "st")
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        return res.stdout, json.loads((tmp_path / f"{name}.meta.json").read_text())

    out, meta = run("10000", "big")
    assert "budget 10000 > pool 200: selecting all" in out and "warning:" in out
    assert meta["n_selected"] == meta["n_requested"] == 200 and "budget 10000 > pool 200: selecting all" in meta["budget_note"]
    out, meta = run("1", "one")
    assert "budget 1 = 1 row of 200" in out and meta["n_selected"] == meta["n_requested"] == 1 and meta["budget"] == "1"
    out, meta = run("1.0", "all")
    assert "budget 1.0 = 100% of 200 = 200 rows" in out
    assert meta["n_selected"] == meta["n_requested"] == 200 and meta["budget"] == "1.0" and meta["budget_note"] == ""
    out, meta = run("30%", "pct")
    assert "budget 0.3 = 30% of 200 = 60 rows" in out and meta["n_requested"] == 60
    assert "warning:" not in out and not (tmp_path / "pct.jsonl.artifacts").exists()  # nothing written, no empty folder


def test_select_summarises_diagnostics_and_names_the_artifacts(tmp_path, arith200):
    out = tmp_path / "thtb.jsonl"
    res = cli("select", arith200, "--method", "thtb", "--budget", "0.3", "--compute-missing", "-p", "quality=tokens_answer",
              "--store", tmp_path / "st", "--out", out)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    diag = next(line for line in res.stdout.splitlines() if line.startswith("diagnostics:"))
    assert "stages=[3 items]" in diag and "quality=tokens_answer" in diag
    assert not re.search(r'\{"|\[\{', diag)  # no raw JSON, so nothing is cut mid-object
    assert f"full diagnostics and metadata: {tmp_path / 'thtb.meta.json'}" in res.stdout
    art = tmp_path / "thtb.jsonl.artifacts"
    assert f"artifacts: {art}/" in res.stdout and "thtb_report.md" in res.stdout
    meta = json.loads((tmp_path / "thtb.meta.json").read_text())
    assert meta["artifacts_dir"] == str(art) and set(meta["diagnostics"]["artifacts"]) <= {p.name for p in art.iterdir()}
    assert "stages" in meta["diagnostics"] and meta["n_requested"] == 60


def test_help_shows_every_option_name_in_full_at_80_columns():
    import typer

    group = typer.main.get_command(app)
    for name in ("select", "score", "train", "eval", "make-pool"):
        res = cli(name, "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
        assert res.returncode == 0, res.stderr
        for param in group.commands[name].params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,=]|$)", res.stdout, re.MULTILINE), (name, opt, res.stdout)
        assert "…" not in res.stdout


def test_train_help_states_the_steps_it_trains():
    from thresher.models.train import TrainConfig

    res = cli("train", "--help", env={"COLUMNS": "200"})
    micro, small = TrainConfig.for_tier("micro").steps, TrainConfig.for_tier("small").steps
    assert f"default: {micro} micro, {small} small" in " ".join(res.stdout.split())
