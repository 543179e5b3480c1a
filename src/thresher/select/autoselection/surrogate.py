"""The search's surrogate: recipe and realised-state features, the GP (scikit-learn, via
:mod:`thresher.select.bayesopt`) from features to oracle scores, and UCB ranking."""
from __future__ import annotations

import math

import numpy as np

from thresher.select.autoselection.operators import RecipeContext
from thresher.select.autoselection.recipe import RealisedState, Recipe, pool_reference
from thresher.select.bayesopt import fit_gp, gp_predict


def recipe_encoding(recipe: Recipe, library: list[str], ctx: RecipeContext, max_steps: int) -> list[float]:
    """Per library operator: (present, mean retention code; 1 when absent), then the step count."""
    out: list[float] = []
    for name in library:
        codes = [op.retention_code(ctx) for op in recipe.steps if op.name == name]
        out += [1.0 if codes else 0.0, float(np.mean(codes)) if codes else 1.0]
    out.append(len(recipe) / max_steps)
    return out


def state_features(state: RealisedState, ctx: RecipeContext) -> list[float]:
    """The realised state as numbers: ratios, drift, relevance shifts (in pool standard
    deviations), relative IFD/varentropy clipped to [0, 2] / 2, and budget_used clipped to 3 / 3.
    Parts that were not computed are 0 for every recipe (so they carry no weight)."""

    ref = pool_reference(ctx) if state.n_selected else {}
    f = [state.retain_ratio, state.token_ratio or 0.0, state.drift or 0.0]
    if state.relevance_mean is not None and ref.get("relevance_std"):
        f.append((state.relevance_mean - ref["relevance_mean"]) / ref["relevance_std"])
        f.append((state.relevance_std or 0.0) / ref["relevance_std"])
    else:
        f += [0.0, 0.0]
    for d in (ctx.domains() if "relevance" in ctx.settings.state else []):
        m, s = ref.get("relevance_per_task", {}).get(d, (0.0, 0.0))
        v = state.relevance_per_task.get(d)
        f.append((v - m) / s if v is not None and s else 0.0)
    for rel in (state.relative_ifd, state.relative_varentropy):
        f.append(min(max(rel, 0.0), 2.0) / 2.0 if rel is not None else 0.0)
    f.append(min(state.budget_used, 3.0) / 3.0 if state.budget_used is not None else 0.0)
    return f


def scale_columns(rows: np.ndarray) -> np.ndarray:
    """Min-max scale every column to [0, 1] over the given rows (a constant column -> 0)."""
    lo = rows.min(axis=0)
    span = rows.max(axis=0) - lo
    span[span == 0] = 1.0
    return (rows - lo) / span


class Surrogate:
    """GP regression (scikit-learn) from feature rows to oracle scores, with UCB ranking."""

    def __init__(self, seed: int = 0, restarts: int = 3):
        self.seed = seed
        self.restarts = restarts
        self.gp = None

    def fit_predict(self, x_seen: np.ndarray, y_seen: np.ndarray, x_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit on (x_seen, y_seen), predict mean and std at x_new (features scaled jointly).

        The GP is :func:`thresher.select.bayesopt.fit_gp` with one shared Matern 5/2 length
        scale starting at sqrt(d) / 2 (bounds 1e-2..1e3) and white noise starting at 1e-2;
        BLAS threads are left as they are."""
        x_seen = np.asarray(x_seen, dtype=np.float64)
        x_new = np.asarray(x_new, dtype=np.float64)
        both = scale_columns(np.vstack([x_seen, x_new]))
        xs, xn = both[: len(x_seen)], both[len(x_seen):]
        d = xs.shape[1]
        self.gp = fit_gp(xs, np.asarray(y_seen, dtype=np.float64), seed=self.seed, nu=2.5, length_scale=math.sqrt(d) / 2,
                         ard=False, length_scale_bounds=(1e-2, 1e3), noise=1e-2, restarts=self.restarts, one_blas_thread=False)
        return gp_predict(self.gp, xn, one_blas_thread=False)


def ucb_order(mu: np.ndarray, sigma: np.ndarray, beta: float) -> np.ndarray:
    """Candidate indices by UCB, best first (ties: lower index first)."""
    ucb = np.asarray(mu) + beta * np.asarray(sigma)
    return np.argsort(-ucb, kind="stable")
