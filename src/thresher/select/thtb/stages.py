"""THTB's stage mechanics: how big each stage is for a budget, how a stage ranks and keeps, and
:class:`StageResult`, what one stage produced (read by the selector and the report)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def fractions_for_budget(fractions, target: float) -> tuple[float, ...]:
    """Scale stage keep-fractions by one common factor ``c`` (each capped at 1) so that
    their product is ``target`` (= k / n).

    The largest fractions are capped first: with m of them at 1, ``c`` solves
    ``c^(s) * prod(the other s fractions) = target``; the first m for which the result is
    consistent (no uncapped fraction above 1, every capped one at least 1) is the answer.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) == 0 or not ((f > 0) & (f <= 1)).all():
        raise ValueError(f"thtb: stage fractions must each be in (0, 1], got {list(fractions)}")
    if not 0 < target <= 1:
        raise ValueError(f"thtb: the target fraction k/n must be in (0, 1], got {target}")
    order = np.argsort(-f, kind="stable")
    n = len(f)
    eps = 1e-12
    for m in range(n):
        rest = f[order[m:]]
        c = (target / float(np.prod(rest))) ** (1.0 / len(rest))
        if rest.max() * c <= 1 + eps and (m == 0 or f[order[m - 1]] * c >= 1 - eps):
            return tuple(float(x) for x in np.minimum(1.0, f * c))
    return tuple(1.0 for _ in f)


def stage_sizes(n: int, k: int, fractions, rule: str = "scale") -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(stage sizes (n1, n2, n3), fractions used) for a pool of n and a budget of k.

    ``scale``: fractions rescaled by :func:`fractions_for_budget` to k/n; ``fixed``: as
    given. n1 = round(f1 n) and n2 = round(f2 n1), each clamped to [k, previous size];
    n3 = k.
    """
    if not 1 <= k <= n:
        raise ValueError(f"thtb: budget k={k} must be between 1 and the pool size {n}")
    if rule == "scale":
        used = fractions_for_budget(fractions, k / n)
    elif rule == "fixed":
        used = tuple(float(x) for x in fractions)
        fractions_for_budget(used, 1.0)  # validates the range
    else:
        raise ValueError(f"thtb: budget_rule must be 'scale' or 'fixed', got {rule!r}")
    n1 = min(n, max(k, round(used[0] * n)))
    n2 = min(n1, max(k, round(used[1] * n1)))
    return (n1, n2, k), used  # type: ignore[return-value]


def rank_stage(scores, prior_rank, keep: int, on_missing: str = "rank_last") -> tuple[np.ndarray, np.ndarray, int]:
    """Rank a stage's input: (ranked positions, kept positions, number of missing scores).

    Higher score first; ties by ``prior_rank`` (lower first). NaN scores come after every
    scored one, in prior order (``rank_last``), or are left out (``exclude``).
    """
    s = np.asarray(scores, dtype=np.float64)
    prior = np.asarray(prior_rank)
    if s.shape != prior.shape:
        raise ValueError(f"rank_stage: {len(s)} scores but {len(prior)} prior ranks")
    if on_missing not in ("rank_last", "exclude"):
        raise ValueError(f"rank_stage: on_missing must be 'rank_last' or 'exclude', got {on_missing!r}")
    ok = ~np.isnan(s)
    scored = np.nonzero(ok)[0]
    scored = scored[np.lexsort((prior[scored], -s[scored]))]
    missing = np.nonzero(~ok)[0]
    missing = missing[np.argsort(prior[missing], kind="stable")]
    ranked = np.concatenate([scored, missing]) if on_missing == "rank_last" else scored
    return ranked, ranked[:keep], int((~ok).sum())


@dataclass
class StageResult:
    name: str
    title: str
    positions: np.ndarray  # pool positions of the stage input, in the previous stage's rank order
    scores: np.ndarray  # the stage score per input example (NaN = missing)
    components: dict[str, np.ndarray]  # score parts per input example
    ranked: np.ndarray  # indices into positions, ranked
    kept: np.ndarray  # indices into positions, kept (a prefix of ranked)
    missing: int
    notes: dict[str, Any] = field(default_factory=dict)

    def kept_positions(self) -> np.ndarray:
        return self.positions[self.kept]
