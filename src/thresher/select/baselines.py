"""Baseline selectors: full, random, top-k on any signal, IFD (Cherry)."""
from __future__ import annotations

import random
from typing import Literal

import numpy as np
from pydantic import Field

from ..signals.base import make_signal, resolve
from ..signals.lm import LMSignal
from .base import Selector, SelectorParams, register_selector, top_by


@register_selector
class FullSelector(Selector):
    name = "full"
    description = "every example (the budget is ignored)"

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        return pool.ids, {"note": "budget ignored: full data"}


@register_selector
class RandomSelector(Selector):
    name = "random"
    description = "a uniform random subset of the budget's size (seeded)"

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        rng = random.Random(f"random-{seed}")
        idx = rng.sample(range(len(pool)), k)
        ids = pool.ids
        return [ids[i] for i in idx], {}


class ScorerParams(SelectorParams):
    scorer: str = Field("micro", description="model for model-based signals (micro, small, hub id, path)")
    scorer_warmup: int | None = Field(None, description="examples for the scorer's brief warm-up (default: 300 for micro, 0 otherwise)")
    scorer_warmup_steps: int = Field(250, description="steps of that warm-up")

    def lm_params(self) -> dict:
        return {"model": self.scorer, "warmup_examples": self.scorer_warmup, "warmup_steps": self.scorer_warmup_steps}


class TopKParams(ScorerParams):
    signal: str = Field(..., description="a signal column, e.g. loss, ifd, chars_answer")
    direction: Literal["high", "low"] = Field("high", description="keep the highest or the lowest values")
    signal_params: dict = Field(default_factory=dict, description="extra params of the signal (e.g. {'k': 20})")


def _signal_params(cls, p: TopKParams) -> dict:
    params = dict(p.signal_params)
    fields = cls.Params.model_fields
    if "model" in fields and "model" not in params:
        params["model"] = p.scorer
    if "warmup_examples" in fields and "warmup_examples" not in params:
        params["warmup_examples"] = p.scorer_warmup
        params.setdefault("warmup_steps", p.scorer_warmup_steps)
    return params


@register_selector
class TopKSelector(Selector):
    name = "topk"
    description = "top-k by any stored signal column, either direction"
    Params = TopKParams

    def required_signals(self):
        cls, _ = resolve(self.params.signal)
        return [make_signal(cls.name, **_signal_params(cls, self.params))]

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        cls, _ = resolve(self.params.signal)
        vals = signals.column(self.params.signal, **_signal_params(cls, self.params))
        ids, n_nan = top_by(vals, pool.ids, k, descending=self.params.direction == "high")
        return ids, {"excluded_nan": n_nan, "signal": self.params.signal, "direction": self.params.direction,
                     "shortfall": k - len(ids)}


class IFDParams(ScorerParams):
    variant: Literal["ifd", "ifd_ppl_ratio"] = Field("ifd", description="Cherry's loss ratio or the perplexity-ratio variant")
    threshold: float = Field(1.0, description="drop examples with IFD >= threshold (Cherry: 1)")


@register_selector
class IFDSelector(Selector):
    name = "ifd"
    description = "Cherry IFD: drop IFD >= 1 (the instruction does not help), keep the highest IFD"
    Params = IFDParams

    def required_signals(self):
        return [LMSignal(**self.params.lm_params())]

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        ifd = signals.column(self.params.variant, **self.params.lm_params()).astype(np.float64)
        nan = int(np.isnan(ifd).sum())
        over = ifd >= self.params.threshold
        n_over = int(over.sum())
        vals = np.where(over, np.nan, ifd)
        ids, _ = top_by(vals, pool.ids, k, descending=True)
        return ids, {"excluded_nan": nan, "dropped_ifd_ge_threshold": n_over, "shortfall": k - len(ids)}
