"""Budget semantics: what a typed budget means, the size it resolves to, and what a selection
records and says when that size was not met."""
from __future__ import annotations

import pytest

from thresher.errors import ConfigError
from thresher.select.base import Budget, Selector, SignalView


@pytest.mark.parametrize("typed, fraction, value", [
    ("0.3", True, 0.3), ("30%", True, 0.3), ("100%", True, 1.0), ("1.0", True, 1.0), (1.0, True, 1.0),
    ("1", False, 1), (1, False, 1), ("1500", False, 1500), ("1500.0", False, 1500), (2.0, False, 2),
])
def test_a_float_up_to_1_is_a_fraction_an_integer_a_count(typed, fraction, value):
    b = Budget.parse(typed)
    assert (b.is_fraction, b.value) == (fraction, value)
    assert Budget.parse(str(b)) == b  # what a selection records reads back as the same budget


def test_str_tells_a_whole_pool_fraction_from_a_count_of_one():
    assert str(Budget.parse("1.0")) == "1.0" and str(Budget.parse("1")) == "1"
    assert str(Budget.parse("0.3")) == "0.3" and str(Budget.parse("1500")) == "1500"


def test_describe_gives_the_resolved_count():
    assert Budget.parse("1.0").describe(2000) == "budget 1.0 = 100% of 2000 = 2000 rows"
    assert Budget.parse("1").describe(2000) == "budget 1 = 1 row of 2000"
    assert Budget.parse("0.3").describe(2000) == "budget 0.3 = 30% of 2000 = 600 rows"
    assert Budget.parse("10000").describe(2000) == "budget 10000 > pool 2000: selecting all 2000 rows"
    assert Budget.parse("10000").size(2000) == 2000


@pytest.mark.parametrize("typed", ["0", "-3", "1.5", "150%", "0%", "abc", "x%", True, None])
def test_bad_budgets_are_config_errors(typed):
    with pytest.raises(ConfigError, match="budget"):
        Budget.parse(typed)


class _Fixed(Selector):
    """Returns the first ``n`` ids (or k when n is None), whatever the budget."""

    name = "fixed-test"

    def __init__(self, n=None, diag=None):
        super().__init__()
        self.n, self.diag = n, diag or {}

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        if self.artifacts_dir is not None and self.diag.get("write"):
            (self.artifacts_dir / "plot.txt").write_text("x")
        return pool.ids[: k if self.n is None else self.n], dict(self.diag)


@pytest.fixture(scope="module")
def pool():
    from thresher.data.pool import Pool

    return Pool.from_records([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)], name="p")


def test_selection_records_the_requested_size_and_a_count_above_the_pool(pool, tmp_path):
    from thresher.data.store import SignalStore

    view = SignalView(pool, SignalStore(tmp_path / "st"))
    sel = _Fixed().select(pool, view, "0.2")
    assert (sel.n_requested, len(sel), sel.budget_note) == (10, 10, "")
    sel = _Fixed().select(pool, view, 500)
    assert sel.n_requested == 50 and len(sel) == 50 and sel.budget_note == "budget 500 > pool 50: selecting all"
    assert sel.meta()["n_requested"] == 50


def test_a_method_that_misses_the_budget_says_so_and_why(pool, tmp_path):
    from thresher.data.store import SignalStore

    view = SignalView(pool, SignalStore(tmp_path / "st"))
    sel = _Fixed(n=30, diag={"budget_mode": "free"}).select(pool, view, "0.2")
    assert sel.budget_note.startswith("budget not honoured: fixed-test selected 30 of the 10 rows requested")
    assert "budget_mode=free" in sel.budget_note and "budget_mode=cap" in sel.budget_note
    sel = _Fixed(n=4, diag={"budget_note": "the recipe kept fewer"}).select(pool, view, "0.2")
    assert "selected 4 of the 10" in sel.budget_note and "the recipe kept fewer" in sel.budget_note


def test_artifacts_folder_is_recorded_when_written_and_removed_when_empty(pool, tmp_path):
    from thresher.data.store import SignalStore

    view = SignalView(pool, SignalStore(tmp_path / "st"))
    sel = _Fixed(diag={"write": True}).select(pool, view, "0.2", artifacts_dir=tmp_path / "a")
    assert sel.artifacts_dir == str(tmp_path / "a") and (tmp_path / "a" / "plot.txt").exists()
    sel = _Fixed().select(pool, view, "0.2", artifacts_dir=tmp_path / "b")
    assert sel.artifacts_dir is None and not (tmp_path / "b").exists()


def test_autoselection_honours_the_typed_budget_by_default():
    from thresher.select.autoselection import AutoSelectionParams
    from thresher.select.base import selector_class

    assert AutoSelectionParams().budget_mode == "cap"
    assert selector_class("autoselection").Params().budget_mode == "cap"
    assert selector_class("random_recipes").Params().budget_mode == "cap"
