"""DSIR's selection time on a large pool: the batched numpy featurisation against the
per-gram Python reference, in the same run, with the selected ids compared.

The pool is ``million_pool.build(n)`` (GSM8K + Alpaca + ShareGPT variants), the target the
``gsm8k`` task's dev split. "reference" is DSIR as it was computed before: one
:func:`~thresher.select.dsir_features._hashed_ngrams_reference` call per example, a Python
list of arrays, one ``sum``/``mean`` per example. "batched" is ``DSIRSelector.run``. For
each weight both select ``budget`` of the pool with the same seed; the script exits 1 if
the selected ids, the per-example log weights or the pool bincount differ. Times are wall
clock and CPU (``process_time``: steadier on a shared machine); the first batched run
includes the one-off table set-up.

    python benchmarks/bench_dsir.py [--n 100000] [--budget 0.3] [--weights mean sum] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import million_pool

from thresher.data.pool import load_pool, record_text
from thresher.select.base import make_selector
from thresher.select.dsir_features import PoolNgrams, _hashed_ngrams_reference
from thresher.tasks import get_task


def reference_dsir(pool, tgt_texts, buckets, n, prior_mass, weight, k, seed):
    """The pre-numpy DSIRSelector.run on ``text="all"``: (selected positions, log weights, raw bincount)."""
    feats = [_hashed_ngrams_reference(record_text(r), buckets, n) for r in pool]
    raw = np.bincount(np.concatenate(feats) if feats else np.zeros(0, np.int64), minlength=buckets).astype(np.float64)
    tgt = np.bincount(np.concatenate([_hashed_ngrams_reference(t, buckets, n) for t in tgt_texts]),
                      minlength=buckets).astype(np.float64)
    p_raw = (raw + 1.0) / (raw.sum() + buckets)
    p_tgt = (tgt + prior_mass * p_raw) / (tgt.sum() + prior_mass)
    log_ratio = np.log(p_tgt) - np.log(p_raw)
    if weight == "sum":
        logw = np.array([float(log_ratio[f].sum()) for f in feats])
    else:
        scale = float(np.median([len(f) for f in feats])) if feats else 1.0
        logw = np.array([float(log_ratio[f].mean()) if len(f) else 0.0 for f in feats]) * max(scale, 1.0)
    gumbel = np.random.default_rng(seed).gumbel(size=len(logw))
    return np.argsort(-(logw + gumbel), kind="stable")[:k], logw, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="pool size (million_pool.build)")
    ap.add_argument("--budget", type=float, default=0.3, help="fraction of the pool selected")
    ap.add_argument("--weights", nargs="+", default=["mean", "sum"], choices=["mean", "sum"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    pool, _ = load_pool(million_pool.build(args.n, quiet=True) / "pool")
    task = get_task("gsm8k").dev_view()
    k = round(args.budget * len(pool))
    texts = [record_text(r) for r in pool]
    tgt_texts = [f"{it.question}\n\n{it.target or it.answer}" for it in task.dev]
    ids = pool.ids
    out: dict = {"n": len(pool), "k": k, "dev_items": len(task.dev), "runs": []}
    ok = True
    for weight in args.weights:
        sel = make_selector("dsir", weight=weight)
        p = sel.params
        t0, c0 = time.perf_counter(), time.process_time()
        picked, _ = sel.run(pool, None, k, task=task, seed=args.seed)
        t_new, c_new = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        ref_order, ref_logw, ref_raw = reference_dsir(pool, tgt_texts, p.buckets, p.ngrams, p.prior_mass, weight, k, args.seed)
        t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
        feats = PoolNgrams(texts, p.buckets, p.ngrams)
        same_raw = bool(np.array_equal(feats.raw, ref_raw))
        # the batched run's log weights, recomputed as the selector does, for a bitwise comparison
        raw = feats.raw.astype(np.float64)
        tgt = np.bincount(np.concatenate([_hashed_ngrams_reference(t, p.buckets, p.ngrams) for t in tgt_texts]),
                          minlength=p.buckets).astype(np.float64)
        p_raw = (raw + 1.0) / (raw.sum() + p.buckets)
        log_ratio = np.log((tgt + p.prior_mass * p_raw) / (tgt.sum() + p.prior_mass)) - np.log(p_raw)
        sums = feats.sums(log_ratio)
        logw = sums if weight == "sum" else (np.divide(sums, feats.counts, out=np.zeros(len(feats)), where=feats.counts > 0)
                                              * max(float(np.median(feats.counts)), 1.0))
        row = {"weight": weight, "reference_s": round(t_ref, 2), "batched_s": round(t_new, 2),
               "speedup": round(t_ref / t_new, 1), "reference_cpu_s": round(c_ref, 2), "batched_cpu_s": round(c_new, 2),
               "cpu_speedup": round(c_ref / c_new, 1), "same_selection": picked == [ids[i] for i in ref_order],
               "same_log_weights": bool(np.array_equal(logw, ref_logw)), "same_bincount": same_raw,
               "grams": int(feats.counts.sum())}
        ok &= row["same_selection"] and row["same_log_weights"] and row["same_bincount"]
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
