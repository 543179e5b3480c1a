"""THTB on the arith testbed (micro oracle) and, offline, on the real Alpaca 5,000 file.

``arith`` (default): pool 2000 (default ArithConfig), micro oracle
(``TrainConfig.for_tier("micro")``, 500 steps), seeds 0, 1, 2, budgets 5%, 10%, 30%.
Methods: THTB (its defaults: quality ``loss:low`` under the warmed micro scorer,
Bloom heuristic, IC unavailable, reference formulas), random (seed = the run seed) and
full data. The seed is also the training seed, so comparisons are paired by seed. Every
final selection is scored once on test (``Oracle.score_test``; cached by subset, so an
identical subset is never retrained). Also recorded: how many of each hidden defect
each selection kept, and, for THTB, after each stage. ``--ablation`` adds the stage-1
quality filter alone (top-k by ``loss:low``) to see what the hardness stages add.

``alpaca``: THTB at 5% offline on ``alpaca_5000.json`` (rows the loader rejects are
counted), with the stage report in ``--out``.

Both write into ``docs/results/thtb-arith.json`` (keys ``arith`` and ``alpaca``) and
re-render ``docs/results/thtb-arith.md``. Run under the CPU lock::

    flock /work/notes/cpu.lock python benchmarks/exp_thtb_arith.py arith
    flock /work/notes/cpu.lock python benchmarks/exp_thtb_arith.py alpaca
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "thtb-arith.json"
REPORT = REPO / "docs" / "results" / "thtb-arith.md"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of the per-seed differences a - b, with a t 95% interval (n - 1 dof)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"mean": mean, "diffs": d, "ci95": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = T_975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "diffs": d, "ci95": [mean - half, mean + half]}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(data: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, RESULTS)
    REPORT.write_text(render(data))


# --------------------------------------------------------------------------- arith


def run_arith(args) -> dict:
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle
    from thresher.select.base import SignalView, make_selector
    from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

    pool, task, labels = ArithTestbed(ArithConfig()).build()
    store = SignalStore(args.store)
    view = SignalView(pool, store)
    art_root = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    thtb = make_selector("thtb")
    methods = {"thtb": thtb, "random": make_selector("random")}
    if args.ablation:
        methods["quality-only"] = make_selector("topk", signal="loss", direction="low")
    t0 = time.time()
    for sel in methods.values():
        for s in sel.required_signals():
            run_signal(s, pool, store, show_progress=True)
    print(f"signals ready in {time.time() - t0:.0f}s", flush=True)

    selections: dict[str, dict] = {}
    for b in budgets:
        for name, sel in methods.items():
            for seed in seeds:
                if name != "random" and seed != seeds[0]:
                    selections[f"{name}|{b}|{seed}"] = selections[f"{name}|{b}|{seeds[0]}"]
                    continue
                art = art_root / f"{name}-{b:g}" if name == "thtb" else None
                res = sel.select(pool, view, b, seed=seed, artifacts_dir=art)
                entry = {"ids": res.ids, "defects": defect_counts(res.ids, labels)}
                if name == "thtb":
                    stage_ids = json.loads((art / "thtb_stage_ids.json").read_text())
                    entry["stage_defects"] = {st: defect_counts(v, labels) for st, v in stage_ids.items()}
                    entry["stage_targets"] = res.diagnostics["stage_targets"]
                    entry["fractions_used"] = res.diagnostics["fractions_used"]
                    entry["bloom_levels_stage2_input"] = res.diagnostics["stages"][1]["bloom_level_counts"]
                    entry["artifacts"] = str(art)
                selections[f"{name}|{b}|{seed}"] = entry
    runs = []
    for seed in seeds:
        oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=args.steps, seed=seed),
                        cache_dir=args.oracle_cache, show_progress=False)
        jobs = [("full", 1.0, pool.ids)] + [(name, b, selections[f"{name}|{b}|{seed}"]["ids"]) for b in budgets for name in methods]
        for name, b, ids in jobs:
            t1 = time.time()
            test = oracle.score_test(ids, label=f"{name}@{b:g}/s{seed}")
            dev = oracle.score(ids, label=f"{name}@{b:g}/s{seed}")
            runs.append({"method": name, "budget": b, "seed": seed, "n": len(ids), "test": test.value, "dev": dev.value,
                         "test_per_domain": test.per_domain, "dev_cached": dev.cached, "seconds": time.time() - t1})
            print(f"seed {seed} {name:>12} {b:>5g} n={len(ids):>4} dev {dev.value:.3f} test {test.value:.3f} "
                  f"({time.time() - t1:.0f}s)", flush=True)
    def acc(method, b, split="test"):
        return [next(r[split] for r in runs if r["method"] == method and r["budget"] == b and r["seed"] == s) for s in seeds]

    full = acc("full", 1.0)
    table = []
    for b in budgets:
        row = {"budget": b, "k": len(selections[f"thtb|{b}|{seeds[0]}"]["ids"])}
        for name in methods:
            row[name] = {"test_mean": sum(acc(name, b)) / len(seeds), "test": acc(name, b), "dev": acc(name, b, "dev")}
        row["thtb_minus_random"] = paired(acc("thtb", b), acc("random", b))
        row["thtb_minus_full"] = paired(acc("thtb", b), full)
        if "quality-only" in methods:
            row["thtb_minus_quality_only"] = paired(acc("thtb", b), acc("quality-only", b))
        row["defects"] = {name: selections[f"{name}|{b}|{seeds[0]}"]["defects"] for name in methods if name != "random"}
        row["defects"]["random (mean over seeds)"] = {
            d: sum(selections[f"random|{b}|{s}"]["defects"][d] for s in seeds) / len(seeds)
            for d in selections[f"random|{b}|{seeds[0]}"]["defects"]}
        row["thtb_stage_defects"] = selections[f"thtb|{b}|{seeds[0]}"]["stage_defects"]
        row["thtb_stage_targets"] = selections[f"thtb|{b}|{seeds[0]}"]["stage_targets"]
        row["thtb_fractions_used"] = selections[f"thtb|{b}|{seeds[0]}"]["fractions_used"]
        row["thtb_bloom_levels_stage2_input"] = selections[f"thtb|{b}|{seeds[0]}"]["bloom_levels_stage2_input"]
        table.append(row)
    return {
        "setup": {"pool": "arith, ArithConfig() (2000 examples, 20% wrong answers, 5% truncated, 5% off-format, "
                          "5% exact dup, 5% near dup, 5% off-task, 10% trivial)",
                  "oracle": f"micro, TrainConfig.for_tier('micro', steps={args.steps}, seed=seed), test split 400 items",
                  "seeds": seeds, "budgets": budgets, "thtb_params": thtb.params.model_dump(mode="json"),
                  "pool_defects": defect_counts(pool.ids, labels), "seconds": time.time() - t0},
        "full": {"test": full, "test_mean": sum(full) / len(full), "dev": acc("full", 1.0, "dev")},
        "table": table,
        "runs": runs,
    }


# --------------------------------------------------------------------------- alpaca


def run_alpaca(args) -> dict:
    from thresher.api import select
    from thresher.data.pool import load_pool

    t0 = time.time()
    pool, report = load_pool(args.alpaca, on_error="skip", rejects_path=Path(args.out) / "alpaca-rejects.jsonl")
    out = Path(args.out) / "alpaca-thtb.jsonl"
    sel = select(pool, "thtb", args.alpaca_budget, store=args.store, out=out, compute_missing=True)
    d = sel.diagnostics
    stages = [{k: st[k] for k in ("title", "n_in", "n_kept", "cutoff", "missing_scores")} |
              {"scores_kept_median": st["scores_kept"].get("median"), "scores_in_median": st["scores_in"].get("median"),
               "top": [(ex["id"], round(ex["score"], 4), ex["instruction"][:90]) for ex in st["top"]],
               "bottom": [(ex["id"], round(ex["score"], 4), ex["instruction"][:90]) for ex in st["bottom"]]}
              for st in d["stages"]]
    return {"file": str(args.alpaca), "rows_rejected_on_load": report.rows_rejected, "pool_size": len(pool),
            "budget": args.alpaca_budget, "selected": len(sel), "params": sel.params, "stage_targets": d["stage_targets"],
            "stage_kept": d["stage_kept"], "ic_available": d["ic_available"], "stages": stages,
            "bloom_level_counts_stage2_input": d["stages"][1]["bloom_level_counts"],
            "report": str(out) + ".artifacts/thtb_report.md", "seconds_total": time.time() - t0,
            "seconds_select": sel.seconds}


# --------------------------------------------------------------------------- report


def _pct(x) -> str:
    return f"{100 * x:.1f}"


def _verdict(p: dict, what: str) -> str:
    if not p["ci95"]:
        return f"{_pct(p['mean'])} pts vs {what} (one seed: no interval)"
    lo, hi = p["ci95"]
    word = "better than" if lo > 0 else "worse than" if hi < 0 else "not distinguishable from"
    return f"{word} {what} ({'+' if p['mean'] >= 0 else ''}{_pct(p['mean'])} pts, 95% CI [{_pct(lo)}, {_pct(hi)}])"


def reading(a: dict) -> list[str]:
    """Plain statements computed from the results (no hand-written claims)."""
    out = []
    for row in a["table"]:
        out.append(f"at {row['budget']:g} (k = {row['k']}) THTB is {_verdict(row['thtb_minus_random'], 'random')} and "
                   f"{_verdict(row['thtb_minus_full'], 'full data')}")
    for row in a["table"]:
        t, r = row["defects"]["thtb"], row["defects"]["random (mean over seeds)"]
        k = row["k"]
        gone = [d for d in ("truncated", "off_format", "off_task") if t[d] == 0]
        out.append(f"at {row['budget']:g}: THTB kept wrong answers {100 * t['wrong_answer'] / k:.0f}% (random "
                   f"{100 * r['wrong_answer'] / k:.0f}%), trivial items {100 * t['trivial'] / k:.0f}% (random "
                   f"{100 * r['trivial'] / k:.0f}%), clean {100 * t['clean'] / k:.0f}% (random {100 * r['clean'] / k:.0f}%)"
                   + (f"; no {', '.join(gone)}" if gone else ""))
    if "quality-only" in a["table"][0]:
        row = a["table"][0]
        st = row["thtb_stage_defects"]
        out.append(f"the quality stage (`loss:low` under the warmed micro scorer) is where trivial items come in: at "
                   f"{row['budget']:g} its {row['thtb_stage_targets'][0]} survivors hold {st['quality']['trivial']} trivial "
                   f"items ({100 * st['quality']['trivial'] / row['thtb_stage_targets'][0]:.0f}% vs "
                   f"{100 * a['setup']['pool_defects']['trivial'] / sum(a['setup']['pool_defects'].values()):.0f}% in the "
                   f"pool); Bloom levels (heuristic) of the stage-2 input: {row.get('thtb_bloom_levels_stage2_input')} "
                   f"(ties keep the stage-1 order); the EHS stage (longer, more expanded answers) leaves "
                   f"{st['ehs']['trivial']} trivial items; quality-only (stage 1 alone) vs THTB test accuracy: "
                   + ", ".join(f"{r['budget']:g}: {_pct(r['quality-only']['test_mean'])}% vs {_pct(r['thtb']['test_mean'])}%"
                               for r in a["table"]))
    return out


def render(data: dict) -> str:
    lines = ["# THTB on the arith testbed (micro oracle) and offline on Alpaca", ""]
    a = data.get("arith")
    if a:
        s = a["setup"]
        lines += [(f"Setup: {s['pool']}; oracle {s['oracle']}; seeds {s['seeds']} (random-selection seed = training "
                  "seed, so differences are paired by seed). THTB with its defaults: quality `loss:low` under the "
                  "warmed micro scorer, Bloom from the verb-list heuristic, IC unavailable (no judge: IHS = Bloom "
                  "alone), reference formulas; budgets other than 5% scale the stage fractions (see "
                  "`thresher.select.thtb.selector`). Test accuracy, 400 items, scored once per final selection."), ""]
        names = [m for m in ("thtb", "random", "quality-only") if m in a["table"][0]]
        head = "| budget | k | " + " | ".join(f"{m} test acc % (per seed)" for m in names) + \
            " | THTB - random (95% CI) | THTB - full (95% CI) |"
        lines += [(f"Full data (2000 examples): test accuracy {_pct(a['full']['test_mean'])}% "
                  f"(per seed {', '.join(_pct(x) for x in a['full']['test'])})."), "", head,
                  "|" + "---|" * (len(names) + 4)]
        for row in a["table"]:
            cells = [f"{_pct(row[m]['test_mean'])} ({', '.join(_pct(x) for x in row[m]['test'])})" for m in names]
            diffs = []
            for key in ("thtb_minus_random", "thtb_minus_full"):
                p = row[key]
                ci = f" [{_pct(p['ci95'][0])}, {_pct(p['ci95'][1])}]" if p["ci95"] else ""
                diffs.append(f"{'+' if p['mean'] >= 0 else ''}{_pct(p['mean'])}{ci}")
            lines.append(f"| {row['budget']:g} | {row['k']} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
        if "thtb_minus_quality_only" in a["table"][0]:
            lines.append("")
            lines.append("THTB - quality-only (stage 1 alone, top-k by `loss:low`): " + "; ".join(
                f"{row['budget']:g}: {'+' if row['thtb_minus_quality_only']['mean'] >= 0 else ''}"
                f"{_pct(row['thtb_minus_quality_only']['mean'])} pts" for row in a["table"]))
        lines += ["", "Hidden defects kept (THTB and random at each budget; the pool has "
                  + ", ".join(f"{k} {v}" for k, v in s["pool_defects"].items()) + "):", ""]
        dnames = list(s["pool_defects"])
        lines.append("| budget | selection | " + " | ".join(dnames) + " |")
        lines.append("|---|---|" + "---|" * len(dnames))
        for row in a["table"]:
            for sel_name, counts in row["defects"].items():
                lines.append(f"| {row['budget']:g} | {sel_name} | " + " | ".join(f"{counts[d]:g}" for d in dnames) + " |")
        lines += ["", "THTB after each stage (stage targets; defects among the kept):", ""]
        lines.append("| budget | stage | kept | " + " | ".join(dnames) + " |")
        lines.append("|---|---|---|" + "---|" * len(dnames))
        for row in a["table"]:
            for (st, counts), n in zip(row["thtb_stage_defects"].items(), row["thtb_stage_targets"]):
                lines.append(f"| {row['budget']:g} | {st} | {n} | " + " | ".join(str(counts[d]) for d in dnames) + " |")
        lines += ["", "Reading (generated from the numbers above):", ""]
        lines += [f"- {line}" for line in reading(a)]
        lines.append("")
    al = data.get("alpaca")
    if al:
        lines += ["## Alpaca 5,000, offline", "",
                  (f"`{Path(al['file']).name}`: {al['pool_size']} examples ({al['rows_rejected_on_load']} rows rejected by "
                  f"the loader: empty outputs), THTB at {al['budget']} with quality `{al['params']['quality']}` under the "
                  f"`{al['params']['scorer']}` scorer, Bloom heuristic, IC unavailable. Stage targets "
                  f"{al['stage_targets']}, kept {al['stage_kept']}; {al['seconds_total']:.0f} s end to end (signals "
                  f"included), {al['seconds_select']:.1f} s for the selection itself."), "",
                  f"Bloom levels among the stage-2 input: {al['bloom_level_counts_stage2_input']}", ""]
        for st in al["stages"]:
            lines.append(f"- **{st['title']}**: kept {st['n_kept']} of {st['n_in']}, cut-off {st['cutoff']:.4g}, "
                         f"median score in {st['scores_in_median']:.4g} / kept {st['scores_kept_median']:.4g}")
            for ex in st["top"][:3]:
                lines.append(f"  - top `{ex[0]}` {ex[1]}: {ex[2]!r}")
            for ex in st["bottom"][:1]:
                lines.append(f"  - bottom `{ex[0]}` {ex[1]}: {ex[2]!r}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="arith", choices=("arith", "alpaca", "render"))
    ap.add_argument("--store", default="/tmp/thc-h5/exp-store", help="signal store")
    ap.add_argument("--out", default="/tmp/thc-h5/exp-thtb", help="artifacts (stage reports) folder")
    ap.add_argument("--oracle-cache", default="/work/notes/oracle-cache", help="shared oracle cache")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default="0.05,0.1,0.3")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--ablation", action="store_true", help="add the quality-only (stage 1 alone) selection")
    ap.add_argument("--alpaca", default=str(REPO.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"))
    ap.add_argument("--alpaca-budget", default="5%")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = load_results()
    if args.what == "arith":
        data["arith"] = run_arith(args)
    elif args.what == "alpaca":
        data["alpaca"] = run_alpaca(args)
    save_results(data)
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
