"""TMAP on the arith testbed: the bench ``examples/bench-tmap-arith.yaml`` (TMAP with the oracle's
fidelity check, equal weights, each indicator alone, random, full data; three seeds), then per seed
what the bench table lacks: the learned weights (one figure, every seed), the single indicator the
proxy picks and how it did on test, TMAP against equal weights and against the proxy's pick (paired,
seeds x items bootstrap), and the proxy's fidelity: Spearman(proxy, oracle dev) over TMAP's own spread
of fine-tuned subsets (the selector's ``check_fidelity``) and over the compared subsets (TMAP, equal
weights, each indicator alone). Writes ``RUN_DIR/tmap.md`` and ``RUN_DIR/tmap-weights.png``::

    python benchmarks/exp_tmap_arith.py [--out runs/bench-tmap-arith] [--tiny]
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "bench-tmap-arith.yaml"
TINY = {"tmap": {"anchors": 4, "demos": 1, "draws": 1, "n_init": 1, "n_iter": 1, "check_fidelity": 3}}


def report(rows: list[dict], run_dir: Path, cfg) -> str:
    import numpy as np
    from scipy.stats import spearmanr

    from thresher.bench.results import compare, describe_comparison
    from thresher.select.tmap.plots import plot_weights

    by = {(r["method"], r["seed"]): r for r in rows}
    tmap = {s: by[("tmap", s)]["diagnostics"] for s in cfg.seeds if ("tmap", s) in by}
    lines = [f"# TMAP on arith ({cfg.name})\n\nBench table (vs random, oracle runs, proxy calls): `table.md`.\n",
             ("| seed | weights | best proxy | equal weights proxy | proxy's best single (test) | fidelity: TMAP spread "
              "(n, tiny vs full) | fidelity: compared subsets |\n|---|---|---|---|---|---|---|")]
    picks = {}
    for s, d in tmap.items():
        single = d["best_single_indicator"]["indicator"]
        picks[s] = f"single-{single}"
        pts = [(d["best_proxy"], by[("tmap", s)]["dev"]), (d["equal_weights"]["proxy"], by[("equal-weights", s)]["dev"])]
        pts += [(v, by[(f"single-{k}", s)]["dev"]) for k, v in d["single_indicator_proxy"].items() if (f"single-{k}", s) in by]
        rho = spearmanr(*zip(*pts))[0] if len(pts) >= 3 else float("nan")
        fid = d.get("fidelity") or {}
        w = ", ".join(f"{k} {v:.2f}" for k, v in d["weights"].items())
        lines.append(f"| {s} | {w} | {d['best_proxy']:+.4f} | {d['equal_weights']['proxy']:+.4f} | {single} "
                     f"({by[(picks[s], s)]['test']:.3f}) | {fid.get('spearman')} (n {fid.get('n')}, tiny-vs-full MAE {(fid.get('tiny_vs_full') or {}).get('mean_abs_error')}) | "
                     f"{'n/a' if np.isnan(rho) else round(float(rho), 3)} (n {len(pts)}) |")
    lines += ["", f"TMAP - equal weights: {describe_comparison(compare(rows, 'tmap', 'equal-weights'))}"]
    diffs = [by[("tmap", s)]["test"] - by[(picks[s], s)]["test"] for s in picks]
    lines += [f"TMAP - the proxy's best single indicator (test, per seed): {[round(x, 4) for x in diffs]}", ""]
    indicators = list(next(iter(tmap.values()))["weights"]) if tmap else []
    plot_weights(indicators, None, run_dir / "tmap-weights.png", title="TMAP learned weights on arith, per seed",
                 groups={f"seed {s}": [d["weights"][i] for i in indicators] for s, d in tmap.items()})
    return "\n".join(lines) + "\n![weights](tmap-weights.png)\n"


def main(argv=None) -> None:
    from thresher.bench.presets import experiment_cli
    from thresher.bench.run import run_bench

    cfg, run_dir = experiment_cli(__doc__, CONFIG, TINY, argv)
    rows = run_bench(cfg, run_dir)
    text = report(rows, run_dir, cfg)
    (run_dir / "tmap.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
