"""AutoSelection: operators on hand cases, recipes (YAML, determinism, realised state), the GP
surrogate on a planted objective, the search (structure, resume after a kill), the LLM hooks.

Operator tests read a real SignalStore. Cheap text signals (word entropy, reasoning steps,
exact keys, MinHash clusters, semantic groups) are computed for real; model-based columns
(lm, task relevance, embeddings) are written into the store with hand-chosen values, so
every expected subset can be worked out by hand. The search tests use a synthetic objective
(an oracle whose score is a known function of the subset): the surrogate must find the
planted good region.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from fake_openai import closed_port

from thresher.api import run_recipe
from thresher.data.ledger import CostLedger, LedgerEntry
from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import run_signal
from thresher.oracle.core import Score, ids_digest
from thresher.select.autoselection import (
    Recipe,
    RecipeContext,
    RecipeError,
    RecipeSearch,
    SearchConfig,
    SignalSettings,
    load_recipe,
    read_trace,
)
from thresher.select.autoselection.filters import keep_top_fraction
from thresher.select.autoselection.llm import (
    LLMAdvisor,
    ReplyInvalid,
    parse_choice,
    parse_proposals,
)
from thresher.select.autoselection.operators import make_operator
from thresher.select.autoselection.plots import plot_best_so_far, plot_search_trace
from thresher.select.autoselection.recipe import parse_recipe_yaml, realised_state
from thresher.select.autoselection.sampling import largest_remainder
from thresher.select.autoselection.search import RandomRecipeSearch
from thresher.select.autoselection.surrogate import Surrogate, ucb_order
from thresher.select.autoselection.trace import best_so_far
from thresher.select.base import SignalView, make_selector
from thresher.signals.base import make_signal
from thresher.signals.lm import LM_COLUMNS

NO_STATE = SignalSettings(state=())


# --------------------------------------------------------------------------- helpers


def rec(i: int, user: str, answer: str, source: str = "a") -> dict:
    return {"id": f"r{i:03d}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "source": source, "meta": {}}


def plant(store: SignalStore, pool: Pool, signal, columns: dict, vectors: np.ndarray | None = None) -> None:
    """Write hand-chosen values for ``signal`` into the store, the way the engine writes a result."""
    key = signal.key(pool)
    store.begin(key, len(pool), len(pool))
    full = {c: np.asarray(columns[c]) for c in signal.columns}
    store.write_shard(key, 0, pool.ids, full, vectors)
    store.finish(key, 1, {"planted": True})


def lm_columns(n: int, **given) -> dict:
    cols = {c: np.ones(n) for c in LM_COLUMNS}
    cols["answer_tokens"] = np.full(n, 5, dtype=np.int64)
    cols.update({k: np.asarray(v, dtype=np.float64) for k, v in given.items()})
    return cols


def view(pool, store):
    return SignalView(pool, store)


def ctx_for(pool, store, settings: SignalSettings = NO_STATE) -> RecipeContext:
    return RecipeContext(pool, view(pool, store), settings)


def plain_pool(n: int, sources: list[str] | None = None) -> Pool:
    sources = sources or ["a"] * n
    return Pool([rec(i, f"question number {i}", f"answer number {i}", sources[i]) for i in range(n)], name="hand")


# --------------------------------------------------------------------------- small pure functions


def test_keep_top_fraction_hand_case():
    keep = np.arange(5)
    v = np.array([3.0, 1.0, np.nan, 2.0, 5.0])
    high = keep_top_fraction(keep, v, 0.5, "high")  # 4 valid values, keep floor(2 + 0.5) = 2
    assert high.keep.tolist() == [0, 4] and high.excluded_missing == 1
    assert keep_top_fraction(keep, v, 0.5, "low").keep.tolist() == [1, 3]
    # ties keep pool order; the result comes back in pool order
    assert keep_top_fraction(np.array([1, 2, 3]), np.array([9.0, 7, 7, 7]), 0.34, "high").keep.tolist() == [1]
    assert keep_top_fraction(np.array([0, 1]), np.array([np.nan, np.nan]), 0.5, "high").keep.tolist() == []


def test_largest_remainder_hand_case():
    assert largest_remainder(7, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 2, "c": 2}  # tie -> the first name
    assert largest_remainder(3, {"a": 8, "b": 4}) == {"a": 2, "b": 1}
    assert largest_remainder(10, {"x": 0.15, "y": 0.85}) == {"x": 2, "y": 8}  # 1.5 / 8.5 -> x wins the tie by name
    assert sum(largest_remainder(101, {"a": 1, "b": 2, "c": 3}).values()) == 101


# --------------------------------------------------------------------------- operators on hand cases


def test_truncate_is_a_seeded_cap_stratified_by_source(tmp_path):
    pool = plain_pool(12, ["a"] * 8 + ["b"] * 4)
    ctx = ctx_for(pool, SignalStore(tmp_path))
    keep = np.arange(12)
    half = make_operator("truncate", {"fraction": 0.5}).apply(keep, ctx)
    src = np.array(pool.sources)[half.keep]
    assert len(half.keep) == 6 and (src == "a").sum() == 4 and (src == "b").sum() == 2  # 6 * 8/12, 6 * 4/12
    assert half.notes == {"cap": 6, "per_source": {"a": 4, "b": 2}}
    assert make_operator("truncate", {"fraction": 0.5}).apply(keep, ctx).keep.tolist() == half.keep.tolist()
    seeds = {tuple(make_operator("truncate", {"fraction": 0.5, "seed": s}).apply(keep, ctx).keep) for s in range(6)}
    assert len(seeds) > 1  # the seed changes the draw
    three = make_operator("truncate", {"total": 3}).apply(keep, ctx)
    assert (np.array(pool.sources)[three.keep] == "b").sum() == 1  # quotas 2 (a) + 1 (b)
    assert make_operator("truncate", {"total": 50}).apply(keep, ctx).keep.tolist() == list(range(12))
    flat = make_operator("truncate", {"fraction": 0.25, "stratify": False}).apply(keep, ctx)
    assert len(flat.keep) == 3 and list(flat.keep) == sorted(flat.keep)


def test_model_signal_filters_read_the_stored_values(tmp_path):
    pool = plain_pool(6)
    store = SignalStore(tmp_path)
    s = SignalSettings(state=(), relevance_domains=["add", "sub"])
    ifd = [0.5, 1.2, 0.9, np.nan, 0.7, 0.95]
    plant(store, pool, s.lm_signal(), lm_columns(6, ifd=ifd, varentropy=[3, 1, 2, 6, 5, 4], loss=[0.2, 0.9, 0.1, 0.5, 0.4, 0.3]))
    plant(store, pool, s.relevance_signal(None), {"task_relevance": [0.1, 0.9, 0.5, 0.3, 0.8, 0.2]})
    plant(store, pool, s.relevance_signal("add"), {"task_relevance": [0.9, 0.1, 0.2, 0.3, 0.4, 0.8]})
    ctx = ctx_for(pool, store, s)
    keep = np.arange(6)

    def run(name, **p):
        return make_operator(name, p).apply(keep, ctx)

    out = run("ifd_filter", fraction=0.4)  # 5 valid, keep 2: 1.2 and 0.95
    assert out.keep.tolist() == [1, 5] and out.excluded_missing == 1
    out = run("ifd_filter", fraction=0.5, drop_ge_one=True)  # 1.2 dropped too: 4 valid, keep 2: 0.95, 0.9
    assert out.keep.tolist() == [2, 5] and out.excluded_missing == 2
    assert run("varentropy_filter", fraction=0.5).keep.tolist() == [3, 4, 5]
    assert run("varentropy_filter", fraction=0.5, direction="low").keep.tolist() == [0, 1, 2]
    # quality 'loss:low': rank-normalised so that low loss is high quality
    assert run("quality_filter", fraction=0.5, quality="loss:low").keep.tolist() == [0, 2, 5]
    assert run("task_relevance_filter", fraction=0.5).keep.tolist() == [1, 2, 4]
    assert run("task_relevance_filter", fraction=0.5, domain="add").keep.tolist() == [0, 4, 5]
    with pytest.raises(KeyError, match="task_relevance"):
        run("task_relevance_filter", fraction=0.5, domain="sub")  # not in the store: an error naming the signal


def test_entropy_and_branching_filters_on_real_text_signals(tmp_path):
    answers = ["a b c d", "x x x x", "a b", "1+1=2. Then 2+2=4. Finally 4+4=8.", "Step 1 done. Step 2 done."]
    users = ["Explain, compare and evaluate this.", "What is it?", "List one.", "Solve it.", "Describe it."]
    pool = Pool([rec(i, u, a) for i, (u, a) in enumerate(zip(users, answers))])
    store = SignalStore(tmp_path)
    for name in ("unigram_entropy", "reasoning_steps"):
        run_signal(make_signal(name), pool, store, show_progress=False)
    ctx = ctx_for(pool, store)
    keep = np.arange(5)
    ent = view(pool, store).column("unigram_entropy")
    assert ent[0] == pytest.approx(math.log(4)) and ent[1] == 0.0 and ent[2] == pytest.approx(math.log(2))
    # entropies: ln4, 0, ln2, (11 words: 1 x2, 2 x3, then, 4 x3, finally, 8) > ln4, ln(3)
    top2 = make_operator("ngram_entropy_filter", {"fraction": 0.4}).apply(keep, ctx).keep.tolist()
    assert top2 == [0, 3]
    steps = view(pool, store).column("reasoning_steps")
    assert steps.tolist() == [0, 0, 0, 3, 2]
    assert make_operator("branching_filter", {"fraction": 0.4}).apply(keep, ctx).keep.tolist() == [3, 4]
    # verb proxy: explain (2), compare (4), evaluate (5) = 3 verbs; list = 1; solve = 1; describe = 1; none = 0
    verbs = make_operator("branching_filter", {"fraction": 0.2, "measure": "verb_count"})
    assert verbs.required_signals(NO_STATE) == []
    assert verbs.apply(keep, ctx).keep.tolist() == [0]


def test_dedup_operators_keep_the_first_example_still_present(tmp_path):
    long = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat near the door of the old house"
    rows = [rec(0, "Add 2 and 3.", "5"), rec(1, "add 2  and 3.", "5"), rec(2, "Add 4 and 4.", "8"),
            rec(3, "Tell a story.", long), rec(4, "Tell a story.", long.replace("old house", "old barn")),
            rec(5, "Something else entirely", "unrelated words only here")]
    pool = Pool(rows)
    store = SignalStore(tmp_path)
    run_signal(make_signal("exact_dedup"), pool, store, show_progress=False)
    run_signal(make_signal("minhash", threshold=0.8), pool, store, show_progress=False)
    ctx = ctx_for(pool, store)
    exact = make_operator("exact_dedup")
    assert exact.apply(np.arange(6), ctx).keep.tolist() == [0, 2, 3, 4, 5]  # r001 repeats r000 (case, spaces)
    assert exact.apply(np.array([1, 2]), ctx).keep.tolist() == [1, 2]  # r000 gone: its duplicate stays
    near = make_operator("minhash_dedup", {"threshold": 0.8})
    # r001 has the same single word 5-gram as r000; r004 differs from r003 in its last shingle only (J ~ 0.92)
    assert near.apply(np.arange(6), ctx).keep.tolist() == [0, 2, 3, 5]
    assert near.apply(np.array([4, 5]), ctx).keep.tolist() == [4, 5]

    # semantic dedup on stored (hand-chosen) unit vectors: rows 0-2 nearly parallel, 3-5 orthogonal
    v = np.zeros((6, 4), dtype=np.float32)
    v[0] = [1, 0, 0, 0]
    v[1] = [0.99, 0.141, 0, 0]  # cos to row 0: 0.99
    v[2] = [0.9, 0.436, 0, 0]  # cos to row 0: 0.90, to row 1: 0.95
    v[3], v[4], v[5] = [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    plant(store, pool, make_signal("embedding"), {"embedding_norm": np.ones(6)}, vectors=v)
    for t in (0.95, 0.98):
        run_signal(make_signal("semantic_dedup", threshold=t), pool, store, show_progress=False)  # k-means + groups, real
    sem = make_operator("semantic_dedup", {"threshold": 0.98})
    assert sem.apply(np.arange(6), ctx).keep.tolist() == [0, 2, 3, 4, 5]  # only cos(0, 1) = 0.99 reaches 0.98
    loose = make_operator("semantic_dedup", {"threshold": 0.95})
    assert loose.nudged(None, "loosen") == {"threshold": 0.98} and loose.nudged(None, "tighten") == {"threshold": 0.9}


def test_source_mix_and_union(tmp_path):
    pool = plain_pool(14, ["a"] * 8 + ["b"] * 4 + ["c"] * 2)
    store = SignalStore(tmp_path)
    s = SignalSettings(state=())
    plant(store, pool, s.lm_signal(), lm_columns(14, ifd=np.arange(14, dtype=float)))
    ctx = ctx_for(pool, store, s)
    keep = np.arange(14)
    mix = make_operator("source_mix", {"weights": {"a": 1, "b": 1}}).apply(keep, ctx)
    src = np.array(pool.sources)[mix.keep]
    assert (src == "a").sum() == 4 and (src == "b").sum() == 4 and (src == "c").sum() == 0  # T = min(8*2, 4*2) = 8
    assert mix.notes["dropped_unweighted_sources"] == {"c": 2}
    capped = make_operator("source_mix", {"weights": {"a": 3, "b": 1}, "total": 6}).apply(keep, ctx)
    assert np.bincount([{"a": 0, "b": 1}[x] for x in np.array(pool.sources)[capped.keep]]).tolist() == [5, 1]  # 4.5/1.5
    union = make_operator("union", {"recipe": [{"ifd_filter": {"fraction": 0.25}}]})  # the 4 highest ifd: 10..13
    out = union.apply(np.array([0, 1, 10]), ctx)
    assert out.keep.tolist() == [0, 1, 10, 11, 12, 13] and out.notes == {"other_selected": 4, "added": 3}


@pytest.mark.parametrize("name,params,needle", [
    ("ifd_filter", {"fraction": 1.5}, "fraction"),
    ("ifd_filter", {"fraktion": 0.5}, "fraktion"),
    ("truncate", {"fraction": 0.5, "total": 10}, "exactly one"),
    ("truncate", {}, "exactly one"),
    ("source_mix", {"weights": {"a": -1}}, "weights"),
    ("quality_filter", {"quality": "nonexistent_column"}, "nonexistent_column"),
    ("union", {"recipe": [{"no_such_op": {}}]}, "union.recipe: step 1"),
])
def test_operator_params_are_validated(name, params, needle):
    with pytest.raises(ValueError, match=needle) as e:
        make_operator(name, params)
    assert name in str(e.value) or "union" in str(e.value)


# --------------------------------------------------------------------------- recipes


RECIPE_YAML = """\
name: hand
signals:
  scorer: micro
  state: []
