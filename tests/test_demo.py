"""The demo end to end on a tiny configuration (the real one is `thresher demo`)."""
from __future__ import annotations

import json

from rich.console import Console

from thresher.bench.demo import ROW_KEYS, DemoConfig, paired_vs_random, run_demo


def test_tiny_demo_writes_rows_plot_and_scores_test_once(tmp_path):
    cfg = DemoConfig(out=tmp_path, quick=True, seeds=[0], pool_size=240, steps=12, scorer_warmup=60, scorer_warmup_steps=10,
                     arith={"dev_size": 30, "test_size": 45})
    console = Console(record=True, width=140)
    rows = run_demo(cfg, console)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    methods = [r["method"] for r in rows]
    assert methods == ["random", "ifd", "topk-loss-low", "full", "clean-only"]
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert 0.0 <= r["dev_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert r["oracle_runs"] == 1 and r["seed"] == 0
    by = {r["method"]: r for r in rows}
    assert by["random"]["n_selected"] == 72 and by["full"]["n_selected"] == 240
    assert by["clean-only"]["reference"] and sum(v for k, v in by["clean-only"]["defects"].items() if k != "clean") == 0
    assert by["full"]["defects"]["wrong_answer"] == 48  # 20% of 240
    # the one test scoring per row is logged once
    log = (tmp_path / "oracle" / "test_log.jsonl").read_text().splitlines()
    assert len(log) == len(rows)
    assert (tmp_path / "results.png").stat().st_size > 10_000
    text = console.export_text()
    assert "clean-only *" in text and "test acc minus random" in text
    diffs = paired_vs_random(rows)
    assert diffs["ifd"]["diffs"] == [round(by["ifd"]["test_acc"] - by["random"]["test_acc"], 4)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ledger"]["oracle"]["runs"] == len(rows)
