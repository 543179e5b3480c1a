"""The bench's results: the summary's comparisons with random and the inner oracle's fidelity
pooled over a bench (computed from rows: no training here)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from thresher.bench.results import inner_fidelity, markdown_table, summarise


def _row(method, budget, seed, items, selector=None, **extra):
    return {"method": method, "selector": selector or method, "budget": budget, "seed": seed, "n_selected": 10,
            "dev": float(np.mean(items)), "test": float(np.mean(items)), "oracle_runs": 1, "proxy_calls": 0,
            "tokens_trained": 100, "wall_s": 1.0, "test_items": list(items), **extra}


def test_full_and_references_are_compared_with_random_at_its_one_budget():
    rows = []
    for seed in (0, 1):
        rows.append(_row("random", "0.1", seed, [-1.0, -1.2, -0.8]))
        rows.append(_row("full", "1.0", seed, [-0.9, -1.1, -0.7]))
        rows.append(_row("base", "0", seed, [-1.5, -1.4, -1.3], reference=True))
    s = {x["method"]: x for x in summarise(rows)}
    assert s["full"]["vs_random"] == pytest.approx(0.1) and s["full"]["random_budget"] == "0.1"
    assert s["base"]["vs_random"] == pytest.approx(-0.4, abs=1e-9) and s["base"]["significant"]
    assert "vs_random" not in s["random"]
    table = markdown_table(rows, list(s.values()))
    assert "| full | 1.0 |" in table and "| +0.100 * (at 0.1) |" in table
    # with random at two budgets the bench cannot tell which one full should be read against
    rows2 = rows + [_row("random", "0.3", 0, [-1.0, -1.0, -1.0])]
    assert "vs_random" not in {x["method"]: x for x in summarise(rows2)}["full"]


def test_inner_fidelity_pools_each_seed_and_subset_once():
    inner = {"a": -1.30, "b": -1.25, "c": -1.20, "d": -1.10, "e": -1.15}
    full = {"a": -1.21, "b": -1.22, "c": -1.18, "d": -1.12, "e": -1.16}
    pairs = {k: [k, inner[k], full[k]] for k in inner}
    rows = [  # harp-c and harp-e on seed 0 re-scored the same subset "c": counted once over all searches
        _row("harp-c", "0.1", 0, [0.0], inner_fidelity_pairs=[pairs["a"], pairs["b"], pairs["c"]], inner_fidelity=0.5),
        _row("harp-e", "0.1", 0, [0.0], inner_fidelity_pairs=[pairs["c"], pairs["d"]], inner_fidelity=None),
        _row("harp-c", "0.1", 1, [0.0], inner_fidelity_pairs=[pairs["e"], pairs["a"]], inner_fidelity=None),
        _row("random", "0.1", 0, [0.0]),
    ]
    f = inner_fidelity(rows)
    keys = [(0, "a"), (0, "b"), (0, "c"), (0, "d"), (1, "e"), (1, "a")]
    expect = spearmanr([inner[k] for _, k in keys], [full[k] for _, k in keys]).statistic
    assert f["all"]["n"] == 6 and f["all"]["spearman"] == pytest.approx(expect)
    hc = [(0, "a"), (0, "b"), (0, "c"), (1, "e"), (1, "a")]
    assert f["methods"]["harp-c"]["n"] == 5 and f["methods"]["harp-c"]["rows"] == [0.5, None]
    assert f["methods"]["harp-c"]["spearman"] == pytest.approx(
        spearmanr([inner[k] for _, k in hc], [full[k] for _, k in hc]).statistic)
    assert f["methods"]["harp-e"]["n"] == 2 and f["methods"]["harp-e"]["spearman"] is None  # < 3 pairs
    assert set(f["methods"]) == {"harp-c", "harp-e"}
    table = markdown_table(rows, summarise(rows))
    assert "## Inner oracle fidelity" in table and f"| all searches | 6 | {expect:+.2f} |" in table
    assert "| harp-e | 2 | n/a" in table
    assert inner_fidelity([_row("random", "0.1", 0, [0.0])]) is None
    assert "Inner oracle fidelity" not in markdown_table(rows[3:], summarise(rows[3:]))


def test_the_rows_table_names_the_defect_kinds_the_pool_has():
    gsm = {"clean": 31, "wrong_answer": 5, "truncated": 4, "off_format": 3, "exact_dup": 3, "near_dup": 2, "off_task": 10,
           "trivial": 0, "no_reasoning": 2}
    rows = [_row("random", "0.1", 0, [0.0], defects=gsm)]
    table = markdown_table(rows, summarise(rows))
    assert "defects kept (wrong/trunc/answer-only/fmt/dup/off/triv) |" in table and "| 5/4/2/3/5/10/0 |" in table
    arith = {k: v for k, v in gsm.items() if k != "no_reasoning"}
    assert "defects kept (wrong/trunc/fmt/dup/off/triv) |" in markdown_table([_row("random", "0.1", 0, [0.0], defects=arith)], [])
    assert "defects kept" not in markdown_table([_row("random", "0.1", 0, [0.0])], [])
