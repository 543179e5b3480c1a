"""THTB's stage report: per-stage summaries (counts, score quantiles, top and bottom examples),
one histogram per stage, and the Markdown / JSON files the selector writes into its
artifacts folder (``thtb_stage{1,2,3}_*.png``, ``thtb_report.md``, ``thtb_report.json``,
``thtb_stage_ids.json``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from thresher.data.io import atomic_write, atomic_write_text
from thresher.data.pool import assistant_text, user_text
from thresher.select.thtb.stages import StageResult


def _f(x) -> float | None:
    """A JSON-safe float (NaN / inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def quantiles(v) -> dict[str, float | None]:
    """Count, mean, min, p10, p25, median, p75, p90 and max of the non-NaN values (``{"n": 0}`` if none)."""
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    out: dict[str, Any] = {"n": len(v), "mean": _f(v.mean())}
    out.update({k: _f(x) for k, x in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), q)})
    return out


def _snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def example_row(pool, st: StageResult, idx: int, rank: int | None) -> dict:
    """One example of a stage for the report: id, rank, score, its score components, and
    the first characters of the instruction and the response."""
    rec = pool[int(st.positions[idx])]
    out = {"id": rec["id"], "rank": rank, "score": _f(st.scores[idx]),
           "components": {c: _f(v[idx]) for c, v in st.components.items()},
           "instruction": _snippet(user_text(rec), 200), "response": _snippet(assistant_text(rec), 160)}
    return out


def stage_summary(pool, st: StageResult, target: int, n_examples: int) -> dict:
    """A stage's report entry: counts, cut-off, score and component quantiles, the top and
    bottom ``n_examples`` scored examples, and the stage's notes."""
    rank_of = {int(i): j + 1 for j, i in enumerate(st.ranked)}
    scored = [int(i) for i in st.ranked if not np.isnan(st.scores[i])]
    kept_scores = st.scores[st.kept]
    finite_kept = kept_scores[~np.isnan(kept_scores)]
    return {
        "stage": st.name, "title": st.title, "n_in": len(st.positions), "target": int(target),
        "n_kept": len(st.kept), "keep_fraction": _f(len(st.kept) / max(1, len(st.positions))),
        "missing_scores": st.missing,
        "cutoff": _f(finite_kept.min()) if len(finite_kept) else None,
        "scores_in": quantiles(st.scores), "scores_kept": quantiles(kept_scores),
        "components_in": {c: quantiles(v) for c, v in st.components.items()},
        "top": [example_row(pool, st, i, rank_of[i]) for i in scored[:n_examples]],
        "bottom": [example_row(pool, st, i, rank_of[i]) for i in scored[::-1][:n_examples]],
        **st.notes,
    }


