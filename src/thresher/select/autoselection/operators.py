"""AutoSelection's operator library: registered, parameter-validated steps that only keep or drop.

An operator takes the positions still in the subset (sorted pool positions) and returns the
positions it keeps, a subset of its input. It reads cached signals through the
:class:`RecipeContext` (a :class:`~thresher.select.base.SignalView`, which never computes),
so executing a recipe costs a few array operations and no model call. Operators never
generate, rewrite or duplicate examples.

This module holds what every operator shares (settings, context, the base class, the registry);
the operators live by kind in :mod:`~thresher.select.autoselection.filters`,
:mod:`~thresher.select.autoselection.dedup`, :mod:`~thresher.select.autoselection.sampling` and
(``union``) :mod:`~thresher.select.autoselection.recipe`.

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
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from thresher.data.pool import Pool
from thresher.errors import ConfigError
from thresher.params import validate_params
from thresher.registry import Registry
from thresher.signals.base import Signal, make_signal
from thresher.signals.embed import DEFAULT_ENCODER, EmbedText

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


def round_fraction(x: float) -> float:
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
OPERATORS: Registry[type[Operator]] = Registry("operator", (
    "thresher.select.autoselection.filters", "thresher.select.autoselection.dedup", "thresher.select.autoselection.sampling",
    "thresher.select.autoselection.recipe"))
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
