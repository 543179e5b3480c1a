"""The bench: config validation, rows, resume, paired statistics, and the HTML report in Chromium."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from thresher.bench.config import BenchConfig, BenchConfigError, method_params
from thresher.bench.results import summarise
from thresher.bench.run import run_bench
from thresher.data.ledger import CostLedger

TINY = {
    "name": "tiny",
    "pool": {"arith": {"pool_size": 160, "dev_size": 24, "test_size": 40}},
    "model": "micro",
    "train": {"steps": 8, "batch_size": 8},
    "budgets": [0.25],
    "seeds": [0, 1],
    "scorer": {"model": "micro", "warmup_examples": 40, "warmup_steps": 10},
    "methods": ["random", "full", {"name": "topk", "label": "long-answers", "params": {"signal": "tokens_answer"}}, "dsir",
                {"name": "random", "label": "random-30", "budgets": [30]}],
    "workers": 2,  # each seed's final fine-tunes in two processes at once
}


def test_config_errors_name_the_problem():
    with pytest.raises(BenchConfigError, match="missing required key 'methods'"):
        BenchConfig.from_dict({k: v for k, v in TINY.items() if k != "methods"})
    with pytest.raises(BenchConfigError, match=r"unknown key\(s\) \['bugdets'\]"):
        BenchConfig.from_dict({**TINY, "bugdets": [0.1]})
    with pytest.raises(BenchConfigError, match="labels must be unique"):
        BenchConfig.from_dict({**TINY, "methods": ["random", "random"]})
    with pytest.raises(ValueError, match="budget"):
        BenchConfig.from_dict({**TINY, "budgets": [-3]})
    with pytest.raises(BenchConfigError, match="'references' must be a list of"):
        BenchConfig.from_dict({**TINY, "references": ["oracle-best"]})
    with pytest.raises(BenchConfigError, match="need hidden labels"):
        BenchConfig.from_dict({**TINY, "pool": {"path": "pool.jsonl"}, "references": ["clean-only"]})
    with pytest.raises(BenchConfigError, match="must be unique"):
        BenchConfig.from_dict({**TINY, "methods": [{"name": "random", "label": "clean-only"}], "references": ["clean-only"]})
    with pytest.raises(BenchConfigError, match=r"methods\[0\].budgets must be a non-empty list"):
        BenchConfig.from_dict({**TINY, "methods": [{"name": "random", "budgets": 0.5}]})
    own = BenchConfig.from_dict({**TINY, "methods": ["random", {"name": "random", "label": "r600", "budgets": [600, "10%"]}],
                                 "references": ["clean-only"]})
    assert own.methods[0].budgets is None and own.methods[1].budgets == ["600", "0.1"] and own.references == ["clean-only"]
    cfg = BenchConfig.load(Path(__file__).resolve().parents[2] / "examples" / "bench-quick.yaml")
    assert cfg.name == "quick" and cfg.budgets == ["0.1", "0.3"] and "random" in [m.name for m in cfg.methods]


def test_every_example_config_loads_and_its_methods_build():
    from thresher.select.base import make_selector, selector_class

    configs = sorted((Path(__file__).resolve().parents[2] / "examples").glob("bench-*.yaml"))
    assert {c.stem for c in configs} >= {"bench-quick", "bench-arith", "bench-thtb-arith", "bench-tmap-arith", "bench-harp-arith",
                                         "bench-autoselection-arith"}
    for path in configs:
        cfg = BenchConfig.load(path)
        for m in cfg.methods:
            sel = make_selector(m.name, **method_params(selector_class(m.name).Params, m.params, cfg))
            assert sel.required_signals() is not None, (path.name, m.label)
    tmap = BenchConfig.load(configs[0].parent / "bench-tmap-arith.yaml")
    assert {m.label for m in tmap.methods} >= {"tmap", "equal-weights", "single-ifd", "single-relevance", "random", "full"}
    assert {m.label: m.params for m in tmap.methods}["tmap"]["check_fidelity"] == 6


def test_the_full_arith_config_names_every_baseline_and_method_and_they_build():
    from thresher.select.base import make_selector, selector_class

    cfg = BenchConfig.load(Path(__file__).resolve().parents[2] / "examples" / "bench-arith.yaml")
    names = {m.name for m in cfg.methods}
    assert {"full", "random", "ifd", "superfiltering", "alpagasus", "deita", "car", "dsir"} <= names
    assert {"thtb", "tmap", "autoselection", "harp-c", "harp-e"} <= names
    built = {m.label: make_selector(m.name, **method_params(selector_class(m.name).Params, m.params, cfg)) for m in cfg.methods}
    assert built["autoselection"].params.oracle_budget == cfg.oracle_budget
    # dev-reading settings follow the bench's target task
    assert built["tmap"].params.relevance_task_params == {"pool_size": 2000, "dev_size": 200, "test_size": 400}
    assert built["autoselection"].params.signals.task_params == built["tmap"].params.relevance_task_params
    # the bench scorer reaches IFD, but Superfiltering keeps its weak scorer (else it is IFD again)
    assert built["ifd"].params.scorer == cfg.scorer["model"] == "micro"
    assert built["superfiltering"].params.scorer == "micro-tiny"
    assert built["superfiltering"].required_signals()[0].key_params() != built["ifd"].required_signals()[0].key_params()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bench")
    rows = run_bench(BenchConfig.from_dict(TINY), run_dir, show_progress=False)
    return run_dir, rows


def test_rows_hold_every_field(tiny_run):
    run_dir, rows = tiny_run
    assert len(rows) == 2 * 3 + 2 + 2  # 3 budgeted methods x 2 seeds + full once per seed + random-30 (its own budget)
    for r in rows:
        for k in ("method", "selector", "params", "budget", "seed", "n_selected", "dev", "test", "oracle_runs", "proxy_calls",
                  "tokens_trained", "wall_s", "defects"):
            assert k in r, k
        assert 0 <= r["dev"] <= 1 and 0 <= r["test"] <= 1 and r["oracle_runs"] == 1
        assert r["tokens_trained"] > 0 and len(r["test_correct"]) == 40
        assert r["test"] == pytest.approx(np.mean(r["test_correct"]), abs=1e-4)
        assert sum(r["defects"].values()) == r["n_selected"]
    by = {(r["method"], r["seed"]): r for r in rows}
    assert by[("full", 0)]["n_selected"] == 160 and by[("random", 0)]["n_selected"] == 40
    assert by[("random-30", 1)]["n_selected"] == 30 and by[("random-30", 1)]["budget"] == "30"
    assert by[("full", 0)]["budget"] == "1.0" and not any(r["reference"] for r in rows)
    # test scored once per final selection
    log = (run_dir / "oracle" / "test_log.jsonl").read_text().splitlines()
    assert len(log) == len({json.loads(x)["key"] for x in log}) == len(rows)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["commit"] and len(res["rows"]) == len(rows)
    assert "| long-answers | 0.25 |" in (run_dir / "table.md").read_text()


def test_summary_pairs_with_random_on_the_same_seeds(tiny_run):
    _, rows = tiny_run
    s = {(x["method"], x["budget"]): x for x in summarise(rows)}
    la = s[("long-answers", "0.25")]
    rnd = {r["seed"]: r["test"] for r in rows if r["method"] == "random"}
    mine = {r["seed"]: r["test"] for r in rows if r["method"] == "long-answers"}
    assert la["vs_random"] == pytest.approx(np.mean([mine[k] - rnd[k] for k in (0, 1)]), abs=1e-3)
    assert la["ci_low"] <= la["vs_random"] <= la["ci_high"] and la["paired_seeds"] == [0, 1]
    assert "vs_random" not in s[("random", "0.25")] and "vs_random" not in s[("full", "1.0")]


def test_a_rerun_continues_without_retraining(tiny_run, tmp_path):
    run_dir, rows = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    victim = sorted((copy / "rows").glob("dsir*s1.json"))[0]
    victim.unlink()
    before = len(CostLedger(copy / "ledger.jsonl").entries)
    again = run_bench(BenchConfig.from_dict(TINY), copy, show_progress=False)
    assert len(again) == len(rows) and victim.exists()
    new = CostLedger(copy / "ledger.jsonl").entries[before:]
    assert new and all(e.cached for e in new)  # the row's oracle runs came from the cache
    old = {(r["method"], r["seed"]): r["test"] for r in rows}
    assert all(old[(r["method"], r["seed"])] == r["test"] for r in again)


def test_a_rerun_under_changed_settings_stops_or_redoes_only_the_rows_it_changed(tiny_run, tmp_path):
    run_dir, rows = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert all(r["settings"]["train"] == {"steps": 8, "batch_size": 8} for r in rows)
    changed = json.loads(json.dumps(TINY))
    changed["methods"][2]["params"]["signal"] = "tokens_user"  # one method's params: its 2 rows, nothing else
    with pytest.raises(BenchConfigError, match=r"2 finished row\(s\).*long-answers__b0.25__s0 \(params\).*--rerun-changed"):
        run_bench(BenchConfig.from_dict(changed), copy, show_progress=False)
    assert len(list((copy / "rows").glob("*.json"))) == len(rows)  # nothing was touched
    again = run_bench(BenchConfig.from_dict(changed), copy, show_progress=False, rerun_changed=True)
    moved = sorted(p.name for p in (copy / "rows-replaced").glob("*/*.json"))
    assert moved == ["long-answers__b0.25__s0.json", "long-answers__b0.25__s1.json"]
    new = {(r["method"], r["seed"]): r for r in again}
    assert all(new[("long-answers", s)]["settings"]["params"] == {"signal": "tokens_user"} for s in (0, 1))
    old = {(r["method"], r["seed"]): r for r in rows}
    assert all(new[k]["test"] == old[k]["test"] for k in old if k[0] != "long-answers")
    # the training settings touch every fine-tuned row; the rows from before settings were recorded are kept
    for f in (copy / "rows").glob("random*.json"):
        row = json.loads(f.read_text())
        del row["settings"]
        f.write_text(json.dumps(row))
    with pytest.raises(BenchConfigError, match=r"(\d+) finished row") as e:
        run_bench(BenchConfig.from_dict({**changed, "train": {"steps": 9, "batch_size": 8}}), copy, show_progress=False)
    assert "random__b" not in str(e.value) and "full__b1.0__s0 (train)" in str(e.value)


def test_report_renders_in_chromium(tiny_run, tmp_path):
    pytest.importorskip("playwright", reason="the report screenshot test needs playwright (pip install thresher[test])")
    from thresher.bench.report import pixel_stats, screenshot, write_report

    run_dir, rows = tiny_run
    html_path = write_report(run_dir, tmp_path / "report.html")
    text = html_path.read_text()
    assert "<script" not in text and "http" not in text.split("</style>")[1]  # self-contained
    try:
        info = screenshot(html_path, tmp_path / "shot.png")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert info["title"] == "thresher bench: tiny"
    plots = {i["id"]: i for i in info["images"] if i["id"]}
    assert plots["plot-accuracy"]["w"] > 300 and plots["plot-cost"]["w"] > 300
    assert info["summaryRows"] == 1 + 5 and info["rows"] == 1 + len(rows)
    assert info["captions"][0].startswith("Figure 1.") and info["captions"][1].startswith("Figure 2.")
    assert all(m in plots["plot-accuracy"]["alt"] for m in ("random", "long-answers", "dsir"))
    assert info["kvTables"] >= 3 and info["kvFontPx"] >= 13  # diagnostics: readable tables (full has none)
    px = pixel_stats(tmp_path / "shot.png")
    assert px["height"] > 1500 and px["nonwhite"] > 0.02


METHODS_BENCH = {
    **TINY,
    "name": "methods",
    "seeds": [0],
    "oracle_budget": 3,
    "methods": [
        "random",
        {"name": "thtb", "params": {"scorer_warmup": 40, "scorer_warmup_steps": 10}},
        {"name": "harp-c", "params": {"leaf_size": 40, "leaves_per_parent": 2, "bootstrap": 50}},
        {"name": "autoselection", "params": {"signals": {"scorer_warmup": 40, "scorer_warmup_steps": 10, "state": ["tokens"]}}},
        {"name": "tmap", "params": {"indicators": ["reasoning_steps", "bloom", "length"], "scorer": "micro", "scorer_warmup": 40,
                                    "scorer_warmup_steps": 10, "proxy_model": "micro", "anchors": 3, "demos": 1, "draws": 1,
                                    "n_init": 1, "n_iter": 1}},
    ],
}


@pytest.mark.slow
def test_the_four_methods_run_in_a_bench_and_their_plots_reach_the_report(tmp_path):
    from thresher.bench.report import write_report

    rows = run_bench(BenchConfig.from_dict(METHODS_BENCH), tmp_path / "run", show_progress=False)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"random", "thtb", "harp-c", "autoselection", "tmap"}
    assert by["random"]["oracle_runs"] == 1 and by["thtb"]["oracle_runs"] == 1  # no search: the final run only
    assert 1 < by["autoselection"]["oracle_runs"] <= 3 + 1  # the search's runs (<= budget) + the final one
    assert by["harp-c"]["oracle_runs"] >= 3  # base + >= 1 measured leaf + the final run
    assert by["tmap"]["proxy_calls"] == 3 + 1 + 1 + 1  # 3 single indicators + equal weights + 1 init + 1 BO step
    for r in rows:
        assert r["n_selected"] <= 40 or r["method"] == "autoselection"
    html = write_report(tmp_path / "run").read_text()
    for needle in ("thtb_stage", "tmap_weights", "best", "harp"):
        assert needle in html, needle
    assert html.count("data:image/png;base64,") >= 2 + 3 + 1 + 1 + 1


def test_the_base_reference_is_the_untrained_model_scored_once(tmp_path):
    from thresher.bench.config import build_pool_and_task
    from thresher.bench.results import summarise
    from thresher.models.evaluate import evaluate_task
    from thresher.models.load import load_model

    cfg = BenchConfig.from_dict({**TINY, "methods": ["random"], "references": ["base"], "workers": 1})
    rows = run_bench(cfg, tmp_path / "run", show_progress=False)
    base = {r["seed"]: r for r in rows if r["method"] == "base"}
    assert sorted(base) == [0, 1]
    for r in base.values():
        assert r["reference"] and r["budget"] == "0" and r["n_selected"] == 0
        assert r["oracle_runs"] == 0 and r["tokens_trained"] == 0
    assert base[0]["test"] == base[1]["test"] and base[0]["test_correct"] == base[1]["test_correct"]
    # the value is the base model's own score on the test items, and test was scored once for both seeds
    _, task, _ = build_pool_and_task(cfg, tmp_path / "run" / "data")
    lm = load_model(cfg.model)
    direct = evaluate_task(lm.model, lm.tokenizer, task.dev_view(), task._sealed_test(), show_progress=False)
    assert base[0]["test"] == pytest.approx(direct["value"], abs=1e-4)
    log = [json.loads(x) for x in (tmp_path / "run" / "oracle" / "test_log.jsonl").read_text().splitlines()]
    assert [e["label"] for e in log].count("base") == 1 and len(log) == 1 + 2  # base once, random per seed
    s = {x["method"]: x for x in summarise(rows)}
    assert s["base"]["random_budget"] == "0.25" and s["base"]["paired_seeds"] == [0, 1]
    assert "| base (ref) | 0 | 0 |" in (tmp_path / "run" / "table.md").read_text()
    with pytest.raises(BenchConfigError, match="references"):
        BenchConfig.from_dict({**TINY, "references": ["base", "oracle-best"]})
    # base needs no hidden labels: a pool file without them may ask for it
    assert BenchConfig.from_dict({**TINY, "pool": {"path": "pool.jsonl"}, "task": {"name": "arith"},
                                  "references": ["base"]}).references == ["base"]
