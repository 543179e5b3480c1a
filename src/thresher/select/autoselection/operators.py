"""AutoSelection's operator library: registered, parameter-validated steps that only keep or drop.

An operator takes the positions still in the subset (sorted pool positions) and returns the
positions it keeps, a subset of its input. It reads cached signals through the
:class:`RecipeContext` (a :class:`~thresher.select.base.SignalView`, which never computes),
so executing a recipe costs a few array operations and no model call. Operators never
generate, rewrite or duplicate examples.

The library (``OPERATORS``; :func:`operator_catalog` lists names, params and the signals read):

- ``truncate``: a random cap (``fraction`` of the pool or a ``total`` count), stratified by
  source (largest-remainder quotas), seeded.
- Filters keep the top ``fraction`` of their input by one signal (``direction`` high or low;
  examples without a value are dropped and counted; ties keep pool order):
  ``task_relevance_filter`` (embedding similarity to the task's dev items, all of them or one
  ``domain``), ``ifd_filter`` (Cherry IFD or the perplexity-ratio variant), ``ngram_entropy_filter``
  (word unigram entropy), ``varentropy_filter`` (answer-token varentropy), ``branching_filter``
  (reasoning-step count, or a verb-count proxy, see below) and ``quality_filter`` (any quality
  source of :mod:`thresher.select.quality`; offline default ``loss:low``).
- Dedups keep the first example (lowest pool position) still present in each group:
  ``exact_dedup``, ``minhash_dedup(threshold)``, ``semantic_dedup(threshold)``.
- ``union(recipe)``: the input plus what another recipe selects from the whole pool.
- ``source_mix(weights)``: resample by source to the given proportions without oversampling.

**Branching (decision).** The reference counts action-object pairs with a dependency parser;
thresher has no parser dependency. ``branching_filter`` reads the ``reasoning_steps`` signal
(default), or with ``measure: verb_count`` counts the distinct action verbs (the Bloom verb
lists of :mod:`thresher.signals.heuristics`) in the user turns, computed from the pool text
in the operator: a deterministic text statistic, no model.

Search support: each operator can draw random params (:meth:`Operator.random_params`), nudge
its main parameter to keep more or fewer examples (:meth:`Operator.nudged`), and encode that
parameter as a number in [0, 1] for the surrogate (:meth:`Operator.retention_code`).
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from thresher.data.pool import Pool, user_text
from thresher.errors import ConfigError
from thresher.params import validate_params
from thresher.registry import Registry
from thresher.select.quality import quality_source
from thresher.signals.base import Signal, make_signal
from thresher.signals.embed import DEFAULT_ENCODER, EmbedText
from thresher.signals.heuristics import bloom_verbs_found

# --------------------------------------------------------------------------- settings and context

STATE_PARTS = ("tokens", "drift", "relevance", "ifd", "varentropy")

_SIGNALS: dict[str, Signal] = {}


def signal_for(name: str, **params) -> Signal:
    """The (shared) signal object for ``name`` and ``params``.

    Executing a recipe looks up the same few signals thousands of times during a search;
    sharing the objects keeps their one-off work (the task_relevance signal loads its task's
    dev split to fingerprint it) to once per process.
    """
    key = json.dumps([name, params], sort_keys=True, default=str)
    if key not in _SIGNALS:
        _SIGNALS[key] = make_signal(name, **params)
    return _SIGNALS[key]


class SignalSettings(BaseModel):
    """How the signals that operators and the realised state read were computed.

    These name the stored signals (their cache keys); they never trigger computation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scorer: str = Field("auto", description=("model of the lm signal (IFD, varentropy, loss): auto = micro on the arith "
                                             "testbed, small (SmolLM2) on any other pool; also the text signal's tokenizer "
                                             "when named (auto: the micro character tokenizer, as before)"))
    scorer_warmup: int | None = Field(None, ge=0, description="the lm signal's warmup_examples (default: 300 for micro, 0 otherwise)")
    scorer_warmup_steps: int = Field(250, ge=1, description="the lm signal's warmup_steps")
    embed_model: str = Field(DEFAULT_ENCODER, description="sentence encoder of the embedding-based signals")
    embed_text: EmbedText = Field("all", description="what the embedding signal embeds: user, answer or all")
    task: str = Field("arith", description="target task of the task_relevance signal (its dev split only)")
    task_params: dict[str, Any] = Field(default_factory=dict, description="params of that task's factory (e.g. pool_size, dev_size)")
    relevance_m: int = Field(5, ge=1, description="task_relevance: mean of the top-m cosines")
    relevance_domains: list[str] | None = Field(None, description="dev domains with a per-task relevance in the state (None: all of the task's)")
    state: tuple[Literal["tokens", "drift", "relevance", "ifd", "varentropy"], ...] = Field(
        STATE_PARTS, description="parts of the realised state to compute (each reads its signals)")

    def lm_params(self) -> dict:
        return {"model": self.scorer, "warmup_examples": self.scorer_warmup, "warmup_steps": self.scorer_warmup_steps}

    def lm_signal(self) -> Signal:
        return signal_for("lm", **self.lm_params())

    def text_signal(self) -> Signal:
        return signal_for("text", model="micro" if self.scorer == "auto" else self.scorer)

    def embedding_params(self) -> dict:
        return {"embed_model": self.embed_model, "embed_text": self.embed_text}

    def kmeans_signal(self) -> Signal:
        return signal_for("kmeans", **self.embedding_params())

    def relevance_signal(self, domain: str | None = None) -> Signal:
        return signal_for("task_relevance", task=self.task, task_params=dict(self.task_params), m=self.relevance_m,
                           domain=domain, **self.embedding_params())

    def domains(self) -> list[str]:
        """The dev domains the per-task relevance covers (loads the task's dev split, never test)."""
        if self.relevance_domains is not None:
            return list(self.relevance_domains)
        return list(self.relevance_signal().dev().domains)


