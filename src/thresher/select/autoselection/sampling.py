"""AutoSelection's sampling operators: ``truncate`` (a seeded random cap, stratified by source)
and ``source_mix`` (resample by source to given proportions, without oversampling)."""
from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
from pydantic import Field, field_validator, model_validator

from thresher.select.autoselection.operators import (
    FRACTION_GRID,
    Operator,
    OperatorParams,
    StepOutcome,
    register_operator,
    round_fraction,
)


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
        new = round_fraction(f + step if direction == "loosen" else f - step)
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
