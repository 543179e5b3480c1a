"""Contract tests over every registry entry (in the spirit of scikit-learn's
``parametrize_with_checks``): each signal, selector, operator and task is checked against
the rules every plug-in promises, so a new one cannot land without them.

- signals: a name, a positive version, declared columns owned by that signal only,
  strict params (an unknown or misspelt param is an error that lists the accepted ones);
- selectors: default params round-trip, unknown params are refused with the valid keys;
  the selectors that read cheap signals (no oracle, no judge, no hub model) run on a
  small arith pool and must be deterministic for a seed, return the budget's size with no
  duplicate ids, and never write the signal store (a selector only reads);
- operators: strict params; executing a filter/dedup/cap only selects (the ids it keeps
  are a subset of its input);
- the registries: unknown names suggest the closest known one.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from thresher.errors import ConfigError, UnknownNameError
from thresher.select.autoselection.operators import OPERATORS, make_operator
from thresher.select.base import SELECTORS, SignalView, make_selector
from thresher.signals.base import COLUMN_OWNERS, SIGNALS, make_signal
from thresher.tasks import TASKS, get_task

SIGNAL_NAMES = sorted(SIGNALS)
SELECTOR_NAMES = sorted(SELECTORS)
OPERATOR_NAMES = sorted(OPERATORS)

# selectors whose required signals are cheap here (the micro scorer, text statistics,
# hashed n-grams); the others need an oracle, a judge endpoint or a sentence encoder
# and have their own tests.
CHEAP_SELECTORS = {
    "random": {},
    "full": {},
    "topk": {"signal": "tokens_answer", "direction": "high"},
    "ifd": {"scorer": "micro", "scorer_warmup": 120, "scorer_warmup_steps": 40},
    "dsir": {},
    "rds": {"model": "micro", "relevance_task_params": {"pool_size": 400, "dev_size": 60, "test_size": 90}},
}


# the least params of the selectors that have required ones
REQUIRED = {"topk": {"signal": "tokens_answer"}, "recipe": {"recipe": ["task_relevance_filter"]}}


OPERATOR_REQUIRED = {"source_mix": {"weights": {"alpaca": 1.0}}, "truncate": {"fraction": 0.5},
                     "union": {"recipe": [{"task_relevance_filter": {}}]}}


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("name", SIGNAL_NAMES)
def test_signal_contract(name):
    cls = SIGNALS[name]
    assert cls.name == name
    assert isinstance(cls.version, int) and cls.version >= 1
    assert cls.columns, f"signal {name} declares no columns"
    assert len(set(cls.columns)) == len(cls.columns)
    for c in cls.columns:
        assert COLUMN_OWNERS[c] == name, f"column {c} of {name} is owned by {COLUMN_OWNERS[c]}"
    assert cls.scope in ("example", "pool") and cls.kind in ("scalar", "vector")
    with pytest.raises(ConfigError, match="unknown parameter 'no_such_param'"):
        make_signal(name, no_such_param=1)


def test_a_misspelt_signal_param_is_an_error_listing_the_accepted_keys():
    with pytest.raises(ConfigError) as e:
        make_signal("lm", warmup_exampels=10)
    msg = str(e.value)
    assert "did you mean 'warmup_examples'" in msg and "it takes:" in msg and "warmup_steps" in msg


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_selector_params_round_trip_and_refuse_unknown_keys(name):
    cls = SELECTORS[name]
    sel = cls(**REQUIRED.get(name, {}))
    again = cls(**sel.params.model_dump(mode="json"))
    assert again.params == sel.params
    with pytest.raises(ConfigError) as e:
        cls(**REQUIRED.get(name, {}), no_such_param=1)
    assert "unknown parameter 'no_such_param'" in str(e.value) and "it takes:" in str(e.value)
    if name in REQUIRED:
        with pytest.raises(ConfigError, match="Field required"):
            cls()


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            h.update(p.encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cheap_scored(arith_small, tmp_path_factory):
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.select.base import unique_signals

    pool, task, _ = arith_small
    store = SignalStore(tmp_path_factory.mktemp("contract-store"))
    sels = {n: make_selector(n, **p) for n, p in CHEAP_SELECTORS.items()}
    for sig in unique_signals([s for sel in sels.values() for s in sel.required_signals()]):
        run_signal(sig, pool, store, show_progress=False)
    return pool, task, store, sels


@pytest.mark.parametrize("name", sorted(CHEAP_SELECTORS))
def test_selector_run_contract(name, cheap_scored):
    pool, task, store, sels = cheap_scored
    sel = sels[name]
    before = _tree_digest(store.root)
    k = 0.25 if name != "full" else 1.0
    task_arg = task.dev_view() if sel.uses_task else None
    a = sel.select(pool, SignalView(pool, store), k, task=task_arg, seed=3)
    b = make_selector(name, **CHEAP_SELECTORS[name]).select(pool, SignalView(pool, store), k, task=task_arg, seed=3)
    assert a.ids == b.ids, "not deterministic for a seed"
    assert len(set(a.ids)) == len(a.ids)
    assert set(a.ids) <= set(pool.ids)
    assert len(a.ids) == round(k * len(pool))
    assert _tree_digest(store.root) == before, "a selector wrote to the signal store"


def test_the_cheap_selector_list_names_real_selectors():
    assert set(CHEAP_SELECTORS) <= set(SELECTOR_NAMES)


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_operator_contract(name):
    cls = OPERATORS[name]
    assert cls.name == name and cls.role in ("filter", "dedup", "cap", "set", "mix")
    least = OPERATOR_REQUIRED.get(name, {})
    make_operator(name, least)  # defaults (plus the required params) are valid
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_operator(name, {**least, "no_such_param": 1})


# --------------------------------------------------------------------------- registries


@pytest.mark.parametrize("registry,name,close", [
    (SIGNALS, "lmm", "lm"), (SELECTORS, "radnom", "random"), (OPERATORS, OPERATOR_NAMES[0] + "x", OPERATOR_NAMES[0]),
    (TASKS, "gsm8kk", "gsm8k"),
])
def test_unknown_names_suggest_the_closest(registry, name, close):
    with pytest.raises(UnknownNameError) as e:
        registry.lookup(name)
    msg = str(e.value)
    assert f"did you mean {close!r}" in msg and not msg.startswith(("'", '"'))


def test_unknown_task_and_signal_names_are_plain_messages():
    from thresher.signals.base import resolve

    with pytest.raises(KeyError) as e:  # UnknownNameError is still a KeyError for old callers
        get_task("nope")
    assert str(e.value).startswith("unknown task 'nope'")
    with pytest.raises(UnknownNameError, match="unknown signal 'tokens_answr' \\(did you mean 'tokens_answer'"):
        resolve("tokens_answr")
