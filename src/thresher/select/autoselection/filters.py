"""AutoSelection's filters: each keeps the top ``fraction`` of its input by one signal
(:mod:`~thresher.select.autoselection.operators` has the library and the shared base)."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from thresher.data.pool import user_text
from thresher.select.autoselection.operators import (
    FRACTION_GRID,
    Operator,
    OperatorParams,
    RecipeContext,
    SignalSettings,
    StepOutcome,
    register_operator,
    round_fraction,
    signal_for,
)
from thresher.select.quality import quality_source
from thresher.signals.heuristics import bloom_verbs_found


def keep_top_fraction(keep: np.ndarray, values: np.ndarray, fraction: float, direction: str) -> StepOutcome:
    """Of the positions ``keep``, those with the top ``fraction`` of ``values`` (``direction``).

    Positions whose value is NaN are dropped and counted. The number kept is
    ``floor(fraction * n_valid + 0.5)`` (at least 1 when any value exists); ties keep pool
    order (a stable sort). The result is returned in pool order.
    """
    keep = np.asarray(keep, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)[keep]
    valid = ~np.isnan(v)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return StepOutcome(np.zeros(0, dtype=np.int64), excluded_missing=len(keep))
    n_keep = max(1, min(n_valid, math.floor(fraction * n_valid + 0.5)))
    cand = keep[valid]
    cv = v[valid]
    order = np.argsort(-cv if direction == "high" else cv, kind="stable")
    return StepOutcome(np.sort(cand[order[:n_keep]]), excluded_missing=int((~valid).sum()))


class FilterParams(OperatorParams):
    fraction: float = Field(0.5, gt=0.0, le=1.0, description="keep this top fraction of the examples that reach this step")
    direction: Literal["high", "low"] = Field("high", description="keep the highest or the lowest values")


class TopFractionFilter(Operator):
    """Shared logic of the keep-top-fraction filters."""

    role = "filter"
    Params = FilterParams

    def values(self, ctx: RecipeContext) -> np.ndarray:
        raise TypeError(f"operator {self.name!r} does not implement values()")

    def apply(self, keep, ctx):
        return keep_top_fraction(keep, self.values(ctx), self.params.fraction, self.params.direction)

    @classmethod
    def random_params(cls, rng, ctx):
        return {"fraction": rng.choice(FRACTION_GRID[5:19])}  # 0.3 .. 0.95

    def nudged(self, rng, direction):
        f = self.params.fraction
        step = rng.choice((0.05, 0.1, 0.15, 0.2))
        new = round_fraction(f + step if direction == "loosen" else f - step)
        if new == f:
            return None
        return {**self.params.model_dump(mode="json"), "fraction": new}

    def retention_code(self, ctx):
        return float(self.params.fraction)


class TaskRelevanceFilterParams(FilterParams):
    domain: str | None = Field(None, description="relevance to this dev domain only (None: to all dev items)")


@register_operator
class TaskRelevanceFilter(TopFractionFilter):
    name = "task_relevance_filter"
    description = "keep the top fraction by task relevance (mean top-m embedding cosine to the task's dev items, or one domain's)"
    Params = TaskRelevanceFilterParams

    def required_signals(self, settings):
        return [settings.relevance_signal(self.params.domain)]

    def values(self, ctx):
        return ctx.column(ctx.settings.relevance_signal(self.params.domain), "task_relevance")

    @classmethod
    def random_params(cls, rng, ctx):
        out = super().random_params(rng, ctx)
        domains = ctx.domains()
        if domains and rng.random() < 0.5:
            out["domain"] = rng.choice(domains)
        return out


class IFDFilterParams(FilterParams):
    variant: Literal["ifd", "ifd_ppl_ratio"] = Field("ifd", description="Cherry's loss ratio or AutoSelection's perplexity-ratio variant")
    drop_ge_one: bool = Field(False, description="first drop examples with IFD >= 1 (Cherry: the instruction does not help)")


@register_operator
class IFDFilter(TopFractionFilter):
    name = "ifd_filter"
    description = "keep the top fraction by instruction-following difficulty (lm signal under the scorer)"
    Params = IFDFilterParams

    def required_signals(self, settings):
        return [settings.lm_signal()]

    def values(self, ctx):
        v = np.asarray(ctx.column(ctx.settings.lm_signal(), self.params.variant), dtype=np.float64)
        if self.params.drop_ge_one:
            v = np.where(v >= 1.0, np.nan, v)
        return v


class EntropyFilterParams(FilterParams):
    side: Literal["answer", "user", "all"] = Field("answer", description="which text's word entropy")


@register_operator
class NgramEntropyFilter(TopFractionFilter):
    name = "ngram_entropy_filter"
    description = "keep the top fraction by word (unigram) Shannon entropy of the answer (or user / all text)"
    Params = EntropyFilterParams

    def required_signals(self, settings):
        return [signal_for("unigram_entropy", side=self.params.side)]

    def values(self, ctx):
        return ctx.column(signal_for("unigram_entropy", side=self.params.side), "unigram_entropy")


@register_operator
class VarentropyFilter(TopFractionFilter):
    name = "varentropy_filter"
    description = "keep the top fraction by mean answer-token varentropy under the scorer (lm signal)"

    def required_signals(self, settings):
        return [settings.lm_signal()]

    def values(self, ctx):
        return ctx.column(ctx.settings.lm_signal(), "varentropy")


class BranchingFilterParams(FilterParams):
    measure: Literal["reasoning_steps", "verb_count"] = Field(
        "reasoning_steps", description="reasoning_steps signal, or distinct Bloom action verbs in the user turns (text-only proxy)")


def verb_count(record: dict) -> int:
    """Distinct action verbs (Bloom verb lists) in the user turns: the no-parser branching proxy."""

    return len(bloom_verbs_found(user_text(record)))


@register_operator
class BranchingFilter(TopFractionFilter):
    name = "branching_filter"
    description = "keep the top fraction by reasoning branching: reasoning-step count (default) or an action-verb count"
    Params = BranchingFilterParams

    def required_signals(self, settings):
        return [signal_for("reasoning_steps")] if self.params.measure == "reasoning_steps" else []

    def values(self, ctx):
        if self.params.measure == "reasoning_steps":
            return np.asarray(ctx.column(signal_for("reasoning_steps"), "reasoning_steps"), dtype=np.float64)
        if "verb_count" not in ctx.memo:
            ctx.memo["verb_count"] = np.array([verb_count(r) for r in ctx.pool], dtype=np.float64)
        return ctx.memo["verb_count"]


class QualityFilterParams(FilterParams):
    quality: str = Field("loss:low", description="quality source (thresher.select.quality): judge, reward:MODEL, COLUMN[:low]; "
                                                 "offline default loss:low (the scorer's answer loss, lower is better)")

    @field_validator("quality")
    @classmethod
    def _check_quality(cls, v: str) -> str:

        quality_source(v)  # raises a ValueError naming the spec
        return v


@register_operator
class QualityFilter(TopFractionFilter):
    name = "quality_filter"
    description = "keep the top fraction by a quality source (judge, reward model, or a signal column such as loss:low)"
    Params = QualityFilterParams

    def _source(self, settings: SignalSettings):

        return quality_source(self.params.quality, signal_params=settings.lm_params())

    def required_signals(self, settings):
        return [self._source(settings).signal]

    def values(self, ctx):
        return self._source(ctx.settings).values(ctx.signals)