@dataclass
class RecipeContext:
    """What executing a recipe may read: the pool, stored signals, the settings naming them."""

    pool: Pool
    signals: Any  # a SignalView (or anything with .signal(Signal) -> {column: array})
    settings: SignalSettings = field(default_factory=SignalSettings)
    _columns: dict = field(default_factory=dict, repr=False)
    _sources: np.ndarray | None = field(default=None, repr=False)
    _domains: list[str] | None = field(default=None, repr=False)
    #: derived per-pool values (pool-level references, text statistics), computed once
    memo: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.pool)

    def column(self, signal: Signal, column: str) -> np.ndarray:
        key = (signal.name, json.dumps(signal.params.model_dump(mode="json"), sort_keys=True), column)
        if key not in self._columns:
            self._columns[key] = np.asarray(self.signals.signal(signal)[column])
        return self._columns[key]

    @property
    def sources(self) -> np.ndarray:
        if self._sources is None:
            self._sources = np.asarray(self.pool.sources, dtype=object)
        return self._sources

    def source_names(self) -> list[str]:
        return sorted(set(self.sources.tolist()))

    def domains(self) -> list[str]:
        if self._domains is None:
            self._domains = self.settings.domains()
        return self._domains


@dataclass
class StepOutcome:
    """One operator's effect: the kept positions and what was dropped for lack of a value."""

    keep: np.ndarray
    excluded_missing: int = 0
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- base classes


class OperatorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FRACTION_GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0


def _round_fraction(x: float) -> float:
    return float(min(1.0, max(0.05, round(round(x / 0.05) * 0.05, 2))))


