"""THTB's parameters: the stage fractions, the sources of each score, the formulas, the report size."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from thresher.select.baselines import ScorerParams
from thresher.signals.judge import DisciplinesParams

DEFAULT_FRACTIONS = (0.2, 0.5, 0.5)
STAGE_NAMES = ("quality", "ihs", "ehs")


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
