"""TMAP's indicators: the built-in ones (quality, IFD, perplexity, reasoning steps, Bloom,
diversity, length, relevance) or any stored signal column, each oriented (``:high`` / ``:low``),
resolved to the signal that stores it, and normalised over the pool into the matrix the
weights combine (:func:`indicator_matrix`, :func:`weighted_top`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from thresher.select.base import SelectorParams, top_by
from thresher.select.quality import minmax, quality_source, rank_normalise
from thresher.signals.base import Signal, make_signal, resolve
from thresher.signals.lm import LMSignal

DEFAULT_INDICATORS = ("quality", "ifd", "perplexity", "reasoning_steps", "bloom", "diversity", "length")
BUILTIN_INDICATORS = DEFAULT_INDICATORS + ("relevance",)


@dataclass
class Indicator:
    """One oriented indicator: where its values are stored and which way is better."""

    label: str  # as given in the params (e.g. "perplexity" or "perplexity:high")
    signal: Signal
    column: str
    direction: str  # "high" or "low"

    def describe(self) -> dict:
        return {"label": self.label, "signal": self.signal.name, "column": self.column, "direction": self.direction}


def check_indicator_spec(spec: str, where: str = "indicator") -> None:
    """Raise a ValueError naming ``spec`` unless it is a built-in indicator or a stored
    signal column, optionally suffixed ':high' / ':low'."""
    base, _, direction = spec.partition(":")
    if direction and direction not in ("high", "low"):
        raise ValueError(f"{where} {spec!r}: the orientation after ':' must be 'high' or 'low'")
    if base not in BUILTIN_INDICATORS:
        try:
            resolve(base)
        except KeyError:
            raise ValueError(f"{where} {spec!r}: not a built-in indicator ({', '.join(BUILTIN_INDICATORS)}) "
                             f"nor a known signal column") from None


class IndicatorParams(SelectorParams):
    indicators: list[str] = Field(list(DEFAULT_INDICATORS), min_length=1,
                                  description=f"indicator names ({', '.join(BUILTIN_INDICATORS)}) or signal columns, each optionally ':high'/':low'")
    normalise: Literal["rank", "minmax"] = Field("rank", description="per-indicator normalisation over the pool")
    missing: Literal["worst", "exclude"] = Field("worst", description="a NaN indicator value counts as the worst (0), or excludes the example")
    scorer: str = Field("small", description="target model for ifd / perplexity / length (small, like the proxy; micro, auto = micro on the arith testbed and small elsewhere, hub id, path)")
    scorer_warmup: int | None = Field(None, description="examples for the scorer's warm-up (default: 300 for micro, 0 otherwise)")
    scorer_warmup_steps: int = Field(250, description="steps of that warm-up")
    quality: str = Field("judge", description="quality source: judge, reward:MODEL, or COLUMN[:low] (select/quality.py)")
    judge_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint for judge-based indicators")
    judge_model: str = Field("small", description="model name sent to the judge endpoint")
    bloom: Literal["heuristic", "judge"] = Field("heuristic", description="Bloom level from the verb-list heuristic or the LLM judge")
    embed_model: str = Field("minilm", description="sentence encoder for diversity / relevance")
    embed_text: Literal["user", "answer", "all"] = Field("all", description="what the embedding signal embeds")
    diversity_m: int = Field(10, ge=1, description="neighbours averaged by the knn diversity indicator")
    relevance_task: str = Field("arith", description="task whose dev items the relevance indicator compares with")
    relevance_task_params: dict = Field(default_factory=dict, description="params of that task's factory")

    @model_validator(mode="after")
    def _check_indicators(self):
        seen = set()
        for spec in self.indicators:
            if spec in seen:
                raise ValueError(f"indicator {spec!r} is listed twice")
            seen.add(spec)
            check_indicator_spec(spec)
        return self

    def lm_params(self) -> dict:
        return {"model": self.scorer, "warmup_examples": self.scorer_warmup, "warmup_steps": self.scorer_warmup_steps}

    def _embed(self) -> dict:
        return {"embed_model": self.embed_model, "embed_text": self.embed_text}

    def indicator(self, spec: str) -> Indicator:
        """Resolve one indicator spec to its stored signal, column and orientation."""
        base, _, override = spec.partition(":")
        if base == "quality":
            qs = quality_source(self.quality, signal_params=self.lm_params(),
                                judge_params={"url": self.judge_url, "model": self.judge_model})
            sig, col, direction = qs.signal, qs.column, qs.direction
        elif base == "ifd":
            sig, col, direction = LMSignal(**self.lm_params()), "ifd", "high"
        elif base == "perplexity":
            sig, col, direction = LMSignal(**self.lm_params()), "ppl", "low"
        elif base == "reasoning_steps":
            sig, col, direction = make_signal("reasoning_steps"), "reasoning_steps", "high"
        elif base == "bloom":
            if self.bloom == "judge":
                sig, col = make_signal("judge_bloom", url=self.judge_url, model=self.judge_model), "bloom_score"
            else:
                sig, col = make_signal("bloom_heuristic"), "bloom_level"
            direction = "high"
        elif base == "diversity":
            sig, col, direction = make_signal("knn_diversity", m=self.diversity_m, **self._embed()), "knn_distance", "high"
        elif base == "length":
            sig, col, direction = make_signal("text", model=self.scorer), "tokens_answer", "high"
        elif base == "relevance":
            sig = make_signal("task_relevance", task=self.relevance_task, task_params=self.relevance_task_params, **self._embed())
            col, direction = "task_relevance", "high"
        else:
            cls, col = resolve(base)
            if col is None:
                if len(cls.columns) != 1:
                    raise ValueError(f"indicator {spec!r}: signal {cls.name!r} has several columns {cls.columns}; name one")
                col = cls.columns[0]
            fields = cls.Params.model_fields
            params: dict = {}
            if "warmup_examples" in fields or cls.name == "text":
                params.update({k: v for k, v in self.lm_params().items() if k in fields})
            params.update({k: v for k, v in self._embed().items() if k in fields})
            sig, direction = cls(**params), "high"
        return Indicator(spec, sig, col, override or direction)

    def resolved(self, labels: list[str] | None = None) -> list[Indicator]:
        return [self.indicator(s) for s in (labels or self.indicators)]


def indicator_matrix(view, indicators: list[Indicator], normalise: str = "rank", missing: str = "worst") -> tuple[np.ndarray, list[dict]]:
    """[n, K] oriented, normalised indicator values (pool order) and per-indicator info
    (orientation, NaN count). With ``missing="worst"`` NaN becomes 0; else it stays NaN."""
    cols, info = [], []
    for ind in indicators:
        raw = np.asarray(view.signal(ind.signal)[ind.column], dtype=np.float64)
        oriented = raw if ind.direction == "high" else -raw
        v = rank_normalise(oriented) if normalise == "rank" else minmax(oriented)
        n_nan = int(np.isnan(v).sum())
        if missing == "worst":
            v = np.where(np.isnan(v), 0.0, v)
        cols.append(v)
        finite = raw[~np.isnan(raw)]
        info.append({**ind.describe(), "missing": n_nan,
                     "raw_mean": round(float(finite.mean()), 6) if len(finite) else None})
    return np.stack(cols, axis=1), info


def weighted_top(F: np.ndarray, w: np.ndarray, ids: list[str], k: int) -> tuple[list[str], int]:
    """Top-k ids by ``F @ w`` (NaN rows excluded and counted; ties by pool order)."""
    return top_by(F @ np.asarray(w, dtype=np.float64), ids, k, descending=True)
