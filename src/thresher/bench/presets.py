"""Bench configs built in code: the demo's (``thresher demo``), and :func:`shrink`, the
tiny version of any config (one seed, a small pool, a few steps) for smoke runs and tests.
"""
from __future__ import annotations

import copy

from thresher.bench.config import BenchConfig
from thresher.threads import available_cores, user_threads

#: the demo's methods: (label, selector, params); the quick demo keeps the first three
DEMO_METHODS = [
    ("random", "random", {}),
    ("ifd", "ifd", {}),
    ("topk-loss-low", "topk", {"signal": "loss", "direction": "low"}),
    ("topk-loss-high", "topk", {"signal": "loss", "direction": "high"}),
    ("topk-answer-len", "topk", {"signal": "tokens_answer", "direction": "high"}),
    ("dsir", "dsir", {}),
    ("thtb", "thtb", {}),
    ("full", "full", {}),
]
QUICK_METHODS = ("random", "ifd", "topk-loss-low", "full")


def demo_workers() -> int:
    """Two oracle processes on a machine with 2+ cores (the micro model is too small to use two
    threads well: two runs at once instead), within the ``--threads`` budget."""

    return max(1, min(2, user_threads() or available_cores()))


def demo_config(quick: bool = False, seeds: list[int] | None = None, workers: int | None = None, steps: int | None = None,
                arith: dict | None = None, scorer: dict | None = None, decontaminate: bool = True) -> BenchConfig:
    """The demo as a bench: the arith testbed (2000 examples; quick: 1500), budget 0.3, seeds 0 and 1
    (quick: 0), the micro model fine-tuned 500 steps per subset, the warmed micro scorer (300 pool
    examples x 250 steps; quick: 200 examples) for the model signals, the methods of
    :data:`DEMO_METHODS` (quick: random, ifd, topk-loss-low, full) and the ``clean-only``
    reference from the hidden labels. ``arith`` and ``scorer`` override testbed and scorer settings."""
    methods = [m for m in DEMO_METHODS if not quick or m[0] in QUICK_METHODS]
    return BenchConfig.from_dict({
        "name": "demo-quick" if quick else "demo",
        "pool": {"arith": {"pool_size": 1500 if quick else 2000, **(arith or {})}},
        "model": "micro",
        "train": {"steps": steps or 500},
        "budgets": [0.3],
        "seeds": seeds or ([0] if quick else [0, 1]),
        "scorer": {"model": "micro", "warmup_examples": 200 if quick else 300, "warmup_steps": 250, **(scorer or {})},
        "workers": workers or demo_workers(),
        "decontaminate": decontaminate,
        "methods": [{"name": name, "label": label, "params": params} for label, name, params in methods],
        "references": ["clean-only"],
    }, source="thresher demo" + (" --quick" if quick else ""))


def shrink(cfg: BenchConfig, pool_size: int = 160, steps: int = 8, seeds: list[int] | None = None,
           params: dict[str, dict] | None = None) -> BenchConfig:
    """A tiny version of ``cfg`` for a smoke run: one seed, the first budget, a small arith pool
    (a testbed pool keeps its kind), a few fine-tuning steps, a briefly warmed scorer, and
    ``params[label]`` merged into a method's params (a search's own budget, a HARP leaf size...)."""
    cfg = copy.deepcopy(cfg)
    for kind in ("arith", "gsm8k-mix"):
        if kind in cfg.pool:
            small = {"pool_size": pool_size}
            if kind == "arith":
                small.update(dev_size=max(12, pool_size // 6), test_size=max(20, pool_size // 4))
            cfg.pool = {kind: {**(cfg.pool[kind] or {}), **small}}
    cfg.train = {**cfg.train, "steps": steps, "batch_size": 8}
    cfg.seeds = seeds or cfg.seeds[:1]
    cfg.budgets = cfg.budgets[:1]
    if cfg.scorer.get("model", "auto") in ("micro", "auto"):  # a briefly warmed micro scorer (small needs no warm-up)
        cfg.scorer = {**cfg.scorer, "warmup_examples": min(40, pool_size // 2), "warmup_steps": 10}
    cfg.name += "-tiny"
    for m in cfg.methods:
        m.params = {**m.params, **(params or {}).get(m.label, {})}
        if m.budgets:
            m.budgets = m.budgets[:1]
    return cfg


def experiment_cli(doc: str, config, tiny_params: dict[str, dict] | None = None, argv=None):
    """The command line of a ``benchmarks/exp_*.py`` wrapper: ``--config`` (default ``config``),
    ``--out`` (default ``runs/bench-NAME``; rerun to continue), ``--tiny`` (:func:`shrink`, with
    ``tiny_params``). Returns (config, run directory)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(config), help="bench config (default %(default)s)")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-NAME); rerun to continue a killed run")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 1 seed, 160 examples, 8 fine-tuning steps, small searches")
    args = ap.parse_args(argv)
    cfg = BenchConfig.load(args.config)
    if args.tiny:
        cfg = shrink(cfg, params=tiny_params)
    return cfg, Path(args.out or f"runs/bench-{cfg.name}")
