"""THTB, "The Harder The Better" (Shang et al. 2025, arXiv 2510.13892): a three-stage filter.

Each stage ranks what the previous stage kept and keeps a fraction of it; the defaults
(20% x 50% x 50%) keep 5% of the pool, as in the paper.

1. **Quality.** Any quality source of :mod:`thresher.select.quality`: ``judge`` (LLM judge
   0-5, /5), ``reward:MODEL`` (a sequence-classification reward model, ``clip((r+5)/10,
   0, 1)``), or a stored signal column for offline use (``loss:low`` by default: the
   answer's mean cross-entropy under the scorer, lower is better, rank-normalised). An
   example without a quality value (failed judge reply, answer cut by the scorer) has not
   passed the filter: it is excluded and counted.
2. **Intrinsic hardness** ``IHS = (Bloom + IC) / 2``.
   - Bloom from the judge (``judge_bloom``) or, offline, the verb-list heuristic
     (``bloom_heuristic``, a heuristic and named so). Reference code:
     ``(score - 1) / 20`` on the judge's 1..21 score (the heuristic has only levels:
     ``(level - 1) / 5``); paper: the level 1..6 min-max normalised within the stage.
   - IC (interdisciplinary complexity) from the judge's discipline list
     (``judge_disciplines``): ``minmax(#disciplines) + mean pairwise cosine distance`` of
     the disciplines' description embeddings (0 with fewer than 2), read from the stored
     ``discipline_embeddings`` signal (the selector never runs the encoder). Paper form: the
     example's own descriptions, a constant count column min-maxes to 0. Reference form:
     subject names canonicalised (lower case, spaces -> ``_``), one description per
     subject (its first in the stage's input order), a constant count min-maxes to
     0.5 and ``IC`` is rounded to 2 decimals when there are 2+ subjects.
   - Without a judge (``ic="none"``) IC is **unavailable**: IHS is the Bloom term alone
     and the diagnostics say so. Nothing stands in for it.
3. **Extrinsic hardness** ``EHS = (IREI + SC_norm) / 2`` over the stage's input.
   - IREI on character lengths of the user (``L_inst``) and assistant (``L_resp``) turns.
     Reference code: ``(minmax(L_inst + L_resp) + minmax(L_resp / L_inst)) / 2``
     (a constant column -> 0.5); paper: ``minmax(L_inst + L_resp) + L_resp / L_inst``.
     The ratio is 0 for an empty instruction.
   - ``SC_norm = (s + 1) / 2``, ``s`` the cosine silhouette of the query in a k-means
     clustering of TF-IDF query vectors (lower case, no punctuation or digits, 100
     features; :func:`thresher.signals.geometry.tfidf_silhouette`). As in the reference
     code the clustering is of the stage's own queries (``sc_scope="stage"``, in pool
     order, ``k = round(sqrt(m / 2))`` for m queries; ``sc_k_basis="pool"`` takes n = the
     pool size instead, which is what the reference README's 161 clusters for Alpaca-52k
     correspond to); ``sc_scope="pool"`` reads the stored pool-wide ``tfidf_silhouette``.

**Normalisation within the stage** (as in the reference): every min-max above is over the
stage's input, not the pool.

**Budget rule** (decision). ``budget_rule="scale"`` (default): the three fractions are
multiplied by one common factor ``c`` (capped at 1 each) chosen so that their product
is ``k / n``; for the default 5% budget ``c = 1``. Scaling all three by the same factor
keeps the stages' relative strictness (their ratios) wherever no cap binds; e.g. 10% ->
25.2% x 63% x 63%, 30% -> 36.3% x 90.9% x 90.9%, 50% -> 50% x 100% x 100%. Stage sizes
are ``n1 = round(f1 n)``, ``n2 = round(f2 n1)`` (each at least k) and the last stage
keeps exactly k. ``budget_rule="fixed"``: stages 1 and 2 use the fractions as given and
stage 3 keeps k (a shortfall if fewer are left).

**Ties** (decision) are broken by the previous stage's order (stage 1: pool order), so
an example that ties on hardness keeps its better quality rank. Examples whose hardness
cannot be computed (a failed judge reply) are ranked after all scored ones in that
order (``on_missing="rank_last"``) or dropped (``"exclude"``); both are counted.

**Determinism.** THTB has no random choice of its own: the selection's ``seed`` is not
used (the only random step, the silhouette's k-means, takes ``sc_seed``, fixed like the
reference code's ``random_state``), so every seed gives the same subset.

**Report.** With an artifacts folder the selector writes one histogram per stage
(``thtb_stage{1,2,3}_*.png``: the stage input's scores, kept vs dropped, the cut-off),
``thtb_report.md`` / ``thtb_report.json`` (kept counts, score quantiles, top and bottom
examples of every stage with their score components) and ``thtb_stage_ids.json`` (the
ids each stage kept, in rank order).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from thresher.data.io import atomic_write, atomic_write_text
from thresher.data.pool import assistant_text, user_text
from thresher.select.base import Selector, register_selector
from thresher.select.baselines import ScorerParams
from thresher.select.quality import quality_source
from thresher.signals.base import Signal, make_signal
from thresher.signals.embed import discipline_lists, discipline_vectors
from thresher.signals.geometry import tfidf_silhouette
from thresher.signals.heuristics import BLOOM_LEVEL_NAMES
from thresher.signals.judge import DisciplinesParams
from thresher.signals.text import irei_lengths

DEFAULT_FRACTIONS = (0.2, 0.5, 0.5)
STAGE_NAMES = ("quality", "ihs", "ehs")


# =========================================================================== stage math (pure functions)


def minmax_with(values, constant: float = 0.0) -> np.ndarray:
    """Min-max to [0, 1] over the non-NaN values; a constant column maps to ``constant``
    (THTB's reference code uses 0.5, the paper's formula leaves it undefined: 0 here);
    NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    out = np.full(v.shape, np.nan)
    if not ok.any():
        return out
    lo, hi = float(v[ok].min()), float(v[ok].max())
    out[ok] = constant if hi == lo else (v[ok] - lo) / (hi - lo)
    return out


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


