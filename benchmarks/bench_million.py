"""Benchmark: the whole train-free chain on a 1,000,000-example pool on one machine.

The pool (``million_pool.py``: GSM8K + Alpaca + ShareGPT bases varied per row, mixed
sources and lengths, 2% planted exact and 4% planted near duplicates; cached) is taken
from its raw JSONL shards through every train-free stage thresher has, each timed, with
the process's resident memory after it and its peak:

 1. load the JSONL shards (the pool's checks on every row) and write the pool as Parquet;
 2. text signals: ``text`` (SmolLM2's tokenizer), ``reasoning_steps``, ``unigram_entropy``,
    ``irei``, ``bloom_heuristic``;
 3. dedup: ``exact_dedup``, ``minhash`` (and the planted duplicates they find);
 4. ``embedding`` with the static encoder (``--encoder``, default ``static``: distilled from
    all-MiniLM-L6-v2 once and cached), ``kmeans``, ``knn_diversity`` (approximate
    neighbours above the exact-search size), ``semantic_dedup``, ``task_relevance`` to
    the ``gsm8k`` task's dev split;
 5. decontamination against the gsm8k test split (once; every selection reads the
    decontaminated view, as ``thresher select`` does);
 6. selection at a 10% budget: DEITA (quality ``unigram_entropy``, complexity
    ``reasoning_steps``: offline columns, no model pass), DSIR, THTB (quality
    ``unigram_entropy``, heuristic Bloom, no IC: its extrinsic stage clusters the stage's
    queries), HARP-C (hierarchy build, leaf measurements, empirical Bayes and point
    emission; **the leaf effects come from a synthetic oracle**, ``MathShareOracle`` below:
    dev accuracy grows with the share of worked math solutions in a subset — a
    stand-in for fine-tunes, which at this scale belong on a GPU), and one AutoSelection
    recipe execution (exact + MinHash dedup, a task-relevance filter, a source mix).

The model signals (``lm``: loss, IFD; ``crossfit_loss``) are not in the chain: they need a
forward pass per example (on this CPU ~40-400 examples/s for SmolLM2), which at 1M belongs
on a GPU (``thresher score --engine ray`` across GPU workers).

Each size runs in a fresh subprocess (so peak RSS is that size's; the CPU-bound text, hash and
static-embedding signals run their shards in one forked worker per core, whose largest peak RSS is
printed apart: their pages are the chain's, shared copy-on-write). With several sizes
the table gives the log-log wall and memory exponents (1.0 = linear).

    python benchmarks/bench_million.py                              # 1M
    python benchmarks/bench_million.py --sizes 100000 300000 1000000 --json million.json
    python benchmarks/bench_million.py --sizes 100000 --engine ray  # the signals on a local Ray cluster
    python benchmarks/bench_million.py --sizes 1000000 --peer       # + semhash on the same texts
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BUDGET = 0.1
TEXT_SIGNALS = ["text", "reasoning_steps", "unigram_entropy", "irei", "bloom_heuristic"]
QUALITY = "unigram_entropy"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pss_kb(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:  # a worker that just exited
        return 0


class MachinePeak:
    """The peak of this process's memory plus its children's (the forked shard workers),
    counted as proportional set size (Linux ``smaps_rollup``: a page shared by k processes
    counts 1/k in each, so the sum is the memory the job holds), sampled every ``every`` s."""

    def __init__(self, every: float = 0.5):
        import threading

        self.peak_kb, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[str]:
        me, out = str(os.getpid()), []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[1] == me:
                            out.append(d)
                except OSError:
                    continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_kb = max(self.peak_kb, _pss_kb("self") + sum(_pss_kb(c) for c in self._children()))

    def start(self) -> MachinePeak:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024.0


def worker_peak_mb() -> float:
    """The largest peak RSS of this process's finished children: the engine's forked shard workers
    (their pages are the chain's, shared copy-on-write, plus what each shard builds)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


class MathShareOracle:
    """A synthetic dev objective (a stand-in for fine-tunes in this benchmark): dev item i is
    "correct" iff ``share * min(1, n / 5000)`` exceeds its threshold (spread over (0.05, 0.95)),
    with ``share`` the share of the subset's answers that are GSM8K-style worked solutions
    (an ``####`` answer line) and ``n`` the subset size. Cached by subset; logged in a real ledger."""

    def __init__(self, task, pool):
        import numpy as np

        from thresher.data.ledger import CostLedger
        from thresher.data.pool import assistant_text

        self.task, self.pool, self.ledger = task.dev_view(), pool, CostLedger()
        self.math = {r["id"]: "####" in assistant_text(r) for r in pool}
        self.thresholds = np.array([(i * 0.61803) % 1.0 * 0.9 + 0.05 for i in range(len(self.task.dev))])
        self._seen: set = set()

    def score(self, ids, label=""):
        import numpy as np

        from thresher.data.ledger import LedgerEntry
        from thresher.oracle.core import Score

        ids = list(ids)
        share = (sum(self.math[i] for i in ids) / len(ids)) * min(1.0, len(ids) / 5000) if ids else 0.0
        correct = [bool(share > t) for t in self.thresholds]
        doms = sorted({it.domain for it in self.task.dev})
        per = {d: float(np.mean([c for c, it in zip(correct, self.task.dev) if it.domain == d])) for d in doms}
        key = hash(frozenset(ids))
        cached = key in self._seen
        self._seen.add(key)
        self.ledger.record(LedgerEntry(kind="oracle", label=label, cached=cached, extra={"subset_size": len(ids)}))
        return Score(value=float(np.mean(correct)), split="dev", per_domain=per, n_examples=len(ids), tokens=0,
                     seconds=0.0, cached=cached, key=str(key), n_items=len(correct), correct=correct)

    def score_many(self, id_lists, labels=None, workers=None):
        return [self.score(ids, lab) for ids, lab in zip(id_lists, labels or [""] * len(id_lists))]

    def base_score(self):
        return self.score([], "base")


def run_chain(n: int, engine: str, encoder: str, peer: bool, out: Path) -> None:
    os.environ.setdefault("THRESHER_PROGRESS", "0")
    import million_pool
    import numpy as np

    from thresher.api import compute_required
    from thresher.data.pool import load_pool
    from thresher.data.store import SignalStore
    from thresher.decontam import exclude_test_overlap
    from thresher.engine.local import run_signal
    from thresher.select.base import Budget, SignalView, SubsetSignalView, make_selector
    from thresher.signals.base import make_signal
    from thresher.tasks import get_task

    res: dict = {"n": n, "engine": engine, "encoder": encoder, "stages": {}, "rss_mb": {}, "peak_mb": {}, "facts": {}}

    def stage(name: str, t0: float) -> None:
        res["stages"][name] = round(time.perf_counter() - t0, 2)
        res["rss_mb"][name], res["peak_mb"][name] = round(rss_mb()), round(peak_mb())
        print(f"  n={n:>9,} {name:<34} {res['stages'][name]:8.1f} s   RSS {res['rss_mb'][name]:7.0f} MB   "
              f"peak {res['peak_mb'][name]:7.0f} MB", file=sys.stderr, flush=True)

    root = million_pool.build(n, quiet=True)
    labels = [json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines()]
    work = Path(tempfile.mkdtemp(prefix=f"million-{n}-"))
    machine = MachinePeak().start()
    try:
        t = time.perf_counter()
        pool, report = load_pool(root / "pool", on_error="skip", rejects_path=work / "rejects.jsonl")
        pool.save(work / "pool.parquet")
        res["facts"]["rows_rejected"] = report.rows_rejected
        stage("load JSONL + write Parquet", t)

        store = SignalStore(work / "store")
        task = get_task("gsm8k")

        def signal(name: str, label: str | None = None, **params):
            sig = make_signal(name, **params)
            t0 = time.perf_counter()
            run_signal(sig, pool, store, engine=engine, show_progress=False)
            stage(label or name, t0)
            return sig

        for name in TEXT_SIGNALS:
            signal(name, **({"model": "small"} if name == "text" else {}))
        emb = {"embed_model": encoder}
        signal("exact_dedup")
        mh = signal("minhash")
        signal("embedding", model=encoder)
        signal("kmeans", **emb)
        signal("knn_diversity", **emb)
        signal("semantic_dedup", **emb)
        signal("task_relevance", task="gsm8k", **emb)

        view = SignalView(pool, store)
        groups = np.asarray(view.signal(mh)["minhash_cluster"])
        pos = {r["id"]: i for i, r in enumerate(labels)}
        near = [lab for lab in labels if lab["kind"] == "near_dup"]
        found = sum(groups[pos[lab["id"]]] == groups[pos[lab["of"]]] for lab in near)
        res["facts"]["planted_near_dups"] = len(near)
        res["facts"]["planted_near_dups_found_by_minhash"] = int(found)

        t = time.perf_counter()
        view_pool, _, _ = exclude_test_overlap(pool, task, show_progress=False)
        res["facts"]["test_overlap_excluded"] = len(pool) - len(view_pool)
        stage("decontaminate (gsm8k test)", t)
        sview = SubsetSignalView(view_pool, view) if view_pool is not pool else view
        budget = Budget.parse(BUDGET)

        methods = [
            ("deita", {"quality": QUALITY, "complexity": "reasoning_steps", **emb}),
            ("dsir", {}),
            ("thtb", {"quality": QUALITY}),
            ("harp-c", {"embed_model": encoder}),
        ]
        oracle = None
        for name, params in methods:
            selector = make_selector(name, **params)
            if selector.uses_oracle and oracle is None:
                oracle = MathShareOracle(task, view_pool)
            t = time.perf_counter()
            sel = selector.select(view_pool, sview, budget, task=task, seed=0, oracle=oracle)
            stage(f"select {name}", t)
            res["facts"][f"{name}_selected"] = len(sel.ids)

        from thresher.select.autoselection import RecipeSelector

        recipe = [{"exact_dedup": {}}, {"minhash_dedup": {}},
                  {"task_relevance_filter": {"fraction": 0.5, "direction": "high"}},
                  {"source_mix": {"weights": {"gsm8k": 0.7, "alpaca": 0.25, "sharegpt": 0.05}}},
                  {"truncate": {"total": int(BUDGET * len(view_pool)), "seed": 0}}]
        rs = RecipeSelector(recipe=recipe, signals={"scorer": "small", "embed_model": encoder, "task": "gsm8k", "state": ["tokens", "relevance"]})
        t = time.perf_counter()
        compute_required(rs, pool, store, engine=engine, show_progress=False)  # its per-domain relevance columns
        stage("AutoSelection recipe: its signals", t)
        t = time.perf_counter()
        sel = rs.select(view_pool, sview, budget)
        stage("AutoSelection recipe", t)
        res["facts"]["recipe_selected"] = len(sel.ids)
        res["peak_rss_mb"] = round(peak_mb())  # the chain's own peak (the peer below runs in this process too)
        res["worker_peak_rss_mb"] = round(worker_peak_mb())
        res["machine_peak_pss_mb"] = round(machine.peak_mb)
        if peer:
            res["peer"] = semhash_peer(pool, store, encoder)
    finally:
        machine.stop()
        shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = round(sum(res["stages"].values()), 1)
    out.write_text(json.dumps(res))


def semhash_peer(pool, store, encoder: str, threshold: float = 0.95, sample: int = 500) -> dict:
    """semhash (PyPI: exact-duplicate grouping, a usearch ANN index, neighbours above the
    threshold) on the same texts and the same stored vectors, at thresher's semantic-dedup
    threshold. Returns both sides' seconds, duplicates flagged, and the pairs compared: the
    share of semhash's (kept, removed) pairs that thresher put in one group, and the exact
    cosine of a sample of the pairs only one side found."""
    import numpy as np
    from semhash import SemHash

    from thresher.data.pool import record_text
    from thresher.select.base import SignalView
    from thresher.signals.base import VECTORS, make_signal
    from thresher.signals.embed import load_encoder

    view = SignalView(pool, store)
    x = np.asarray(view.signal(make_signal("embedding", model=encoder))[VECTORS], dtype=np.float32)
    groups = np.asarray(view.signal(make_signal("semantic_dedup", embed_model=encoder))["semdup_group"])
    records = [{"pos": str(i), "text": record_text(r)} for i, r in enumerate(pool)]
    t = time.perf_counter()
    sh = SemHash.from_embeddings(embeddings=x, records=records, model=load_encoder(encoder), columns=["text"])
    result = sh.self_deduplicate(threshold=threshold)
    seconds = time.perf_counter() - t
    pairs = [(int(f.duplicate_of["pos"]), int(f.record["pos"])) for f in result.filtered]
    same = sum(groups[a] == groups[b] for a, b in pairs)
    thr_removed = int((groups != np.arange(len(groups))).sum())
    rng = np.random.default_rng(0)
    only_semhash = [(a, b) for a, b in pairs if groups[a] != groups[b]]
    pick = rng.permutation(len(only_semhash))[:sample]
    cos_only_semhash = [float(x[only_semhash[i][0]] @ x[only_semhash[i][1]]) for i in pick]
    return {"threshold": threshold, "semhash_seconds": round(seconds, 1), "semhash_removed": len(result.filtered),
            "thresher_removed": thr_removed, "semhash_pairs_in_one_thresher_group": round(same / max(1, len(pairs)), 4),
            "semhash_only_pairs": len(only_semhash),
            "semhash_only_pairs_exact_cosine_ge_threshold": (round(float(np.mean(np.array(cos_only_semhash) >= threshold)), 4)
                                                           if cos_only_semhash else None)}


def slope(x0, y0, x1, y1):
    return math.log(y1 / y0) / math.log(x1 / x0) if y0 > 0 and y1 > 0 and x0 != x1 else None


def print_table(results: list[dict]) -> None:
    sizes = [r["n"] for r in results]
    names = list(dict.fromkeys(s for r in results for s in r["stages"]))
    head = f"{'stage':<36}" + "".join(f"{f'{n:,} s':>12}{'share':>7}" for n in sizes) + f"{'exponent':>10}"
    print(head)
    print("-" * len(head))
    memory = {"peak RSS (MB)": "peak_rss_mb", "shard workers' peak RSS (MB)": "worker_peak_rss_mb",
              "peak PSS, chain + workers (MB)": "machine_peak_pss_mb"}
    for name in names + ["total", *memory]:
        if name == "total":
            vals = [r["total_s"] for r in results]
        elif name in memory:
            vals = [r.get(memory[name]) for r in results]
        else:
            vals = [r["stages"].get(name) for r in results]
        cells = ""
        for r, v in zip(results, vals):
            share = f"{100 * v / r['total_s']:.0f}%" if v is not None and name not in memory else ""
            cells += f"{(f'{v:,.1f}' if v is not None else '-'):>12}{share:>7}"
        pts = [(n, v) for n, v in zip(sizes, vals) if v]
        e = slope(pts[0][0], pts[0][1], pts[-1][0], pts[-1][1]) if len(pts) >= 2 else None
        print(f"{name:<36}{cells}{(f'{e:.2f}' if e is not None else '-'):>10}")
    for r in results:
        print(f"n={r['n']:,} ({r['engine']}, encoder {r['encoder']}): {json.dumps(r['facts'])}")
        if r.get("peer"):
            print(f"  peer: {json.dumps(r['peer'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--engine", choices=["local", "ray"], default="local")
    ap.add_argument("--encoder", default="static", help="sentence encoder of the embedding stages (static, minilm, ...)")
    ap.add_argument("--peer", action="store_true", help="also run semhash on the same texts (its dedup vs thresher's)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        run_chain(a.child, a.engine, a.encoder, a.peer, a.child_out)
        return
    if a.encoder in ("static", "minilm-static"):  # distilled once per machine, like the pool: outside the timed chain
        from thresher.signals.static_embed import load_static

        load_static()
    results = []
    for n in a.sizes:
        import million_pool

        million_pool.build(n)  # outside the timed child: the pool is the user's input
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        cmd = [sys.executable, __file__, "--child", str(n), "--child-out", str(out), "--engine", a.engine,
               "--encoder", a.encoder] + (["--peer"] if a.peer else [])
        subprocess.run(cmd, check=True)
        results.append(json.loads(out.read_text()))
        out.unlink()
    print_table(results)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
