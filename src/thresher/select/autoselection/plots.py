"""Plots of recipe searches: one search's trace, and best-so-far curves of several searches.

matplotlib is imported lazily (Agg backend): plotting never needs a display.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from thresher.select.autoselection.trace import best_so_far

PHASE_COLOURS = {"warmup": "tab:gray", "edit": "tab:blue", "reseed": "tab:orange", "random": "tab:green"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib ships with thresher's report extra
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    return plt


def plot_search_trace(lines: list[dict], path: str | os.PathLike, title: str = "recipe search") -> Path:
    """Oracle score per evaluation (coloured by phase), the surrogate's mu +/- sigma for each
    pick, and the best-so-far line; the retain ratio of each evaluated subset below."""

    plt = _pyplot()
    x = np.arange(1, len(lines) + 1)
    scores = [ln["score"] for ln in lines]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for phase, colour in PHASE_COLOURS.items():
        idx = [i for i, ln in enumerate(lines) if ln["phase"] == phase]
        if idx:
            ax.scatter(x[idx], [scores[i] for i in idx], color=colour, label=phase, zorder=3)
    pred = [(i, ln["mu"], ln["sigma"]) for i, ln in enumerate(lines) if ln.get("mu") is not None]
    if pred:
        ax.errorbar([x[i] for i, _, _ in pred], [m for _, m, _ in pred], yerr=[s for _, _, s in pred], fmt="x",
                    color="tab:purple", alpha=0.7, label="surrogate mu +/- sigma", zorder=2)
    ax.step(x, best_so_far(scores), where="post", color="black", label="best so far")
    ax.set_ylabel("dev score")
    ax.set_title(title)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    ax2.bar(x, [ln["state"]["retain_ratio"] for ln in lines], color="tab:cyan")
    ax2.set_ylabel("retain")
    ax2.set_xlabel("oracle evaluation")
    ax2.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_best_so_far(curves: dict[str, list[list[float]]], path: str | os.PathLike, title: str = "best so far",
                     references: dict[str, float] | None = None) -> Path:
    """Best-so-far dev score vs oracle runs: thin lines per seed, a thick mean line per method;
    optional horizontal reference lines (e.g. full data)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"]
    for j, (label, runs) in enumerate(curves.items()):
        c = colours[j % len(colours)]
        length = max(len(r) for r in runs)
        for r in runs:
            ax.plot(np.arange(1, len(r) + 1), r, color=c, alpha=0.3, lw=1)
        padded = np.array([r + [r[-1]] * (length - len(r)) for r in runs])
        ax.plot(np.arange(1, length + 1), padded.mean(axis=0), color=c, lw=2.5, label=f"{label} (mean of {len(runs)})")
    for j, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", color=["black", "gray", "brown"][j % 3], lw=1, label=label)
    ax.set_xlabel("oracle runs")
    ax.set_ylabel("best dev score so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(y=0.1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right", framealpha=0.85)
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