def bloom_reference(scores) -> np.ndarray:
    """Reference-code Bloom term from the judge's 1..21 score: ``(score - 1) / 20``."""
    return (np.asarray(scores, dtype=np.float64) - 1.0) / 20.0


def bloom_paper(levels) -> np.ndarray:
    """Paper Bloom term: the level 1..6 min-max normalised over the given set (constant -> 0)."""
    return minmax_with(levels, 0.0)


def mean_pairwise_cosine_distance(vectors) -> float:
    """Mean of ``1 - cos(v_i, v_j)`` over the pairs i < j; 0 with fewer than 2 vectors."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or len(v) < 2:
        return 0.0
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / np.where(norms > 0, norms, 1.0)
    sims = u @ u.T
    iu = np.triu_indices(len(v), 1)
    return float(np.mean(1.0 - sims[iu]))


def ic_scores(counts, mean_distances, formula: str = "reference") -> np.ndarray:
    """IC = minmax(#disciplines) + mean pairwise description distance, over the given set.

    ``reference``: a constant count column min-maxes to 0.5, and the sum is rounded to 2
    decimals when there are 2+ disciplines (the reference code's ``round(..., 2)``); with
    fewer the IC is the normalised count. ``paper``: a constant count column -> 0, no
    rounding. NaN counts (failed judge replies) stay NaN.
    """
    c = np.asarray(counts, dtype=np.float64)
    d = np.asarray(mean_distances, dtype=np.float64)
    if c.shape != d.shape:
        raise ValueError(f"ic_scores: counts {c.shape} and distances {d.shape} differ in shape")
    if formula == "reference":
        cn = minmax_with(c, 0.5)
        out = cn.copy()
        for i in np.nonzero(c > 1)[0]:
            out[i] = round(float(cn[i] + d[i]), 2)
        return out
    if formula == "paper":
        return minmax_with(c, 0.0) + np.where(c > 1, d, 0.0)
    raise ValueError(f"ic_scores: formula must be 'reference' or 'paper', got {formula!r}")


def ihs_scores(bloom, ic=None) -> np.ndarray:
    """``IHS = (Bloom + IC) / 2``; with IC unavailable (None) the Bloom term alone."""
    b = np.asarray(bloom, dtype=np.float64)
    if ic is None:
        return b.copy()
    return (b + np.asarray(ic, dtype=np.float64)) / 2.0


def _length_ratio(li: np.ndarray, lr: np.ndarray) -> np.ndarray:
    return np.divide(lr, li, out=np.zeros_like(lr), where=li > 0)


def irei_reference(len_inst, len_resp) -> np.ndarray:
    """Reference-code IREI: ``(minmax(L_inst + L_resp) + minmax(L_resp / L_inst)) / 2``,
    a constant column -> 0.5, the ratio 0 for an empty instruction."""
    li, lr = irei_lengths(len_inst, len_resp)
    return (minmax_with(li + lr, 0.5) + minmax_with(_length_ratio(li, lr), 0.5)) / 2.0


def irei_paper(len_inst, len_resp) -> np.ndarray:
    """Paper IREI: ``minmax(L_inst + L_resp) + L_resp / L_inst`` (the ratio is not
    normalised; constant length sums -> 0; the ratio 0 for an empty instruction)."""
    li, lr = irei_lengths(len_inst, len_resp)
    return minmax_with(li + lr, 0.0) + _length_ratio(li, lr)


def sc_norm(silhouette) -> np.ndarray:
    """``(s + 1) / 2``: the silhouette mapped from [-1, 1] to [0, 1]."""
    return (np.asarray(silhouette, dtype=np.float64) + 1.0) / 2.0


def ehs_scores(irei, sc_normalised) -> np.ndarray:
    """``EHS = (IREI + SC_norm) / 2``."""
    return (np.asarray(irei, dtype=np.float64) + np.asarray(sc_normalised, dtype=np.float64)) / 2.0


def silhouette_k(m: int, k: int | None = None, basis_n: int | None = None) -> int:
    """Clusters for m queries: ``k`` if given, else round(sqrt(basis_n / 2)) with basis_n
    = m by default; clamped to [2, m - 1]."""
    if m < 3:
        raise ValueError(f"the silhouette needs at least 3 queries, the stage has {m}")
    if k is None:
        k = max(1, round(math.sqrt((basis_n or m) / 2)))
    return int(min(max(2, k), m - 1))


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


# =========================================================================== IC: discipline embeddings


def canonical_subject(name: str) -> str:
    """The reference code's subject key: lower case, spaces -> underscores."""
    return name.strip().lower().replace(" ", "_")


def interdisciplinary_complexity(lists: list[list[dict[str, str]] | None], vectors: list[np.ndarray | None],
                                 formula: str = "reference") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(IC, discipline counts, mean pairwise distances, info) for a stage's examples.

    ``lists[i]`` is example i's discipline list, or None when its judge reply failed
    (IC NaN); ``vectors[i]`` the unit vectors of its descriptions, one row per item of
    ``lists[i]`` (the stored ``discipline_embeddings`` signal). ``paper``: the example's
    own descriptions. ``reference``: names are canonicalised (:func:`canonical_subject`,
    duplicates merged) and every subject stands for the first description it has in
    ``lists`` order.
    """
    if formula not in ("reference", "paper"):
        raise ValueError(f"ic: formula must be 'reference' or 'paper', got {formula!r}")
    if len(vectors) != len(lists):
        raise ValueError(f"ic: {len(vectors)} vector lists for {len(lists)} examples")
    n = len(lists)
    counts = np.full(n, np.nan)
    dists = np.full(n, np.nan)
    for i, items in enumerate(lists):
        if items is not None and (vectors[i] is None or len(vectors[i]) != len(items)):
            got = 0 if vectors[i] is None else len(vectors[i])
            raise ValueError(f"ic: example {i} lists {len(items)} disciplines but has {got} description vectors")
    if formula == "reference":
        first_desc: dict[str, str] = {}
        first_vec: dict[str, np.ndarray] = {}
        subjects: list[list[str] | None] = []
        for items, vecs in zip(lists, vectors):
            if items is None:
                subjects.append(None)
                continue
            names: list[str] = []
            for it, v in zip(items, vecs):
                key = canonical_subject(it["name"])
                if key not in names:
                    names.append(key)
                if key not in first_desc:
                    first_desc[key], first_vec[key] = it["description"], v
            subjects.append(names)
        for i, names in enumerate(subjects):
            if names is None:
                continue
            counts[i] = len(names)
            dists[i] = mean_pairwise_cosine_distance(np.stack([first_vec[s] for s in names])) if len(names) > 1 else 0.0
        info = {"descriptions_embedded": len(first_desc), "subjects": len(first_desc)}
    else:
        texts = set()
        for i, items in enumerate(lists):
            if items is None:
                continue
            m = len(items)
            counts[i] = m
            dists[i] = mean_pairwise_cosine_distance(vectors[i]) if m > 1 else 0.0
            texts.update(it["description"] for it in items)
        info = {"descriptions_embedded": len(texts)}
    return ic_scores(counts, dists, formula), counts, dists, info


# =========================================================================== the selector


class THTBParams(ScorerParams):
    fractions: tuple[float, float, float] = Field(DEFAULT_FRACTIONS, description="keep fractions of the quality, IHS and EHS stages (paper: 0.2, 0.5, 0.5 = 5%)")
    budget_rule: Literal["scale", "fixed"] = Field("scale", description="scale: one common factor on the fractions so their product is k/n; fixed: stages 1-2 as given, stage 3 keeps k")
    quality: str = Field("loss:low", description="stage-1 quality: judge, reward:MODEL or a signal column[:low] (see thresher.select.quality)")
    bloom: Literal["heuristic", "judge"] = Field("heuristic", description="Bloom level source: the offline verb-list heuristic or the LLM judge (judge_bloom)")
    ic: Literal["none", "judge"] = Field("none", description="interdisciplinary complexity: judge (judge_disciplines + sentence encoder) or none (unavailable: IHS = Bloom alone)")
    formula: Literal["reference", "paper"] = Field("reference", description="reference code's formulas or the paper's (Bloom, IC, IREI normalisation)")
    bloom_text: Literal["instruction", "user"] = Field("instruction", description="what the Bloom heuristic reads")
    judge_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint for the judge signals")
    judge_model: str = Field("small", description="model name sent to the judge endpoint")
    judge_params: dict = Field(default_factory=dict, description="other judge signal params (max_tokens, concurrency, cache_dir, ...)")
    embed_model: str = Field("minilm", description="sentence encoder of the stored discipline_embeddings signal (IC)")
    sc_scope: Literal["stage", "pool"] = Field("stage", description="silhouette over the stage's own queries (reference) or the stored pool-wide tfidf_silhouette")
    sc_k: int | None = Field(None, ge=2, description="k-means clusters for the silhouette (default round(sqrt(n/2)))")
    sc_k_basis: Literal["stage", "pool"] = Field("stage", description="n in the default k: the stage's query count or the pool size")
    sc_seed: int = Field(0, description="k-means seed of the silhouette clustering")
    sc_max_features: int = Field(100, ge=1, description="TF-IDF vocabulary size")
    on_missing: Literal["rank_last", "exclude"] = Field("rank_last", description="stages 2-3: an example whose hardness is missing (failed judge reply) is ranked last or dropped")
    report_examples: int = Field(3, ge=0, le=50, description="top and bottom examples per stage in the report")

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v):
        for i, f in enumerate(v):
            if not 0 < f <= 1:
                raise ValueError(f"fractions[{i}]={f} must be in (0, 1]")
        return v

    @field_validator("judge_params")
    @classmethod
    def _known_judge_params(cls, v):

        allowed = set(DisciplinesParams.model_fields) - {"url", "model"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"judge_params: unknown keys {bad}; known: {sorted(allowed)} (url and model are judge_url / judge_model)")
        return v


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


def _f(x) -> float | None:
    """A JSON-safe float (NaN / inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def quantiles(v) -> dict[str, float | None]:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    out: dict[str, Any] = {"n": len(v), "mean": _f(v.mean())}
    out.update({k: _f(x) for k, x in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), q)})
    return out


@register_selector
class THTBSelector(Selector):
    name = "thtb"
    description = ("THTB (The Harder The Better): quality filter, then intrinsic hardness (Bloom level + "
                   "interdisciplinary complexity), then extrinsic hardness (IREI + TF-IDF silhouette); 20% x 50% x 50%")
    Params = THTBParams

    # --- the signals it reads
    def _judge_kw(self) -> dict:
        return {"url": self.params.judge_url, "model": self.params.judge_model, **self.params.judge_params}

    def quality_source(self):

        return quality_source(self.params.quality, signal_params=self.params.lm_params(), judge_params=self._judge_kw())

    def bloom_signal(self) -> Signal:
        if self.params.bloom == "judge":
            return make_signal("judge_bloom", **self._judge_kw())
        return make_signal("bloom_heuristic", text=self.params.bloom_text)

    def disciplines_signal(self) -> Signal:
        return make_signal("judge_disciplines", **self._judge_kw())

    def discipline_embeddings_signal(self) -> Signal:
        """The stored description vectors (of the same judge's disciplines) that IC compares."""
        return make_signal("discipline_embeddings", embed_model=self.params.embed_model, **self._judge_kw())

    def discipline_inputs(self, pool, signals, positions) -> tuple[list, list, np.ndarray]:
        """(discipline lists, description vectors, judge-failed flags) of the examples at pool ``positions``."""
        cols = signals.signal(self.disciplines_signal())
        failed = np.asarray(cols["disciplines_judge_failed"], dtype=bool)[positions]
        ids = pool.ids
        lists = discipline_lists({"disciplines_judge_failed": failed,
                                  "disciplines_json": np.asarray(cols["disciplines_json"], dtype=object)[positions]},
                                 [ids[int(p)] for p in positions])
        stored = np.asarray(signals.signal(self.discipline_embeddings_signal())["discipline_vectors"], dtype=object)
        return lists, discipline_vectors(stored[positions]), failed

    def irei_signal(self) -> Signal:
        return make_signal("irei")

    def pool_silhouette_signal(self) -> Signal:
        return make_signal("tfidf_silhouette", k=self.params.sc_k, seed=self.params.sc_seed, max_features=self.params.sc_max_features)

    def required_signals(self) -> list[Signal]:
        sigs = [self.quality_source().signal, self.bloom_signal(), self.irei_signal()]
        if self.params.ic == "judge":
            sigs += [self.disciplines_signal(), self.discipline_embeddings_signal()]
        if self.params.sc_scope == "pool":
            sigs.append(self.pool_silhouette_signal())
        return sigs

    # --- stages
    def _stage_quality(self, pool, signals, n1: int) -> StageResult:
        src = self.quality_source()
        q = src.values(signals)
        n = len(pool)
        positions = np.arange(n)
        ranked, kept, missing = rank_stage(q, positions, n1, on_missing="exclude")
        return StageResult("quality", f"Stage 1: quality ({src.spec})", positions, q, {"quality": q}, ranked, kept, missing,
                           {"source": src.spec, "signal": src.signal.name, "column": src.column, "direction": src.direction,
                            "normalise": src.normalise, "excluded_no_quality": missing})

    def bloom_values(self, signals, positions) -> tuple[np.ndarray, np.ndarray, dict]:
        """(Bloom term, level, notes) for the examples at pool ``positions`` (min-max over them for the paper form)."""
        cols = signals.signal(self.bloom_signal())
        notes: dict[str, Any] = {"bloom_source": self.params.bloom}
        if self.params.bloom == "judge":
            levels = np.asarray(cols["bloom_level_judge"], dtype=np.float64)[positions]
            failed = np.asarray(cols["bloom_judge_failed"], dtype=bool)[positions]
            notes["bloom_judge_failed"] = int(failed.sum())
            if self.params.formula == "reference":
                term = np.asarray(cols["bloom_norm_ref"], dtype=np.float64)[positions]
                notes["bloom_formula"] = "(judge score - 1) / 20"
            else:
                term = bloom_paper(levels)
                notes["bloom_formula"] = "minmax(judge level) within the stage"
        else:
            levels = np.asarray(cols["bloom_level"], dtype=np.float64)[positions]
            if self.params.formula == "reference":
                term = (levels - 1.0) / 5.0
                notes["bloom_formula"] = "(heuristic level - 1) / 5 (the heuristic has no 1..21 score)"
            else:
                term = bloom_paper(levels)
                notes["bloom_formula"] = "minmax(heuristic level) within the stage"
        notes["bloom_level_counts"] = {BLOOM_LEVEL_NAMES[int(lv) - 1]: int((levels == lv).sum()) for lv in range(1, 7)}
        return term, levels, notes

    def _ic_values(self, pool, signals, positions) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict]:
        if self.params.ic == "none":
            return None, {}, {"ic_available": False,
                              "ic_reason": "no judge configured (ic='none'): IC is unavailable, IHS = Bloom term alone"}
        lists, vectors, failed = self.discipline_inputs(pool, signals, positions)
        ic, counts, dists, info = interdisciplinary_complexity(lists, vectors, self.params.formula)
        notes = {"ic_available": True, "ic_judge_failed": int(failed.sum()), "ic_formula": self.params.formula, **info}
        return ic, {"n_disciplines": counts, "discipline_distance": dists, "ic": ic}, notes

    def _stage_ihs(self, pool, signals, prev: StageResult, n2: int) -> StageResult:
        positions = prev.kept_positions()
        bloom, levels, notes = self.bloom_values(signals, positions)
        ic, ic_parts, ic_notes = self._ic_values(pool, signals, positions)
        notes.update(ic_notes)
        score = ihs_scores(bloom, ic)
        notes["ihs_formula"] = "(Bloom + IC) / 2" if ic is not None else "Bloom term alone (IC unavailable)"
        ranked, kept, missing = rank_stage(score, np.arange(len(positions)), n2, self.params.on_missing)
        notes["missing_ihs"] = missing
        comps = {"bloom_level": levels, "bloom": bloom, **ic_parts}
        return StageResult("ihs", "Stage 2: intrinsic hardness (IHS)", positions, score, comps, ranked, kept, missing, notes)

    def _stage_ehs(self, pool, signals, prev: StageResult, k: int) -> StageResult:

        positions = prev.kept_positions()
        m = len(positions)
        cols = signals.signal(self.irei_signal())
        li = np.asarray(cols["irei_len_inst"], dtype=np.float64)[positions]
        lr = np.asarray(cols["irei_len_resp"], dtype=np.float64)[positions]
        irei = irei_reference(li, lr) if self.params.formula == "reference" else irei_paper(li, lr)
        notes: dict[str, Any] = {"irei_formula": self.params.formula, "sc_scope": self.params.sc_scope}
        if self.params.sc_scope == "pool":
            s = np.asarray(signals.signal(self.pool_silhouette_signal())["silhouette"], dtype=np.float64)[positions]
            notes["sc_k"] = self.params.sc_k or "round(sqrt(pool/2)) (stored signal)"
        elif m < 3:
            s = np.zeros(m)
            notes["sc_degenerate"] = f"{m} queries: the silhouette needs 3; s = 0 for all"
        else:
            basis = len(pool) if self.params.sc_k_basis == "pool" else m
            kk = silhouette_k(m, self.params.sc_k, basis)
            in_pool_order = np.argsort(positions, kind="stable")  # the clustering does not depend on earlier ranks
            texts = [user_text(pool[int(positions[i])]) for i in in_pool_order]
            s_sorted = tfidf_silhouette(texts, k=kk, seed=self.params.sc_seed, max_features=self.params.sc_max_features)
            s = np.empty(m)
            s[in_pool_order] = s_sorted
            notes["sc_k"] = kk
        scn = sc_norm(s)
        score = ehs_scores(irei, scn)
        ranked, kept, missing = rank_stage(score, np.arange(m), k, self.params.on_missing)
        comps = {"len_inst": li, "len_resp": lr, "irei": irei, "silhouette": s, "sc_norm": scn}
        return StageResult("ehs", "Stage 3: extrinsic hardness (EHS)", positions, score, comps, ranked, kept, missing, notes)

    # --- run
    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        n = len(pool)
        (n1, n2, n3), used = stage_sizes(n, k, self.params.fractions, self.params.budget_rule)
        s1 = self._stage_quality(pool, signals, n1)
        s2 = self._stage_ihs(pool, signals, s1, n2)
        s3 = self._stage_ehs(pool, signals, s2, n3)
        stages = [s1, s2, s3]
        ids = pool.ids
        chosen = [ids[int(p)] for p in s3.kept_positions()]
        summaries = [self._summary(pool, st, targets) for st, targets in zip(stages, (n1, n2, n3))]
        diag: dict[str, Any] = {
            "quality": self.params.quality,
            "bloom_source": "judge_bloom" if self.params.bloom == "judge" else "bloom_heuristic (HEURISTIC)",
            "ic_available": self.params.ic == "judge",
            "formula": self.params.formula,
            "budget_rule": self.params.budget_rule,
            "fractions_requested": list(self.params.fractions),
            "fractions_used": [round(f, 6) for f in used],
            "stage_targets": [n1, n2, n3],
            "stage_kept": [len(s1.kept), len(s2.kept), len(s3.kept)],
            "shortfall": k - len(chosen),
            "stages": summaries,
        }
        if self.artifacts_dir is not None:
            diag["artifacts"] = self._write_report(pool, stages, summaries, diag)
        return chosen, diag

    # --- report
    def _example(self, pool, st: StageResult, idx: int, rank: int | None) -> dict:

        rec = pool[int(st.positions[idx])]
        out = {"id": rec["id"], "rank": rank, "score": _f(st.scores[idx]),
               "components": {c: _f(v[idx]) for c, v in st.components.items()},
               "instruction": _snippet(user_text(rec), 200), "response": _snippet(assistant_text(rec), 160)}
        return out

    def _summary(self, pool, st: StageResult, target: int) -> dict:
        r = self.params.report_examples
        rank_of = {int(i): j + 1 for j, i in enumerate(st.ranked)}
        scored = [int(i) for i in st.ranked if not np.isnan(st.scores[i])]
        kept_scores = st.scores[st.kept]
        finite_kept = kept_scores[~np.isnan(kept_scores)]
        return {
            "stage": st.name, "title": st.title, "n_in": len(st.positions), "target": int(target),
            "n_kept": len(st.kept), "keep_fraction": _f(len(st.kept) / max(1, len(st.positions))),
            "missing_scores": st.missing,
            "cutoff": _f(finite_kept.min()) if len(finite_kept) else None,
            "scores_in": quantiles(st.scores), "scores_kept": quantiles(kept_scores),
            "components_in": {c: quantiles(v) for c, v in st.components.items()},
            "top": [self._example(pool, st, i, rank_of[i]) for i in scored[:r]],
            "bottom": [self._example(pool, st, i, rank_of[i]) for i in scored[::-1][:r]],
            **st.notes,
        }

    def _write_report(self, pool, stages: list[StageResult], summaries: list[dict], diag: dict) -> list[str]:
        out = self.artifacts_dir
        files = []
        for i, st in enumerate(stages, 1):
            name = f"thtb_stage{i}_{st.name}.png"
            plot_stage_histogram(st, out / name)
            files.append(name)
        ids = pool.ids
        stage_ids = {st.name: [ids[int(st.positions[j])] for j in st.kept] for st in stages}
        atomic_write_text(out / "thtb_stage_ids.json", json.dumps(stage_ids))
        report = {k: v for k, v in diag.items() if k != "artifacts"}
        report["params"] = self.params.model_dump(mode="json")
        atomic_write_text(out / "thtb_report.json", json.dumps(report, indent=1))
        atomic_write_text(out / "thtb_report.md", render_report(report, files))
        return files + ["thtb_report.md", "thtb_report.json", "thtb_stage_ids.json"]