recipe:
  - truncate: {fraction: 0.5}
  - ifd_filter: {fraction: 0.5}
  - exact_dedup: {}
"""


def test_recipe_yaml_round_trip_and_errors_name_the_step_and_line(tmp_path):
    rf = parse_recipe_yaml(RECIPE_YAML, where="hand.yaml")
    assert [op.name for op in rf.recipe] == ["truncate", "ifd_filter", "exact_dedup"]
    assert rf.settings.state == () and rf.name == "hand"
    from thresher.select.autoselection import save_recipe

    path = save_recipe(rf.recipe, tmp_path / "r.yaml", settings=rf.settings)
    again = load_recipe(path)
    assert again.recipe == rf.recipe and again.recipe.digest() == rf.recipe.digest()
    assert Recipe.from_list(rf.recipe.to_list(full=True)) == rf.recipe
    bad_op = RECIPE_YAML.replace("ifd_filter", "ifd_filterr")
    with pytest.raises(RecipeError, match=r"hand.yaml: step 2 \(line 7\): unknown operator 'ifd_filterr'"):
        parse_recipe_yaml(bad_op, where="hand.yaml")
    bad_param = RECIPE_YAML.replace("{fraction: 0.5}\n  - exact", "{fraction: 2}\n  - exact")
    with pytest.raises(RecipeError, match=r"step 2 \(line 7\): operator 'ifd_filter': parameter 'fraction'"):
        parse_recipe_yaml(bad_param, where="hand.yaml")
    with pytest.raises(RecipeError, match="unknown top-level keys"):
        parse_recipe_yaml("recipes: []\n", where="x.yaml")
    with pytest.raises(RecipeError, match="one key"):
        Recipe.from_list([{"ifd_filter": {}, "exact_dedup": {}}])
    assert parse_recipe_yaml("- exact_dedup: {}\n- truncate: {total: 3}\n").recipe.describe() == \
        "exact_dedup() > truncate(total=3)"


def state_pool(tmp_path):
    """8 examples with hand-chosen tokens, clusters, relevance and lm values in a store."""
    pool = plain_pool(8)
    store = SignalStore(tmp_path)
    s = SignalSettings(scorer="micro", relevance_domains=["add"])  # the scorer RECIPE_YAML names
    tokens = np.array([10, 10, 10, 10, 20, 20, 10, 10])  # pool total 100
    plant(store, pool, s.text_signal(), {c: tokens for c in make_signal("text").columns})
    plant(store, pool, s.kmeans_signal(), {"cluster": np.array([0, 0, 0, 0, 1, 1, 1, 1]), "dist_to_centroid": np.zeros(8)})
    plant(store, pool, s.relevance_signal(None), {"task_relevance": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])})
    plant(store, pool, s.relevance_signal("add"), {"task_relevance": np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])})
    plant(store, pool, s.lm_signal(), lm_columns(8, ifd=[1, 1, 1, 1, 2, 2, 2, 2], varentropy=[4, 4, 4, 4, 4, 4, 4, 4]))
    run_signal(make_signal("exact_dedup"), pool, store, show_progress=False)
    return pool, store, s


def test_realised_state_hand_case(tmp_path):
    """State values are rounded to 6 decimals."""
    pool, store, s = state_pool(tmp_path)
    ctx = ctx_for(pool, store, s)
    st = realised_state(np.array([4, 5, 6, 7]), ctx, k=2)
    assert st.n_selected == 4 and st.retain_ratio == 0.5
    assert st.token_ratio == pytest.approx(0.6)  # (20 + 20 + 10 + 10) / 100
    assert st.drift == pytest.approx(0.5)  # subset all in cluster 1, pool half/half: TV = 0.5
    assert st.relevance_mean == pytest.approx(0.65) and st.relevance_std == pytest.approx(np.std([0.5, 0.6, 0.7, 0.8]), abs=1e-6)
    assert st.relevance_per_task == {"add": 1.0}
    assert st.relative_ifd == pytest.approx(2 / 1.5, abs=1e-6) and st.relative_varentropy == pytest.approx(1.0)
    assert st.budget_used == 2.0
    whole = realised_state(np.arange(8), ctx)
    assert whole.drift == 0.0 and whole.token_ratio == 1.0 and whole.relative_ifd == 1.0 and whole.budget_used is None


def test_recipe_execution_is_deterministic(tmp_path):
    pool, store, s = state_pool(tmp_path)
    steps = [{"truncate": {"fraction": 0.75}}, {"ifd_filter": {"fraction": 0.5}}, {"exact_dedup": {}}]
    runs = []
    for _ in range(2):
        ex = Recipe.from_list(steps).execute(ctx_for(pool, SignalStore(tmp_path), s), k=4)  # fresh store view each time
        runs.append((ex.ids, ex.state.to_dict(), ex.steps))
    assert runs[0] == runs[1]
    assert runs[0][2][0]["n_out"] == 6 and runs[0][2][1]["n_out"] == 3
    a = make_selector("recipe", recipe=steps, signals=s.model_dump()).select(pool, view(pool, store), 4)
    b = make_selector("recipe", recipe=steps, signals=s.model_dump()).select(pool, view(pool, store), 4)
    assert a.ids == b.ids == runs[0][0] and a.diagnostics == b.diagnostics
    assert a.diagnostics["state"]["budget_used"] == 0.75
    capped = make_selector("recipe", recipe=[{"truncate": {"fraction": 1.0}}], signals=s.model_dump(),
                           cap_to_budget=True).select(pool, view(pool, store), 4)
    assert len(capped.ids) == 4 and capped.diagnostics["steps"][-1]["op"] == "budget_cap"


def test_run_recipe_writes_the_subset_and_its_state(tmp_path):
    pool, _store, _s = state_pool(tmp_path / "store")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE_YAML.replace("state: []", "relevance_domains: [add]"))
    pool_file = tmp_path / "pool.jsonl"
    pool.save(pool_file)
    sel, state = run_recipe(path, str(pool_file), tmp_path / "out.jsonl", store=tmp_path / "store")
    assert (tmp_path / "out.jsonl").exists() and (tmp_path / "out.meta.json").exists()
    saved = json.loads((tmp_path / "out.state.json").read_text())
    assert saved["state"] == state and state["n_selected"] == len(sel.ids) == 2  # 8 -> 4 -> 2 -> 2
    assert saved["recipe"][0] == {"truncate": {"fraction": 0.5}}


def test_example_recipe_file_parses():
    rf = load_recipe(Path(__file__).resolve().parents[2] / "examples" / "recipe-arith.yaml")
    assert [op.name for op in rf.recipe] == ["task_relevance_filter", "union"]
    assert rf.settings.scorer == "auto" and rf.settings.task == "arith"  # `signals: {}` = the defaults (auto = micro on arith)


# --------------------------------------------------------------------------- the surrogate on a planted objective


def test_gp_ucb_prefers_a_planted_good_region():
    rng = np.random.default_rng(0)
    centre = np.array([0.8, 0.2, 0.7, 0.3])

    def objective(x):
        return np.exp(-np.sum((x - centre) ** 2, axis=-1) / 0.05)

    seen = rng.uniform(size=(14, 4))
    seen[:2] = centre + rng.normal(scale=0.08, size=(2, 4))  # two probes near the good region
    far = np.array([[0.1, 0.9, 0.1, 0.9], [0.2, 0.8, 0.2, 0.6], [0.0, 0.5, 0.1, 0.8], [0.4, 0.6, 0.2, 0.9]])
    near = centre + np.array([0.03, -0.02, 0.02, 0.01])
    cands = np.vstack([far, near])
    mu, sd = Surrogate(seed=0).fit_predict(seen, objective(seen), cands)
    assert int(ucb_order(mu, sd, 1.5)[0]) == len(cands) - 1  # the candidate inside the planted region wins
    assert mu[-1] > mu[:-1].max() + 0.2
    assert (sd >= 0).all()


# --------------------------------------------------------------------------- the search on a synthetic objective


class SyntheticOracle:
    """A dev oracle whose score is a known function of the subset (for testing the search only)."""

    model = "synthetic"
    train = None

    def __init__(self, fn):
        self.fn = fn
        self.ledger = CostLedger()
        self.calls: list[int] = []
        self._cache: dict[str, float] = {}

    def score(self, ids, label=""):
        key = ids_digest(ids)
        cached = key in self._cache
        if not cached:
            self._cache[key] = float(self.fn(list(ids)))
            self.calls.append(len(ids))
        self.ledger.record(LedgerEntry(kind="oracle", label=label, cached=cached, key=key))
        return Score(value=self._cache[key], split="dev", per_domain={}, n_examples=len(ids), tokens=0, seconds=0.0,
                     cached=cached, key=key, n_items=1)


SEARCH_OPS = ["truncate", "quality_filter", "ifd_filter", "varentropy_filter", "task_relevance_filter", "exact_dedup", "union"]


@pytest.fixture()
def synthetic(tmp_path):
    """200 examples; a hidden 'good' half has low loss and high relevance (noisily)."""
    n = 200
    rng = np.random.default_rng(7)
    pool = plain_pool(n)
    good = rng.uniform(size=n) < 0.4
    store = SignalStore(tmp_path / "store")
    s = SignalSettings(relevance_domains=["add"])
    plant(store, pool, s.text_signal(), {c: rng.integers(10, 30, n) for c in make_signal("text").columns})
    plant(store, pool, s.kmeans_signal(), {"cluster": rng.integers(0, 5, n), "dist_to_centroid": np.zeros(n)})
    plant(store, pool, s.relevance_signal(None), {"task_relevance": good * 0.3 + rng.uniform(size=n) * 0.5})
    plant(store, pool, s.relevance_signal("add"), {"task_relevance": rng.uniform(size=n)})
    plant(store, pool, s.lm_signal(), lm_columns(n, loss=(~good) * 1.0 + rng.uniform(size=n), ifd=rng.uniform(0.3, 1.1, n),
                                                   varentropy=rng.uniform(1, 3, n)))
    run_signal(make_signal("exact_dedup"), pool, store, show_progress=False)
    pos = {i: p for p, i in enumerate(pool.ids)}

    def objective(ids):
        g = good[[pos[i] for i in ids]]
        return float(g.mean() - 0.5 * abs(len(ids) / n - 0.3))

    return pool, store, s, objective, good


def search(synthetic, tmp_path, seed=0, budget=10, cls=RecipeSearch, trace="trace.jsonl", **cfg):
    pool, store, s, objective, _ = synthetic
    oracle = SyntheticOracle(objective)
    config = SearchConfig(oracle_budget=budget, operators=SEARCH_OPS, gp_restarts=1, **cfg)
    srch = cls(ctx_for(pool, store, s), oracle, config, seed=seed, k=60, trace_path=tmp_path / trace, show_progress=False)
    return srch, srch.run(), oracle


def test_search_structure_on_a_synthetic_objective(synthetic, tmp_path):
    _srch, res, oracle = search(synthetic, tmp_path, budget=12)
    assert len(res.history) == 12 == len(oracle.calls)  # every evaluation a distinct subset, each one oracle run
    assert len({e.execution.subset_digest() for e in res.history}) == 12
    phases = [e.phase for e in res.history]
    assert phases[:3] == ["warmup"] * 3
    retain = [e.execution.state.retain_ratio for e in res.history[:3]]
    assert retain[0] > retain[1] > retain[2] and abs(retain[0] - 0.65) < 0.1 and abs(retain[2] - 0.1) < 0.05
    for e in res.history:
        if e.phase == "edit":
            dirs = [c["edit"]["direction"] for c in e.candidates]
            assert len(e.candidates) == 5 and "loosen" in dirs and "tighten" in dirs
            assert np.isfinite(e.mu) and e.sigma >= 0  # the GP's prediction at the chosen edit
            chosen = [c for c in e.candidates if c["chosen"]]
            assert len(chosen) == 1 and chosen[0]["ucb"] == max(c["ucb"] for c in e.candidates)
            assert set(e.edit["credit"]) == {"delta", "plus", "minus"}
    assert res.best.score == max(e.score for e in res.history) >= max(e.score for e in res.history[:3])
    assert res.curve() == best_so_far([e.score for e in res.history])
    header, lines = read_trace(tmp_path / "trace.jsonl")
    assert header["config"]["oracle_budget"] == 12 and len(lines) == 12
    assert lines[5]["score"] == res.history[5].score and "state" in lines[5]["candidates"][0]
    assert sum(c["count"] for c in res.credit.values()) >= 1


def test_search_finds_the_planted_region_better_than_random_recipes(synthetic, tmp_path):
    gp, rnd = [], []
    for seed in (0, 1, 2):
        gp.append(search(synthetic, tmp_path, seed=seed, budget=15, trace=f"gp{seed}.jsonl")[1].best.score)
        rnd.append(search(synthetic, tmp_path, seed=seed, budget=15, cls=RandomRecipeSearch, trace=f"r{seed}.jsonl")[1].best.score)
    assert np.mean(gp) > np.mean(rnd)
    _, _, _, _objective, good = synthetic
    assert np.mean(gp) > good.mean()  # better than taking everything at random


def test_search_resumes_after_a_kill(synthetic, tmp_path):
    _, full, _ = search(synthetic, tmp_path, budget=9, trace="full.jsonl")
    text = (tmp_path / "full.jsonl").read_text().splitlines()
    # a kill after 4 evaluations, in the middle of writing the 5th line
    (tmp_path / "cut.jsonl").write_text("\n".join(text[:5]) + "\n" + text[5][: len(text[5]) // 2])
    srch, resumed, oracle = search(synthetic, tmp_path, budget=9, trace="cut.jsonl")
    assert srch.stats["replayed"] == 4 and srch.stats["trace_lines_dropped"] == 1
    assert len(oracle.calls) == 5  # only the 5 evaluations not in the trace reach the oracle
    # ... but the 4 replayed ones were oracle runs too: their recorded cost is reported
    assert srch.replayed_cost()["oracle"]["runs"] == srch.replayed_cost()["oracle"]["calls"] == 4
    assert [e.cost["runs"] for e in resumed.history] == [1] * 9
    assert [e.recipe for e in resumed.history] == [e.recipe for e in full.history]
    assert [e.score for e in resumed.history] == [e.score for e in full.history]
    strip = [json.loads(ln) for ln in (tmp_path / "cut.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in text]
    for a, b in zip(strip[1:], ref[1:]):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    with pytest.raises(ValueError, match="different search"):
        search(synthetic, tmp_path, budget=10, trace="cut.jsonl")


def test_selection_cost_adds_the_replayed_work_without_counting_twice(synthetic, tmp_path):
    from thresher.select.base import selection_cost

    session = {"oracle": {"calls": 3, "runs": 2, "cached": 1, "examples": 20, "tokens": 200, "seconds": 6.0},
               "proxy": {"calls": 1, "runs": 1, "cached": 0, "examples": 0, "tokens": 5, "seconds": 1.0}}
    assert selection_cost(session, None) is session  # a method that never replays: the ledger as it is
    c = selection_cost(session, {"oracle": {"calls": 2, "runs": 2, "cached": 0, "examples": 20, "tokens": 150, "seconds": 4.0}})
    assert c["oracle"] == {"calls": 5, "runs": 4, "cached": 1, "examples": 40, "tokens": 350, "seconds": 10.0,
                           "calls_this_session": 3, "calls_replayed_from_trace": 2, "runs_this_session": 2,
                           "runs_replayed_from_trace": 2, "seconds_this_session": 6.0, "seconds_replayed_from_trace": 4.0}
    assert c["proxy"]["runs"] == 1 and c["proxy"]["runs_replayed_from_trace"] == 0
    assert selection_cost({}, {"oracle": {"calls": 2, "runs": 1, "cached": 1}})["oracle"]["runs_this_session"] == 0
    # a trace line written before the cost field: one call, a run unless it was cached
    search(synthetic, tmp_path, budget=4, trace="old.jsonl")
    text = (tmp_path / "old.jsonl").read_text().splitlines()
    old = [text[0]] + [json.dumps({k: v for k, v in json.loads(ln).items() if k != "cost"}) for ln in text[1:3]]
    (tmp_path / "old.jsonl").write_text("\n".join(old) + "\n")
    srch, _, oracle = search(synthetic, tmp_path, budget=4, trace="old.jsonl")
    assert len(oracle.calls) == 2 and srch.stats["replayed_without_cost_record"] == 2
    rc = srch.replayed_cost()["oracle"]
    assert rc["runs"] == rc["calls"] == 2 and rc["replayed_without_cost_record"] == 2


def test_budget_cap_mode_caps_every_subset(synthetic, tmp_path):
    _, res, _ = search(synthetic, tmp_path, budget=5, budget_mode="cap")
    assert all(len(e.execution.ids) <= 60 for e in res.history)


def test_random_recipe_search_and_plots(synthetic, tmp_path):
    _, res, oracle = search(synthetic, tmp_path, budget=6, cls=RandomRecipeSearch, trace="rand.jsonl")
    assert [e.phase for e in res.history] == ["random"] * 6 and len(oracle.calls) == 6
    assert all(e.recipe.steps[0].name == "truncate" and 2 <= len(e.recipe) <= 4 for e in res.history)
    _, lines = read_trace(tmp_path / "rand.jsonl")
    png = plot_search_trace(lines, tmp_path / "trace.png")
    png2 = plot_best_so_far({"random": [res.curve(), res.curve()[:4]]}, tmp_path / "bsf.png", references={"full": 0.3})
    for p in (png, png2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


# --------------------------------------------------------------------------- the LLM hooks


def test_llm_replies_are_parsed_strictly():
    lib = ["ifd_filter", "truncate"]
    ok = json.dumps({"recipes": [[{"ifd_filter": {"fraction": 0.4}}], [{"truncate": {"total": 5}}, {"ifd_filter": {}}]]})
    recipes, errors = parse_proposals(ok, lib, 5)
    assert [r.describe() for r in recipes] == ["ifd_filter(fraction=0.4)", "truncate(total=5) > ifd_filter()"] and errors == []
    mixed = json.dumps({"recipes": [[{"ifd_filter": {"fraction": 3}}], [{"exact_dedup": {}}], [{"truncate": {"fraction": 0.2}}]]})
    recipes, errors = parse_proposals(mixed, lib, 5)
    assert len(recipes) == 1 and len(errors) == 2 and "not in the search's library" in errors[1]
    for bad in ("```json\n{}\n```", "[]", '{"recipes": []}', '{"recipe": [[]]}'):
        with pytest.raises(ReplyInvalid):
            parse_proposals(bad, lib, 5)
    assert parse_choice('{"choice": 2}', 3) == 2
    for bad in ('{"choice": 3}', '{"choice": "1"}', '{"choice": true}', "2", '{"pick": 1}'):
        with pytest.raises(ReplyInvalid):
            parse_choice(bad, 3)




def test_llm_failures_fall_back_to_the_rule_based_search_and_are_counted(synthetic, tmp_path):
    pool, store, s, objective, _ = synthetic
    advisor = LLMAdvisor({"url": f"http://127.0.0.1:{closed_port()}/v1", "model": "m", "max_retries": 0, "timeout": 2,
                          "cache_dir": str(tmp_path / "llm-cache")})
    oracle = SyntheticOracle(objective)
    config = SearchConfig(oracle_budget=6, operators=SEARCH_OPS, gp_restarts=0, proposer="llm", ranker="llm")
    t0 = time.perf_counter()
    srch = RecipeSearch(ctx_for(pool, store, s), oracle, config, seed=0, k=60, advisor=advisor, show_progress=False)
    res = srch.run()
    assert time.perf_counter() - t0 < 60
    steps = sum(e.phase == "edit" for e in res.history)
    assert len(res.history) == 6 and steps >= 1
    st = advisor.stats
    assert st["propose_calls"] == st["propose_failures"] == st["rank_calls"] == st["rank_failures"] == steps
    assert sum(st["failure_reasons"].values()) == 2 * steps
    assert all(e.llm.get("rule_fallback_edits") == 5 and len(e.candidates) == 5 for e in res.history if e.phase == "edit")
    with pytest.raises(ValueError, match="LLM advisor"):
        RecipeSearch(ctx_for(pool, store, s), oracle, config, seed=0)


@pytest.mark.slow
def test_llm_advisor_against_a_real_served_model(synthetic, tmp_path):
    from thresher.judge.serve import start_server_in_thread

    url, stop = start_server_in_thread("small")
    try:
        advisor = LLMAdvisor({"url": url, "model": "small", "max_tokens": 200, "cache_dir": str(tmp_path / "c")})
        _, res, _ = search(synthetic, tmp_path, budget=4)
        recipes, _info = advisor.propose(res.best, res.history, SEARCH_OPS, 3)
        st = advisor.stats
        assert st["requests"] == 1 and st["propose_calls"] == 1
        # a 135M model rarely writes valid recipes: either they validate, or the failure is counted
        assert (len(recipes) > 0) or st["propose_failures"] == 1 or st["invalid_recipes"] > 0
        again, _ = advisor.propose(res.best, res.history, SEARCH_OPS, 3)
        assert advisor.stats["cache_hits"] == 1 and [r.canonical() for r in again] == [r.canonical() for r in recipes]
    finally:
        stop()


# --------------------------------------------------------------------------- end to end with the micro oracle


@pytest.mark.slow
def test_autoselection_selector_end_to_end_with_the_micro_oracle(arith_small, tmp_path):
    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _ = arith_small
    store = SignalStore(tmp_path / "store")
    signals = {"scorer_warmup": 80, "scorer_warmup_steps": 20, "task_params": {"pool_size": 400, "dev_size": 60, "test_size": 90}}
    params = {"signals": signals, "oracle_budget": 5, "operators": ["truncate", "task_relevance_filter", "ifd_filter",
                                                                     "exact_dedup", "branching_filter", "union"]}
    sel = make_selector("autoselection", **params)
    for sig in sel.required_signals():
        run_signal(sig, pool, store, show_progress=False)
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=10), cache_dir=tmp_path / "oracle",
                    show_progress=False)
    out = sel.select(pool, view(pool, store), 0.3, task=task, seed=0, oracle=oracle, artifacts_dir=tmp_path / "art")
    d = out.diagnostics
    assert d["evaluations"] == 5 and out.cost["oracle"]["runs"] == 5 and set(d["artifacts"]) == {"best_recipe.yaml", "search.png", "trace.jsonl"}
    assert len(out.ids) == d["best_state"]["n_selected"]
    assert load_recipe(tmp_path / "art" / "best_recipe.yaml").recipe.to_list() == d["best_recipe"]
    again = make_selector("autoselection", **params).select(pool, view(pool, store), 0.3, task=task, seed=0, oracle=oracle,
                                                             artifacts_dir=tmp_path / "art")
    assert again.ids == out.ids and again.diagnostics["stats"]["replayed"] == 5
    # nothing new was run, but the selection still cost the 5 runs recorded in its trace
    c = again.cost["oracle"]
    assert c["runs"] == c["runs_replayed_from_trace"] == 5 and c["runs_this_session"] == 0 and c["calls_this_session"] == 0
    assert {f: c[f] for f in ("calls", "runs", "cached", "examples", "tokens")} == \
        {f: out.cost["oracle"][f] for f in ("calls", "runs", "cached", "examples", "tokens")}
    rnd = make_selector("random_recipes", **params).select(pool, view(pool, store), 0.3, task=task, seed=0, oracle=oracle)
    assert rnd.diagnostics["phases"] == ["random"] * 5


#: the session that gets killed: a real process with the real micro oracle, which stalls (as if
#: training) in oracle call number ``stall_at``, so the SIGKILL lands mid-call at a known point
KILLED_SESSION = r"""
import json, sys, time
from thresher.data.store import SignalStore
from thresher.models.train import TrainConfig
from thresher.oracle.core import Oracle
from thresher.select.base import SignalView, make_selector
from thresher.tasks.arith import ArithConfig, ArithTestbed

