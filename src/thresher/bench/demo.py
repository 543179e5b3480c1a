"""The demo (the main job): select 30% of the ``arith`` pool with each method, fine-tune the
micro model on each subset, score dev and (once) test, and print the comparison.

Rows ``full`` (all data) and ``clean-only`` (the hidden labels: an upper reference,
never a selector) frame the selectors. Every selector row is paired with ``random`` at
the same budget and seed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger
from thresher.data.store import SignalStore
from thresher.engine.local import run_signal
from thresher.models.train import TrainConfig
from thresher.oracle.core import Oracle
from thresher.select.base import (
    Budget,
    SignalView,
    make_selector,
    selector_class,
    unique_signals,
)
from thresher.signals.base import make_signal
from thresher.tasks.arith import ArithConfig, ArithTestbed, defect_counts

ROW_KEYS = ("method", "budget", "seed", "n_selected", "dev_acc", "test_acc", "oracle_runs", "wall_s", "reference", "params", "defects")


@dataclass
class DemoConfig:
    out: Path
    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    budget: float = 0.3
    pool_size: int = 2000
    steps: int = 500
    scorer_warmup: int = 300
    scorer_warmup_steps: int = 250
    workers: int = 1
    arith: dict = field(default_factory=dict)  # extra ArithConfig settings (dev_size, rates, ...)

    def methods(self) -> list[tuple[str, str, dict]]:
        """(label, selector name, params). Signal-based selectors use the micro scorer."""
        if self.quick:
            return [("random", "random", {}), ("ifd", "ifd", {}), ("topk-loss-low", "topk", {"signal": "loss", "direction": "low"})]
        return [
            ("random", "random", {}),
            ("ifd", "ifd", {}),
            ("topk-loss-low", "topk", {"signal": "loss", "direction": "low"}),
            ("topk-loss-high", "topk", {"signal": "loss", "direction": "high"}),
            ("topk-answer-len", "topk", {"signal": "tokens_answer", "direction": "high"}),
            ("dsir", "dsir", {}),
            ("thtb", "thtb", {}),
        ]

    @classmethod
    def make(cls, out, quick: bool = False, seeds: list[int] | None = None, workers: int | None = None, **kw) -> "DemoConfig":
        if quick:
            base = dict(seeds=[0], scorer_warmup=200, pool_size=1500)
        else:
            base = {}
        base.update({k: v for k, v in kw.items() if v is not None})
        if seeds:
            base["seeds"] = seeds
        if workers is None:  # the micro model is too small to use two threads well: two runs at once instead
            from thresher.threads import available_cores, user_threads

            workers = max(1, min(2, user_threads() or available_cores()))  # within the --threads budget
        return cls(out=Path(out), quick=quick, workers=workers, **base)


def _with_scorer(method: str, params: dict, cfg: DemoConfig) -> dict:
    """Methods with a scorer read the demo's warmed micro scorer."""
    p = dict(params)
    if "scorer" in selector_class(method).Params.model_fields:
        p.update(scorer="micro", scorer_warmup=cfg.scorer_warmup, scorer_warmup_steps=cfg.scorer_warmup_steps)
    return p


def run_demo(cfg: DemoConfig, console=None) -> list[dict]:
    from rich.console import Console

    console = console or Console(stderr=False)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    console.print(f"[bold]thresher demo[/bold]: arith pool of {cfg.pool_size}, budget {cfg.budget:g}, seeds {cfg.seeds}, "
                  f"micro model, {cfg.steps} steps per fine-tune -> {out}")

    # 1. pool, task, hidden labels
    testbed = ArithTestbed(ArithConfig(pool_size=cfg.pool_size, **cfg.arith))
    pool, task, labels = testbed.build(out / "data")
    console.print(f"pool: {len(pool)} examples ({out / 'data' / 'pool.jsonl'}), hidden labels in {out / 'data' / 'defects.jsonl'}; "
                  f"task: dev {len(task.dev)}, test {task.test_size} (sealed)")

    # 2. signals
    store = SignalStore(out / "store")
    selectors = {label: make_selector(method, **_with_scorer(method, params, cfg)) for label, method, params in cfg.methods()}
    needed = unique_signals([make_signal("text", model="micro")] + [s for sel in selectors.values() for s in sel.required_signals()])
    t0 = time.perf_counter()
    for sig in needed:
        run_signal(sig, pool, store)
    signal_seconds = time.perf_counter() - t0
    console.print(f"signals: {', '.join(dict.fromkeys(s.name for s in needed))} (micro scorer warmed on {cfg.scorer_warmup} "
                  f"random pool examples) in {signal_seconds:.0f}s")

    # 3. selections (dev-only view of the task)
    view = SignalView(pool, store)
    budget = Budget.parse(cfg.budget)
    ledger = CostLedger(out / "ledger.jsonl")
    train_cfg = TrainConfig.for_tier("micro", steps=cfg.steps)
    plans = []  # (label, selector, params, seed, ids, select_seconds, reference)
    sel_dir = out / "selections"
    for seed in cfg.seeds:
        for label, method, params in cfg.methods():
            sel = selectors[label].select(pool, view, budget, task=task.dev_view(), seed=seed)
            sel.save(sel_dir / f"{label}-s{seed}.jsonl", pool)
            plans.append((label, method, params, seed, sel.ids, sel.seconds, False))
        plans.append(("full", "full", {}, seed, pool.ids, 0.0, False))
        clean = [i for i in pool.ids if labels[i] == "clean"]
        plans.append(("clean-only", "labels", {}, seed, clean, 0.0, True))

    # 4. fine-tune + dev (seed = training seed, paired across methods)
    rows = []
    by_seed: dict[int, list] = {}
    for pl in plans:
        by_seed.setdefault(pl[3], []).append(pl)
    for seed, pls in by_seed.items():
        oracle = Oracle(task, pool, model="micro", train=TrainConfig(**{**train_cfg.__dict__, "seed": seed}),
                        cache_dir=out / "oracle", ledger=ledger, workers=cfg.workers)
        console.print(f"seed {seed}: fine-tuning {len(pls)} subsets ({cfg.workers} worker(s))")
        scores = oracle.score_many([pl[4] for pl in pls], labels=[f"{pl[0]} s{seed}" for pl in pls])
        for pl, sc in zip(pls, scores):
            test = oracle.score_test(pl[4], label=f"{pl[0]} s{seed}")
            rows.append({
                "method": pl[0], "budget": "1" if pl[1] == "full" else str(budget), "seed": seed, "n_selected": len(pl[4]),
                "dev_acc": round(sc.value, 4), "test_acc": round(test.value, 4), "oracle_runs": 1,
                "wall_s": round(pl[5] + sc.seconds + test.seconds, 1), "reference": pl[6], "params": pl[2],
                "defects": defect_counts(pl[4], labels),
            })
    total = time.perf_counter() - t_start
    write_results(out, rows, total, cfg, ledger)
    print_table(rows, console)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.png'}; total {total / 60:.1f} min")
    return rows


