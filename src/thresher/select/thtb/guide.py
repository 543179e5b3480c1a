"""THTB annotation guidance: the hardness profile of a pool, and what it lacks.

THTB's second use (paper, Traditional Chinese Medicine study): before annotating more
data, measure how hard the data one has is, in THTB's own terms, and write the new
instructions where the pool is thin: higher Bloom levels, more disciplines per query,
responses that expand further on their instruction.

:func:`thtb_guide` reads stored signals (the same ones the ``thtb`` selector reads) and
returns a JSON-able profile over the whole pool:

- ``bloom``: the level mix (count and share per level, Remember .. Create), the share of
  higher-order levels (Analyze, Evaluate, Create) and the mean Bloom term;
- ``ic``: quantiles of interdisciplinary complexity (from the stored ``judge_disciplines``
  and ``discipline_embeddings`` signals), the distribution of the number of
  disciplines per query and the most frequent disciplines when a judge listed them;
  otherwise ``{"available": false, "reason": ...}`` (never estimated without one);
- ``ihs`` and ``ehs`` (with ``irei`` and ``sc_norm``) quantiles, ``quality`` quantiles
  when a quality source is named, and ``mean_scores``: the three stages' mean normalised
  scores, which the paper compares across datasets (only the Bloom term is on an
  absolute scale; IC's count term and IREI are min-max normalised over this pool, so
  compare those between pools with care);
- ``under_represented``: categories below their target share, with the rule used.

Rules (decisions, all parameters): a Bloom level is under-represented when its share is
below ``min_share`` (default half the uniform share, 1/12); the higher-order levels
together when below ``higher_order_target`` (default 1/2, their uniform share); with a
judge, multi-disciplinary queries (2+ disciplines) when below
``multi_discipline_target`` (default 1/2).

All normalisations are over the whole pool (it is one "stage"); the silhouette is the
stored pool-wide ``tfidf_silhouette`` (k = round(sqrt(n / 2)) unless ``sc_k``).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Literal

import numpy as np

from thresher.data.pool import as_pool, load_pool
from thresher.data.store import SignalStore, default_store
from thresher.engine.local import run_signal
from thresher.select.base import SignalView
from thresher.select.thtb.hardness import (
    canonical_subject,
    ehs_scores,
    ihs_scores,
    interdisciplinary_complexity,
    irei_paper,
    irei_reference,
    sc_norm,
)
from thresher.select.thtb.report import quantiles
from thresher.select.thtb.selector import THTBSelector
from thresher.signals.heuristics import BLOOM_LEVEL_NAMES

HIGHER_ORDER = ("Analyze", "Evaluate", "Create")


def thtb_guide(pool, store=None, *, bloom: Literal["heuristic", "judge"] = "heuristic", ic: Literal["none", "judge"] = "none",
               quality: str | None = None, formula: Literal["reference", "paper"] = "reference",
               judge_url: str = "http://127.0.0.1:8000/v1", judge_model: str = "small", judge_params: dict | None = None,
               embed_model: str = "minilm", bloom_text: Literal["instruction", "user"] = "instruction",
               sc_k: int | None = None, sc_seed: int = 0, scorer: str = "micro", min_share: float | None = None,
               higher_order_target: float = 0.5, multi_discipline_target: float = 0.5, top_disciplines: int = 15,
               compute_missing: bool = False, show_progress: bool = True, on_error: str = "raise",
               rejects: str | os.PathLike | None = None) -> dict[str, Any]:
    """The THTB hardness profile of ``pool`` from stored signals (see the module docs).

    ``pool``: a Pool or a path; ``store``: a SignalStore or a folder (default the API's
    default store). With ``compute_missing`` the signals are scored first (a separate
    step); otherwise a missing signal raises, naming the command that computes it.
    ``on_error`` / ``rejects`` go to the pool loader when ``pool`` is a path (``skip``
    writes bad rows to ``rejects`` and goes on; the count is in the result).
    """

    rejected = 0
    if not hasattr(pool, "fingerprint"):
        pool, report = load_pool(pool, on_error=on_error, rejects_path=rejects)
        rejected = report.rows_rejected
    pool = as_pool(pool)
    if not isinstance(store, SignalStore):
        store = SignalStore(store or default_store())
    n_levels = len(BLOOM_LEVEL_NAMES)
    min_share = 1.0 / (2 * n_levels) if min_share is None else min_share
    for name, v in (("min_share", min_share), ("higher_order_target", higher_order_target),
                    ("multi_discipline_target", multi_discipline_target)):
        if not 0 <= v <= 1:
            raise ValueError(f"thtb_guide: {name}={v} must be in [0, 1]")
    sel = THTBSelector(quality=quality or "loss:low", bloom=bloom, ic=ic, formula=formula, judge_url=judge_url,
                       judge_model=judge_model, judge_params=judge_params or {}, embed_model=embed_model,
                       bloom_text=bloom_text, sc_scope="pool", sc_k=sc_k, sc_seed=sc_seed, scorer=scorer)
    needed = [sel.bloom_signal(), sel.irei_signal(), sel.pool_silhouette_signal()]
    if ic == "judge":
        needed += [sel.disciplines_signal(), sel.discipline_embeddings_signal()]
    if quality:
        needed.append(sel.quality_source().signal)
    if compute_missing:
        for s in needed:
            run_signal(s, pool, store, show_progress=show_progress)
    view = SignalView(pool, store)
    n = len(pool)
    positions = np.arange(n)
    out: dict[str, Any] = {"pool": pool.name, "fingerprint": pool.fingerprint, "n": n, "rows_rejected_on_load": rejected,
                           "formula": formula}

    # --- Bloom
    term, levels, notes = sel.bloom_values(view, positions)
    counts = notes["bloom_level_counts"]
    scored = int((~np.isnan(levels)).sum())
    shares = {lv: (c / scored if scored else 0.0) for lv, c in counts.items()}
    out["bloom"] = {
        "source": "judge_bloom" if bloom == "judge" else "bloom_heuristic (HEURISTIC: action-verb lists)",
        "formula": notes["bloom_formula"], "scored": scored, "judge_failed": notes.get("bloom_judge_failed", 0),
        "levels": {lv: {"count": counts[lv], "share": round(shares[lv], 4)} for lv in BLOOM_LEVEL_NAMES},
        "higher_order_share": round(sum(shares[lv] for lv in HIGHER_ORDER), 4),
        "mean_norm": _mean(term),
    }

    # --- IC
    ic_values = None
    if ic == "judge":
        lists, vectors, failed = sel.discipline_inputs(pool, view, positions)
        ic_values, n_disc, dists, info = interdisciplinary_complexity(lists, vectors, formula)
        names = Counter(canonical_subject(it["name"]) for items in lists if items for it in items)
        ok = ~np.isnan(n_disc)
        per_query = Counter(int(c) for c in n_disc[ok])
        multi = float((n_disc[ok] >= 2).mean()) if ok.any() else 0.0
        out["ic"] = {"available": True, "judge_failed": int(failed.sum()), "quantiles": quantiles(ic_values),
                     "distance_quantiles": quantiles(dists), "disciplines_per_query": dict(sorted(per_query.items())),
                     "multi_discipline_share": round(multi, 4), "distinct_disciplines": len(names),
                     "top_disciplines": [{"name": k, "count": v} for k, v in names.most_common(top_disciplines)], **info}
    else:
        out["ic"] = {"available": False, "reason": "no judge configured (ic='none'): interdisciplinary complexity is not estimated"}
    ihs = ihs_scores(term, ic_values)
    out["ihs"] = {"formula": "(Bloom + IC) / 2" if ic_values is not None else "Bloom term alone (IC unavailable)",
                  "quantiles": quantiles(ihs)}

    # --- EHS over the whole pool
    cols = view.signal(sel.irei_signal())
    li = np.asarray(cols["irei_len_inst"], dtype=np.float64)
    lr = np.asarray(cols["irei_len_resp"], dtype=np.float64)
    irei = irei_reference(li, lr) if formula == "reference" else irei_paper(li, lr)
    s = np.asarray(view.signal(sel.pool_silhouette_signal())["silhouette"], dtype=np.float64)
    ehs = ehs_scores(irei, sc_norm(s))
    out["ehs"] = {"quantiles": quantiles(ehs), "irei": quantiles(irei), "sc_norm": quantiles(sc_norm(s)),
                  "response_to_instruction_ratio": quantiles(np.divide(lr, li, out=np.zeros_like(lr), where=li > 0))}

    mean_scores = {"ihs": _mean(ihs), "ehs": _mean(ehs)}
    if quality:
        q = sel.quality_source().values(view)
        out["quality"] = {"source": quality, "quantiles": quantiles(q)}
        mean_scores = {"quality": _mean(q), **mean_scores}
    out["mean_scores"] = mean_scores

    # --- what is thin
    under = []
    for lv in BLOOM_LEVEL_NAMES:
        if shares[lv] < min_share:
            under.append({"category": f"bloom:{lv}", "share": round(shares[lv], 4), "target": round(min_share, 4)})
    ho = out["bloom"]["higher_order_share"]
    if ho < higher_order_target:
        under.append({"category": "bloom:higher-order (Analyze+Evaluate+Create)", "share": ho, "target": higher_order_target})
    if ic == "judge" and out["ic"]["multi_discipline_share"] < multi_discipline_target:
        under.append({"category": "ic:multi-disciplinary (2+ disciplines)", "share": out["ic"]["multi_discipline_share"],
                      "target": multi_discipline_target})
    out["under_represented"] = under
    out["rules"] = {"min_share": round(min_share, 4), "higher_order_target": higher_order_target,
                    "multi_discipline_target": multi_discipline_target}
    out["recommendations"] = _recommend(out)
    return out


def _mean(v) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return round(float(v.mean()), 6) if len(v) else None


def _recommend(g: dict) -> list[str]:
    recs = []
    thin_levels = [u["category"].split(":", 1)[1] for u in g["under_represented"]
                   if u["category"].startswith("bloom:") and "higher-order" not in u["category"]]
    high = [lv for lv in thin_levels if lv in HIGHER_ORDER]
    if high:
        recs.append("write more instructions at the thin higher Bloom levels: " + ", ".join(
            f"{lv} ({g['bloom']['levels'][lv]['share']:.1%})" for lv in high))
    if any("higher-order" in u["category"] for u in g["under_represented"]):
        recs.append(f"raise the share of higher-order instructions (now {g['bloom']['higher_order_share']:.1%})")
    if any(u["category"].startswith("ic:") for u in g["under_represented"]):
        recs.append(f"add queries that need several disciplines (now {g['ic']['multi_discipline_share']:.1%} need 2+)")
    if not g["ic"]["available"]:
        recs.append("interdisciplinary complexity was not measured: configure a judge (ic='judge') to profile it")
    if not recs:
        recs.append("no category is below its target share")
    return recs


def render_guide(g: dict) -> str:
    """A printable (Markdown) rendering of a :func:`thtb_guide` result."""
    lines = [f"# THTB hardness profile: {g['pool']} ({g['n']} examples, {g['formula']} formulas)", ""]
    b = g["bloom"]
    lines.append(f"## Bloom levels ({b['source']}; {b['scored']} scored" + (f", {b['judge_failed']} judge failures" if b["judge_failed"] else "") + ")")
    lines.append("")
    lines.append("| level | count | share |")
    lines.append("|---|---|---|")
    for lv, d in b["levels"].items():
        lines.append(f"| {lv} | {d['count']} | {d['share']:.1%} |")
    lines.append("")
    lines.append(f"higher-order share (Analyze+Evaluate+Create): {b['higher_order_share']:.1%}; mean Bloom term {_fmt(b['mean_norm'])}")
    lines.append("")
    lines.append("## Quantiles")
    lines.append("")
    lines.append("| score | n | mean | p10 | p25 | median | p75 | p90 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    rows = []
    if "quality" in g:
        rows.append((f"quality ({g['quality']['source']})", g["quality"]["quantiles"]))
    if g["ic"]["available"]:
        rows.append(("IC", g["ic"]["quantiles"]))
    rows += [("IHS", g["ihs"]["quantiles"]), ("EHS", g["ehs"]["quantiles"]), ("IREI", g["ehs"]["irei"]),
             ("SC_norm", g["ehs"]["sc_norm"]), ("L_resp / L_inst", g["ehs"]["response_to_instruction_ratio"])]
    for label, q in rows:
        lines.append(f"| {label} | {q.get('n', 0)} | " + " | ".join(_fmt(q.get(k)) for k in ("mean", "p10", "p25", "median", "p75", "p90")) + " |")
    lines.append("")
    if g["ic"]["available"]:
        ic = g["ic"]
        lines.append(f"IC: {ic['distinct_disciplines']} distinct disciplines; per query {ic['disciplines_per_query']}; "
                     f"multi-disciplinary share {ic['multi_discipline_share']:.1%}; judge failures {ic['judge_failed']}")
        lines.append("top disciplines: " + ", ".join(f"{d['name']} ({d['count']})" for d in ic["top_disciplines"]))
    else:
        lines.append(f"IC: unavailable ({g['ic']['reason']})")
    lines.append("")
    lines.append(f"IHS formula: {g['ihs']['formula']}; mean normalised scores: "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in g["mean_scores"].items()))
    lines.append("")
    lines.append("## Under-represented")
    lines.append("")
    if g["under_represented"]:
        for u in g["under_represented"]:
            lines.append(f"- {u['category']}: {u['share']:.1%} (target >= {u['target']:.1%})")
    else:
        lines.append("- none below target")
    lines.append("")
    lines.append("## Guidance")
    lines.append("")
    for r in g["recommendations"]:
        lines.append(f"- {r}")
    return "\n".join(lines) + os.linesep


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
