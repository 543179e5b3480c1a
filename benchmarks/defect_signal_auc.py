"""How well does each scalar signal see each labelled defect? ROC AUC of every stored
scalar column for "clean vs defect type", on a testbed whose hidden labels are known.

For each (column, defect) the AUC is computed twice, once with high values meaning
"defect" and once with low values, and the larger is reported with its direction (an AUC
of 0.5 is blind; 0.8 means a random defective example outranks a random clean one 80% of
the time). The selectors never read the labels; this benchmark only grades the signals.

    python benchmarks/defect_signal_auc.py --testbed arith --signals text,lm,heuristics --out docs/results/defect-signals-arith.json
    python benchmarks/defect_signal_auc.py --testbed gsm8k-mix --n 400 --scorer small --signals text,lm
    python benchmarks/defect_signal_auc.py --bench-run runs/bench-gsm8k-small --scorer small --signals xfit

``--bench-run RUN_DIR`` grades the signals of a bench run: its pool and hidden labels
(``RUN_DIR/data/``) and its signal store (``RUN_DIR/store``), so a signal the bench computed is
read back, not recomputed (the same signal params give the same store key).

Columns with no variation or NaN everywhere are skipped and listed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from thresher.data.pool import load_pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals.base import SIGNALS, make_signal

BUNDLES = {
    "text": [("text", {}), ("reasoning_steps", {}), ("unigram_entropy", {}), ("irei", {}), ("bloom_heuristic", {})],
    "lm": [("lm", {})],
    "xfit": [("crossfit_loss", {})],
    "datamap": [("datamap", {})],
}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    allv = np.concatenate([pos, neg])
    r = rankdata(allv)
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def build(testbed: str, n: int | None, seed: int):
    if testbed == "arith":
        from thresher.tasks.arith import ArithConfig, ArithTestbed

        return ArithTestbed(ArithConfig(pool_size=n or 2000, seed=seed)).build()
    from thresher.tasks.gsm8k_mix import GSM8KMixTestbed

    return GSM8KMixTestbed(pool_size=n or 4000, seed=seed).build()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testbed", choices=("arith", "gsm8k-mix"), default="arith")
    ap.add_argument("--n", type=int, default=None, help="pool size (default: the testbed's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", default="auto", help="scorer for model signals (auto: micro on arith, else small)")
    ap.add_argument("--signals", default="text,lm", help=f"comma-separated bundles: {', '.join(BUNDLES)}")
    ap.add_argument("--store", default="/tmp/thresher-defect-auc-store")
    ap.add_argument("--bench-run", default=None, help="a bench run directory: its pool, labels and store (overrides --testbed, --n, --store)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    if a.bench_run:
        from thresher.tasks.arith import read_defect_labels

        run = Path(a.bench_run)
        pool, _ = load_pool(run / "data" / "pool.jsonl")
        labels = read_defect_labels(run / "data" / "defects.jsonl")
        store = SignalStore(run / "store")
        a.testbed = f"{run.name} (bench run)"
    else:
        pool, _, labels = build(a.testbed, a.n, a.seed)
        store = SignalStore(a.store)
    kinds = sorted({v for v in labels.values() if v != "clean"})
    y = np.array([labels[i] for i in pool.ids])
    columns: dict[str, np.ndarray] = {}
    cost = {}
    for bundle in a.signals.split(","):
        for name, params in BUNDLES[bundle]:
            p = dict(params)
            if "model" in SIGNALS[name].Params.model_fields:
                p["model"] = a.scorer
            sig = make_signal(name, **p)
            t0 = time.perf_counter()
            run_signal(sig, pool, store)
            cost[name] = round(time.perf_counter() - t0, 1)
            cols = read_signal(sig, pool, store)
            for c in sig.columns:
                v = np.asarray(cols[c])
                if v.dtype.kind in "fiub":
                    columns[c] = v.astype(np.float64)
    table, skipped = {}, []
    clean = y == "clean"
    for c, v in columns.items():
        ok = ~np.isnan(v)
        if ok.sum() < 10 or np.nanstd(v) == 0:
            skipped.append(c)
            continue
        row = {}
        for k in kinds:
            pos, neg = v[(y == k) & ok], v[clean & ok]
            if len(pos) < 5 or len(neg) < 5:
                continue
            hi = auc(pos, neg)
            row[k] = (round(max(hi, 1 - hi), 3), "high" if hi >= 0.5 else "low")
        table[c] = row
    print(f"\n{a.testbed}: pool {len(pool)} (seed {a.seed}), scorer {a.scorer}; ROC AUC clean vs defect (direction that flags the defect)")
    print(f"{'column':22s} " + " ".join(f"{k[:12]:>15s}" for k in kinds))
    for c, row in table.items():
        print(f"{c:22s} " + " ".join(f"{row[k][0]:>10.3f} {row[k][1]:>4s}" if k in row else f"{'-':>15s}" for k in kinds))
    if skipped:
        print("skipped (constant or NaN):", ", ".join(skipped))
    print("signal seconds:", cost)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"testbed": a.testbed, "n": len(pool), "seed": a.seed, "scorer": a.scorer, "kinds": kinds,
                       "label_counts": {k: int((y == k).sum()) for k in ["clean", *kinds]}, "auc": table,
                       "skipped": skipped, "signal_seconds": cost}, f, indent=1)


if __name__ == "__main__":
    main()
