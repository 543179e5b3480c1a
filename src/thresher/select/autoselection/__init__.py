"""AutoSelection (seed 002): fixed-pool data-recipe search for SFT selection.

Selectors registered here:

- ``autoselection``: the search (warm-up, GP surrogate on recipe encoding + realised state,
  local edits ranked by UCB, credit assignment, reseeding) under an oracle budget;
  returns the best evaluated recipe's subset. See :mod:`.search`.
- ``recipe``: execute one fixed recipe (a YAML path or a list of ``{op: params}``);
  no oracle. See :mod:`.recipe` and ``thresher recipe run``.
- ``random_recipes``: the baseline of the same budget of random recipes.

Modules: :mod:`.params` (the selectors' params, the search's :class:`SearchConfig`),
:mod:`.operators` (the operators, signal settings), :mod:`.recipe` (recipes, their
execution and realised state, YAML), :mod:`.search` (the search loop),
:mod:`.proposals` (random recipes, local edits, credit, reseeding), :mod:`.surrogate`
(features, the GP, UCB), :mod:`.trace` (evaluations, oracle costs, the replayable trace),
:mod:`.llm` (optional LLM proposer/ranker), :mod:`.report` (diagnostics, artifacts) and
:mod:`.plots`.
"""
from __future__ import annotations

from thresher.select.autoselection.llm import LLMAdvisor
from thresher.select.autoselection.operators import (
    OPERATORS,
    RecipeContext,
    SignalSettings,
    operator_catalog,
    register_operator,
)
from thresher.select.autoselection.params import (
    AutoSelectionParams,
    RecipeParams,
    SearchConfig,
)
from thresher.select.autoselection.recipe import (
    Recipe,
    RecipeError,
    RecipeFile,
    as_recipe,
    load_recipe,
    save_recipe,
    state_signals,
)
from thresher.select.autoselection.report import search_diagnostics, write_artifacts
from thresher.select.autoselection.search import (
    RandomRecipeSearch,
    RecipeSearch,
    library_signals,
)
from thresher.select.autoselection.trace import read_trace
from thresher.select.base import Selector, register_selector, unique_signals

__all__ = [
    "OPERATORS",
    "AutoSelectionSelector",
    "RandomRecipeSearch",
    "RandomRecipesSelector",
    "Recipe",
    "RecipeContext",
    "RecipeError",
    "RecipeFile",
    "RecipeSearch",
    "RecipeSelector",
    "SearchConfig",
    "SignalSettings",
    "load_recipe",
    "operator_catalog",
    "read_trace",
    "register_operator",
    "save_recipe",
]


def _check_task(settings: SignalSettings, task) -> None:
    """The task_relevance signal is keyed by a task name; make sure it is the task being selected for."""
    if task is None:
        return
    ours = settings.relevance_signal().dev().fingerprint()
    if hasattr(task, "fingerprint") and task.fingerprint() != ours:
        raise ValueError(f"signals.task={settings.task!r} with task_params={settings.task_params} names a dev split "
                         f"different from the task given to the selector ({getattr(task, 'name', '?')}); set the "
                         "signals' task and task_params to the target task so task relevance measures the right thing")


# --------------------------------------------------------------------------- the search


class _SearchSelector(Selector):
    uses_oracle = True
    Params = AutoSelectionParams
    search_class: type[RecipeSearch] = RecipeSearch

    def required_signals(self):
        p = self.params
        return unique_signals(library_signals(p.operators, p.signals, p.operator_defaults) + state_signals(p.signals))

    def search(self, pool, signals, k, seed, oracle) -> RecipeSearch:
        p = self.params
        ctx = RecipeContext(pool, signals, p.signals)
        config = SearchConfig(**{f: getattr(p, f) for f in SearchConfig.model_fields})
        trace = p.trace_path or (self.artifacts_dir / "trace.jsonl" if self.artifacts_dir else None)
        advisor = None
        if p.proposer == "llm" or p.ranker == "llm":

            advisor = LLMAdvisor(p.llm or {}, ledger=oracle.ledger)
        return self.search_class(ctx, oracle, config, seed=seed, k=k, trace_path=trace, advisor=advisor, label=self.name)

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        _check_task(self.params.signals, task)
        search = self.search(pool, signals, k, seed, oracle)
        result = search.run()
        # work done in earlier sessions and replayed from the trace: the selection's cost includes it
        self.replayed_cost = search.replayed_cost()
        diag = search_diagnostics(result, search)
        if search.advisor is not None:
            diag["llm"] = search.advisor.stats
            search.advisor.close()
        diag["artifacts"] = write_artifacts(self, result, search, f"{self.name} seed {seed}")
        return result.ids, diag


@register_selector
class AutoSelectionSelector(_SearchSelector):
    name = "autoselection"
    description = ("AutoSelection: search operator recipes (filters, dedups, caps) under an oracle budget with warm-up, "
                   "a GP surrogate on recipe + realised state, local edits ranked by UCB, credit and reseeding")


@register_selector
class RandomRecipesSelector(_SearchSelector):
    name = "random_recipes"
    description = "baseline: the same oracle budget spent on random recipes (truncate + 1-3 random filters); keeps the best"
    search_class = RandomRecipeSearch


# --------------------------------------------------------------------------- a fixed recipe


@register_selector
class RecipeSelector(Selector):
    name = "recipe"
    description = "execute one AutoSelection recipe (YAML path or list of {op: params}) on stored signals; no model calls"
    Params = RecipeParams

    def __init__(self, **params):
        super().__init__(**params)
        self.recipe_file: RecipeFile = as_recipe(self.params.recipe)

    @property
    def settings(self) -> SignalSettings:
        return self.params.signals or self.recipe_file.settings or SignalSettings()

    def required_signals(self):
        return unique_signals(self.recipe_file.recipe.required_signals(self.settings) + state_signals(self.settings))

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        ctx = RecipeContext(pool, signals, self.settings)
        recipe = self.recipe_file.recipe
        ex = recipe.execute(ctx, k=k, cap_to=k if self.params.cap_to_budget else None)
        src = str(self.recipe_file.path) if self.recipe_file.path else None
        return ex.ids, {"recipe": recipe.to_list(), "describe": recipe.describe(), "recipe_digest": recipe.digest(),
                        "recipe_file": src, "state": ex.state.to_dict(), "steps": ex.steps,
                        "signals": self.settings.model_dump(mode="json", exclude_defaults=True),
                        "budget_note": "k capped the subset" if self.params.cap_to_budget else "k only sets budget_used = n / k"}