def _snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def plot_stage_histogram(st: StageResult, path) -> dict:
    """Histogram of a stage's input scores, kept and dropped stacked, with the cut-off.

    Few distinct scores (<= 12, e.g. Bloom levels) get one bar per value; a constant score one
    labelled bar and a note (the stage then keeps the previous stage's order). Returns what was
    plotted: ``kind`` (continuous / discrete / constant / empty), ``values`` (bar values or bin
    edges), ``kept`` / ``dropped`` counts per bar and the ``note``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the THTB stage report needs matplotlib (pip install 'thresher[report]' or pip install matplotlib)") from e
    kept_mask = np.zeros(len(st.positions), dtype=bool)
    kept_mask[st.kept] = True
    ok = ~np.isnan(st.scores)
    kept_v, dropped_v = st.scores[kept_mask & ok], st.scores[~kept_mask & ok]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    allv = st.scores[ok]
    uniq = np.unique(allv)
    info: dict[str, Any] = {"kind": "empty", "values": [], "kept": [], "dropped": [], "note": "no scored examples"}
    labels = [f"dropped ({len(dropped_v)})", f"kept ({len(kept_v)})"]
    colors = ["#c0c0c0", "#2a7ab0"]
    cut = float(kept_v.min()) if len(kept_v) else None
    if len(uniq) > 12:
        bins = np.linspace(float(uniq[0]), float(uniq[-1]), 31)
        ax.hist([dropped_v, kept_v], bins=bins, stacked=True, color=colors, label=labels)
        info.update(kind="continuous", values=bins.tolist(), note="",
                    kept=np.histogram(kept_v, bins)[0].tolist(), dropped=np.histogram(dropped_v, bins)[0].tolist())
        if cut is not None:
            ax.axvline(cut, color="#b03a2a", linestyle="--", linewidth=1, label=f"cut-off {cut:.3g}")
        ax.set_xlabel("score")
    elif len(uniq):  # one bar per distinct value, evenly spaced
        idx = np.arange(len(uniq))
        kc = np.array([(kept_v == u).sum() for u in uniq])
        dc = np.array([(dropped_v == u).sum() for u in uniq])
        ax.bar(idx, dc, width=0.7, color=colors[0], label=labels[0])
        ax.bar(idx, kc, width=0.7, bottom=dc, color=colors[1], label=labels[1])
        for i, (a, b) in enumerate(zip(dc, kc)):
            ax.annotate(str(int(a + b)), (i, a + b), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(idx, [f"{u:.3g}" for u in uniq])
        ax.set_xlim(*((-0.8, len(uniq) - 0.2) if len(uniq) > 1 else (-1.5, 1.5)))
        ax.set_ylim(0, max(dc + kc) * (1.35 if len(uniq) == 1 else 1.15))
        note = ""
        if len(uniq) == 1:
            note = f"all {len(allv)} scores equal {uniq[0]:.4g}: no score ranking, the previous stage's order decides"
            ax.text(0.5, 0.93, note, ha="center", va="top", transform=ax.transAxes, fontsize=8, wrap=True)
        elif cut is not None:
            ax.axvline(int(np.searchsorted(uniq, cut)), color="#b03a2a", linestyle="--", linewidth=1, label=f"cut-off {cut:.3g}")
        info.update(kind="constant" if len(uniq) == 1 else "discrete", values=uniq.tolist(), kept=kc.tolist(),
                    dropped=dc.tolist(), note=note)
        ax.set_xlabel("score (one bar per distinct value)")
    else:
        ax.text(0.5, 0.5, "no scored examples", ha="center", va="center", transform=ax.transAxes)
    missing = int((~ok).sum())
    ax.set_title(f"{st.title}: kept {len(st.kept)} of {len(st.positions)}" + (f" ({missing} without a score)" if missing else ""),
                 fontsize=9)
    ax.set_ylabel("examples")
    if len(allv):
        ax.legend(fontsize=8, loc="upper left" if info["kind"] != "constant" else "lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return info


def render_report(report: dict, pngs: list[str]) -> str:
    """The stage report as Markdown: settings, one section per stage (counts, quantiles,
    histogram, top and bottom examples with their score components)."""
    lines = ["# THTB selection report", ""]
    lines.append(f"- quality source: `{report['quality']}`; Bloom: {report['bloom_source']}; "
                 f"IC: {'judge disciplines' if report['ic_available'] else 'unavailable (no judge)'}; formulas: {report['formula']}")
    lines.append(f"- budget rule `{report['budget_rule']}`: fractions requested {report['fractions_requested']}, "
                 f"used {report['fractions_used']}; stage targets {report['stage_targets']}, kept {report['stage_kept']}"
                 + (f"; shortfall {report['shortfall']}" if report["shortfall"] else ""))
    lines.append("")
    for st, png in zip(report["stages"], pngs):
        lines.append(f"## {st['title']}")
        lines.append("")
        lines.append(f"kept **{st['n_kept']}** of {st['n_in']} (target {st['target']}); cut-off score "
                     f"{_fmt(st['cutoff'])}; examples without a score: {st['missing_scores']}")
        notes = {k: v for k, v in st.items() if k not in ("stage", "title", "n_in", "target", "n_kept", "keep_fraction",
                                                           "missing_scores", "cutoff", "scores_in", "scores_kept",
                                                           "components_in", "top", "bottom")}
        for k, v in notes.items():
            lines.append(f"- {k}: {v}")
        lines.append("")
        lines.append(f"![{st['stage']}]({png})")
        lines.append("")
        lines.append("| | n | mean | p10 | median | p90 | min | max |")
        lines.append("|---|---|---|---|---|---|---|---|")
        rows = [("score (input)", st["scores_in"]), ("score (kept)", st["scores_kept"])]
        rows += [(c, q) for c, q in st["components_in"].items()]
        for label, q in rows:
            lines.append(f"| {label} | {q.get('n', 0)} | {_fmt(q.get('mean'))} | {_fmt(q.get('p10'))} | {_fmt(q.get('median'))} | "
                         f"{_fmt(q.get('p90'))} | {_fmt(q.get('min'))} | {_fmt(q.get('max'))} |")
        for which in ("top", "bottom"):
            if not st[which]:
                continue
            lines.append("")
            lines.append(f"**{which} {len(st[which])}**")
            lines.append("")
            for ex in st[which]:
                comps = ", ".join(f"{c}={_fmt(v)}" for c, v in ex["components"].items())
                lines.append(f"- #{ex['rank']} `{ex['id']}` score {_fmt(ex['score'])} ({comps})")
                lines.append(f"  - instruction: {ex['instruction']!r}")
                lines.append(f"  - response: {ex['response']!r}")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
