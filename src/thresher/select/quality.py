"""Quality sources shared by the selectors that need a per-example quality in [0, 1]
(THTB stage 1, AlpaGasus, DEITA, CaR, TMAP's quality indicator).

A quality source is named by a short spec, recorded with every selection:

- ``judge``: the LLM judge's 0-5 rating (``judge_quality``), divided by 5;
- ``reward:MODEL``: a sequence-classification reward model, ``clip((r + 5) / 10, 0, 1)``;
- ``COLUMN`` or ``COLUMN:low``: any stored signal column for offline use, rank-normalised
  to [0, 1] (``:low`` when lower is better, e.g. ``loss:low``).

NaN (a failed judge reply, a truncated answer) stays NaN; selectors exclude and count it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.signals.base import Signal, make_signal, resolve


@dataclass
class QualitySource:
    spec: str
    signal: Signal
    column: str
    direction: str  # "high" or "low"
    normalise: str  # "as_is" (already in [0, 1]) or "rank"

    def values(self, view) -> np.ndarray:
        raw = np.asarray(view.signal(self.signal)[self.column], dtype=np.float64)
        if self.normalise == "as_is":
            return raw if self.direction == "high" else 1.0 - raw
        return rank_normalise(raw if self.direction == "high" else -raw)


def rank_normalise(v: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (ties share a rank); NaN stays NaN; a constant column -> 0.5."""
    from scipy.stats import rankdata

    v = np.asarray(v, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = ~np.isnan(v)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        r = rankdata(v[ok], method="average")
        out[ok] = (r - 1) / (n - 1) if r.max() > r.min() else 0.5
    return out


def minmax(v: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant column -> 0; NaN stays NaN."""
    v = np.asarray(v, dtype=np.float64)
    lo, hi = np.nanmin(v), np.nanmax(v)
    if not np.isfinite(lo) or hi == lo:
        return np.where(np.isnan(v), np.nan, 0.0)
    return (v - lo) / (hi - lo)


def quality_source(spec: str, *, signal_params: dict | None = None, judge_params: dict | None = None) -> QualitySource:
    """Resolve a quality spec (see module docs) to the signal and column it reads."""
    spec = spec.strip()
    if spec == "judge":
        return QualitySource(spec, make_signal("judge_quality", **(judge_params or {})), "quality_norm", "high", "as_is")
    if spec.startswith("reward:"):
        model = spec.split(":", 1)[1]
        if not model:
            raise ValueError("quality 'reward:MODEL' needs a model id or path")
        return QualitySource(spec, make_signal("reward", model=model), "reward_norm", "high", "as_is")
    col, _, direction = spec.partition(":")
    direction = direction or "high"
    if direction not in ("high", "low"):
        raise ValueError(f"quality {spec!r}: the direction after ':' must be 'high' or 'low'")
    try:
        cls, column = resolve(col)
    except KeyError as e:
        raise ValueError(f"quality {spec!r}: {e.args[0]}") from None
    if column is None:
        if len(cls.columns) != 1:
            raise ValueError(f"quality {spec!r}: signal {cls.name!r} has several columns {cls.columns}; name one")
        column = cls.columns[0]
    accepted = set(cls.Params.model_fields)
    params = {k: v for k, v in (signal_params or {}).items() if k in accepted}
    return QualitySource(spec, cls(**params), column, direction, "rank")