cfg = json.loads(sys.argv[1])
pool, task, _ = ArithTestbed(ArithConfig(**cfg["arith"])).build()


class StallingOracle(Oracle):
    calls = 0

    def score(self, ids, label=""):
        if StallingOracle.calls == cfg["stall_at"]:
            print("stalled", flush=True)
            time.sleep(3600)
        StallingOracle.calls += 1
        return super().score(ids, label=label)


oracle = StallingOracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=cfg["steps"]),
                        cache_dir=cfg["oracle_dir"], show_progress=False)
make_selector("autoselection", **cfg["params"]).select(pool, SignalView(pool, SignalStore(cfg["store"])), cfg["budget"],
                                                        task=task, seed=0, oracle=oracle, artifacts_dir=cfg["art"])
"""


def _evaluation_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for ln in path.read_text().splitlines():
        try:
            d = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if d.get("kind") == "evaluation":
            out.append(d)
    return out


@pytest.mark.slow
def test_resumed_autoselection_cost_counts_the_runs_of_the_killed_session(arith_small, tmp_path):
    """Kill a real search process (SIGKILL) after 2 of its 5 oracle runs, resume it: the
    selection's cost is all 5 runs (2 replayed from the trace + 3 now), as uninterrupted."""
    import os
    import signal
    import subprocess
    import sys

    from thresher.models.train import TrainConfig
    from thresher.oracle.core import Oracle

    pool, task, _ = arith_small
    arith = {"pool_size": 400, "dev_size": 60, "test_size": 90}
    # text-signal operators only and no realised-state signals: no model-based signal to compute
    params = {"signals": {"state": [], "task_params": arith}, "oracle_budget": 5,
              "operators": ["truncate", "exact_dedup", "branching_filter", "ngram_entropy_filter", "union"]}
    store = SignalStore(tmp_path / "store")
    for sig in make_selector("autoselection", **params).required_signals():
        run_signal(sig, pool, store, show_progress=False)
    steps, budget, n_before_kill = 10, 0.3, 2
    art, trace = tmp_path / "art", tmp_path / "art" / "trace.jsonl"

    # 1. the session that dies: SIGKILL while its third oracle call is in flight
    script, log = tmp_path / "killed_session.py", tmp_path / "killed_session.log"
    script.write_text(KILLED_SESSION)
    cfg = {"arith": arith, "stall_at": n_before_kill, "steps": steps, "oracle_dir": str(tmp_path / "oracle"),
           "params": params, "store": str(tmp_path / "store"), "budget": budget, "art": str(art)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (len(_evaluation_lines(trace)) == n_before_kill and "stalled" in log.read_text()):
            assert proc.poll() is None, f"the search process ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the search process made no progress"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and len(_evaluation_lines(trace)) == n_before_kill

    # 2. resume in a new session (same oracle cache, same trace)
    oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=steps), cache_dir=tmp_path / "oracle",
                    show_progress=False)
    resumed = make_selector("autoselection", **params).select(pool, view(pool, store), budget, task=task, seed=0, oracle=oracle,
                                                              artifacts_dir=art)
    assert resumed.diagnostics["stats"]["replayed"] == n_before_kill
    lines = _evaluation_lines(trace)
    assert len(lines) == 5 and len({ln["subset_digest"] for ln in lines}) == 5
    assert all(ln["cost"]["runs"] == 1 and ln["cost"]["cached"] == 0 and ln["cost"]["seconds"] > 0 for ln in lines)
    c = resumed.cost["oracle"]
    # every oracle run done for this selection: one per distinct evaluation in the trace
    assert c["runs"] == c["calls"] == len(lines) == 5 and c["cached"] == 0
    assert c["runs_replayed_from_trace"] == n_before_kill and c["runs_this_session"] == 5 - n_before_kill
    assert c["examples"] == sum(ln["cost"]["examples"] for ln in lines) > 0
    assert c["tokens"] == sum(ln["cost"]["tokens"] for ln in lines) > 0
    assert c["seconds"] == pytest.approx(c["seconds_this_session"] + c["seconds_replayed_from_trace"])
    assert c["seconds_replayed_from_trace"] == pytest.approx(sum(ln["cost"]["seconds"] for ln in lines[:n_before_kill]))
    saved = json.loads(resumed.save(tmp_path / "sel.jsonl", pool)[1].read_text())
    assert saved["cost"]["oracle"]["runs"] == 5

    # 3. the same search uninterrupted (its own empty oracle cache) costs the same
    ref_oracle = Oracle(task, pool, model="micro", train=TrainConfig.for_tier("micro", steps=steps),
                        cache_dir=tmp_path / "oracle-ref", show_progress=False)
    ref = make_selector("autoselection", **params).select(pool, view(pool, store), budget, task=task, seed=0,
                                                          oracle=ref_oracle, artifacts_dir=tmp_path / "art-ref")
    r = ref.cost["oracle"]
    assert r["runs_this_session"] == 5 and r["runs_replayed_from_trace"] == 0
    assert ref.ids == resumed.ids
    assert {f: c[f] for f in ("calls", "runs", "cached", "examples", "tokens")} == \
        {f: r[f] for f in ("calls", "runs", "cached", "examples", "tokens")}
