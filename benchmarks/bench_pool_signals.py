"""Benchmark: pool signals at 10K, 30K and 100K examples (wall time, peak RSS, growth exponents).

The pool is Alpaca-5000 replicated: copy 0 is the original, copy r >= 1 of an example has
two adjacent words of its instruction swapped (a seeded choice) and " (variant r)"
appended, so no two examples are exact duplicates while most have near duplicates
(a realistic load for MinHash and clustering).

Each size runs in a fresh subprocess (peak RSS = ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
of that process, so sizes do not inherit each other's peaks), computing every signal
into a temporary store with the local engine. Signals that need the encoder are timed
apart from the embedding itself (it is computed first). The table gives seconds per
signal, the total, the peak RSS, and the log-log slope from the smallest to the largest
size (1.0 = linear).

    HF_HUB_OFFLINE=1 python benchmarks/bench_pool_signals.py                  # 10K, 30K, 100K
    python benchmarks/bench_pool_signals.py --embed-sizes 2000 5000 --vector-sizes 10000 30000 100000
    python benchmarks/bench_pool_signals.py --json results.json

Encoding is the slow part on a CPU (all-MiniLM-L6-v2 on Alpaca user + answer texts,
~75 tokens each). ``--embed-sizes`` runs the encoder signals (embedding, kmeans,
knn_diversity, semantic_dedup) at other sizes than the text and dedup signals, and
``--vector-sizes`` times the clustering code (k-means, kNN, semantic grouping) at large
sizes on synthetic unit vectors, which cost the same as real ones of that shape.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHEAP_SIGNALS = ["text", "unigram_entropy", "reasoning_steps", "irei", "bloom_heuristic", "exact_dedup", "minhash",
                 "tfidf_silhouette"]
ENCODER_SIGNALS = ["embedding", "kmeans", "knn_diversity", "semantic_dedup"]
VECTOR_STEPS = ["kmeans [synthetic]", "knn_diversity [synthetic]", "semantic_dedup [synthetic]"]
SYNTHETIC_DIM = 384


def alpaca_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    root = os.environ.get("THRESHER_SHARED_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    return Path(root) / "alpaca" / "alpaca_5000.json"


def replicated_alpaca(path: Path, n: int, seed: int = 0) -> tuple[list[dict], int]:
    """(n pool records, rows of the file rejected): the valid Alpaca rows, then perturbed copies.

    Copy r >= 1 of a record has two adjacent words of its instruction (the first paragraph
    of the user turn) swapped, a seeded choice, and " (variant r)" appended.
    """
    from thresher.data.pool import load_pool

    with tempfile.TemporaryDirectory() as tmp:
        base_pool, report = load_pool(path, on_error="skip", rejects_path=Path(tmp) / "rejects.jsonl")
    base = list(base_pool)
    rows = []
    for i in range(n):
        src = base[i % len(base)]
        copy = i // len(base)
        messages = [dict(m) for m in src["messages"]]
        if copy:
            rng = random.Random(f"{seed}-{i}")
            user = next(m for m in messages if m["role"] == "user")
            instruction, sep, rest = user["content"].partition("\n\n")
            ws = instruction.split()
            if len(ws) >= 2:
                j = rng.randrange(len(ws) - 1)
                ws[j], ws[j + 1] = ws[j + 1], ws[j]
            user["content"] = " ".join(ws) + f" (variant {copy})" + sep + rest
        rows.append({"id": f"a{i:06d}", "messages": messages, "source": "alpaca", "meta": {}})
    return rows, report.rows_rejected


def synthetic_vectors(n: int, dim: int = SYNTHETIC_DIM, centres: int = 500, noise: float = 0.3, seed: int = 0):
    """Unit vectors around ``centres`` random directions (for timing the clustering code at sizes
    where encoding the texts would take too long: its cost depends on n, d and k, not on the text)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[np.arange(n) % centres] + (noise / np.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def run_child(n: int, signals: list[str], synthetic: bool, alpaca: Path, out: Path) -> None:
    os.environ.setdefault("THRESHER_PROGRESS", "0")
    from thresher.data.pool import Pool
    from thresher.engine.local import run_signal
    from thresher.signals.base import VECTORS, make_signal

    result: dict = {"n": n, "seconds": {}, "rss_after_mb": {}}

    def record(name: str, seconds: float) -> None:
        result["seconds"][name] = seconds
        result["rss_after_mb"][name] = peak_rss_mb()
        print(f"  n={n:>7} {name:<28} {seconds:9.1f} s  peak RSS {result['rss_after_mb'][name]:8.0f} MB", file=sys.stderr, flush=True)

    if signals:
        from thresher.data.store import SignalStore

        t0 = time.perf_counter()
        records, rejected = replicated_alpaca(alpaca, n)
        pool = Pool.from_records(records)
        _ = pool.fingerprint
        result["pool_seconds"] = time.perf_counter() - t0
        result["alpaca_rejected"] = rejected
        result["rss_after_mb"]["pool"] = peak_rss_mb()
        root = Path(tempfile.mkdtemp(prefix=f"bench-signals-{n}-"))
        try:
            store = SignalStore(root)
            if "embedding" in signals:  # time the encoder load apart from the encoding (the signal reuses it)
                from thresher.signals.embed import load_encoder

                t = time.perf_counter()
                load_encoder(make_signal("embedding").params.model)
                record("embedding: encoder load", time.perf_counter() - t)
            for name in signals:
                sig = make_signal(name)
                t = time.perf_counter()
                run_signal(sig, pool, store, show_progress=False)
                record(name, time.perf_counter() - t)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if synthetic:
        from thresher.signals.dedup import semantic_groups
        from thresher.signals.geometry import KMeansClusters, KNNDiversity

        x = synthetic_vectors(n)
        t = time.perf_counter()
        clusters = KMeansClusters().compute_pool(None, {"embedding": {VECTORS: x}})["cluster"]
        record(VECTOR_STEPS[0], time.perf_counter() - t)
        t = time.perf_counter()
        KNNDiversity().compute_pool(None, {"embedding": {VECTORS: x}})
        record(VECTOR_STEPS[1], time.perf_counter() - t)
        t = time.perf_counter()
        semantic_groups(x, clusters, 0.95)
        record(VECTOR_STEPS[2], time.perf_counter() - t)
    result["peak_rss_mb"] = peak_rss_mb()
    out.write_text(json.dumps(result))


def slope(x0: float, y0: float, x1: float, y1: float) -> float | None:
    if y0 <= 0 or y1 <= 0 or x0 == x1:
        return None
    return math.log(y1 / y0) / math.log(x1 / x0)


def print_table(results: list[dict]) -> None:
    sizes = [r["n"] for r in results]
    names: list[str] = []
    for r in results:
        names += [s for s in r["seconds"] if s not in names]
    head = f"{'signal':<30}" + "".join(f"{f'{n:,}':>12}" for n in sizes) + f"{'exponent':>10}"
    print(head)
    print("-" * len(head))

    main_sizes = {r["n"] for r in results if r.get("main", True)}

    def row(label: str, values: list[float | None], fmt: str, main_only: bool = False) -> None:
        cells = "".join(f"{format(v, fmt):>12}" if v is not None else f"{'-':>12}" for v in values)
        pts = [(n, v) for n, v in zip(sizes, values) if v is not None and (n in main_sizes or not main_only)]
        e = slope(pts[0][0], pts[0][1], pts[-1][0], pts[-1][1]) if len(pts) >= 2 else None
        print(f"{label:<30}{cells}{(f'{e:.2f}' if e is not None else '-'):>10}")

    for name in names:
        row(name, [r["seconds"].get(name) for r in results], ".1f")
    cheap = [n for n in names if n in CHEAP_SIGNALS]
    if cheap:
        row("total text + dedup signals", [sum(r["seconds"][c] for c in cheap) if all(c in r["seconds"] for c in cheap) else None
                                           for r in results], ".1f")
    row("total (everything run)", [sum(r["seconds"].values()) for r in results], ".1f", main_only=True)
    row("peak RSS (MB)", [r["peak_rss_mb"] for r in results], ".0f", main_only=True)
    row("pool build (s)", [r.get("pool_seconds") for r in results], ".1f", main_only=True)
    print("exponent = log-log slope between the smallest and largest size with a value (1.0 = linear); for the total,\n"
          f"peak RSS and pool build rows only over the --sizes runs {sorted(main_sizes)}; "
          "[synthetic] = the clustering code on synthetic 384-d unit vectors")
    rejected = {r.get("alpaca_rejected") for r in results if "alpaca_rejected" in r}
    if rejected - {0}:
        print(f"Alpaca rows rejected by the loader (empty fields) and left out of the base: {sorted(rejected)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000], help="pool sizes for the text and dedup signals")
    ap.add_argument("--embed-sizes", type=int, nargs="*", default=None,
                    help="pool sizes for the encoder signals (embedding, kmeans, knn_diversity, semantic_dedup); default: --sizes")
    ap.add_argument("--vector-sizes", type=int, nargs="*", default=None,
                    help="sizes at which to time k-means, kNN and semantic grouping on synthetic vectors; default: none")
    ap.add_argument("--signals", nargs="*", default=CHEAP_SIGNALS, help="text/dedup signals to time")
    ap.add_argument("--alpaca", default=None, help="alpaca_5000.json (default: $THRESHER_SHARED_DATA/alpaca/alpaca_5000.json)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    alpaca = alpaca_path(args.alpaca)
    if not alpaca.is_file():
        sys.exit(f"Alpaca file not found: {alpaca} (pass --alpaca or set THRESHER_SHARED_DATA)")
    if args.child is not None:
        run_child(args.child, args.signals, args.synthetic, alpaca, Path(args.out))
        return
    embed_sizes = set(args.sizes if args.embed_sizes is None else args.embed_sizes)
    vector_sizes = set(args.vector_sizes or [])
    results = []
    for n in sorted(set(args.sizes) | embed_sizes | vector_sizes):
        signals = (list(args.signals) if n in args.sizes else []) + (ENCODER_SIGNALS if n in embed_sizes else [])
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        print(f"n={n:,}: {', '.join(signals + (['synthetic-vector clustering'] if n in vector_sizes else []))}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", str(n), "--out", str(out), "--alpaca", str(alpaca), "--signals", *signals]
        if n in vector_sizes:
            cmd.append("--synthetic")
        subprocess.run(cmd, check=True)
        results.append({**json.loads(out.read_text()), "main": n in args.sizes})
        out.unlink()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
