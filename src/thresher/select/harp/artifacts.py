"""HARP's artifacts: the per-leaf posterior table (CSV, JSON), the greedy trace and the leaf-effects plot."""
from __future__ import annotations

import csv
import json

import numpy as np

from thresher.select.harp.envelope import GreedyTrace
from thresher.select.harp.hierarchy import Hierarchy
from thresher.select.harp.posterior import LeafPosterior


def posterior_rows(h: Hierarchy, post: LeafPosterior, phi: np.ndarray, names: list[str], chosen: list[int],
                   emitted: list[int]) -> list[dict]:
    """One row per (leaf, domain): the per-leaf posterior table. ``chosen``: in the best
    prefix; ``emitted``: some of its points are in the selection (the budget may cut the
    prefix short, ``fill`` may add leaves beyond it)."""
    chosen_set, emitted_set = set(chosen), set(emitted)
    rows = []
    for leaf in range(h.n_leaves):
        for j, d in enumerate(names):
            rows.append({
                "leaf": leaf, "parent": int(h.leaf_parent[leaf]), "large": int(h.leaf_large[leaf]),
                "size": int(h.leaf_sizes[leaf]), "domain": d, "measured": bool(post.measured[leaf]),
                "source": int(post.source[leaf]), "distance": float(post.distance[leaf]),
                "raw_effect": _num(post.raw[leaf, j]), "noise_var": _num(post.noise[leaf, j]),
                "prior_mean": _num(post.prior_mean[leaf, j]), "post_mean": float(post.mean[leaf, j]),
                "post_var": float(post.var[leaf, j]), "phi": float(phi[leaf, j]), "chosen": leaf in chosen_set,
                "emitted": leaf in emitted_set,
            })
    return rows


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def write_artifacts(out, h: Hierarchy, post: LeafPosterior, phi: np.ndarray, names: list[str], trace: GreedyTrace,
                    t: int, chosen: list[int], emitted: list[int], envelope: str, base: np.ndarray) -> list[str]:
    """Posterior table (CSV + JSON), greedy trace and the leaf-effects plot; returns file names."""
    rows = posterior_rows(h, post, phi, names, chosen, emitted)
    with open(out / "leaf_posteriors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "leaf_posteriors.json").write_text(json.dumps({"domains": names, "tau2": post.tau2.tolist(), "scale": post.scale,
                                                         "reference": base.tolist(), "rows": rows}))
    (out / "greedy_trace.json").write_text(json.dumps({
        "envelope": envelope, "start": trace.start, "order": trace.order.tolist(), "value": trace.value.tolist(),
        "gain": trace.gain.tolist(), "best_prefix": t, "chosen": chosen, "emitted": emitted}))
    files = ["leaf_posteriors.csv", "leaf_posteriors.json", "greedy_trace.json"]
    plot_leaf_effects(out / "leaf_effects.png", post, names, chosen, emitted, envelope)
    files.append("leaf_effects.png")
    return files


def plot_leaf_effects(path, post: LeafPosterior, names: list[str], chosen: list[int], emitted: list[int], title: str) -> None:
    """Per domain: every leaf's posterior mean with a 95% band (measured leaves filled, inferred
    ones open), the raw measured effects (x); leaves in the selection shaded gold, leaves of
    the best prefix the budget cut off shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_dom = len(names)
    fig, axes = plt.subplots(1, n_dom, figsize=(4.2 * n_dom, 3.6), squeeze=False, sharey=True)
    for j, (ax, d) in enumerate(zip(axes[0], names)):
        order = np.argsort(-post.mean[:, j], kind="stable")
        xs = np.arange(len(order))
        sd = np.sqrt(post.var[order, j])
        m = post.measured[order]
        for x_i, leaf in zip(xs, order):
            if leaf in emitted:
                ax.axvspan(x_i - 0.5, x_i + 0.5, color="gold", alpha=0.35, lw=0)
            elif leaf in chosen:
                ax.axvspan(x_i - 0.5, x_i + 0.5, color="lightgray", alpha=0.4, lw=0)
        ax.errorbar(xs[m], post.mean[order, j][m], yerr=1.96 * sd[m], fmt="o", color="tab:blue", ms=5, capsize=2,
                    label="measured: posterior")
        ax.errorbar(xs[~m], post.mean[order, j][~m], yerr=1.96 * sd[~m], fmt="o", mfc="white", color="tab:gray", ms=5,
                    capsize=2, label="inferred (inherits)")
        ax.plot(xs[m], post.raw[order, j][m], "x", color="tab:red", label="measured: raw effect")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"domain {d}")
        ax.set_xlabel("leaves (by posterior mean)")
        ax.set_xticks(xs, [str(int(v)) for v in order], fontsize=6)
    axes[0][0].set_ylabel("effect on dev accuracy")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"HARP leaf effects ({title} envelope; gold = in the selection, grey = best prefix cut by the budget)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
