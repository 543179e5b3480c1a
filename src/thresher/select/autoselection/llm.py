"""Optional LLM proposer and ranker for the recipe search, over an OpenAI-compatible endpoint.

The rule-based proposer and the GP-UCB ranker are the defaults and need no network. With
``proposer="llm"`` the search asks a chat model for local edits of the parent recipe; with
``ranker="llm"`` it asks the model to pick one of the executed candidates (shown with their
realised states and the surrogate's mu/sigma).

Requests go through :class:`thresher.judge.client.JudgeClient` (retries, backoff, API key
from the environment only) and replies are kept in a :class:`~thresher.judge.client.ReplyCache`
(so a resumed search gets the same replies and replays identically). Only recipes and numbers
are sent, never pool text. Replies are parsed strictly:

- proposer: a JSON object ``{"recipes": [[{"op": {params}}, ...], ...]}``; each recipe must
  validate (known library operators, valid params); invalid recipes are dropped and counted,
  and the search fills the shortfall with rule-based edits (counted as fallbacks);
- ranker: ``{"choice": i}`` with ``0 <= i < number of candidates``; anything else is a
  counted failure and the UCB pick stands.

A transport failure or a malformed reply never stops the search.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thresher.data.ledger import LedgerEntry
from thresher.data.paths import cache_root
from thresher.errors import ThresherError
from thresher.judge.client import JudgeClient, ReplyCache, reply_cache_key
from thresher.select.autoselection.operators import OPERATORS
from thresher.select.autoselection.recipe import Recipe, RecipeError

PROMPT_VERSION = 1


class LLMSettings(BaseModel):
    """Where and how to ask the LLM (the API key comes from the environment variable named here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (e.g. `thresher serve`)")
    model: str = Field("small", description="model name sent to the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (never logged)")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(600, ge=16)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0)
    cache_dir: str | None = Field(None, description="reply cache folder (default <THRESHER_CACHE>/judge)")


class ReplyInvalid(ThresherError, ValueError):
    """A reply that does not follow the requested JSON schema."""


def parse_proposals(content: str, library: list[str], n: int) -> tuple[list[Recipe], list[str]]:
    """Strictly parse a proposer reply: (valid recipes, one error per invalid recipe).

    Raises :class:`ReplyInvalid` when the reply as a whole is not ``{"recipes": [...]}``.
    """
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, TypeError) as e:
        raise ReplyInvalid(f"not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("recipes"), list):
        raise ReplyInvalid('expected an object {"recipes": [...]}')
    if not data["recipes"]:
        raise ReplyInvalid("'recipes' is empty")
    recipes, errors = [], []
    for i, steps in enumerate(data["recipes"][:n]):
        try:
            recipe = Recipe.from_list(steps, where=f"reply recipe {i + 1}")
        except RecipeError as e:
            errors.append(str(e))
            continue
        outside = [op.name for op in recipe.steps if op.name not in library]
        if outside:
            errors.append(f"reply recipe {i + 1}: operators {outside} are not in the search's library {library}")
            continue
        recipes.append(recipe)
    if len(data["recipes"]) > n:
        errors.append(f"{len(data['recipes']) - n} recipes beyond the {n} asked for were ignored")
    return recipes, errors


def parse_choice(content: str, n_candidates: int) -> int:
    """Strictly parse a ranker reply ``{"choice": i}``; raises :class:`ReplyInvalid`."""
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, TypeError) as e:
        raise ReplyInvalid(f"not JSON: {e}") from None
    if not isinstance(data, dict) or "choice" not in data:
        raise ReplyInvalid('expected an object {"choice": i}')
    c = data["choice"]
    if isinstance(c, bool) or not isinstance(c, int):
        raise ReplyInvalid(f"'choice' must be an integer, got {c!r}")
    if not 0 <= c < n_candidates:
        raise ReplyInvalid(f"'choice' {c} is outside 0..{n_candidates - 1}")
    return c


def _catalog_text(library: list[str]) -> str:
    lines = []
    for name in library:
        cls = OPERATORS[name]
        props = cls.Params.model_json_schema().get("properties", {})
        params = ", ".join(f"{k} (default {v.get('default')!r}): {v.get('description', '')}" for k, v in props.items())
        lines.append(f"- {name}: {cls.description}. Params: {params or 'none'}")
    return "\n".join(lines)


def _state_text(state: dict) -> str:
    keep = ("n_selected", "retain_ratio", "token_ratio", "drift", "relevance_mean", "relevance_std", "relevance_per_task",
            "relative_ifd", "relative_varentropy", "budget_used")
    return json.dumps({k: state.get(k) for k in keep}, sort_keys=False)


SYSTEM = ("You design data-selection recipes for supervised fine-tuning. A recipe is an ordered list of operators "
          "that only keep or drop examples of a fixed pool. You answer with one JSON object and nothing else.")


