"""DSIR on variable-length SFT examples: the paper's summed log-ratio weight vs the
length-normalised mean, measured by the defects each selection keeps (no training).

DSIR (Xie et al. 2023) sums an example's hashed n-gram log-ratios log p_target - log p_raw.
The paper scores fixed-length chunks; SFT examples vary in length, so with the sum a short
example (few n-grams, each mostly negative) gets a less negative weight than a long
on-task one. ``weight=mean`` averages instead. This benchmark selects the same budget with
``random``, ``dsir`` (sum) and ``dsir weight=mean`` over several seeds, on

- ``arith``: the synthetic testbed (2,000 examples, its dev split as the target);
- ``gsm8k-mix``: GSM8K train problems with injected defects plus off-task Alpaca/ShareGPT
  (4,000 examples, the GSM8K dev split as the target),

and prints, per variant, the mean count of each hidden defect label kept (the labels come
from the testbeds' side files; the selectors never read them) and the mean answer length.

    python benchmarks/bench_dsir_length.py [--budget 0.3] [--seeds 0 1 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from thresher.data.pool import assistant_text
from thresher.data.store import SignalStore
from thresher.select.base import SignalView, make_selector
from thresher.tasks.arith import ArithTestbed
from thresher.tasks.base import defect_counts
from thresher.tasks.gsm8k_mix import GSM8KMixTestbed

VARIANTS = {"random": ("random", {}), "dsir-sum": ("dsir", {"weight": "sum"}), "dsir-mean": ("dsir", {"weight": "mean"})}


def run(name, pool, task, labels, budget, seeds, store_dir) -> dict:
    view = SignalView(pool, SignalStore(store_dir))
    kinds = sorted(set(labels.values()))
    out = {}
    for label, (method, params) in VARIANTS.items():
        counts, lengths, secs = [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            sel = make_selector(method, **params).select(pool, view, budget, task=task.dev_view(), seed=seed)
            secs.append(time.perf_counter() - t0)
            counts.append(defect_counts(sel.ids, labels, kinds))
            lengths.append(np.mean([len(assistant_text(pool.get(i))) for i in sel.ids]))
        keys = sorted({k for c in counts for k in c})
        out[label] = {"kept_mean": {k: float(np.mean([c.get(k, 0) for c in counts])) for k in keys},
                      "answer_chars_mean": float(np.mean(lengths)), "seconds": float(np.mean(secs)), "n": len(sel.ids)}
    print(f"\n{name}: pool {len(pool)}, budget {budget}, seeds {seeds}; mean kept per label")
    keys = sorted({k for v in out.values() for k in v["kept_mean"]})
    print(f"{'variant':10s} " + " ".join(f"{k[:12]:>12s}" for k in keys) + f" {'ans chars':>10s}")
    for label, v in out.items():
        print(f"{label:10s} " + " ".join(f"{v['kept_mean'].get(k, 0):12.1f}" for k in keys) + f" {v['answer_chars_mean']:10.0f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    ap.add_argument("--store", default="/tmp/thresher-dsir-bench-store")
    a = ap.parse_args()
    results = {}
    pool, task, labels = ArithTestbed().build()
    results["arith"] = run("arith", pool, task, labels, a.budget, a.seeds, a.store)
    pool, task, labels = GSM8KMixTestbed().build()
    results["gsm8k-mix"] = run("gsm8k-mix", pool, task, labels, a.budget, a.seeds, a.store)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"budget": a.budget, "seeds": a.seeds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
