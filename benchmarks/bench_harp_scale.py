"""HARP at scale: hierarchy + empirical Bayes + selection over synthetic embeddings (default 1M x 384).

No oracle: every leaf's true effect on each of ``--domains`` dev domains is a given smooth
function of its centroid (``phi_d(c) = 0.04 z_d(c) - 0.02``, ``z_d`` the standardised
projection of the centroid on a random direction ``w_d``), and a "measurement" of a leaf is its true effect plus Gaussian noise
(``--noise`` sd). So the benchmark times exactly the parts of HARP that scale with the
pool -- clustering, the measurement order, EB and inheritance, both greedy envelopes, the
best prefix and emitting points -- and checks the inference: correlation of inferred and
true effects on unmeasured leaves, and the true objective of HARP's choice against the
exhaustive version (every leaf measured with the same noise) and the noise-free greedy.

Usage::

    flock /work/notes/cpu.lock python benchmarks/bench_harp_scale.py --n 1000000 --out docs/results/harp-scale.json
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from thresher.select.harp.envelope import (
    best_prefix,
    emit_points,
    envelope_value,
    greedy_leaves,
)
from thresher.select.harp.hierarchy import (
    HierarchyConfig,
    build_hierarchy,
    default_measured_count,
    measurement_order,
)
from thresher.select.harp.posterior import leaf_posteriors


def rss_mb() -> float:
    """Current resident set size (MB) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_embeddings(n: int, d: int, n_centres: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around ``n_centres`` random directions (filled in chunks, float32 only)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        which = rng.integers(0, n_centres, size=m)
        block = centres[which] + rng.normal(scale=spread, size=(m, d)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s:s + m] = block
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--centres", type=int, default=2000, help="generating clusters")
    ap.add_argument("--spread", type=float, default=0.04, help="per-dimension noise sd around a centre")
    ap.add_argument("--leaf-size", type=int, default=200)
    ap.add_argument("--leaves-per-parent", type=int, default=4)
    ap.add_argument("--parents-per-large", type=int, default=8)
    ap.add_argument("--leaves-per-rep", type=int, default=4)
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.02, help="sd of a leaf measurement")
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()

    stages: dict[str, float] = {}
    rss: dict[str, float] = {"start": rss_mb()}
    t0 = time.perf_counter()
    x = synthetic_embeddings(a.n, a.d, a.centres, a.spread, a.seed)
    stages["generate"] = time.perf_counter() - t0
    rss["after_data"] = rss_mb()
    data_mb = x.nbytes / 2**20

    t = time.perf_counter()
    cfg = HierarchyConfig(leaf_size=a.leaf_size, leaves_per_parent=a.leaves_per_parent, parents_per_large=a.parents_per_large, seed=a.seed)
    h = build_hierarchy(x, cfg)
    stages["hierarchy"] = time.perf_counter() - t
    rss["after_hierarchy"] = rss_mb()

    t = time.perf_counter()
    order = measurement_order(h)
    n_meas = default_measured_count(h, a.leaves_per_rep)
    measured = order[:n_meas]
    stages["measurement_order"] = time.perf_counter() - t

    rng = np.random.default_rng(a.seed + 1)
    w = rng.normal(size=(a.domains, a.d))
    proj = h.leaf_centroids.astype(np.float64) @ w.T  # [L, D]
    z = (proj - proj.mean(axis=0)) / proj.std(axis=0)
    true = 0.04 * z - 0.02  # given leaf effects: linear (smooth) in the centroid, about 30% positive
    base = np.full(a.domains, 0.3)
    noisy = true + rng.normal(scale=a.noise, size=true.shape)
    s2 = np.full(true.shape, a.noise ** 2)

    k = round(a.budget * a.n)
    results = {}
    for label, meas in (("harp", measured), ("exhaustive", np.arange(h.n_leaves))):
        t = time.perf_counter()
        post = leaf_posteriors(h, meas, noisy[meas], s2[meas])
        stages[f"eb_{label}"] = time.perf_counter() - t
        active = post.mean.max(axis=0) > 0
        for env in ("conservative", "expansive"):
            t = time.perf_counter()
            tr = greedy_leaves(env, post.mean, base, active)
            n_pref = best_prefix(tr.gain)
            chosen = tr.order[:n_pref]
            points = emit_points(h, chosen, k)
            stages[f"select_{label}_{env}"] = time.perf_counter() - t
            results[f"{label}_{env}"] = {
                "leaves_chosen": int(n_pref), "points": len(points),
                "true_objective": float(envelope_value(env, true[chosen], base)[active].mean()),
            }
        if label == "harp":
            un = ~post.measured
            results["inference"] = {
                "unmeasured_leaves": int(un.sum()),
                "corr_inferred_vs_true": [float(np.corrcoef(post.mean[un, j], true[un, j])[0, 1]) for j in range(a.domains)],
                "mae_inferred": float(np.abs(post.mean[un] - true[un]).mean()),
                "mae_measured_posterior": float(np.abs(post.mean[~un] - true[~un]).mean()),
            }
    for env in ("conservative", "expansive"):
        tr = greedy_leaves(env, true, base, true.max(axis=0) > 0)
        chosen = tr.order[:best_prefix(tr.gain)]
        results[f"noise_free_{env}"] = {"leaves_chosen": len(chosen),
                                        "true_objective": float(envelope_value(env, true[chosen], base)[true.max(axis=0) > 0].mean())}
    total = time.perf_counter() - t0
    out = {
        "n": a.n, "d": a.d, "data_mb": round(data_mb, 1), "hierarchy": h.summary(), "measured_leaves": int(n_meas),
        "leaves": h.n_leaves, "measured_fraction": round(n_meas / h.n_leaves, 4), "k": k,
        "seconds": {s: round(v, 2) for s, v in stages.items()}, "total_seconds": round(total, 1),
        "harp_seconds_excluding_data": round(total - stages["generate"], 1),
        "rss_mb": {s: round(v, 1) for s, v in rss.items()}, "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_over_data_mb": round(peak_rss_mb() - rss["after_data"], 1), "results": results,
        "params": vars(a) | {"out": str(a.out) if a.out else None},
    }
    print(f"HARP scale: {a.n:,} x {a.d} ({data_mb:.0f} MB of float32), {h.n_large} large / {h.n_parents} parents / "
          f"{h.n_leaves} leaves, measured {n_meas} ({n_meas / h.n_leaves:.0%})")
    for s, v in stages.items():
        print(f"  {s:32s} {v:8.2f} s")
    print(f"  total (incl. data generation)    {total:8.2f} s;  peak RSS {peak_rss_mb():.0f} MB "
          f"(data alone {rss['after_data'] - rss['start']:.0f} MB; peak over data {peak_rss_mb() - rss['after_data']:.0f} MB)")
    for key, r in results.items():
        print(f"  {key:32s} {r}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
