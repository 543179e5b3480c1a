"""TMAP's plots: learned weights per indicator (the paper's Figure 2), the search trace, the proxy's fidelity."""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(labels: list[str], weights, path, title: str = "TMAP learned weights", groups: dict[str, list] | None = None) -> None:
    """Bar chart of weights per indicator (the paper's Figure 2). ``groups`` (name -> weight
    vector) draws grouped bars, e.g. one group per seed."""
    plt = _plt()
    series = groups or {"weights": list(weights)}
    n, g = len(labels), len(series)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.95 * n + 2), 3.6))
    width = 0.8 / g
    x = np.arange(n)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (g - 1) / 2) * width, vals, width, label=name if g > 1 else None)
    ax.axhline(1.0 / n, color="grey", lw=0.8, ls="--", label="equal weights")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=25, ha="right")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trace(trace: list[dict], path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    xs = [t["index"] for t in trace]
    ys = [t["value"] for t in trace]
    colours = ["tab:grey" if t["phase"] == "init" else "tab:blue" for t in trace]
    ax.scatter(xs, ys, c=colours, s=18)
    ax.plot(xs, np.maximum.accumulate(ys), color="tab:orange", lw=1.2, label="best so far")
    ax.set_xlabel("proxy evaluation (grey: initial design, blue: BO)")
    ax.set_ylabel("proxy J(w)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fidelity(fid: dict, path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    px = [r["proxy"] for r in fid["rows"]]
    oc = [r["oracle_dev"] for r in fid["rows"]]
    ax.scatter(px, oc, s=22)
    ax.set_xlabel("ICL proxy J(w)")
    metric = "gold-answer log-likelihood" if fid.get("metric") == "loglik" else "accuracy"
    ax.set_ylabel(f"oracle dev {metric} ({fid.get('oracle_model')})")
    rho = fid.get("spearman")
    ax.set_title(f"proxy fidelity: Spearman {rho:+.2f}" if rho is not None else "proxy fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
