"""The demo (``thresher demo``, ``make demo``): the bench preset :func:`~thresher.bench.presets.demo_config`
run by :func:`~thresher.bench.run.run_bench`: select 30% of the ``arith`` pool with each method,
fine-tune the micro model on each subset (two processes at once), score dev and (once) test,
and print the comparison.

Rows ``full`` (all data) and ``clean-only`` (the hidden labels: a reference, never a selector)
frame the selectors; every row is paired with ``random`` on the same seed. Its run directory
is a bench run directory (rows, ``results.json``, ``table.md``; ``thresher report`` reads it),
plus ``results.png`` (test accuracy per method) and ``summary.json``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from thresher.bench.config import BenchConfig
from thresher.bench.results import summarise
from thresher.bench.run import run_bench
from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger


def run_demo(cfg: BenchConfig, out: str | os.PathLike, console=None, show_progress: bool = True,
             rerun_changed: bool = False) -> list[dict]:
    from rich.console import Console

    console = console or Console(stderr=False)
    out = Path(out)
    t_start = time.perf_counter()
    pool = cfg.pool["arith"]
    console.print(f"[bold]thresher demo[/bold]: arith pool of {pool['pool_size']}, budget {', '.join(cfg.budgets)}, seeds "
                  f"{cfg.seeds}, micro model, {cfg.train.get('steps')} steps per fine-tune -> {out}")
    rows = run_bench(cfg, out, console, show_progress=show_progress, rerun_changed=rerun_changed)
    total = time.perf_counter() - t_start
    console.print(f"pool and hidden labels: {out / 'data' / 'pool.jsonl'}, {out / 'data' / 'defects.jsonl'}")
    write_results(out, rows, total, cfg)
    print_table(rows, console)
    console.print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'results.png'}; total {total / 60:.1f} min "
                  f"(`thresher report {out}` for the HTML report)")
    return rows


def paired_vs_random(rows: list[dict]) -> dict[str, dict]:
    """Per method: test accuracy minus random's on the same seed (the demo has one budget), per seed and mean."""
    rand = {r["seed"]: r["test"] for r in rows if r["selector"] == "random"}
    out: dict[str, dict] = {}
    for r in rows:
        if r["selector"] == "random" or r["seed"] not in rand:
            continue
        d = out.setdefault(r["method"], {"diffs": []})
        d["diffs"].append(round(r["test"] - rand[r["seed"]], 4))
    for d in out.values():
        d["mean_diff"] = round(float(np.mean(d["diffs"])), 4)
        d["wins"] = sum(x > 0 for x in d["diffs"])
    return out


def print_table(rows: list[dict], console) -> None:
    from rich import box
    from rich.table import Table

    budgets = sorted({r["budget"] for r in rows if r["selector"] not in ("full",) and not r.get("reference")})
    t = Table(title=f"arith, micro model: selections at budget {', '.join(budgets)} (test scored once per row)",
              box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for c, just in (("method", "left"), ("seed", "right"), ("n", "right"), ("dev", "right"), ("test", "right"),
                    ("runs", "right"), ("wall s", "right"), ("kept: wrong/trunc/fmt/dup/off/triv", "left")):
        t.add_column(c, justify=just, no_wrap=True)
    for r in rows:
        d = r["defects"]
        kept = f"{d['wrong_answer']}/{d['truncated']}/{d['off_format']}/{d['exact_dup'] + d['near_dup']}/{d['off_task']}/{d['trivial']}"
        name = r["method"] + (" *" if r.get("reference") else "")
        t.add_row(name, str(r["seed"]), str(r["n_selected"]), f"{r['dev']:.3f}", f"{r['test']:.3f}",
                  str(r["oracle_runs"]), f"{r['wall_s']:.0f}", kept)
    console.print(t)
    console.print("* built from the hidden defect labels: a reference, not a selector. "
                  "runs = fine-tuning runs the row cost (selection + final training).")
    ci = {s["method"]: s for s in summarise(rows) if "ci_low" in s}
    for m, d in paired_vs_random(rows).items():
        s = ci.get(m)
        band = f", 95% paired bootstrap CI [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" if s and len(s["paired_seeds"]) > 1 else ""
        console.print(f"  {m}: test acc minus random (same seed) {d['diffs']}, mean {d['mean_diff']:+.3f}{band}")


def write_results(out: Path, rows: list[dict], total_seconds: float, cfg: BenchConfig) -> None:
    """``summary.json`` (timing, settings, cost, the paired differences) and ``results.png``; the
    bench already wrote ``results.json`` (rows, summary, config) and ``table.md``."""
    summary = {"total_seconds": round(total_seconds, 1), "seeds": cfg.seeds, "budgets": cfg.budgets,
               "steps": cfg.train.get("steps"), "pool": cfg.pool, "workers": cfg.workers,
               "ledger": CostLedger(out / "ledger.jsonl").summary(), "paired_vs_random": paired_vs_random(rows),
               "summary": summarise(rows)}
    atomic_write_json(out / "summary.json", summary)
    plot_results(rows, out / "results.png")


def plot_results(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(methods)), 4))
    for i, m in enumerate(methods):
        vals = [r["test"] for r in rows if r["method"] == m]
        ref = any(r.get("reference") for r in rows if r["method"] == m)
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
