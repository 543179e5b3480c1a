"""AutoSelection on the arith testbed: the bench ``examples/bench-autoselection-arith.yaml`` (the recipe
search vs random recipe search at the same oracle budget, each operator alone, random, full data; three
seeds), then what the bench table lacks: a random subset of the size of each search's best subset (same
seed: is it the recipe or the size?), added to the same bench as ``random-matched`` at those sizes;
AutoSelection against random recipes and against ``random-matched`` (paired, seeds x items bootstrap);
the best-so-far curves of both searches (``RUN_DIR/autoselection-best-so-far.png``) and the best
recipe (``RUN_DIR/best_recipe.yaml``, from the search with the best dev score). Writes ``RUN_DIR/autoselection.md``::

    python benchmarks/exp_autoselection_arith.py [--out runs/bench-autoselection-arith] [--tiny]
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "bench-autoselection-arith.yaml"
TINY = {"autoselection": {"oracle_budget": 3}, "random_recipes": {"oracle_budget": 3}}


def report(rows: list[dict], run_dir: Path, cfg) -> str:
    from thresher.bench.results import compare, describe_comparison
    from thresher.bench.run import row_id
    from thresher.select.autoselection.plots import plot_best_so_far

    auto = sorted((r for r in rows if r["method"] == "autoselection"), key=lambda r: r["seed"])
    matched = {r["seed"]: r for r in rows if r["method"] == "random-matched" and r["budget"] == str(
        next(a["n_selected"] for a in auto if a["seed"] == r["seed"]))}
    lines = [f"# AutoSelection on arith ({cfg.name})\n\nBench table (vs random at 30%, single operators): `table.md`.\n",
             f"- AutoSelection - random recipes: {describe_comparison(compare(rows, 'autoselection', 'random_recipes', cfg.budgets[0]))}"]
    diffs = [round(a["test"] - matched[a["seed"]]["test"], 4) for a in auto if a["seed"] in matched]
    lines.append(f"- AutoSelection - random of the same size (test, per seed): {diffs}\n")
    for r in sorted((r for r in rows if r["selector"] in ("autoselection", "random_recipes")), key=lambda r: (r["method"], r["seed"])):
        d = r["diagnostics"]
        lines.append(f"- {r['method']} seed {r['seed']}: dev {r['dev']:.3f}, test {r['test']:.3f}, n {r['n_selected']}, "
                     f"{len(d['best_so_far'])} evaluations: `{d['best_describe']}`")
    curves = {m: [r["diagnostics"]["best_so_far"] for r in rows if r["method"] == m] for m in ("autoselection", "random_recipes")}
    full = next((r["dev"] for r in rows if r["method"] == "full"), None)
    plot_best_so_far(curves, run_dir / "autoselection-best-so-far.png", title=f"{cfg.name}: best dev score vs oracle runs",
                     references={f"full data ({full:.3f})": full} if full is not None else None)
    best = max(auto, key=lambda r: (r["dev"], -r["seed"]))
    shutil.copy(run_dir / "artifacts" / row_id("autoselection", best["budget"], best["seed"]) / "best_recipe.yaml",
                run_dir / "best_recipe.yaml")
    lines.append(f"\n![best so far](autoselection-best-so-far.png)\n\nBest recipe (seed {best['seed']}): `best_recipe.yaml`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from thresher.bench.presets import experiment_cli
    from thresher.bench.config import MethodSpec
    from thresher.bench.run import run_bench

    cfg, run_dir = experiment_cli(__doc__, CONFIG, TINY, argv)
    sizes = sorted({r["n_selected"] for r in run_bench(cfg, run_dir) if r["method"] == "autoselection"})
    cfg.methods.append(MethodSpec("random", "random-matched", budgets=[str(n) for n in sizes]))
    text = report(run_bench(cfg, run_dir), run_dir, cfg)  # the matched random rows; the others are read back
    (run_dir / "autoselection.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