class Operator:
    """A registered recipe step. Subclasses set ``name``, ``description``, ``role``, ``Params``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    role: ClassVar[str] = "filter"  # filter | dedup | cap | set | mix
    Params: ClassVar[type[OperatorParams]] = OperatorParams

    def __init__(self, **params: Any):
        self.params = validate_params(self.Params, params, f"operator {self.name!r}")

    # --- identity
    def to_dict(self, full: bool = True) -> dict:
        """``{name: params}``; ``full=False`` leaves out params at their defaults."""
        return {self.name: self.params.model_dump(mode="json", exclude_defaults=not full)}

    def __repr__(self) -> str:
        return f"{self.name}({self.params.model_dump(mode='json', exclude_defaults=True)})"

    # --- execution
    def required_signals(self, settings: SignalSettings) -> list[Signal]:
        return []

    def apply(self, keep: np.ndarray, ctx: RecipeContext) -> StepOutcome:
        raise TypeError(f"operator {self.name!r} does not implement apply()")

    # --- search support
    @classmethod
    def applicable(cls, ctx: RecipeContext) -> bool:
        return True

    @classmethod
    def random_params(cls, rng: random.Random, ctx: RecipeContext) -> dict:
        return {}

    def nudged(self, rng: random.Random, direction: str) -> dict | None:
        """Params that should keep more (``loosen``) or fewer (``tighten``) examples; None if none."""
        return None

    def retention_code(self, ctx: RecipeContext) -> float:
        """The main parameter as a number in [0, 1] (1 = keeps everything); for the surrogate."""
        return 1.0


#: every recipe operator by name: the built-ins below, and ``union`` (a recipe of recipes) in recipe.py
OPERATORS: Registry[type[Operator]] = Registry("operator", ("thresher.select.autoselection.recipe",))
register_operator = OPERATORS.register


def make_operator(name: str, params: dict | None = None) -> Operator:
    cls = OPERATORS.lookup(name)
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"operator {name!r}: params must be a mapping, got {type(params).__name__}")
    return cls(**(params or {}))


def operator_catalog() -> list[dict]:
    """Every operator with its role, description and params (name, default, description)."""
    out = []
    for name, cls in sorted(OPERATORS.items()):
        props = cls.Params.model_json_schema().get("properties", {})
        params = {k: {"default": v.get("default"), "description": v.get("description", "")} for k, v in props.items()}
        out.append({"name": name, "role": cls.role, "description": cls.description, "params": params})
    return out


# --------------------------------------------------------------------------- filters: keep the top fraction


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
        new = _round_fraction(f + step if direction == "loosen" else f - step)
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


# --------------------------------------------------------------------------- dedup


def keep_first_per_group(keep: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Of the positions ``keep`` (sorted), the first (lowest position) of each group."""
    keep = np.asarray(keep, dtype=np.int64)
    g = np.asarray(groups)[keep]
    _, first = np.unique(g, return_index=True)
    return np.sort(keep[first])


@register_operator
class ExactDedup(Operator):
    name = "exact_dedup"
    role = "dedup"
    description = "keep one example per exact duplicate group (normalised user + answer text), the first still present"

    def required_signals(self, settings):
        return [signal_for("exact_dedup")]

    def apply(self, keep, ctx):
        keys = ctx.column(signal_for("exact_dedup"), "exact_key")
        kept = keep_first_per_group(keep, np.asarray(keys, dtype=object).astype(str))
        return StepOutcome(kept, notes={"duplicates_dropped": int(len(keep) - len(kept))})


class ThresholdDedupParams(OperatorParams):
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="similarity that links two examples (its signal is keyed by it)")


