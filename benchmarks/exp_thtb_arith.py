"""THTB on the arith testbed: the bench ``examples/bench-thtb-arith.yaml`` (THTB, random, full data and
stage 1 alone at 5/10/30%, three seeds), then what the bench table lacks: THTB against full data and
against its stage 1 alone (paired, seeds x items bootstrap), and the hidden defects left after each
THTB stage (seed 0). Writes ``RUN_DIR/table.md`` (the bench) and ``RUN_DIR/thtb.md``::

    python benchmarks/exp_thtb_arith.py [--out runs/bench-thtb-arith] [--tiny]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "bench-thtb-arith.yaml"
TINY = {"thtb": {"scorer_warmup": 40, "scorer_warmup_steps": 10}}


def report(rows: list[dict], run_dir: Path, cfg) -> str:
    from thresher.bench.results import compare, describe_comparison
    from thresher.bench.run import row_id
    from thresher.tasks.arith import defect_counts
    from thresher.tasks.base import read_defect_labels

    labels = read_defect_labels(run_dir / "data" / "defects.jsonl")
    names = list(defect_counts([], labels))
    lines = [f"# THTB on arith ({cfg.name})", "", "Bench table (vs random, defects kept): `table.md`.", "",
             "| budget | THTB - full data (95% CI) | THTB - stage 1 alone (95% CI) |", "|---|---|---|"]
    for b in cfg.budgets:
        lines.append(f"| {b} | {describe_comparison(compare(rows, 'thtb', 'full', b, '1.0'))} | "
                     f"{describe_comparison(compare(rows, 'thtb', 'quality-only', b))} |")
    seed = cfg.seeds[0]
    lines += ["", f"THTB after each stage (seed {seed}): kept, and the hidden defects among them", "",
              "| budget | stage | target | kept | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    for b in cfg.budgets:
        row = next(r for r in rows if r["method"] == "thtb" and r["budget"] == b and r["seed"] == seed)
        stage_ids = json.loads((run_dir / "artifacts" / row_id("thtb", b, seed) / "thtb_stage_ids.json").read_text())
        for (stage, ids), target in zip(stage_ids.items(), row["diagnostics"]["stage_targets"]):
            counts = defect_counts(ids, labels)
            lines.append(f"| {b} | {stage} | {target} | {len(ids)} | " + " | ".join(str(counts[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from thresher.bench.presets import experiment_cli
    from thresher.bench.run import run_bench

    cfg, run_dir = experiment_cli(__doc__, CONFIG, TINY, argv)
    rows = run_bench(cfg, run_dir)
    text = report(rows, run_dir, cfg)
    (run_dir / "thtb.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
