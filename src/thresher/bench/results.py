"""The results of a bench run: the summary per method and budget (means, the paired bootstrap
difference to ``random``), pairwise comparisons, the inner oracle's fidelity pooled over the
bench, and the markdown table (``RUN_DIR/table.md``).

Statistics (:func:`summarise`): per method and budget, the mean and a paired bootstrap CI of
the difference to ``random`` on the same seeds, resampling seeds and, within each, the test
items (the two models' per-item values of the metric on the same items).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from thresher.stats import oracle_fidelity, seed_item_bootstrap


def load_rows(run_dir: str | os.PathLike) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(Path(run_dir, "rows").glob("*.json"))]
    if not rows:
        raise FileNotFoundError(f"no bench rows in {run_dir}/rows (run `thresher bench CONFIG --out {run_dir}` first)")
    return rows


def _items(row: dict) -> list:
    """A row's per-test-item values of its metric (``test_items``; 0/1 ``test_correct`` for accuracy)."""
    return row.get("test_items") or row.get("test_correct") or []


def summarise(rows: list[dict]) -> list[dict]:
    """Per (method, budget): means, paired difference to random with a bootstrap CI."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    random_by = {(r["budget"], r["seed"]): r for r in rows if r["selector"] == "random"}
    random_budgets = sorted({b for b, _ in random_by})
    out = []
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        s = {"method": method, "budget": budget, "seeds": [r["seed"] for r in rs], "n": len(rs),
             "n_selected": float(np.mean([r["n_selected"] for r in rs])),
             "dev_mean": float(np.mean([r["dev"] for r in rs])), "test_mean": float(np.mean([r["test"] for r in rs])),
             "test_sd": float(np.std([r["test"] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
             "oracle_runs": float(np.mean([r["oracle_runs"] for r in rs])), "proxy_calls": float(np.mean([r["proxy_calls"] for r in rs])),
             "wall_s": float(np.mean([r["wall_s"] for r in rs])), "reference": any(r.get("reference") for r in rs)}
        # full and the references run at 1.0: compared with random where random ran at one budget only
        comp_budget = budget if budget in random_budgets or len(random_budgets) != 1 else random_budgets[0]
        pairs = [(r, random_by.get((comp_budget, r["seed"]))) for r in rs]
        pairs = [(r, q) for r, q in pairs if q is not None and r["selector"] != "random"]
        if pairs and all(_items(r) and _items(q) for r, q in pairs):
            d, lo, hi = seed_item_bootstrap([_items(r) for r, _ in pairs], [_items(q) for _, q in pairs])
            s.update({"vs_random": d, "ci_low": lo, "ci_high": hi, "significant": bool(lo > 0 or hi < 0),
                      "paired_seeds": [r["seed"] for r, _ in pairs], "random_budget": comp_budget})
        out.append(s)
    return out


def compare(rows: list[dict], method: str, against: str, budget: str | None = None,
            against_budget: str | None = None) -> dict | None:
    """The paired test difference of ``method`` (at ``budget``) to ``against`` (at ``against_budget``,
    default the same budget) on the seeds both have: mean and 95% seeds x items bootstrap CI, as
    :func:`summarise` gives against random. None when they share no seed."""
    def pick(m, b):
        return {r["seed"]: r for r in rows if r["method"] == m and (b is None or r["budget"] == b)}

    a, b = pick(method, budget), pick(against, against_budget or budget)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d, lo, hi = seed_item_bootstrap([_items(a[s]) for s in seeds], [_items(b[s]) for s in seeds])
    return {"method": method, "against": against, "diff": d, "ci_low": lo, "ci_high": hi, "seeds": seeds,
            "significant": bool(lo > 0 or hi < 0)}


def describe_comparison(c: dict | None) -> str:
    if c is None:
        return "no common seeds"
    return f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{' *' if c['significant'] else ''} (seeds {c['seeds']})"


def inner_fidelity(rows: list[dict]) -> dict | None:
    """The inner oracle's fidelity pooled over the bench: Spearman between inner and full scores
    over every subset a search row re-scored with the full oracle (:meth:`Oracle.fidelity`), each
    (seed, subset) once, per method and over all of them. None when no row has pairs."""
    by_method: dict[str, dict] = {}
    pooled: dict = {}
    for r in rows:
        for key, inner, full in r.get("inner_fidelity_pairs") or []:
            by_method.setdefault(r["method"], {})[(r["seed"], key)] = (inner, full)
            pooled[(r["seed"], key)] = (inner, full)
    if not pooled:
        return None

    def rho(pairs: dict) -> dict:
        f = oracle_fidelity({k: a for k, (a, _) in pairs.items()}, {k: b for k, (_, b) in pairs.items()})
        return {"spearman": f["spearman"], "n": f["n"]}

    return {"all": rho(pooled), "methods": {m: {**rho(p), "rows": [r.get("inner_fidelity") for r in rows if r["method"] == m]}
                                            for m, p in sorted(by_method.items())}}


def markdown_table(rows: list[dict], summary: list[dict], preamble: str = "") -> str:
    """The bench's table: ``preamble`` (title, setting), the decontamination line, the summary,
    the inner oracle's fidelity when searches used one, and every row."""
    lines = [preamble] if preamble else []
    if _decontamination_line(rows):
        lines.append(_decontamination_line(rows))
    lines.append("## Summary (mean over seeds; difference to random on the same seeds, 95% paired bootstrap CI)\n")
    lines.append("| method | budget | n | dev | test | test sd | vs random | 95% CI | oracle runs | proxy calls | wall s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        at = f" (at {s['random_budget']})" if s.get("random_budget", s["budget"]) != s["budget"] else ""
        vs = f"{s['vs_random']:+.3f}{' *' if s.get('significant') else ''}{at}" if "vs_random" in s else ""
        ci = f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" if "ci_low" in s else ""
        lines.append(f"| {_name(s)} | {s['budget']} | {s['n_selected']:.0f} | {s['dev_mean']:.3f} | {s['test_mean']:.3f} | "
                     f"{s['test_sd']:.3f} | {vs} | {ci} | {s['oracle_runs']:.1f} | {s['proxy_calls']:.1f} | {s['wall_s']:.0f} |")
    refs = {r["method"]: (r.get("diagnostics") or {}).get("reference", "") for r in rows if r.get("reference")}
    note = (" `ref` = a reference row, not a selector (" + "; ".join(f"{k}: {v}" for k, v in refs.items()) + ")."
            if refs else "")
    lines.append(f"\n`*` the CI excludes 0. oracle runs = fine-tuning runs the selection needed plus the final one. "
                 f"A row at another budget than random's (full, references) is compared with random at the one budget "
                 f"named.{note}\n")
    fid = inner_fidelity(rows)
    if fid:
        lines.append("## Inner oracle fidelity (search small, train big)\n")
        lines.append("Spearman between the inner oracle's and the full oracle's dev scores of the subsets the searches "
                     "scored (re-scored by the full oracle; each seed and subset once; n/a: under 3 pairs).\n")
        lines.append("| method | pairs | Spearman, pooled over seeds | Spearman per row |")
        lines.append("|---|---|---|---|")
        for m, f in [*fid["methods"].items(), ("all searches", fid["all"])]:
            per_row = ", ".join("-" if v is None else f"{v:+.2f}" for v in f.get("rows", []))
            lines.append(f"| {m} | {f['n']} | {format_rho(f['spearman'])} | {per_row} |")
        lines.append("")
    lines.append("## Rows\n")
    kinds = _defect_kinds(rows)
    head = "| method | budget | seed | n | dev | test | oracle runs | proxy calls | tokens trained | wall s |"
    head += f" defects kept ({'/'.join(_SHORT.get(k, k) for k in kinds)}) |" if kinds else ""
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for r in sorted(rows, key=lambda r: (r["budget"], r["method"], r["seed"])):
        line = (f"| {_name(r)} | {r['budget']} | {r['seed']} | {r['n_selected']} | {r['dev']:.3f} | {r['test']:.3f} | "
                f"{r['oracle_runs']} | {r['proxy_calls']} | {r['tokens_trained']} | {r['wall_s']:.0f} |")
        if kinds:
            d = r.get("defects") or {}
            line += " " + "/".join(str(d.get("exact_dup", 0) + d.get("near_dup", 0) if k == "dup" else d.get(k, 0))
                                   for k in kinds) + " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


#: the table's short names of the testbeds' defect kinds (exact and near duplicates count together)
_SHORT = {"wrong_answer": "wrong", "truncated": "trunc", "off_format": "fmt", "off_task": "off", "trivial": "triv",
          "no_reasoning": "answer-only"}
_ORDER = ["wrong_answer", "truncated", "no_reasoning", "off_format", "dup", "off_task", "trivial"]


def _defect_kinds(rows: list[dict]) -> list[str]:
    """The defect kinds the rows' pool has (its labels' kinds, in a fixed order; unknown ones after)."""
    seen = {("dup" if k in ("exact_dup", "near_dup") else k) for r in rows for k in (r.get("defects") or {}) if k != "clean"}
    return [k for k in _ORDER if k in seen] + sorted(seen - set(_ORDER))


def format_rho(v) -> str:
    """A Spearman value for tables and the report ("n/a": under 3 pairs, or one side constant)."""
    return "n/a" if v is None else f"{v:+.2f}"


def _name(r: dict) -> str:
    """A row's (or summary entry's) method as the tables show it: references marked."""
    return f"{r['method']} (ref)" if r.get("reference") else r["method"]


def _decontamination_line(rows: list[dict]) -> str:
    """One line for the table: the rows' contamination counts (each distinct setting once)."""
    seen = []
    for r in rows:
        d = r.get("decontamination")
        text = ("not recorded" if d is None else "off (pool examples overlapping test were not excluded)" if d.get("off")
                else f"{d['test']['excluded']} pool examples overlapping test excluded before selection, "
                     f"{d['dev']['overlap']} overlapping dev kept")
        if text not in seen:
            seen.append(text)
    return f"decontamination: {'; '.join(seen)}\n" if seen else ""