class ThresholdDedup(Operator):
    role = "dedup"
    Params = ThresholdDedupParams
    signal_name: ClassVar[str] = ""
    group_column: ClassVar[str] = ""
    #: the thresholds a search moves between (each one a stored signal)
    threshold_grid: ClassVar[tuple[float, ...]] = ()

    def signal(self, settings: SignalSettings) -> Signal:
        return signal_for(self.signal_name, threshold=self.params.threshold)

    def required_signals(self, settings):
        return [self.signal(settings)]

    def apply(self, keep, ctx):
        groups = ctx.column(self.signal(ctx.settings), self.group_column)
        kept = keep_first_per_group(keep, groups)
        return StepOutcome(kept, notes={"duplicates_dropped": int(len(keep) - len(kept))})

    @classmethod
    def random_params(cls, rng, ctx):
        return {"threshold": rng.choice(cls.threshold_grid)}

    def nudged(self, rng, direction):
        grid = list(self.threshold_grid)
        t = self.params.threshold
        # a higher threshold links fewer pairs, so it keeps more: loosen = up the grid
        higher = [g for g in grid if g > t]
        lower = [g for g in grid if g < t]
        if direction == "loosen":
            return {**self.params.model_dump(mode="json"), "threshold": min(higher)} if higher else None
        return {**self.params.model_dump(mode="json"), "threshold": max(lower)} if lower else None

    def retention_code(self, ctx):
        lo, hi = min(self.threshold_grid), max(self.threshold_grid)
        return float(np.clip((self.params.threshold - lo) / (hi - lo), 0.0, 1.0)) if hi > lo else 1.0


class MinHashDedupParams(ThresholdDedupParams):
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="estimated Jaccard similarity (word 5-gram MinHash) that links two examples")


@register_operator
class MinHashDedup(ThresholdDedup):
    name = "minhash_dedup"
    description = "keep one example per MinHash near-duplicate cluster (estimated Jaccard >= threshold), the first still present"
    Params = MinHashDedupParams
    signal_name = "minhash"
    group_column = "minhash_cluster"
    threshold_grid = (0.6, 0.7, 0.8, 0.9)


class SemanticDedupParams(ThresholdDedupParams):
    threshold: float = Field(0.95, gt=-1.0, le=1.0, description="embedding cosine that links two examples of one k-means cluster")


@register_operator
class SemanticDedup(ThresholdDedup):
    name = "semantic_dedup"
    description = "keep one example per semantic duplicate group (embedding cosine >= threshold within k-means clusters)"
    Params = SemanticDedupParams
    signal_name = "semantic_dedup"
    group_column = "semdup_group"
    threshold_grid = (0.85, 0.9, 0.95, 0.98)

    def signal(self, settings):
        return signal_for("semantic_dedup", threshold=self.params.threshold, **settings.embedding_params())


