"""The demo: a bench preset (the real one is `thresher demo`), end to end on a tiny configuration."""
from __future__ import annotations

import json

from rich.console import Console

from thresher.bench.config import method_params
from thresher.bench.demo import paired_vs_random, run_demo
from thresher.bench.presets import demo_config
from thresher.bench.run import ROW_KEYS
from thresher.data.ledger import CostLedger
from thresher.select.base import Selection, make_selector, selector_class
from thresher.tasks.arith import defect_counts


def test_the_demo_preset_is_the_demo():
    cfg = demo_config(workers=2)
    assert cfg.pool == {"arith": {"pool_size": 2000}} and cfg.budgets == ["0.3"] and cfg.seeds == [0, 1]
    assert cfg.train == {"steps": 500} and cfg.model == "micro" and cfg.workers == 2 and cfg.decontaminate
    assert [m.label for m in cfg.methods] == ["random", "ifd", "topk-loss-low", "topk-loss-high", "topk-answer-len", "dsir",
                                              "thtb", "full"]
    assert cfg.references == ["clean-only"]
    built = {m.label: make_selector(m.name, **method_params(selector_class(m.name).Params, m.params, cfg)) for m in cfg.methods}
    for label in ("ifd", "topk-loss-low", "topk-answer-len", "thtb"):  # the warmed micro scorer: 300 examples x 250 steps
        p = built[label].params
        assert (p.scorer, p.scorer_warmup, p.scorer_warmup_steps) == ("micro", 300, 250), label
    assert built["topk-answer-len"].params.signal == "tokens_answer" and built["topk-loss-high"].params.direction == "high"
    quick = demo_config(quick=True, workers=1)
    assert [m.label for m in quick.methods] == ["random", "ifd", "topk-loss-low", "full"] and quick.seeds == [0]
    assert quick.pool["arith"]["pool_size"] == 1500 and quick.scorer["warmup_examples"] == 200
    assert demo_config(seeds=[3], steps=20, decontaminate=False).train == {"steps": 20}


def test_tiny_demo_writes_rows_plot_and_scores_test_once(tmp_path):
    cfg = demo_config(quick=True, seeds=[0], steps=12, workers=1, arith={"pool_size": 240, "dev_size": 30, "test_size": 45},
                      scorer={"warmup_examples": 60, "warmup_steps": 10})
    console = Console(record=True, width=160)
    rows = run_demo(cfg, tmp_path, console, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows
    assert [r["method"] for r in rows] == ["random", "ifd", "topk-loss-low", "full", "clean-only"]
    labels = {json.loads(x)["id"]: json.loads(x)["defect"] for x in (tmp_path / "data" / "defects.jsonl").read_text().splitlines()}
    kept = Selection.load(tmp_path / "selections" / "full__b1.0__s0.jsonl").ids  # the pool less its test overlap
    assert len(labels) - len(kept) < 10 and set(kept) <= set(labels)
    for r in rows:
        assert set(ROW_KEYS) <= set(r) and "dev_acc" not in r and "test_acc" not in r
        assert 0.0 <= r["dev"] <= 1.0 and 0.0 <= r["test"] <= 1.0
        assert r["oracle_runs"] == 1 and r["seed"] == 0 and sum(r["defects"].values()) == r["n_selected"]
        assert r["reference"] == (r["method"] == "clean-only")
    by = {r["method"]: r for r in rows}
    assert by["random"]["budget"] == "0.3" and by["random"]["n_selected"] == round(0.3 * len(kept))
    assert by["full"]["budget"] == "1.0" and by["full"]["defects"] == defect_counts(kept, labels)
    clean = by["clean-only"]
    assert clean["selector"] == "clean-only" and clean["n_selected"] == sum(labels[i] == "clean" for i in kept)
    assert sum(v for k, v in clean["defects"].items() if k != "clean") == 0
    # the one test scoring per row is logged once
    log = (tmp_path / "oracle" / "test_log.jsonl").read_text().splitlines()
    assert len(log) == len(rows)
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "| clean-only (ref) | 1.0 |" in (tmp_path / "table.md").read_text()
    text = console.export_text()
    assert "clean-only *" in text and "test acc minus random" in text
    diffs = paired_vs_random(rows)
    assert diffs["ifd"]["diffs"] == [round(by["ifd"]["test"] - by["random"]["test"], 4)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ledger"]["oracle"]["runs"] == len(rows) and summary["paired_vs_random"] == diffs

    # a rerun reads the rows back: no training, the same table
    before = len(CostLedger(tmp_path / "ledger.jsonl").entries)
    again = run_demo(cfg, tmp_path, Console(record=True, width=160), show_progress=False)
    assert again == rows and len(CostLedger(tmp_path / "ledger.jsonl").entries) == before
