"""What the AutoSelection selectors report about a search: the selection diagnostics and the
artifacts (the best recipe as YAML, the trace plot, the trace itself when it lies in the
artifacts folder)."""
from __future__ import annotations

from thresher.select.autoselection.plots import plot_search_trace
from thresher.select.autoselection.recipe import save_recipe
from thresher.select.autoselection.search import RecipeSearch, SearchResult
from thresher.select.base import Selector


def write_artifacts(sel: Selector, result: SearchResult, search: RecipeSearch, title: str) -> list[str]:
    """Write the best recipe (YAML) and the trace plot into the artifacts folder; list them."""
    if sel.artifacts_dir is None:
        return []

    out = []
    save_recipe(result.best.recipe, sel.artifacts_dir / "best_recipe.yaml", settings=search.ctx.settings,
                name=f"{search.method} seed {search.seed} best", description=f"dev score {result.best.score:.4f}")
    out.append("best_recipe.yaml")
    plot_search_trace([e.line() for e in result.history], sel.artifacts_dir / "search.png", title=title)
    out.append("search.png")
    if search.trace.path is not None and search.trace.path.parent == sel.artifacts_dir:
        out.append(search.trace.path.name)
    return out


def search_diagnostics(result: SearchResult, search: RecipeSearch) -> dict:
    """The selection diagnostics of a search: the best recipe, its score, state and steps,
    the scores and phases of every evaluation, the best-so-far curve, the budget's
    accounting, the credit per operator, the library, the counters and the trace path."""
    best = result.best
    return {
        "best_recipe": best.recipe.to_list(), "best_describe": best.recipe.describe(), "best_index": best.index,
        "best_dev_score": best.score, "best_state": best.execution.state.to_dict(), "best_steps": best.execution.steps,
        "evaluations": len(result.history), "oracle_budget": search.config.oracle_budget,
        "budget_counting": "distinct subsets evaluated by this search (cached oracle results cost no compute but count)",
        "budget_mode": search.config.budget_mode, "k": search.k,
        "best_so_far": [round(v, 6) for v in result.curve()],
        "scores": [round(e.score, 6) for e in result.history], "phases": [e.phase for e in result.history],
        "trajectories": search.trajectory + 1, "credit": {n: {"credit": round(c["credit"], 6), "count": c["count"]}
                                                          for n, c in sorted(result.credit.items())},
        "library": search.library, "stats": result.stats,
        "trace": str(search.trace.path) if search.trace.path else None,
    }
