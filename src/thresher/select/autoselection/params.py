"""Parameters of the AutoSelection selectors: :class:`SearchConfig` (the recipe search's settings,
recorded in its trace header), :class:`AutoSelectionParams` (``autoselection`` and
``random_recipes``: the search's settings plus signals, LLM, trace path and budget mode) and
:class:`RecipeParams` (``recipe``: one fixed recipe)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thresher.select.autoselection.operators import OPERATORS, SignalSettings
from thresher.select.autoselection.recipe import as_recipe
from thresher.select.base import SelectorParams


class SearchConfig(BaseModel):
    """Settings of the recipe search (all recorded in the trace header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oracle_budget: int = Field(15, ge=1, description="oracle evaluations (distinct subsets) the search may spend")
    warmup_retain: list[float] = Field([0.65, 0.4, 0.1], description="target retain ratios of the warm-up recipes")
    edits_per_step: int = Field(5, ge=2, description="local edits proposed and ranked per step")
    ucb_beta: float = Field(1.5, ge=0.0, description="UCB = mu + beta * sigma")
    patience: int = Field(4, ge=1, description="evaluations without improving the trajectory's best before reseeding")
    operators: list[str] | None = Field(None, description="operators the search may use (default: every applicable one)")
    operator_defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fixed params per operator, e.g. {'quality_filter': {'quality': 'judge'}}")
    budget_mode: Literal["free", "cap"] = Field("free", description="free: the recipe sets the size (k only in budget_used); cap: cap every subset at k")
    max_steps: int = Field(6, ge=1, description="at most this many steps in a recipe")
    proposer: Literal["rule", "llm"] = Field("rule", description="local edits from rules (default, offline) or an LLM")
    ranker: Literal["gp", "llm"] = Field("gp", description="pick the candidate by GP UCB (default) or ask an LLM")
    gp_restarts: int = Field(3, ge=0, description="GP kernel-hyperparameter optimiser restarts")

    @field_validator("warmup_retain")
    @classmethod
    def _check_retain(cls, v):
        if not v or any(not 0 < x <= 1 for x in v):
            raise ValueError("warmup_retain must be a non-empty list of ratios in (0, 1]")
        return v

    @field_validator("operators")
    @classmethod
    def _check_ops(cls, v):
        if v is not None:
            unknown = [o for o in v if o not in OPERATORS]
            if unknown:
                raise ValueError(f"unknown operators {unknown}; known: {sorted(OPERATORS)}")
        return v


class AutoSelectionParams(SearchConfig):
    model_config = ConfigDict(extra="forbid", frozen=False)

    signals: SignalSettings = Field(default_factory=SignalSettings, description="which stored signals operators and the state read")
    llm: dict[str, Any] | None = Field(None, description="LLM endpoint settings (url, model, api_key_env, ...) for proposer/ranker 'llm'")
    trace_path: str | None = Field(None, description="trace JSONL (default: <artifacts>/trace.jsonl); a rerun resumes from it")
    budget_mode: Literal["free", "cap"] = Field(
        "cap", description="cap (default): cap every subset at the budget k, so a selection never exceeds the budget "
        "typed (a recipe may keep fewer); free: the recipe sets the size (k only in budget_used), the paper's form")


class RecipeParams(SelectorParams):
    recipe: str | list[Any] = Field(..., description="a recipe YAML path (or YAML text), or a list of {operator: params}")
    signals: SignalSettings | None = Field(None, description="signal settings (default: the recipe file's 'signals', else defaults)")
    cap_to_budget: bool = Field(False, description="cap the subset at the budget k (seeded, source-stratified); else k only sets budget_used")

    @field_validator("recipe")
    @classmethod
    def _parse(cls, v):
        as_recipe(v)  # raises a RecipeError (a ValueError) naming the file, step and line
        return v
