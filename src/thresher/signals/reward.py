"""Reward-model quality: a Hugging Face sequence-classification reward model scores
(instruction, response); the last logit is the reward ``r`` and THTB's normalisation
``clip((r + 5) / 10, 0, 1)`` maps it to [0, 1].

Any ``AutoModelForSequenceClassification`` checkpoint works (hub id or local path,
e.g. ``OpenAssistant/reward-model-deberta-v3-large-v2`` or a Skywork reward model on a
GPU box). The conversation is rendered with the reward model's chat template when it
has one, else as ``instruction\\n\\nresponse`` text pairs.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from thresher.data.pool import assistant_text, user_text
from thresher.models.load import model_identity
from thresher.signals.base import Signal, SignalParams, register_signal


class RewardParams(SignalParams):
    model: str = Field(..., description="a sequence-classification reward model: hub id or local path")
    max_length: int = Field(1024, ge=16, description="tokens per (instruction, response) pair")
    batch_size: int = Field(8, ge=1, description="pairs per forward batch (speed only; not in the cache key)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


def normalise_reward(r: np.ndarray) -> np.ndarray:
    """THTB: clip((r + 5) / 10, 0, 1)."""
    return np.clip((np.asarray(r, dtype=np.float64) + 5.0) / 10.0, 0.0, 1.0)


@register_signal
class RewardModel(Signal):
    name = "reward"
    version = 1
    family = "quality"
    columns = ("reward", "reward_norm")
    Params = RewardParams
    heavy = True
    default_shard_size = 1024
    description = "reward-model score of (instruction, response): last logit r, and clip((r+5)/10, 0, 1)"

    def key_params(self) -> dict:
        d = self.params.model_dump(mode="json")
        d.pop("batch_size")
        return d

    def model_id(self) -> str | None:
        return model_identity(self.params.model)

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.params.model, trust_remote_code=False)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cuda = torch.cuda.is_available()
        dtype = {"auto": torch.bfloat16 if cuda else torch.float32}.get(self.params.dtype) or getattr(torch, self.params.dtype)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.params.model, dtype=dtype, trust_remote_code=False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to("cuda" if cuda else "cpu").eval()

    def _texts(self, records):
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records], None
        return [user_text(r) for r in records], [assistant_text(r) for r in records]

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        import torch

        first, second = self._texts(records)
        order = np.argsort([-len(t) for t in first], kind="stable")
        out = np.empty(len(records), dtype=np.float64)
        device = next(self.model.parameters()).device
        bs = self.params.batch_size
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                a = [first[i] for i in idx]
                b = [second[i] for i in idx] if second is not None else None
                enc = self.tokenizer(a, b, truncation=True, max_length=self.params.max_length, padding=True,
                                     return_tensors="pt", add_special_tokens=second is not None)
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
                out[idx] = logits[:, -1].cpu().numpy()
        return {"reward": out, "reward_norm": normalise_reward(out)}