def write_report(out: Path, pool, stages: list[StageResult], summaries: list[dict], diag: dict, params: dict) -> list[str]:
    """Write one histogram per stage, ``thtb_stage_ids.json``, ``thtb_report.json`` (``diag``
    without its artifacts, plus ``params``) and ``thtb_report.md`` into ``out``; list them."""
    files = []
    for i, st in enumerate(stages, 1):
        name = f"thtb_stage{i}_{st.name}.png"
        plot_stage_histogram(st, out / name)
        files.append(name)
    ids = pool.ids
    stage_ids = {st.name: [ids[int(st.positions[j])] for j in st.kept] for st in stages}
    atomic_write_text(out / "thtb_stage_ids.json", json.dumps(stage_ids))
    report = {k: v for k, v in diag.items() if k != "artifacts"}
    report["params"] = params
    atomic_write_text(out / "thtb_report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "thtb_report.md", render_report(report, files))
    return files + ["thtb_report.md", "thtb_report.json", "thtb_stage_ids.json"]


def plot_stage_histogram(st: StageResult, path) -> dict:
    """Histogram of a stage's input scores, kept and dropped stacked, with the cut-off.

    Few distinct scores (<= 12, e.g. Bloom levels) get one bar per value; a constant score one
    labelled bar and a note (the stage then keeps the previous stage's order). Returns what was
    plotted: ``kind`` (continuous / discrete / constant / empty), ``values`` (bar values or bin
    edges), ``kept`` / ``dropped`` counts per bar and the ``note``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the THTB stage report needs matplotlib (pip install 'thresher[report]' or pip install matplotlib)") from e
    kept_mask = np.zeros(len(st.positions), dtype=bool)
    kept_mask[st.kept] = True
    ok = ~np.isnan(st.scores)
    kept_v, dropped_v = st.scores[kept_mask & ok], st.scores[~kept_mask & ok]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    allv = st.scores[ok]
    uniq = np.unique(allv)
    info: dict[str, Any] = {"kind": "empty", "values": [], "kept": [], "dropped": [], "note": "no scored examples"}
    labels = [f"dropped ({len(dropped_v)})", f"kept ({len(kept_v)})"]
    colors = ["#c0c0c0", "#2a7ab0"]
    cut = float(kept_v.min()) if len(kept_v) else None
    if len(uniq) > 12:
        bins = np.linspace(float(uniq[0]), float(uniq[-1]), 31)
        ax.hist([dropped_v, kept_v], bins=bins, stacked=True, color=colors, label=labels)
        info.update(kind="continuous", values=bins.tolist(), note="",
                    kept=np.histogram(kept_v, bins)[0].tolist(), dropped=np.histogram(dropped_v, bins)[0].tolist())
        if cut is not None:
            ax.axvline(cut, color="#b03a2a", linestyle="--", linewidth=1, label=f"cut-off {cut:.3g}")
        ax.set_xlabel("score")
    elif len(uniq):  # one bar per distinct value, evenly spaced
        idx = np.arange(len(uniq))
        kc = np.array([(kept_v == u).sum() for u in uniq])
        dc = np.array([(dropped_v == u).sum() for u in uniq])
        ax.bar(idx, dc, width=0.7, color=colors[0], label=labels[0])
        ax.bar(idx, kc, width=0.7, bottom=dc, color=colors[1], label=labels[1])
        for i, (a, b) in enumerate(zip(dc, kc)):
            ax.annotate(str(int(a + b)), (i, a + b), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(idx, [f"{u:.3g}" for u in uniq])
        ax.set_xlim(*((-0.8, len(uniq) - 0.2) if len(uniq) > 1 else (-1.5, 1.5)))
        ax.set_ylim(0, max(dc + kc) * (1.35 if len(uniq) == 1 else 1.15))
        note = ""
        if len(uniq) == 1:
            note = f"all {len(allv)} scores equal {uniq[0]:.4g}: no score ranking, the previous stage's order decides"
            ax.text(0.5, 0.93, note, ha="center", va="top", transform=ax.transAxes, fontsize=8, wrap=True)
        elif cut is not None:
            ax.axvline(int(np.searchsorted(uniq, cut)), color="#b03a2a", linestyle="--", linewidth=1, label=f"cut-off {cut:.3g}")
        info.update(kind="constant" if len(uniq) == 1 else "discrete", values=uniq.tolist(), kept=kc.tolist(),
                    dropped=dc.tolist(), note=note)
        ax.set_xlabel("score (one bar per distinct value)")
    else:
        ax.text(0.5, 0.5, "no scored examples", ha="center", va="center", transform=ax.transAxes)
    missing = int((~ok).sum())
    ax.set_title(f"{st.title}: kept {len(st.kept)} of {len(st.positions)}" + (f" ({missing} without a score)" if missing else ""),
                 fontsize=9)
    ax.set_ylabel("examples")
    if len(allv):
        ax.legend(fontsize=8, loc="upper left" if info["kind"] != "constant" else "lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return info


def render_report(report: dict, pngs: list[str]) -> str:
    """The stage report as Markdown: settings, one section per stage (counts, quantiles,
    histogram, top and bottom examples with their score components)."""
    lines = ["# THTB selection report", ""]
    lines.append(f"- quality source: `{report['quality']}`; Bloom: {report['bloom_source']}; "
                 f"IC: {'judge disciplines' if report['ic_available'] else 'unavailable (no judge)'}; formulas: {report['formula']}")
    lines.append(f"- budget rule `{report['budget_rule']}`: fractions requested {report['fractions_requested']}, "
                 f"used {report['fractions_used']}; stage targets {report['stage_targets']}, kept {report['stage_kept']}"
                 + (f"; shortfall {report['shortfall']}" if report["shortfall"] else ""))
    lines.append("")
    for st, png in zip(report["stages"], pngs):
        lines.append(f"## {st['title']}")
        lines.append("")
        lines.append(f"kept **{st['n_kept']}** of {st['n_in']} (target {st['target']}); cut-off score "
                     f"{_fmt(st['cutoff'])}; examples without a score: {st['missing_scores']}")
        notes = {k: v for k, v in st.items() if k not in ("stage", "title", "n_in", "target", "n_kept", "keep_fraction",
                                                           "missing_scores", "cutoff", "scores_in", "scores_kept",
                                                           "components_in", "top", "bottom")}
        for k, v in notes.items():
            lines.append(f"- {k}: {v}")
        lines.append("")
        lines.append(f"![{st['stage']}]({png})")
        lines.append("")
        lines.append("| | n | mean | p10 | median | p90 | min | max |")
        lines.append("|---|---|---|---|---|---|---|---|")
        rows = [("score (input)", st["scores_in"]), ("score (kept)", st["scores_kept"])]
        rows += [(c, q) for c, q in st["components_in"].items()]
        for label, q in rows:
            lines.append(f"| {label} | {q.get('n', 0)} | {_fmt(q.get('mean'))} | {_fmt(q.get('p10'))} | {_fmt(q.get('median'))} | "
                         f"{_fmt(q.get('p90'))} | {_fmt(q.get('min'))} | {_fmt(q.get('max'))} |")
        for which in ("top", "bottom"):
            if not st[which]:
                continue
            lines.append("")
            lines.append(f"**{which} {len(st[which])}**")
            lines.append("")
            for ex in st[which]:
                comps = ", ".join(f"{c}={_fmt(v)}" for c, v in ex["components"].items())
                lines.append(f"- #{ex['rank']} `{ex['id']}` score {_fmt(ex['score'])} ({comps})")
                lines.append(f"  - instruction: {ex['instruction']!r}")
                lines.append(f"  - response: {ex['response']!r}")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
