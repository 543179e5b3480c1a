"""AutoSelection on the arith testbed (micro oracle): recipe search vs random recipe search at
the same oracle budget, vs each single operator alone, vs full data and random subsets.

Setup (defaults): pool 2000 (``ArithConfig()``: 20% wrong answers, 5% truncated, 5% off-format,
5% exact and 5% near duplicates, 5% off-task, 10% trivial), one micro oracle
(``TrainConfig.for_tier("micro", steps=500)``, training seed 0) shared by every method, so
a subset has one score whoever asks for it and the oracle cache (``--oracle-cache``,
shared with other experiments) serves repeats for free.

- ``autoselection`` with search seeds 0, 1, 2 and an oracle budget of 15 each;
- ``random_recipes`` (15 random recipes: truncate + 1-3 random filters/dedups) with the
  same seeds and budget;
- each single operator alone at its default parameters (filters keep 50%, dedups at their
  default thresholds, truncate 50%), one run each;
- full data; random subsets of the size of each search's best subset (same seed), and of
  30% of the pool.

Every final selection is scored once on test (``Oracle.score_test``; the search never sees
test). The example budget k = 30% only enters the realised state (``budget_used``): the
recipes choose their own size (the paper's form; ``budget_mode="free"``).

Outputs: ``docs/results/autoselection-arith.json`` and ``.md``, the best-so-far figure
``docs/results/autoselection-arith-best-so-far.png``, one search trace figure per seed, and
the best recipe as ``examples/recipe-arith.yaml``. Traces are resumable: rerunning after a
kill replays them. Run under the CPU lock::

    flock /work/notes/cpu.lock python benchmarks/exp_autoselection_arith.py
    python benchmarks/exp_autoselection_arith.py --quick   # a 5-minute smoke run (tiny pool, short training)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results"
SINGLE_OPS = {
    "task_relevance_filter": {"fraction": 0.5},
    "ifd_filter": {"fraction": 0.5},
    "ngram_entropy_filter": {"fraction": 0.5},
    "varentropy_filter": {"fraction": 0.5},
    "branching_filter": {"fraction": 0.5},
    "quality_filter": {"fraction": 0.5, "quality": "loss:low"},
    "exact_dedup": {},
    "minhash_dedup": {"threshold": 0.8},
    "semantic_dedup": {"threshold": 0.95},
    "truncate": {"fraction": 0.5},
}


def spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return None
    r = spearmanr(a, b).statistic
    return None if r is None or math.isnan(r) else float(r)


def mean_sd(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def run(args) -> dict:
    from thresher.data.ledger import CostLedger
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle
    from thresher.select.autoselection import SignalSettings, save_recipe
    from thresher.select.autoselection.plots import plot_best_so_far, plot_search_trace
    from thresher.select.autoselection.search import read_trace
    from thresher.select.base import SignalView, make_selector
    from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arith = ArithConfig(pool_size=args.pool_size, dev_size=args.dev_size, test_size=args.test_size)
    pool, task, labels = ArithTestbed(arith).build(out / "data")
    task_params = {k: getattr(arith, k) for k in ("pool_size", "dev_size", "test_size") if getattr(arith, k) != getattr(ArithConfig(), k)}
    signals = SignalSettings(task="arith", task_params=task_params, scorer_warmup=args.scorer_warmup,
                             scorer_warmup_steps=args.scorer_warmup_steps)
    search_params = {"signals": signals.model_dump(mode="json"), "oracle_budget": args.budget}
    store = SignalStore(out / "store")
    view = SignalView(pool, store)

    # 1. signals (every operator's, at every dedup threshold of the search grid, and the state's)
    t0 = time.time()
    auto = make_selector("autoselection", **search_params)
    for sig in auto.required_signals():
        run_signal(sig, pool, store, show_progress=True)
    signal_seconds = time.time() - t0
    print(f"signals ready in {signal_seconds:.0f}s", flush=True)

    ledger = CostLedger(out / "ledger.jsonl")
    mark = ledger.mark()
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=args.steps, seed=0),
                    cache_dir=args.oracle_cache, ledger=ledger, show_progress=False)
    seeds = [int(s) for s in args.seeds.split(",")]
    k_budget = 0.3
    rows: list[dict] = []
    searches: dict[str, dict] = {"autoselection": {}, "random_recipes": {}}

    def record(method: str, seed: int | None, ids: list[str], dev: float, extra: dict | None = None) -> dict:
        test = oracle.score_test(ids, label=f"{method} s{seed}")
        row = {"method": method, "seed": seed, "n": len(ids), "dev": round(dev, 4), "test": round(test.value, 4),
               "test_per_domain": test.per_domain, "defects": defect_counts(ids, labels), **(extra or {})}
        rows.append(row)
        print(f"{method:>32} seed {seed} n={len(ids):>4} dev {dev:.3f} test {test.value:.3f}", flush=True)
        return row

    # 2. the searches
    for method in ("autoselection", "random_recipes"):
        for seed in seeds:
            t1 = time.time()
            art = out / f"{method}-s{seed}"
            sel = make_selector(method, **search_params).select(pool, view, k_budget, task=task.dev_view(), seed=seed,
                                                                  oracle=oracle, artifacts_dir=art)
            d = sel.diagnostics
            _, lines = read_trace(art / "trace.jsonl")
            searches[method][seed] = {"best_so_far": d["best_so_far"], "scores": d["scores"], "phases": d["phases"],
                                      "best_recipe": d["best_recipe"], "best_describe": d["best_describe"],
                                      "best_state": d["best_state"], "credit": d["credit"], "stats": d["stats"],
                                      "trajectories": d["trajectories"], "seconds": round(time.time() - t1, 1),
                                      "mu": [ln["mu"] for ln in lines], "sigma": [ln["sigma"] for ln in lines],
                                      "retain": [ln["state"]["retain_ratio"] for ln in lines]}
            record(method, seed, sel.ids, d["best_dev_score"], {"recipe": d["best_describe"],
                                                                 "evaluations": d["evaluations"]})
            if method == "autoselection":
                # a random subset of the same size (same seed): is it the recipe or just the size?
                import random as _random

                rnd = _random.Random(f"random-{seed}").sample(pool.ids, len(sel.ids))
                sc = oracle.score(rnd, label=f"random-matched s{seed}")
                record("random (size of the search's best)", seed, rnd, sc.value)

    # 3. single operators alone, full data, random 30%
    for name, params in SINGLE_OPS.items():
        sel = make_selector("recipe", recipe=[{name: params}], signals=signals.model_dump(mode="json")).select(
            pool, view, k_budget)
        sc = oracle.score(sel.ids, label=f"single {name}")
        record(f"single: {name}", None, sel.ids, sc.value, {"recipe": sel.diagnostics["describe"]})
    sc = oracle.score(pool.ids, label="full")
    record("full data", None, pool.ids, sc.value)
    rnd = make_selector("random").select(pool, view, k_budget, seed=0)
    sc = oracle.score(rnd.ids, label="random 30%")
    record("random 30%", 0, rnd.ids, sc.value)

    # 4. summaries
    def rows_of(method):
        return [r for r in rows if r["method"] == method]

    summary = {}
    for method in ("autoselection", "random_recipes", "random (size of the search's best)"):
        rs = rows_of(method)
        summary[method] = {"dev": mean_sd([r["dev"] for r in rs]), "test": mean_sd([r["test"] for r in rs]),
                           "n": mean_sd([r["n"] for r in rs])}
    singles = [r for r in rows if r["method"].startswith("single: ")]
    best_single = max(singles, key=lambda r: r["dev"])
    full_row = rows_of("full data")[0]
    mu_pairs = [(m, s) for seed in seeds for m, s, ph in zip(searches["autoselection"][seed]["mu"],
                                                               searches["autoselection"][seed]["scores"],
                                                               searches["autoselection"][seed]["phases"]) if ph == "edit" and m is not None]
    ledger_summary = ledger.summary(mark)
    result = {
        "setup": {"pool": f"arith ArithConfig(pool_size={arith.pool_size}, dev_size={arith.dev_size}, test_size={arith.test_size})",
                  "pool_defects": defect_counts(pool.ids, labels),
                  "oracle": f"micro, TrainConfig.for_tier('micro', steps={args.steps}, seed=0): one oracle for every method",
                  "search": {"oracle_budget": args.budget, "seeds": seeds, "budget_mode": "free", "k_for_budget_used": k_budget,
                             "signals": signals.model_dump(mode="json")},
                  "single_ops": SINGLE_OPS, "signal_seconds": round(signal_seconds, 1)},
        "rows": rows,
        "summary": summary,
        "best_single": {"method": best_single["method"], "dev": best_single["dev"], "test": best_single["test"]},
        "full": {"dev": full_row["dev"], "test": full_row["test"]},
        "searches": {m: {str(s): v for s, v in d.items()} for m, d in searches.items()},
        "surrogate_spearman_mu_vs_score": spearman([a for a, _ in mu_pairs], [b for _, b in mu_pairs]),
        "surrogate_pairs": len(mu_pairs),
        "cost": {"ledger": ledger_summary, "oracle_new_runs": ledger_summary.get("oracle", {}).get("runs", 0),
                 "oracle_calls": ledger_summary.get("oracle", {}).get("calls", 0),
                 "test_scorings": ledger_summary.get("test", {}).get("calls", 0)},
        "seconds_total": round(time.time() - t_start, 1),
    }
    curves = {"AutoSelection": [searches["autoselection"][s]["best_so_far"] for s in seeds],
              "random recipes": [searches["random_recipes"][s]["best_so_far"] for s in seeds]}
    refs = {f"full data ({full_row['dev']:.3f})": full_row["dev"],
            f"best single op: {best_single['method'][8:]} ({best_single['dev']:.3f})": best_single["dev"]}
    fig_dir = RESULTS_DIR if args.write else out
    plot_best_so_far(curves, fig_dir / "autoselection-arith-best-so-far.png",
                     title=f"arith, micro oracle: best dev score vs oracle runs ({len(seeds)} seeds)", references=refs)
    if args.write:
        best_seed = max(seeds, key=lambda s: (rows_of("autoselection")[seeds.index(s)]["dev"], -s))
        from thresher.select.autoselection import load_recipe

        best = load_recipe(out / f"autoselection-s{best_seed}" / "best_recipe.yaml")
        save_recipe(best.recipe, REPO / "examples" / "recipe-arith.yaml", settings=signals,
                    name="arith-autoselection-best",
                    description=(f"best AutoSelection recipe on arith (search seed {best_seed}, dev "
                                 f"{rows_of('autoselection')[seeds.index(best_seed)]['dev']:.3f}); see docs/results/autoselection-arith.md"))
        for s in seeds:
            _, lines = read_trace(out / f"autoselection-s{s}" / "trace.jsonl")
            plot_search_trace(lines, RESULTS_DIR / f"autoselection-arith-search-s{s}.png",
                              title=f"AutoSelection on arith, search seed {s}")
    return result


def render(r: dict) -> str:
    s = r["setup"]
    seeds = s["search"]["seeds"]
    L = ["# AutoSelection on the arith testbed (micro oracle)", "",
         (f"Setup: {s['pool']}; oracle {s['oracle']}; search oracle budget {s['search']['oracle_budget']} per seed, "
          f"search seeds {seeds}; recipes choose their own size (k = 30% only enters `budget_used`). "
          "Dev = the oracle's dev accuracy of the final subset; test = the test split, scored once per final "
          "selection. The search never sees test."), "",
         "| method | seeds | dev (mean ± sd) | test (mean ± sd) | subset size | hidden defects kept (wrong/trunc/fmt/dup/off/triv, seed 0) |",
         "|---|---|---|---|---|---|"]

    def defects(d):
        return f"{d['wrong_answer']}/{d['truncated']}/{d['off_format']}/{d['exact_dup'] + d['near_dup']}/{d['off_task']}/{d['trivial']}"

    order = ["autoselection", "random_recipes", "random (size of the search's best)"]
    for m in order:
        rs = [x for x in r["rows"] if x["method"] == m]
        sm = r["summary"][m]
        L.append(f"| {m} | {len(rs)} | {sm['dev'][0]:.3f} ± {sm['dev'][1]:.3f} | {sm['test'][0]:.3f} ± {sm['test'][1]:.3f} | "
                 f"{sm['n'][0]:.0f} | {defects(rs[0]['defects'])} |")
    for x in r["rows"]:
        if x["method"] in order:
            continue
        L.append(f"| {x['method']} | 1 | {x['dev']:.3f} | {x['test']:.3f} | {x['n']} | {defects(x['defects'])} |")
    L += ["", f"Pool defects (of {sum(s['pool_defects'].values())}): {s['pool_defects']}.", "",
          "Per seed (dev / test of the final subset, and the recipe):", ""]
    for x in r["rows"]:
        if x["method"] in ("autoselection", "random_recipes"):
            L.append(f"- {x['method']} seed {x['seed']}: dev {x['dev']:.3f}, test {x['test']:.3f}, n {x['n']}: `{x['recipe']}`")
    L += ["", "![best so far](autoselection-arith-best-so-far.png)", ""]
    L += [f"![search seed {sd}](autoselection-arith-search-s{sd}.png)" for sd in seeds]
    sp = r["surrogate_spearman_mu_vs_score"]
    c = r["cost"]
    L += ["", (f"Surrogate check: Spearman between the GP's predicted mean (at the pick) and the oracle score over "
               f"{r['surrogate_pairs']} edit evaluations: {sp if sp is None else round(sp, 3)}."), "",
          (f"Cost: {c['oracle_calls']} oracle calls, {c['oracle_new_runs']} of them new fine-tuning runs (the rest were "
           f"served by the shared oracle cache), {c['test_scorings']} test scorings; total "
           f"{r['seconds_total'] / 60:.0f} min including signals ({s['signal_seconds']:.0f} s)."), ""]
    L += [("Operator credit per search seed (score change split over the operators an edit added/changed (+) or "
           "removed (-)):"), ""]
    for sd, v in r["searches"]["autoselection"].items():
        cr = ", ".join(f"{n} {c_['credit']:+.3f} ({c_['count']})" for n, c_ in v["credit"].items())
        L.append(f"- seed {sd}: {cr or '(no edits)'}; trajectories {v['trajectories']}; reseeds {v['stats']['reseeds']}")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/exp-autoselection-arith", help="working folder (data, store, traces)")
    ap.add_argument("--oracle-cache", default="/work/notes/oracle-cache")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=15)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--dev-size", type=int, default=200)
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument("--scorer-warmup", type=int, default=None)
    ap.add_argument("--scorer-warmup-steps", type=int, default=250)
    ap.add_argument("--quick", action="store_true", help="smoke run: pool 400, 30 steps, budget 4, seed 0; writes nothing into docs/")
    args = ap.parse_args()
    args.write = not args.quick
    if args.quick:
        args.pool_size, args.dev_size, args.test_size, args.steps, args.budget, args.seeds = 400, 60, 90, 30, 4, "0"
        args.scorer_warmup, args.scorer_warmup_steps = 120, 40
        args.out = args.out + "-quick"
        args.oracle_cache = str(Path(args.out) / "oracle")
    result = run(args)
    text = render(result)
    if args.write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS_DIR / "autoselection-arith.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, RESULTS_DIR / "autoselection-arith.json")
        (RESULTS_DIR / "autoselection-arith.md").write_text(text)
    else:
        (Path(args.out) / "report.md").write_text(text)
        (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
