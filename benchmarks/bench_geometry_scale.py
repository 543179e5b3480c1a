"""Embedding geometry at scale: each stage's time at 100K and 300K unit vectors (1M with --million).

Stages (what the signals and selectors run, on one thread by default):

- ``kmeans``: the ``kmeans`` signal's computation (k = round(sqrt(n / 2)); above
  ``KMEANS_FULL_FIT_MAX_ROWS`` rows trained on 64 sampled rows per centroid, every row
  assigned to its nearest centroid) plus the cosine distance to the cluster mean;
- ``silhouette``: :func:`silhouette_cosine_unit` of those clusters;
- ``relevance``: :func:`top_m_mean_cosine` against ``--dev`` reference rows (m = 5);
- ``knn_exact``: exact search (faiss ``IndexFlatIP``) timed on ``--exact-sample`` query rows
  and scaled to n (the full run is quadratic: hours at 1M);
- ``knn_ann``: the approximate search (:func:`thresher.signals.knn.ivf_knn`) and the kNN
  distances (m = 10); recall@10 against exact search on ``--recall-sample`` rows, and the
  mean absolute error of the kNN distance on those rows;
- ``semantic``: :func:`semantic_groups` (cosine >= 0.95 within each k-means cluster);
- ``deita``: DEITA's :func:`repr_filter` walking a random order until ``--budget`` x n are kept
  (cosine threshold 0.9).

The data: :func:`structured_unit`, a mixture of topics (sizes Zipf-like, spreads log-normal,
each topic a random 64-dimensional subspace with a decaying spectrum plus isotropic noise, a
shared offset) with 2% planted near-duplicates. Its defaults were set so that 5,000 rows
look like all-MiniLM-L6-v2 embeddings of the 5,000-example Alpaca slice by the nearest-
neighbour figures: median cosine to the 1st / 10th nearest neighbour 0.56 / 0.45 (Alpaca
0.59 / 0.42), median cosine of a random pair 0.03 (0.05), local intrinsic dimension (MLE,
20 neighbours) 20 (19).

Usage::

    THRESHER_THREADS=1 python benchmarks/bench_geometry_scale.py              # 100K and 300K, 384 dims
    THRESHER_THREADS=1 python benchmarks/bench_geometry_scale.py --million --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

STAGES = ("kmeans", "silhouette", "relevance", "knn_exact", "knn_ann", "semantic", "deita")


def structured_unit(n: int, d: int = 384, seed: int = 0, topics: int | None = None, dup_frac: float = 0.02) -> np.ndarray:
    """``n`` unit rows [n, d] float32 with the structure of sentence embeddings (see the module docs)."""
    rng = np.random.default_rng(seed)
    topics = topics or max(8, round(np.sqrt(n / 2)))
    r = 64
    between = (np.arange(1, d + 1) ** -0.25).astype(np.float32)
    between /= np.linalg.norm(between)
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    shared = rng.standard_normal(d, dtype=np.float32)
    shared /= np.linalg.norm(shared)
    centres = (rng.standard_normal((topics, d), dtype=np.float32) * between) @ rot + 0.35 * shared
    within = (np.arange(1, r + 1) ** -0.4).astype(np.float32)
    within *= 1.6 / np.linalg.norm(within)
    weights = np.arange(1, topics + 1, dtype=np.float64) ** -0.8
    spread = np.exp(rng.normal(scale=0.4, size=topics)).astype(np.float32)
    topic = rng.choice(topics, n, p=weights / weights.sum())
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= 0.6 / np.sqrt(d)
    order = np.argsort(topic, kind="stable")
    lims = np.searchsorted(topic[order], np.arange(topics + 1))
    for j in range(topics):
        rows = order[lims[j]:lims[j + 1]]
        basis = rng.standard_normal((r, d), dtype=np.float32) / np.sqrt(d)
        z = rng.standard_normal((len(rows), r), dtype=np.float32) * within
        x[rows] = centres[j] + spread[j] * (x[rows] + z @ basis)
    n_dup = int(dup_frac * n)
    src, dst = rng.integers(0, n, n_dup), rng.choice(n, n_dup, replace=False)
    x[dst] = x[src] + rng.standard_normal((n_dup, d), dtype=np.float32) * (0.05 / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Timer:
    """Wall and CPU seconds of each stage, and the RSS a stage adds at its peak (Linux: VmHWM,
    reset before each stage; the reset also resets ``ru_maxrss``, so the process peak is kept here)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.extra_mb: dict[str, float] = {}
        self.peak_mb = peak_rss_mb()

    def __call__(self, name: str, fn, *args, **kwargs):
        before = _status_mb("VmRSS")
        resettable = _reset_peak()
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.wall[name] = time.perf_counter() - w
        self.cpu[name] = time.process_time() - c
        if resettable:
            self.extra_mb[name] = _status_mb("VmHWM") - before
        self.peak_mb = max(self.peak_mb, peak_rss_mb(), _status_mb("VmHWM"))
        return out