class LLMAdvisor:
    """Asks an OpenAI-compatible model for recipe edits and candidate picks; counts every failure."""

    def __init__(self, settings: LLMSettings | dict | None = None, ledger=None):

        self.settings = settings if isinstance(settings, LLMSettings) else LLMSettings(**(settings or {}))
        s = self.settings
        self.client = JudgeClient(s.url, s.model, api_key_env=s.api_key_env, concurrency=1, max_retries=s.max_retries,
                                  timeout=s.timeout)
        if s.cache_dir:
            cache_dir = Path(s.cache_dir)
        else:

            cache_dir = cache_root() / "judge"
        self.cache = ReplyCache(cache_dir / f"autoselection-v{PROMPT_VERSION}.jsonl")
        self.ledger = ledger
        self.stats: dict[str, Any] = {"propose_calls": 0, "propose_failures": 0, "invalid_recipes": 0, "rank_calls": 0,
                                      "rank_failures": 0, "cache_hits": 0, "requests": 0, "failure_reasons": {}}

    def _count_failure(self, reason: str) -> None:
        r = self.stats["failure_reasons"]
        r[reason] = r.get(reason, 0) + 1

    def ask(self, prompt_id: str, user: str) -> tuple[str | None, str | None]:
        """(reply text, None) or (None, failure reason). Replies are cached; transport failures are not."""

        s = self.settings
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        generation = {"temperature": s.temperature, "max_tokens": s.max_tokens, "json_mode": True}
        key = reply_cache_key(f"autoselection-{prompt_id}-v{PROMPT_VERSION}", s.model, messages, generation)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit["reply"], None
        t0 = time.perf_counter()
        out = self.client.complete(key, messages, max_tokens=s.max_tokens, temperature=s.temperature, json_mode=True)
        self.stats["requests"] += 1
        if self.ledger is not None:
            tokens = (out.reply.prompt_tokens + out.reply.completion_tokens) if out.reply else 0
            self.ledger.record(LedgerEntry(kind="judge", label=f"autoselection llm {prompt_id}", tokens=tokens,
                                           seconds=time.perf_counter() - t0, extra={"error": out.error}))
        if out.reply is None:
            return None, out.error or "no_reply"
        self.cache.put({"key": key, "prompt": f"autoselection-{prompt_id}", "model": s.model, "reply": out.reply.content,
                        "finish_reason": out.reply.finish_reason, "prompt_tokens": out.reply.prompt_tokens,
                        "completion_tokens": out.reply.completion_tokens})
        return out.reply.content, None

    # --- proposer
    def propose_prompt(self, parent, history, library: list[str], n: int) -> str:
        recent = history[-8:]
        lines = [f"  #{e.index} score={e.score:.4f} n={len(e.execution.ids)}: {e.recipe.describe()}" for e in recent]
        return (
            f"Operators you may use:\n{_catalog_text(library)}\n\n"
            f"Parent recipe (dev score {parent.score:.4f}):\n{json.dumps(parent.recipe.to_list())}\n"
            f"Its realised state: {_state_text(parent.execution.state.to_dict())}\n\n"
            f"Recent evaluations:\n" + "\n".join(lines) + "\n\n"
            f"Propose exactly {n} different local edits of the parent: each adds one operator, removes one, or changes "
            f"one operator's parameter. Include at least one edit that keeps more examples and one that keeps fewer. "
            f'Reply with JSON only: {{"recipes": [[{{"operator_name": {{"param": value}}}}, ...], ...]}} '
            f"with {n} recipes, each the full list of steps in order."
        )

    def propose(self, parent, history, library: list[str], n: int) -> tuple[list[Recipe], dict]:
        self.stats["propose_calls"] += 1
        content, reason = self.ask("propose", self.propose_prompt(parent, history, library, n))
        info: dict[str, Any] = {"proposer": "llm"}
        if content is None:
            self.stats["propose_failures"] += 1
            self._count_failure(f"propose:{reason}")
            info["failure"] = reason
            return [], info
        try:
            recipes, errors = parse_proposals(content, library, n)
        except ReplyInvalid as e:
            self.stats["propose_failures"] += 1
            self._count_failure("propose:invalid_reply")
            info["failure"] = f"invalid reply: {e}"
            return [], info
        self.stats["invalid_recipes"] += len(errors)
        if errors:
            info["invalid"] = errors[:5]
        info["proposed"] = len(recipes)
        return recipes, info

    # --- ranker
    def rank_prompt(self, parent, cands) -> str:
        rows = []
        for j, c in enumerate(cands):
            rows.append(f"  [{j}] {c.recipe.describe()} | state {_state_text(c.execution.state.to_dict())} | "
                        f"surrogate mu={c.mu:.4f} sigma={c.sigma:.4f}")
        return (
            f"Parent recipe (dev score {parent.score:.4f}): {parent.recipe.describe()}\n"
            f"Candidates (only one can be trained and scored):\n" + "\n".join(rows) + "\n\n"
            f'Which candidate should be evaluated next? Reply with JSON only: {{"choice": <index 0..{len(cands) - 1}>}}'
        )

    def rank(self, parent, cands) -> tuple[int | None, dict]:
        self.stats["rank_calls"] += 1
        content, reason = self.ask("rank", self.rank_prompt(parent, cands))
        if content is None:
            self.stats["rank_failures"] += 1
            self._count_failure(f"rank:{reason}")
            return None, {"failure": reason}
        try:
            return parse_choice(content, len(cands)), {"ranker": "llm"}
        except ReplyInvalid as e:
            self.stats["rank_failures"] += 1
            self._count_failure("rank:invalid_reply")
            return None, {"failure": f"invalid reply: {e}"}

    def close(self) -> None:
        self.client.close()