def paired_vs_random(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean test-acc difference to random on the same seeds, and the per-seed differences."""
    rand = {r["seed"]: r["test_acc"] for r in rows if r["method"] == "random"}
    out: dict[str, dict] = {}
    for r in rows:
        if r["method"] == "random" or r["seed"] not in rand:
            continue
        d = out.setdefault(r["method"], {"diffs": []})
        d["diffs"].append(round(r["test_acc"] - rand[r["seed"]], 4))
    for d in out.values():
        d["mean_diff"] = round(float(np.mean(d["diffs"])), 4)
        d["wins"] = sum(x > 0 for x in d["diffs"])
    return out


def print_table(rows: list[dict], console) -> None:
    from rich import box
    from rich.table import Table

    budgets = sorted({r["budget"] for r in rows if r["budget"] != "1"})
    t = Table(title=f"arith, micro model: selections at budget {', '.join(budgets)} (test scored once per row)",
              box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for c, just in (("method", "left"), ("seed", "right"), ("n", "right"), ("dev", "right"), ("test", "right"),
                    ("runs", "right"), ("wall s", "right"), ("kept: wrong/trunc/fmt/dup/off/triv", "left")):
        t.add_column(c, justify=just, no_wrap=True)
    for r in rows:
        d = r["defects"]
        kept = f"{d['wrong_answer']}/{d['truncated']}/{d['off_format']}/{d['exact_dup'] + d['near_dup']}/{d['off_task']}/{d['trivial']}"
        name = r["method"] + (" *" if r["reference"] else "")
        t.add_row(name, str(r["seed"]), str(r["n_selected"]), f"{r['dev_acc']:.3f}", f"{r['test_acc']:.3f}",
                  str(r["oracle_runs"]), f"{r['wall_s']:.0f}", kept)
    console.print(t)
    console.print("* built from the hidden defect labels: an upper reference, not a selector. "
                  "runs = fine-tuning runs the row cost (selection + final training).")
    for m, d in paired_vs_random(rows).items():
        console.print(f"  {m}: test acc minus random (same seed) {d['diffs']}, mean {d['mean_diff']:+.3f}")


def write_results(out: Path, rows: list[dict], total_seconds: float, cfg: DemoConfig, ledger: CostLedger) -> None:
    atomic_write_json(out / "results.json", rows, default=None)
    summary = {"total_seconds": round(total_seconds, 1), "seeds": cfg.seeds, "budget": cfg.budget, "steps": cfg.steps,
               "pool_size": cfg.pool_size, "ledger": ledger.summary(), "paired_vs_random": paired_vs_random(rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_results(rows, out / "results.png")


def plot_results(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(methods)), 4))
    for i, m in enumerate(methods):
        vals = [r["test_acc"] for r in rows if r["method"] == m]
        ref = any(r["reference"] for r in rows if r["method"] == m)
        ax.bar(i, np.mean(vals), color="#bbbbbb" if ref else ("#888888" if m in ("random", "full") else "#4477aa"),
               hatch="//" if ref else None, edgecolor="black")
        ax.scatter([i] * len(vals), vals, color="black", zorder=3, s=12)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=25, ha="right")
    ax.set_ylabel("test accuracy (exact match)")
    ax.set_ylim(0, 1)
    ax.set_title("arith, micro model: fine-tuned on each selection (bars: mean, dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
