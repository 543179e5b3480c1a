"""Quality sources shared by the selectors that need a per-example quality in [0, 1]
(THTB stage 1, AlpaGasus, DEITA, CaR, TMAP's quality indicator).

A quality source is named by a short spec, recorded with every selection:

- ``judge``: the LLM judge's 0-5 rating (``judge_quality``), divided by 5;
- ``reward:MODEL``: a sequence-classification reward model, ``clip((r + 5) / 10, 0, 1)``;
- ``COLUMN``, ``COLUMN:high`` or ``COLUMN:low``: any stored scalar signal column,
  rank-normalised to [0, 1] (``:low`` when lower is better), e.g. ``loss:low``,
  ``loss_final:low``, ``loss_max:low`` (the ``lm`` signal), ``xfit_loss:low``
  (``crossfit_loss``: the loss under a scorer that never saw the example),
  ``dm_confidence:high`` or ``dm_variability:low`` (``datamap``). A signal with one
  column may be named instead of the column. The signal is made with the selector's
  scorer params it accepts (``model`` for every scorer signal). An unknown column is a
  ValueError naming the known ones; a non-numeric column (an id, JSON text) fails when
  read, naming the spec.

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
        col = view.signal(self.signal)[self.column]
        try:
            if np.asarray(col).dtype.kind in "USV":  # (numeric text would convert silently)
                raise TypeError
            raw = np.asarray(col, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"quality {self.spec!r}: column {self.column!r} of signal {self.signal.name!r} is not a "
                             f"numeric column; name a scalar column") from None
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
    return QualitySource(spec, cls(**scorer_params_for(cls, signal_params or {})), column, direction, "rank")


def scorer_params_for(cls, params: dict) -> dict:
    """The scorer params (``model``, ``warmup_*``) a signal class takes. A ``model="auto"`` goes only
    to a signal whose own default is ``auto`` (the ``lm`` scorer); any other (the ``text`` signal's
    tokenizer) keeps its default, so the signals it already stored stay the ones read."""
    fields = cls.Params.model_fields
    out = {k: v for k, v in params.items() if k in fields}
    if out.get("model") == "auto" and fields["model"].default != "auto":
        out.pop("model")
    return out
