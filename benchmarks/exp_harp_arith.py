"""HARP on the arith testbed (micro oracle): HARP-C / HARP-E vs random, full data and the
exhaustive version of the same greedy ("measure every leaf"), with oracle runs for each.

Setup: arith pool of 2000 (default ArithConfig; dev 200 items in 3 domains add / sub /
mix), micro oracle (``TrainConfig.for_tier("micro", steps=500)``; the seed is also the
training seed, so rows are paired by seed), budget 30% by default. HARP runs on the
MiniLM ``embedding`` signal with leaves of ~200 examples (``leaf_size=200,
leaves_per_parent=3``: ~10 leaves in ~4 parents), one representative per parent plus
one per 4 leaves (``leaves_per_rep=4``). Every oracle run is cached in a shared folder
(``--cache``, keyed by subset and config), so the exhaustive variant re-uses the leaf runs
of the representative variant and no identical subset is ever trained twice.

Rows per seed and budget:

- ``harp-c`` / ``harp-e``: representatives measured; ``fill=none`` (the best prefix only,
  possibly fewer than k points) and ``fill=posterior`` (topped up to k by posterior effect);
- ``... exhaustive``: the same method with every leaf measured (``measure="all"``);
- ``random`` (seed = run seed) and ``full``.

Oracle runs per row: ``selection_runs`` = runs the selection needs (HARP: base + one per
measured leaf; exhaustive: base + every leaf; random/full: 0), each row then costs one
final training run (as every method does). ``fresh_runs`` counts what actually ran
(cache-aware).

Cost-to-match: for each envelope and fill, HARP is re-run with ``max_measured`` = m for
m = number of parents, ..., number of leaves (a growing prefix of the measurement order, so
measurements are reused); the smallest m whose final test accuracy is within 1 point of
the exhaustive one (``>= exhaustive - 0.01``) gives the ratio of oracle runs
``(1 + m) / (1 + L)``. Identical selections share their final run.

Also: a measured-vs-inferred plot of leaf effects (exhaustive measurements against HARP's
posteriors, every seed), written to ``docs/results/harp-arith-effects.png``.

Run one seed at a time under the CPU lock, then render::

    flock /work/notes/cpu.lock python benchmarks/exp_harp_arith.py run --seeds 0
    flock /work/notes/cpu.lock python benchmarks/exp_harp_arith.py run --seeds 1
    flock /work/notes/cpu.lock python benchmarks/exp_harp_arith.py run --seeds 2
    python benchmarks/exp_harp_arith.py report
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "harp-arith.json"
REPORT = REPO / "docs" / "results" / "harp-arith.md"
EFFECTS_PNG = REPO / "docs" / "results" / "harp-arith-effects.png"
SCALE = REPO / "docs" / "results" / "harp-scale.json"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
HARP_PARAMS = {"leaf_size": 200, "leaves_per_parent": 3, "leaves_per_rep": 4, "bootstrap": 1000}
VARIANTS = [  # (row label, selector, measure, fill)
    ("harp-c", "harp-c", "representatives", "none"),
    ("harp-c +fill", "harp-c", "representatives", "posterior"),
    ("harp-c exhaustive", "harp-c", "all", "none"),
    ("harp-c exhaustive +fill", "harp-c", "all", "posterior"),
    ("harp-e", "harp-e", "representatives", "none"),
    ("harp-e +fill", "harp-e", "representatives", "posterior"),
    ("harp-e exhaustive", "harp-e", "all", "none"),
    ("harp-e exhaustive +fill", "harp-e", "all", "posterior"),
]


def exhaustive_label(label: str) -> str:
    """'harp-c' -> 'harp-c exhaustive', 'harp-c +fill' -> 'harp-c exhaustive +fill'."""
    env, _, fill = label.partition(" ")
    return f"{env} exhaustive" + (f" {fill}" if fill else "")


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of per-seed differences a - b with a t 95% interval."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"mean": round(mean, 4), "diffs": [round(x, 4) for x in d], "ci95": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = T_975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": round(mean, 4), "diffs": [round(x, 4) for x in d], "ci95": [round(mean - half, 4), round(mean + half, 4)]}


# --------------------------------------------------------------------------- one seed


def run_seed(seed: int, budget: float, args) -> dict:
    from thresher.data.ledger import CostLedger
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle
    from thresher.select.base import Budget, SignalView, make_selector
    from thresher.signals.base import make_signal
    from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

    out = Path(args.out)
    pool, task, labels = ArithTestbed(ArithConfig(pool_size=args.pool_size, dev_size=args.dev_size, test_size=args.test_size)).build()
    store = SignalStore(out / "store")
    run_signal(make_signal("embedding"), pool, store, show_progress=False)
    view = SignalView(pool, store)
    ledger = CostLedger(out / f"ledger-s{seed}.jsonl")
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=args.steps, seed=seed),
                    cache_dir=args.cache, ledger=ledger, show_progress=False, workers=args.workers)
    k = Budget.parse(budget).size(len(pool))
    t_seed = time.perf_counter()
    tag = f"s{seed}-b{budget:g}"
    print(f"[seed {seed}, budget {budget:g} = {k} examples] pool {len(pool)}, dev {len(task.dev)} ({', '.join(task.dev_view().domains)})",
          flush=True)

    plans = []  # (label, ids, info)
    harp_info = {}
    for label, name, measure, fill in VARIANTS:
        t = time.perf_counter()
        art = out / "artifacts" / f"{label.replace(' ', '_')}-{tag}"
        sel = make_selector(name, measure=measure, fill=fill, **HARP_PARAMS).select(
            pool, view, budget, task=task.dev_view(), oracle=oracle, seed=seed, artifacts_dir=art)
        dg = sel.diagnostics
        info = {"selection_runs": dg["cost"]["runs_needed"], "runs_if_every_leaf_measured": dg["cost"]["runs_if_every_leaf_measured"],
                "fresh_runs": dg["cost"]["fresh_oracle_runs"], "measured_leaves": dg["measured_leaves"],
                "leaves": dg["cost"]["leaves"], "parents": dg["hierarchy"]["parents"], "chosen_leaves": dg["chosen_leaves"],
                "filled_leaves": dg["filled_leaves"], "shortfall": dg["shortfall"], "active_domains": dg["active_domains"],
                "predicted_objective": round(dg["predicted_objective"], 4), "tau2": dg["tau2"], "artifacts": str(art),
                "select_seconds": round(time.perf_counter() - t, 1)}
        harp_info[label] = info
        plans.append((label, sel.ids, info))
        print(f"  {label:26s} measured {len(dg['measured_leaves'])}/{dg['cost']['leaves']} leaves, chosen {dg['chosen_leaves']}"
              f" (+{len(dg['filled_leaves'])} filled), {len(sel.ids)} pts, fresh runs {dg['cost']['fresh_oracle_runs']}", flush=True)
    rnd = make_selector("random").select(pool, view, budget, seed=seed)
    plans.append(("random", rnd.ids, {"selection_runs": 0}))
    plans.append(("full", pool.ids, {"selection_runs": 0}))

    rows = finals(plans, oracle, labels, seed, budget, defect_counts, tag)

    # cost-to-match sweep
    sweep = {}
    exh_test = {r["method"]: r["test_acc"] for r in rows}
    for label, name, _, fill in [v for v in VARIANTS if v[2] == "representatives"]:
        if label not in args.sweep:
            continue
        target = exh_test[exhaustive_label(label)]
        n_leaves, n_par = harp_info[label]["leaves"], harp_info[label]["parents"]
        steps = []
        for m in range(n_par, n_leaves + 1):
            sel = make_selector(name, fill=fill, max_measured=m, **HARP_PARAMS).select(
                pool, view, budget, task=task.dev_view(), oracle=oracle, seed=seed)
            sc = oracle.score(sel.ids, label=f"{label} m={m} {tag}")
            te = oracle.score_test(sel.ids, label=f"{label} m={m} {tag}")
            steps.append({"m": m, "runs": 1 + m, "dev_acc": round(sc.value, 4), "test_acc": round(te.value, 4),
                          "chosen_leaves": sel.diagnostics["chosen_leaves"], "n_selected": len(sel.ids)})
            print(f"  sweep {label:14s} m={m:2d}: test {te.value:.3f} (exhaustive {target:.3f}) dev {sc.value:.3f}", flush=True)
            if te.value >= target - 0.01:
                break
        reached = steps[-1]["test_acc"] >= target - 0.01
        sweep[label] = {"exhaustive_test": target, "leaves": n_leaves, "steps": steps, "reached": reached,
                        "m_needed": steps[-1]["m"] if reached else None,
                        "runs_needed": 1 + steps[-1]["m"] if reached else None, "runs_exhaustive": 1 + n_leaves,
                        "ratio": round((1 + steps[-1]["m"]) / (1 + n_leaves), 4) if reached else None}
    part = {"seed": seed, "budget": budget, "k": k, "rows": rows, "sweep": sweep, "seconds": round(time.perf_counter() - t_seed, 1),
            "ledger": ledger.summary(), "harp_params": HARP_PARAMS, "steps": args.steps, "pool_size": args.pool_size}
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"{tag}.json").write_text(json.dumps(part, indent=1))
    print(f"[seed {seed}] done in {part['seconds'] / 60:.1f} min; wrote {parts / f'{tag}.json'}", flush=True)
    return part


def finals(plans, oracle, labels, seed, budget, defect_counts, tag) -> list[dict]:
    """Train once per distinct selection, score dev and (once) test."""
    scores = oracle.score_many([ids for _, ids, _ in plans], labels=[f"{lab} {tag}" for lab, _, _ in plans])
    rows = []
    for (label, ids, info), sc in zip(plans, scores):
        te = oracle.score_test(ids, label=f"{label} {tag}")
        rows.append({"method": label, "seed": seed, "budget": budget, "n_selected": len(ids), "dev_acc": round(sc.value, 4),
                     "test_acc": round(te.value, 4), "dev_per_domain": {d: round(v, 4) for d, v in sc.per_domain.items()},
                     "test_per_domain": {d: round(v, 4) for d, v in te.per_domain.items()},
                     "defects": defect_counts(ids, labels), **info})
        print(f"  final {label:26s} n={len(ids):4d} dev {sc.value:.3f} test {te.value:.3f}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def load_parts(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]


def effects_plot(parts: list[dict], path: Path) -> dict:
    """Exhaustive measured effect (x) vs HARP's posterior (y) for every leaf, per domain, all seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts: dict[str, list] = {}
    for part in parts:
        rows = {r["method"]: r for r in part["rows"]}
        for env in ("harp-c", "harp-e"):
            rep = json.loads((Path(rows[env]["artifacts"]) / "leaf_posteriors.json").read_text())["rows"]
            exh = json.loads((Path(rows[f"{env} exhaustive"]["artifacts"]) / "leaf_posteriors.json").read_text())["rows"]
            truth = {(r["leaf"], r["domain"]): r["raw_effect"] for r in exh}
            for r in rep:
                pts.setdefault(r["domain"], []).append((truth[(r["leaf"], r["domain"])], r["post_mean"], math.sqrt(r["post_var"]),
                                                        r["measured"], part["seed"], env))
            break  # both envelopes share the tree and the measurements: one set of points per seed
    domains = sorted(pts)
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 4), squeeze=False)
    stats = {}
    for ax, d in zip(axes[0], domains):
        arr = pts[d]
        x = np.array([p[0] for p in arr])
        y = np.array([p[1] for p in arr])
        sd = np.array([p[2] for p in arr])
        m = np.array([p[3] for p in arr])
        ax.errorbar(x[m], y[m], yerr=1.96 * sd[m], fmt="o", color="tab:blue", capsize=2, ms=5, label="measured (posterior)")
        ax.errorbar(x[~m], y[~m], yerr=1.96 * sd[~m], fmt="o", mfc="white", color="tab:orange", capsize=2, ms=5,
                    label="inferred (inherited)")
        lo, hi = min(x.min(), y.min()) - 0.02, max(x.max(), y.max()) + 0.02
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
        ax.set_xlabel("measured effect (exhaustive run)")
        ax.set_title(f"domain {d}")
        un = ~m
        stats[d] = {"inferred_leaves": int(un.sum()),
                    "corr_inferred": round(float(np.corrcoef(x[un], y[un])[0, 1]), 3) if un.sum() > 2 and np.std(x[un]) > 0 and np.std(y[un]) > 0 else None,
                    "mae_inferred": round(float(np.abs(x[un] - y[un]).mean()), 4) if un.any() else None,
                    "mae_measured_posterior": round(float(np.abs(x[m] - y[m]).mean()), 4),
                    "coverage95_inferred": round(float((np.abs(x[un] - y[un]) <= 1.96 * sd[un]).mean()), 3) if un.any() else None}
    axes[0][0].set_ylabel("HARP posterior effect (95% band)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("arith, micro: leaf effects measured vs inferred by HARP (all seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return stats


def aggregate(parts: list[dict]) -> dict:
    by_budget: dict[float, list[dict]] = {}
    for p in parts:
        by_budget.setdefault(p["budget"], []).append(p)
    out = {}
    for budget, ps in sorted(by_budget.items()):
        seeds = sorted(p["seed"] for p in ps)
        rows = [r for p in sorted(ps, key=lambda q: q["seed"]) for r in p["rows"]]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        summary = {}
        for m in methods:
            rs = [r for r in rows if r["method"] == m]
            test = [r["test_acc"] for r in rs]
            dev = [r["dev_acc"] for r in rs]
            summary[m] = {"test_mean": round(float(np.mean(test)), 4), "test_sd": round(float(np.std(test, ddof=1)), 4) if len(test) > 1 else None,
                          "dev_mean": round(float(np.mean(dev)), 4), "n_selected_mean": round(float(np.mean([r["n_selected"] for r in rs])), 1),
                          "selection_runs_mean": round(float(np.mean([r.get("selection_runs", 0) for r in rs])), 2),
                          "seeds": len(rs)}
            if m != "random":
                summary[m]["vs_random"] = paired(test, [r["test_acc"] for r in rows if r["method"] == "random"])
            if m.startswith("harp") and "exhaustive" not in m:
                summary[m]["vs_exhaustive"] = paired(test, [r["test_acc"] for r in rows if r["method"] == exhaustive_label(m)])
        ratios = {}
        for label in sorted({lab for p in ps for lab in p["sweep"]}):
            sw = [p["sweep"][label] for p in ps if label in p["sweep"]]
            rs = [s["ratio"] for s in sw if s["ratio"] is not None]
            ratios[label] = {"per_seed": [s["ratio"] for s in sw], "m_needed": [s["m_needed"] for s in sw],
                             "leaves": [s["leaves"] for s in sw], "mean_ratio": round(float(np.mean(rs)), 3) if rs else None}
        out[f"{budget:g}"] = {"seeds": seeds, "rows": rows, "summary": summary, "cost_to_match": ratios,
                              "sweeps": {p["seed"]: p["sweep"] for p in ps}, "seconds": sum(p["seconds"] for p in ps)}
    return out


def render(data: dict) -> str:
    L = ["# HARP on the arith testbed (micro oracle)", "",
         ("Generated by `benchmarks/exp_harp_arith.py` (see its docstring for the protocol). Pool 2000, dev 200 items in 3 "
         "domains (add, sub, mix), test 400, micro model trained from scratch for 500 steps per oracle run; seeds are "
         "training seeds (rows paired by seed). HARP: MiniLM embeddings, leaves of ~200 (leaf_size=200, "
         "leaves_per_parent=3), one measured leaf per parent plus one per 4 leaves, base = the untrained micro model."), ""]
    for budget, b in data["budgets"].items():
        L += [f"## Budget {float(budget):.0%} (seeds {b['seeds']})", "",
              "| method | test acc (mean ± sd) | dev acc | examples | oracle runs to select | test vs random (95% CI) | test vs exhaustive |",
              "|---|---|---|---|---|---|---|"]
        for m, s in b["summary"].items():
            vr = s.get("vs_random")
            ve = s.get("vs_exhaustive")
            fmt = (lambda v: f"{v['mean']:+.3f}" + (f" [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" if v and v["ci95"] else "")) 
            L.append(f"| {m} | {s['test_mean']:.3f} ± {s['test_sd'] if s['test_sd'] is not None else float('nan'):.3f} | "
                     f"{s['dev_mean']:.3f} | {s['n_selected_mean']:.0f} | {s['selection_runs_mean']:g} (+1 final) | "
                     f"{fmt(vr) if vr else '—'} | {fmt(ve) if ve else '—'} |")
        L += ["", ("Oracle runs to select: HARP = base evaluation + one fine-tune per measured leaf; exhaustive = base + every "
              "leaf; random and full need none. Every row then trains its final model once (the dev/test numbers)."), ""]
        L += ["### Oracle runs HARP needed to come within 1 test point of the exhaustive result", "",
              "| variant | measured leaves needed (per seed) | leaves | runs ratio (per seed) | mean ratio |", "|---|---|---|---|---|"]
        for label, r in b["cost_to_match"].items():
            L.append(f"| {label} | {r['m_needed']} | {r['leaves']} | {r['per_seed']} | {r['mean_ratio']} |")
        L += ["", ("Ratio = (1 + m) / (1 + L): base run plus m measured leaves, against base plus all L leaves; m grows along the "
              "measurement order from one leaf per parent. `None` = not within 1 point before every leaf was measured "
              "(then HARP equals the exhaustive run)."), ""]
        L += ["### Per seed", "", "| method | seed | n | dev | test | chosen leaves | measured | defects kept (wrong/off-task/trivial) |",
              "|---|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            d = r["defects"]
            L.append(f"| {r['method']} | {r['seed']} | {r['n_selected']} | {r['dev_acc']:.3f} | {r['test_acc']:.3f} | "
                     f"{r.get('chosen_leaves', '')} | {len(r.get('measured_leaves', [])) or ''}"
                     f"{'/' + str(r['leaves']) if r.get('leaves') else ''} | {d['wrong_answer']}/{d['off_task']}/{d['trivial']} |")
        L.append("")
    if data.get("effects"):
        L += ["## Measured vs inferred leaf effects", "", "![leaf effects](harp-arith-effects.png)", "",
              "| domain | inferred leaves | corr(inferred, measured) | MAE inferred | MAE measured posterior | 95% band coverage (inferred) |",
              "|---|---|---|---|---|---|"]
        for d, s in data["effects"].items():
            L.append(f"| {d} | {s['inferred_leaves']} | {s['corr_inferred']} | {s['mae_inferred']} | {s['mae_measured_posterior']} | "
                     f"{s['coverage95_inferred']} |")
        L.append("")
    if data.get("scale"):
        s = data["scale"]
        L += ["## Scaling (synthetic, no oracle)", "",
              (f"`benchmarks/bench_harp_scale.py`: {s['n']:,} x {s['d']} float32 embeddings ({s['data_mb']} MB), "
              f"{s['hierarchy']['large']} large / {s['hierarchy']['parents']} parents / {s['leaves']} leaves, "
              f"{s['measured_leaves']} measured ({s['measured_fraction']:.0%})."), "",
              "| stage | seconds |", "|---|---|"]
        for k, v in s["seconds"].items():
            L.append(f"| {k} | {v} |")
        L += ["", (f"Peak RSS {s['peak_rss_mb']:.0f} MB, of which the embedding matrix is {s['data_mb']:.0f} MB "
              f"(peak over the loaded data: {s['peak_over_data_mb']:.0f} MB)."), ""]
    if data.get("notes"):
        L += ["## Notes", ""] + data["notes"] + [""]
    return "\n".join(L)


def report(args) -> None:
    out = Path(args.out)
    parts = load_parts(out)
    if not parts:
        raise SystemExit(f"no results under {out / 'parts'}: run `exp_harp_arith.py run --seeds ...` first")
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["budgets"] = aggregate(parts)
    data["effects"] = effects_plot(parts, EFFECTS_PNG)
    if SCALE.exists():
        data["scale"] = json.loads(SCALE.read_text())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, RESULTS)
    REPORT.write_text(render(data))
    print(render(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--budgets", type=float, nargs="+", default=[0.3])
    r.add_argument("--steps", type=int, default=500)
    r.add_argument("--pool-size", type=int, default=2000)
    r.add_argument("--dev-size", type=int, default=200)
    r.add_argument("--test-size", type=int, default=400)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--sweep", nargs="*", default=["harp-c", "harp-c +fill", "harp-e", "harp-e +fill"],
                   help="HARP variants whose cost-to-match sweep runs")
    for p in (r, sub.add_parser("report")):
        p.add_argument("--out", default=os.environ.get("HARP_EXP_DIR", "/work/notes/h6-harp-arith"), help="run folder (store, artifacts, parts)")
        p.add_argument("--cache", default="/work/notes/oracle-cache", help="shared oracle cache")
    args = ap.parse_args()
    if args.cmd == "run":
        for seed in args.seeds:
            for budget in args.budgets:
                run_seed(seed, budget, args)
    else:
        report(args)


if __name__ == "__main__":
    main()