# --------------------------------------------------------------------------- truncate, source mix, union


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer quotas summing to ``total`` in proportion to ``weights`` (Hamilton's method;
    ties in the remainders go to the name that sorts first)."""
    names = sorted(weights)
    s = float(sum(weights[n] for n in names))
    if total <= 0 or s <= 0:
        return {n: 0 for n in names}
    exact = {n: total * weights[n] / s for n in names}
    quota = {n: math.floor(exact[n]) for n in names}
    left = total - sum(quota.values())
    for n in sorted(names, key=lambda m: (-(exact[m] - quota[m]), m))[:left]:
        quota[n] += 1
    return quota


def sample_positions(positions: np.ndarray, n: int, seed_text: str) -> np.ndarray:
    """``n`` of ``positions`` drawn uniformly without replacement (seeded by text), in pool order."""
    positions = [int(p) for p in positions]
    if n >= len(positions):
        return np.asarray(sorted(positions), dtype=np.int64)
    rng = random.Random(seed_text)
    return np.asarray(sorted(rng.sample(positions, n)), dtype=np.int64)


class TruncateParams(OperatorParams):
    fraction: float | None = Field(None, gt=0.0, le=1.0, description="cap = this fraction of the whole pool")
    total: int | None = Field(None, ge=1, description="cap = this many examples")
    stratify: bool = Field(True, description="quotas per source in proportion to the input (largest remainder)")
    seed: int = Field(0, description="seed of the random draw")

    @model_validator(mode="after")
    def _one_cap(self):
        if (self.fraction is None) == (self.total is None):
            raise ValueError("give exactly one of 'fraction' (of the pool) or 'total' (a count)")
        return self


@register_operator
class Truncate(Operator):
    name = "truncate"
    role = "cap"
    description = "random cap to a fraction of the pool or a count, stratified by source, seeded"
    Params = TruncateParams

    def cap(self, n_pool: int) -> int:
        if self.params.total is not None:
            return int(self.params.total)
        return max(1, math.floor(self.params.fraction * n_pool + 0.5))

    def apply(self, keep, ctx):
        keep = np.asarray(keep, dtype=np.int64)
        cap = self.cap(ctx.n)
        if len(keep) <= cap:
            return StepOutcome(keep, notes={"cap": cap})
        seed = self.params.seed
        if not self.params.stratify:
            return StepOutcome(sample_positions(keep, cap, f"truncate-{seed}"), notes={"cap": cap})
        src = ctx.sources[keep]
        counts = Counter(src.tolist())
        quotas = largest_remainder(cap, dict(counts))
        parts = [sample_positions(keep[src == s], q, f"truncate-{seed}-{s}") for s, q in quotas.items() if q > 0]
        kept = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return StepOutcome(kept, notes={"cap": cap, "per_source": {s: int(q) for s, q in quotas.items()}})

    @classmethod
    def random_params(cls, rng, ctx):
        return {"fraction": rng.choice(FRACTION_GRID[1:])}  # 0.1 .. 1.0

    def nudged(self, rng, direction):
        if self.params.fraction is None:
            return None
        f = self.params.fraction
        step = rng.choice((0.05, 0.1, 0.15, 0.2))
        new = _round_fraction(f + step if direction == "loosen" else f - step)
        return None if new == f else {**self.params.model_dump(mode="json"), "fraction": new}

    def retention_code(self, ctx):
        return float(min(1.0, self.cap(ctx.n) / max(1, ctx.n)))


class SourceMixParams(OperatorParams):
    weights: dict[str, float] = Field(..., description="source -> weight (normalised); sources not named are dropped")
    total: int | None = Field(None, ge=1, description="at most this many (default: as many as the weights allow without oversampling)")
    seed: int = Field(0, description="seed of the random draw within each source")

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, w: dict[str, float]) -> dict[str, float]:
        if not w:
            raise ValueError("weights must name at least one source")
        bad = {k: v for k, v in w.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if sum(w.values()) <= 0:
            raise ValueError("weights must not all be 0")
        return w


@register_operator
class SourceMix(Operator):
    name = "source_mix"
    role = "mix"
    description = "resample by source to the given proportions (largest total possible without oversampling), seeded"
    Params = SourceMixParams

    @classmethod
    def applicable(cls, ctx):
        return len(ctx.source_names()) >= 2

    def apply(self, keep, ctx):
        keep = np.asarray(keep, dtype=np.int64)
        src = ctx.sources[keep]
        counts = Counter(src.tolist())
        w = {s: float(v) for s, v in self.params.weights.items() if v > 0}
        dropped_sources = {s: int(c) for s, c in counts.items() if s not in w}
        # the largest total T with T * w_s / sum(w) <= available_s for every weighted source
        s_w = sum(w.values())
        feasible = min(counts.get(s, 0) * s_w / ws for s, ws in w.items())
        total = math.floor(feasible + 1e-9)
        if self.params.total is not None:
            total = min(total, self.params.total)
        quotas = largest_remainder(total, w)
        parts = [sample_positions(keep[src == s], q, f"source_mix-{self.params.seed}-{s}") for s, q in quotas.items() if q > 0]
        kept = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return StepOutcome(kept, notes={"per_source": {s: int(q) for s, q in quotas.items()},
                                        "dropped_unweighted_sources": dropped_sources})

    @classmethod
    def random_params(cls, rng, ctx):
        return {"weights": {s: rng.choice((0.5, 1.0, 2.0)) for s in ctx.source_names()}}
