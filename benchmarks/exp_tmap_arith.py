"""Experiment: TMAP on the ``arith`` testbed, against random, equal weights, the best single
indicator and full data, over several seeds; with the proxy's fidelity measured.

Set-up (printed and written with the results):

- pool: arith, 2000 examples (seed 0; 20% wrong answers and the other defects); budget 30%.
- indicators (K=7): ifd, perplexity (both under SmolLM2, the proxy's model), reasoning
  steps, Bloom level (verb heuristic), kNN embedding diversity, answer length (SmolLM2
  tokens), task relevance (MiniLM similarity to the dev items). ``quality`` is left out:
  it needs an LLM judge or a reward model, and none that can check arithmetic runs
  offline here (a 135M judge would be noise at ~1 s per example).
- proxy: ICL on SmolLM2-135M-Instruct, gold-answer mean log-likelihood on a tiny dev set
  of medoids (MiniLM clusters of question + gold response), ``m`` demos per question.
- oracle: the micro tier trained from scratch (500 steps, training seed = the experiment
  seed), dev accuracy; test accuracy once per final selection. SmolLM2 + LoRA costs
  ~6-9 min per run here, too slow for the ~10 runs per seed this needs.
- per seed: TMAP (the search's seed), equal weights and the best single indicator (both
  taken from TMAP's own trace, i.e. chosen by the proxy), random (same seed), full data.
  ``--fidelity N`` oracle runs on N of TMAP's evaluated subsets spread over the proxy
  range, plus the baselines' subsets (all have proxy values): Spearman(proxy, oracle dev).

    flock /work/notes/cpu.lock python benchmarks/exp_tmap_arith.py --seeds 0,1,2
    python benchmarks/exp_tmap_arith.py --quick        # a few minutes: small budget, 1 seed

Writes ``docs/results/tmap-arith.json``, ``tmap-arith.md``, ``tmap-arith-weights.png`` and
``tmap-arith-fidelity.png``; per-seed TMAP artifacts under ``--work``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

INDICATORS = ["ifd", "perplexity", "reasoning_steps", "bloom", "diversity", "length", "relevance"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=500, help="oracle (micro) training steps")
    ap.add_argument("--anchors", type=int, default=48)
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--n-init", type=int, default=6)
    ap.add_argument("--n-iter", type=int, default=16)
    ap.add_argument("--fidelity", type=int, default=6, help="oracle runs on TMAP's evaluated subsets (per seed)")
    ap.add_argument("--indicators", default=",".join(INDICATORS))
    ap.add_argument("--oracle-cache", default="/work/notes/oracle-cache")
    ap.add_argument("--work", default=os.path.join(os.environ.get("THRESHER_CACHE", "/tmp/thc-h8"), "exp-tmap"))
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--name", default="tmap-arith")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny search, 60 oracle steps")
    ap.add_argument("--small-fidelity", type=int, default=0,
                    help="instead of the experiment: fine-tune SmolLM2 (LoRA) on N subsets of a finished seed's TMAP trace "
                         "and report Spearman(proxy, small-oracle dev); adds to <name>.json")
    ap.add_argument("--small-seed", type=int, default=0, help="which seed's trace --small-fidelity uses")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.n_init, args.n_iter, args.fidelity, args.anchors = "0", 60, 1, 1, 3, 16
        args.name = args.name + "-quick"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.small_fidelity:
        return small_fidelity(args)

    from thresher.data.ledger import CostLedger
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle, ids_digest
    from thresher.select.base import Budget, SignalView, make_selector
    from thresher.select.tmap.proxy import Anchors, ICLProxy, tiny_vs_full
    from thresher.select.tmap.selector import plot_weights
    from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

    seeds = [int(s) for s in args.seeds.split(",")]
    indicators = [s.strip() for s in args.indicators.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    pool, task, labels = ArithTestbed(ArithConfig(pool_size=args.pool_size, seed=0)).build()
    dev = task.dev_view()
    k = Budget.parse(args.budget).size(len(pool))
    print(f"arith pool {len(pool)}, dev {len(dev.dev)}, budget {args.budget} = {k} examples; seeds {seeds}; indicators {indicators}",
          flush=True)

    tmap_params = {"indicators": indicators, "scorer": "small", "proxy_model": "small", "anchors": args.anchors, "demos": args.demos,
                       "draws": args.draws, "n_init": args.n_init, "n_iter": args.n_iter, "check_fidelity": args.fidelity}
    store = SignalStore(work / "store")
    t0 = time.perf_counter()
    signal_seconds = {}
    for sig in make_selector("tmap", **tmap_params).required_signals():
        s0 = time.perf_counter()
        run_signal(sig, pool, store)
        signal_seconds[sig.name] = round(time.perf_counter() - s0, 1)
    print(f"signals ready in {time.perf_counter() - t0:.0f}s: {signal_seconds}", flush=True)
    view = SignalView(pool, store)

    rows: list[dict] = []
    per_seed: dict[int, dict] = {}
    for seed in seeds:
        ledger = CostLedger()
        oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=args.steps, seed=seed),
                        cache_dir=args.oracle_cache, ledger=ledger)
        print(f"\n== seed {seed}: TMAP search ==", flush=True)
        tsel = make_selector("tmap", **tmap_params).select(pool, view, args.budget, task=dev, seed=seed,
                                                           oracle=oracle.dev_view(), artifacts_dir=work / f"tmap-s{seed}")
        d = tsel.diagnostics
        tmap_cost = tsel.cost
        print(f"weights {d['weights']}; best proxy {d['best_proxy']:.4f}; proxy calls {d['proxy']['calls']} "
              f"({d['proxy']['fresh_calls']} fresh, {d['proxy']['seconds_per_fresh_call']} s each); search {d['search']['seconds']} s; "
              f"fidelity Spearman {d['fidelity'].get('spearman')}", flush=True)
        best_single = d["best_single_indicator"]["indicator"]
        plans = [
            ("tmap", tsel.ids, {"weights": d["weights"]}),
            ("equal-weights", make_selector("weighted", indicators=indicators, scorer="small").select(pool, view, args.budget).ids, {}),
            (f"best-single ({best_single})", make_selector("weighted", weights={best_single: 1.0}, scorer="small").select(pool, view, args.budget).ids,
             {"indicator": best_single, "chosen_by": "proxy"}),
            ("random", make_selector("random").select(pool, view, args.budget, seed=seed).ids, {}),
            ("full", pool.ids, {}),
        ]
        # proxy values of every compared subset (the trace has tmap / equal / single; random and full are scored here,
        # with the same anchors and draws as the search)
        anchors = Anchors(positions=d["anchors"]["positions"], weights=d["anchors"]["weights"], labels=[], by=d["anchors"]["by"],
                          requested=d["anchors"]["requested"])
        proxy = ICLProxy(dev, anchors, model="small", demos=args.demos, draws=args.draws, seed=seed, ledger=ledger, show_progress=False)
        trace_by_subset = {}
        trace_json = json.loads((work / f"tmap-s{seed}" / "tmap_trace.json").read_text())
        for t in trace_json["trace"]:
            trace_by_subset.setdefault(t["subset"], t["value"])
        seed_rows = []
        for label, ids, extra in plans:
            dig = ids_digest(ids)
            px = trace_by_subset.get(dig)
            if px is None:
                px = proxy.score_ids(pool, ids, label=f"{label} s{seed}").value
            dev_sc = oracle.score(ids, label=f"{label} s{seed}")
            test_sc = oracle.score_test(ids, label=f"{label} s{seed}")
            row = {"method": label.split(" (")[0], "label": label, "seed": seed, "n": len(ids), "proxy": round(px, 5),
                   "dev_acc": round(dev_sc.value, 4), "test_acc": round(test_sc.value, 4), "dev_cached": dev_sc.cached,
                   "defects": defect_counts(ids, labels), **extra}
            row["_correct"] = dev_sc.correct
            seed_rows.append(row)
            print(f"  {label:28s} n={len(ids):5d} proxy={px:+.4f} dev={dev_sc.value:.3f} test={test_sc.value:.3f}"
                  f" wrong={row['defects']['wrong_answer']}", flush=True)
        # fidelity over every subset with both numbers: TMAP's spread + the compared subsets (distinct)
        fid_rows = [{"proxy": r["proxy"], "oracle_dev": r["oracle_dev"], "source": f"trial {r['trial']}"} for r in d["fidelity"]["rows"]]
        seen = {ids_digest(tsel.ids)} | {t["subset"] for t in trace_json["trace"] if t["index"] in {r["trial"] for r in d["fidelity"]["rows"]}}
        for (label, ids, _), r in zip(plans, seed_rows):
            dig = ids_digest(ids)
            if dig not in seen:
                seen.add(dig)
                fid_rows.append({"proxy": r["proxy"], "oracle_dev": r["dev_acc"], "source": label})
        from scipy.stats import spearmanr

        rho_all = spearmanr([f["proxy"] for f in fid_rows], [f["oracle_dev"] for f in fid_rows])[0] if len(fid_rows) >= 3 else None
        tiny = tiny_vs_full(anchors, [r["_correct"] for r in seed_rows], [r["dev_acc"] for r in seed_rows])
        seed_cost = ledger.summary()
        per_seed[seed] = {
            "weights": d["weights"], "best_proxy": d["best_proxy"], "equal_weights_proxy": d["equal_weights"]["proxy"],
            "single_indicator_proxy": d["single_indicator_proxy"], "best_single_indicator": d["best_single_indicator"],
            "proxy": d["proxy"], "search": d["search"], "anchors": d["anchors"],
            "fidelity_tmap_spread": {k2: v for k2, v in d["fidelity"].items() if k2 != "rows"},
            "fidelity_rows": fid_rows, "spearman_all_subsets": None if rho_all is None else round(float(rho_all), 4),
            "tiny_vs_full_compared_subsets": tiny,
            "tmap_cost": tmap_cost, "seed_cost": seed_cost,
            "oracle_runs_fresh": sum(1 for e in ledger.entries if e.kind == "oracle" and not e.cached),
            "proxy_calls": sum(1 for e in ledger.entries if e.kind == "proxy"),
            "proxy_calls_fresh": sum(1 for e in ledger.entries if e.kind == "proxy" and not e.cached),
            "trace": d["trace"],
        }
        for r in seed_rows:
            r.pop("_correct")
        rows.extend(seed_rows)
        with open(work / f"ledger-s{seed}.jsonl", "w") as fh:
            fh.writelines(json.dumps(e.__dict__, default=str) + "\n" for e in ledger.entries)
        (work / f"rows-s{seed}.json").write_text(json.dumps({"rows": seed_rows, "seed": per_seed[seed]}, indent=1, default=str))

    total = time.perf_counter() - t_start
    summary = summarise(rows, per_seed)
    out = {"setup": {"pool": "arith", "pool_size": len(pool), "budget": args.budget, "k": k, "seeds": seeds,
                     "indicators": indicators, "proxy": {"model": "small (SmolLM2-135M-Instruct)", "metric": "loglik",
                                                         "anchors": args.anchors, "demos": args.demos, "draws": args.draws,
                                                         "sharing": "per_question"},
                     "search": {"init": "centre + K vertices + n_init Dirichlet", "n_init": args.n_init, "n_iter": args.n_iter,
                                "budget": len(indicators) + 1 + args.n_init + args.n_iter, "acquisition": "ei"},
                     "oracle": {"model": "micro", "steps": args.steps, "train_seed": "= seed", "cache": args.oracle_cache},
                     "fidelity_per_seed": args.fidelity, "signal_seconds": signal_seconds},
           "rows": rows, "per_seed": per_seed, "summary": summary, "total_seconds": round(total, 1)}
    (results_dir / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=str))
    groups = {f"seed {s}": [per_seed[s]["weights"][i] for i in indicators] for s in seeds}
    plot_weights(indicators, None, results_dir / f"{args.name}-weights.png", groups=groups,
                 title="TMAP learned weights on arith (SmolLM2 ICL proxy), per seed")
    plot_fidelity_all(per_seed, results_dir / f"{args.name}-fidelity.png")
    md = render_md(out, args.name)
    (results_dir / f"{args.name}.md").write_text(md)
    print("\n" + md)
    return out


def small_fidelity(args) -> dict:
    """The paper's own set-up for the fidelity check: proxy and oracle on the same model.

    Takes N subsets of seed ``--small-seed``'s TMAP trace spread over the proxy range
    (rebuilt from their weights: a trial's subset is the top-k under its weights), fine-tunes
    SmolLM2-135M-Instruct with LoRA on each (the small tier's default config) and scores dev
    by generation. Appends the result to ``<name>.json`` under ``small_oracle_fidelity``.
    """
    from scipy.stats import spearmanr

    from thresher.data.ledger import CostLedger
    from thresher.data.store import SignalStore
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle, ids_digest
    from thresher.select.base import SignalView, make_selector
    from thresher.select.tmap.selector import spread_trials
    from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

    work = Path(args.work)
    results = Path(args.results) / f"{args.name}.json"
    pool, task, labels = ArithTestbed(ArithConfig(pool_size=args.pool_size, seed=0)).build()
    view = SignalView(pool, SignalStore(work / "store"))
    trace = json.loads((work / f"tmap-s{args.small_seed}" / "tmap_trace.json").read_text())["trace"]
    picks = spread_trials(trace, args.small_fidelity)
    ledger = CostLedger()
    train = TrainConfig.for_tier("small", seed=args.small_seed)
    oracle = Oracle(task, pool, model="small", train=train, cache_dir=args.oracle_cache, ledger=ledger)
    rows = []
    for t in picks:
        ids = make_selector("weighted", weights=t["weights"], scorer="small").select(pool, view, args.budget).ids
        if ids_digest(ids) != t["subset"]:
            raise RuntimeError(f"trial {t['index']}: the subset rebuilt from its weights differs from the one the proxy scored")
        t0 = time.perf_counter()
        sc = oracle.score(ids, label=f"small fidelity trial {t['index']}")
        rows.append({"trial": t["index"], "proxy": t["value"], "small_dev": round(sc.value, 4), "cached": sc.cached,
                     "seconds": round(time.perf_counter() - t0, 1), "wrong_kept": defect_counts(ids, labels)["wrong_answer"],
                     "weights": t["weights"]})
        print(f"trial {t['index']:3d} proxy {t['value']:+.4f} small dev {sc.value:.3f} ({rows[-1]['seconds']} s)", flush=True)
    px, oc = [r["proxy"] for r in rows], [r["small_dev"] for r in rows]
    rho = spearmanr(px, oc)[0] if len(rows) >= 3 and len(set(oc)) > 1 else None
    out = {"seed": args.small_seed, "n": len(rows), "oracle": "small (SmolLM2-135M-Instruct + LoRA)", "train": train.__dict__,
           "spearman": None if rho is None else round(float(rho), 4), "rows": rows, "ledger": ledger.summary()}
    print(f"Spearman(proxy, SmolLM2-LoRA dev) = {out['spearman']}")
    if results.exists():
        full = json.loads(results.read_text())
        full["small_oracle_fidelity"] = out
        results.write_text(json.dumps(full, indent=1, default=str))
    return out


def summarise(rows: list[dict], per_seed: dict) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = {}
    rand = {r["seed"]: r["test_acc"] for r in rows if r["method"] == "random"}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        t = [r["test_acc"] for r in rs]
        out[m] = {"test_mean": round(float(np.mean(t)), 4), "test_std": round(float(np.std(t)), 4),
                  "dev_mean": round(float(np.mean([r["dev_acc"] for r in rs])), 4),
                  "proxy_mean": round(float(np.mean([r["proxy"] for r in rs])), 5),
                  "minus_random": [round(r["test_acc"] - rand[r["seed"]], 4) for r in rs if r["seed"] in rand],
                  "wrong_answers_kept": round(float(np.mean([r["defects"]["wrong_answer"] for r in rs])), 1)}
    rhos = [v["fidelity_tmap_spread"].get("spearman") for v in per_seed.values()]
    rhos_all = [v["spearman_all_subsets"] for v in per_seed.values()]
    out["fidelity"] = {"spearman_tmap_spread_per_seed": rhos, "spearman_all_subsets_per_seed": rhos_all,
                       "mean_spearman_all_subsets": round(float(np.mean([r for r in rhos_all if r is not None])), 4) if any(r is not None for r in rhos_all) else None}
    out["cost"] = {"proxy_calls": sum(v["proxy_calls"] for v in per_seed.values()),
                   "proxy_calls_fresh": sum(v["proxy_calls_fresh"] for v in per_seed.values()),
                   "oracle_runs_fresh": sum(v["oracle_runs_fresh"] for v in per_seed.values()),
                   "search_seconds": [v["search"]["seconds"] for v in per_seed.values()]}
    return out


def plot_fidelity_all(per_seed: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_seed), figsize=(4.2 * len(per_seed), 3.6), squeeze=False)
    for ax, (s, v) in zip(axes[0], per_seed.items()):
        fr = v["fidelity_rows"]
        ax.scatter([f["proxy"] for f in fr], [f["oracle_dev"] for f in fr], s=22)
        for f in fr:
            if not f["source"].startswith("trial"):
                ax.annotate(f["source"].split(" (")[0], (f["proxy"], f["oracle_dev"]), fontsize=7)
        ax.set_title(f"seed {s}: Spearman {v['spearman_all_subsets']}")
        ax.set_xlabel("ICL proxy (SmolLM2 gold log-lik)")
        ax.set_ylabel("oracle dev acc (micro, SFT)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_md(out: dict, name: str) -> str:
    s = out["setup"]
    lines = [f"# TMAP on arith ({name})", "",
             (f"Pool arith {s['pool_size']} (20% wrong answers + other defects), budget {s['budget']} ({s['k']} examples), "
             f"seeds {s['seeds']}. Indicators: {', '.join(s['indicators'])}. Proxy: SmolLM2-135M-Instruct ICL, gold-answer "
             f"mean log-likelihood, {s['proxy']['anchors']} anchors, {s['proxy']['demos']} demos per question, "
             f"{s['proxy']['draws']} draw(s). Search: {s['search']['budget']} proxy evaluations "
             f"(centre + vertices + {s['search']['n_init']} random + {s['search']['n_iter']} EI steps). "
             f"Oracle: micro from scratch, {s['oracle']['steps']} steps (training seed = seed)."), "",
             "| method | seed | n | proxy | dev | test | wrong kept |", "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['label']} | {r['seed']} | {r['n']} | {r['proxy']:+.4f} | {r['dev_acc']:.3f} | {r['test_acc']:.3f} | "
                     f"{r['defects']['wrong_answer']} |")
    lines += ["", "| method | test mean | test std | test minus random (per seed) | proxy mean | wrong kept (mean) |",
              "|---|---|---|---|---|---|"]
    for m, v in out["summary"].items():
        if m in ("fidelity", "cost"):
            continue
        lines.append(f"| {m} | {v['test_mean']:.3f} | {v['test_std']:.3f} | {v['minus_random']} | {v['proxy_mean']:+.4f} | "
                     f"{v['wrong_answers_kept']} |")
    f, c = out["summary"]["fidelity"], out["summary"]["cost"]
    lines += ["", (f"Proxy fidelity, Spearman(proxy, oracle dev) per seed: over TMAP's spread of evaluated subsets "
                  f"{f['spearman_tmap_spread_per_seed']}; over all subsets with both numbers {f['spearman_all_subsets_per_seed']} "
                  f"(mean {f['mean_spearman_all_subsets']})."),
              (f"Cost: {c['proxy_calls']} proxy calls ({c['proxy_calls_fresh']} fresh), {c['oracle_runs_fresh']} fresh oracle runs, "
              f"search seconds per seed {c['search_seconds']}; total {out['total_seconds'] / 60:.1f} min."), ""]
    for sd, v in out["per_seed"].items():
        lines.append(f"- seed {sd}: weights {v['weights']}; best proxy {v['best_proxy']:+.4f} vs equal {v['equal_weights_proxy']:+.4f}; "
                     f"best single {v['best_single_indicator']}; {v['proxy']['seconds_per_fresh_call']} s per fresh proxy call; "
                     f"tiny vs full dev on the compared subsets {v['tiny_vs_full_compared_subsets']}; "
                     f"tiny vs full on the TMAP spread {v['fidelity_tmap_spread'].get('tiny_vs_full')}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
