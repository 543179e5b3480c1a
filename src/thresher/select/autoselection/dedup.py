"""AutoSelection's dedups: keep the first example (lowest pool position) still present in each
group of exact, MinHash or semantic duplicates."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from thresher.select.autoselection.operators import (
    Operator,
    OperatorParams,
    SignalSettings,
    StepOutcome,
    register_operator,
    signal_for,
)
from thresher.signals.base import Signal


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
