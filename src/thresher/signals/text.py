"""Text statistics: characters and model tokens per role, turns."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Signal, SignalParams, register_signal


class TextParams(SignalParams):
    model: str = Field("micro", description="whose tokenizer counts tokens (micro, small, hub id or path)")


@register_signal
class TextStats(Signal):
    name = "text"
    version = 1
    family = "text"
    columns = ("chars_user", "chars_answer", "chars_total", "tokens_user", "tokens_answer", "tokens_total", "turns")
    Params = TextParams
    description = "characters and tokenizer tokens of the user and assistant sides, and the number of assistant turns"
    default_shard_size = 4096

    def model_id(self) -> str | None:
        from ..models.load import model_identity

        return model_identity(self.params.model)

    def setup(self) -> None:
        from ..models.load import load_tokenizer

        self.tokenizer = load_tokenizer(self.params.model)

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        users = ["\n\n".join(m["content"] for m in r["messages"] if m["role"] != "assistant") for r in records]
        answers = ["\n\n".join(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in records]
        tu = self.tokenizer(users, add_special_tokens=False)["input_ids"]
        ta = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
        cu = np.array([len(u) for u in users], dtype=np.int64)
        ca = np.array([len(a) for a in answers], dtype=np.int64)
        ku = np.array([len(t) for t in tu], dtype=np.int64)
        ka = np.array([len(t) for t in ta], dtype=np.int64)
        turns = np.array([sum(m["role"] == "assistant" for m in r["messages"]) for r in records], dtype=np.int64)
        return {"chars_user": cu, "chars_answer": ca, "chars_total": cu + ca, "tokens_user": ku, "tokens_answer": ka,
                "tokens_total": ku + ka, "turns": turns}