def run_size(n: int, a) -> dict:
    from scipy.stats import spearmanr

    from thresher.select.baselines import repr_filter
    from thresher.signals.base import VECTORS
    from thresher.signals.dedup import semantic_groups
    from thresher.signals.geometry import (
        KMeansClusters,
        silhouette_cosine_unit,
        top_m_mean_cosine,
    )
    from thresher.signals.knn import (
        exact_knn,
        ivf_knn,
        knn_recall,
        neighbour_sims,
        top_k_exact,
    )

    x = structured_unit(n, a.d, seed=a.seed)
    t = Timer()
    out: dict = {"n": n, "d": a.d}
    want = set(a.stages)
    labels = None
    if want & {"kmeans", "silhouette", "semantic"}:
        cols = t("kmeans", KMeansClusters(backend="faiss", seed=a.seed).compute_pool, None, {"embedding": {VECTORS: x}})
        labels = cols["cluster"]
        sizes = np.bincount(labels)
        out["kmeans"] = {"clusters": len(sizes), "largest": int(sizes.max()),
                         "mean_dist_to_centroid": float(cols["dist_to_centroid"].mean())}
    if "silhouette" in want:
        s = t("silhouette", silhouette_cosine_unit, x, labels)
        out["silhouette"] = {"mean": float(s.mean())}
    if "relevance" in want:
        refs = structured_unit(a.dev, a.d, seed=a.seed + 1)
        t("relevance", top_m_mean_cosine, x, refs, 5)
    if "knn_exact" in want:
        q = min(a.exact_sample, n)
        t("knn_exact", exact_knn, x, 11, "faiss", x[:q])
        for clock in (t.wall, t.cpu):
            clock["knn_exact"] *= n / q  # scaled to every row
    if "knn_ann" in want:
        sims, ids = t("knn_ann", ivf_knn, x, 11)
        dist = 1.0 - neighbour_sims(sims, ids, 10).mean(axis=1)
        rows = np.sort(np.random.default_rng(a.seed).choice(n, min(a.recall_sample, n), replace=False))
        ex_s, ex_i = top_k_exact(x, x[rows], 11)
        self_first = np.where(ex_i[:, :1] == rows[:, None], ex_s[:, 1:], ex_s[:, :10])
        exact_dist = 1.0 - self_first.astype(np.float64).mean(axis=1)
        out["knn_ann"] = {"recall@10": knn_recall(x, sample=a.recall_sample, m=10, seed=a.seed, found=(sims, ids)),
                          "knn_distance_mae": float(np.abs(dist[rows] - exact_dist).mean()),
                          "knn_distance_spearman": float(spearmanr(dist[rows], exact_dist).statistic),
                          "knn_distance_mean": float(exact_dist.mean()), "knn_distance_sd": float(exact_dist.std())}
    if "semantic" in want:
        gid, gsize = t("semantic", semantic_groups, x, labels, 0.95)
        out["semantic"] = {"rows_in_groups": int((gsize > 1).sum()), "groups": len(np.unique(gid[gsize > 1]))}
    if "deita" in want:
        order = np.random.default_rng(a.seed).permutation(n)
        kept, scanned = t("deita", repr_filter, x, order, round(a.budget * n), 0.9)
        out["deita"] = {"kept": len(kept), "scanned": int(scanned)}
    out["wall_s"], out["cpu_s"], out["stage_peak_extra_mb"] = t.wall, t.cpu, t.extra_mb
    out["data_mb"] = x.nbytes / 2**20
    out["peak_rss_mb"] = max(t.peak_mb, peak_rss_mb())
    return out


def exponent(ns: list[int], ts: list[float]) -> float | None:
    """Least-squares slope of log(time) on log(n)."""
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--million", action="store_true", help="add 1,000,000 rows to --sizes")
    ap.add_argument("--d", type=int, default=384, help="dimensions (MiniLM: 384)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--dev", type=int, default=500, help="reference rows for task relevance")
    ap.add_argument("--budget", type=float, default=0.1, help="DEITA: share of the pool kept")
    ap.add_argument("--exact-sample", type=int, default=2000, help="query rows exact kNN is timed on")
    ap.add_argument("--recall-sample", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(a.threads)
    sizes = sorted(set(a.sizes + ([1_000_000] if a.million else [])))
    runs = []
    with threadpool_limits(limits=a.threads):
        for n in sizes:
            runs.append(run_size(n, a))
            print(f"n={n:,}: done, peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
    stages = [s for s in STAGES if s in runs[0]["wall_s"]]
    fits = {s: exponent(sizes, [r["wall_s"][s] for r in runs]) for s in stages}
    head = (f"{'stage':<11}" + "".join(f"{'wall s @' + format(n, ','):>16}" for n in sizes) + f"{'exponent':>10}"
            + f"{'+MB @' + format(sizes[-1], ','):>16}  notes")
    print(f"\n{a.threads} thread(s), d={a.d}\n" + head)
    for s in stages:
        note = {"knn_exact": f"scaled from {a.exact_sample} queries"}.get(s, "")
        if s == "knn_ann":
            note = "recall@10 " + " / ".join(f"{r['knn_ann']['recall@10']:.3f}" for r in runs)
            note += ", distance MAE " + " / ".join(f"{r['knn_ann']['knn_distance_mae']:.4f}" for r in runs)
            note += ", Spearman " + " / ".join(f"{r['knn_ann']['knn_distance_spearman']:.3f}" for r in runs)
        fit = f"{fits[s]:.2f}" if fits[s] is not None else "-"
        extra = runs[-1]["stage_peak_extra_mb"].get(s, float("nan"))
        print(f"{s:<11}" + "".join(f"{r['wall_s'][s]:>16.1f}" for r in runs) + f"{fit:>10}{extra:>16.0f}  {note}")
    print(f"data: {runs[-1]['data_mb']:.0f} MB at n={sizes[-1]:,}; peak RSS {runs[-1]['peak_rss_mb']:.0f} MB "
          "(+MB: what a stage adds at its peak over the RSS before it)")
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "d": a.d, "runs": runs, "exponents": fits}, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
