"""HARP on arith: the bench ``examples/bench-harp-arith.yaml`` (HARP-C / HARP-E on representatives or every
leaf, +/- fill, random, full; three seeds), then: (1) cost to match: the representative variants rerun with
``max_measured`` = parents .. leaves - 1 (added to the same bench: cached runs reused); the least m within 1
test point of the exhaustive variant gives the runs ratio (1 + m) / (1 + leaves) (None: only every leaf);
(2) each variant vs its exhaustive version (paired bootstrap); (3) HARP-C's inferred effects of unmeasured
leaves vs the exhaustive measurements (corr, error, 95% coverage, ``harp-effects.png``). Writes ``harp.md``::

    python benchmarks/exp_harp_arith.py [--out runs/bench-harp-arith] [--tiny]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "bench-harp-arith.yaml"
REPRESENTATIVE = ("harp-c", "harp-c+fill", "harp-e", "harp-e+fill")


def exhaustive(label: str) -> str:  # harp-c+fill -> harp-c-exhaustive+fill
    return label.replace("+", "-exhaustive+") if "+" in label else f"{label}-exhaustive"


TINY = {lab: {"leaf_size": 40, "leaves_per_parent": 2, "bootstrap": 50} for r in REPRESENTATIVE for lab in (r, exhaustive(r))}


def add_sweep(cfg, rows: list[dict]) -> tuple[int, int]:
    from thresher.bench.config import MethodSpec

    harp = [r["diagnostics"] for r in rows if r["method"] in REPRESENTATIVE]
    parents, leaves = min(d["hierarchy"]["parents"] for d in harp), max(d["cost"]["leaves"] for d in harp)
    for m in [m for m in cfg.methods if m.label in REPRESENTATIVE]:
        cfg.methods += [MethodSpec(m.name, f"{m.label}@m{k}", {**m.params, "max_measured": k}) for k in range(parents, leaves)]
    return parents, leaves


def effects(rows: list[dict], run_dir: Path, cfg) -> dict:
    """HARP-C's posterior of every leaf (seed by seed) against the exhaustive run's measured effect."""
    import matplotlib.pyplot as plt

    from thresher.bench.run import row_id

    pts: dict[str, list] = {}
    for s in cfg.seeds:
        post = {lab: json.loads((run_dir / "artifacts" / row_id(lab, cfg.budgets[0], s) / "leaf_posteriors.json").read_text())["rows"]
                for lab in ("harp-c", "harp-c-exhaustive")}
        truth = {(r["leaf"], r["domain"]): r["raw_effect"] for r in post["harp-c-exhaustive"]}
        for r in post["harp-c"]:
            pts.setdefault(r["domain"], []).append((truth[(r["leaf"], r["domain"])], r["post_mean"], r["post_var"] ** 0.5, r["measured"]))
    fig, axes = plt.subplots(1, len(pts), figsize=(4.2 * len(pts), 4), squeeze=False)
    stats = {}
    for ax, (d, arr) in zip(axes[0], sorted(pts.items())):
        x, y, sd, m = (np.array(v, dtype=float) for v in zip(*arr))
        m, un = m.astype(bool), ~m.astype(bool)
        ax.errorbar(x[m], y[m], yerr=1.96 * sd[m], fmt="o", capsize=2, ms=5, color="tab:blue", label="measured")
        ax.errorbar(x[un], y[un], yerr=1.96 * sd[un], fmt="o", capsize=2, ms=5, color="tab:orange", mfc="white", label="inferred")
        ax.axline((0, 0), slope=1, color="gray", lw=0.8)
        ax.set(xlabel="measured effect (exhaustive run)", ylabel="HARP posterior (95% band)", title=f"domain {d}")
        e, ok = np.abs(x[un] - y[un]), un.sum() > 2 and np.std(x[un]) > 0 and np.std(y[un]) > 0
        stats[d] = {"inferred": int(un.sum()), "corr": round(float(np.corrcoef(x[un], y[un])[0, 1]), 3) if ok else None,
                    "mae": round(float(e.mean()), 4) if un.any() else None,
                    "coverage95": round(float((e <= 1.96 * sd[un]).mean()), 3) if un.any() else None}
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "harp-effects.png", dpi=110)
    plt.close(fig)
    return stats


def report(rows: list[dict], run_dir: Path, cfg, leaves: int) -> str:
    from thresher.bench.results import compare, describe_comparison

    test = {(r["method"], r["seed"]): r["test"] for r in rows}
    lines = [f"# HARP on arith ({cfg.name})\n\nBench table (vs random, oracle runs): `table.md`.\n",
             "| variant | vs exhaustive (95% CI) | measured leaves within 1 point (per seed) | runs ratio (per seed) |\n|---|---|---|---|"]
    for lab in REPRESENTATIVE:
        need = [next((k for k in range(leaves) if test.get((f"{lab}@m{k}", s), -1) >= test[(exhaustive(lab), s)] - 0.01), None)
                for s in cfg.seeds]
        ratios = [None if k is None else round((1 + k) / (1 + leaves), 3) for k in need]
        lines.append(f"| {lab} | {describe_comparison(compare(rows, lab, exhaustive(lab)))} | {need} | {ratios} |")
    lines += ["\nHARP-C's inferred (unmeasured) leaf effects vs the exhaustive measurement, every seed: ![effects](harp-effects.png)\n",
              "| domain | inferred leaves | corr | MAE | 95% band coverage |\n|---|---|---|---|---|"]
    lines += [f"| {d} | {s['inferred']} | {s['corr']} | {s['mae']} | {s['coverage95']} |" for d, s in effects(rows, run_dir, cfg).items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from thresher.bench.presets import experiment_cli
    from thresher.bench.run import run_bench

    cfg, run_dir = experiment_cli(__doc__, CONFIG, TINY, argv)
    _, leaves = add_sweep(cfg, run_bench(cfg, run_dir))
    text = report(run_bench(cfg, run_dir), run_dir, cfg, leaves)  # the sweep rows; the others are read back
    (run_dir / "harp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
