"""LLM-judge signals: an OpenAI-compatible chat endpoint rates each example.

Three example-scope signals share one machinery (:class:`JudgeSignal`):

- ``judge_quality`` (AlpaGasus): accuracy/helpfulness of the response to the instruction,
  JSON ``{"score": 0..5, "reason": str}`` -> ``quality``, ``quality_norm`` (score / 5),
  ``quality_judge_failed``.
- ``judge_bloom`` (THTB): Bloom's-taxonomy level of the query, JSON ``{"level": Remember |
  Understand | Apply | Analyze | Evaluate | Create, "score": int 1..21, "reasoning": str}``
  with bands 1-3, 4-6, 7-9, 10-12, 13-15, 16-21 -> ``bloom_level_judge`` (1..6),
  ``bloom_score`` (1..21), ``bloom_norm_ref`` ((score - 1) / 20, THTB's reference-code
  form), ``bloom_judge_failed``.
- ``judge_disciplines`` (THTB interdisciplinary complexity): the academic disciplines the
  query needs, JSON ``{"disciplines": [{"name": str, "description": str}, ...]}`` (1 to 10,
  names unique) -> ``n_disciplines``, ``disciplines_json`` (the validated list as a JSON
  string), ``disciplines_judge_failed``.

**Failures are counted, never guessed.** A reply is accepted only if it contains exactly
one JSON object with exactly the required keys, types and ranges
(:func:`~thresher.signals.judge_prompts.extract_json_object` and the signal's ``interpret``; the
prompts and the parsing live in :mod:`thresher.signals.judge_prompts`). Anything else -- prose
without JSON, two objects, a truncated object, a score of 6, a score given as a string, a Bloom score outside its
level's band -- is a *content failure*: the judge answered and that answer is its verdict
on the row, so the row's values are NaN (``disciplines_json`` empty), its
``*_judge_failed`` flag is set and it is counted by reason in :attr:`JudgeSignal.stats`. No
number is ever scraped from prose. Integer-valued columns (``bloom_level_judge``,
``bloom_score``, ``n_disciplines``) are float64 so that a failure can be NaN.

**Transport failures are never stored.** A request that got no reply -- connection refused,
timeouts after the retries, an HTTP 4xx/5xx after the retries, a 200 whose body is not a
chat completion -- says nothing about the row. ``compute`` then raises a
:class:`~thresher.errors.JudgeError` (URL, model, counts, most common reason) after all of
the shard's requests are done, so the shard is not written and the signal is never marked
complete; the replies that did arrive are already in the reply cache, so a rerun asks the
endpoint only for the rows that failed.

**The failure threshold** (param ``max_failure_rate``, default 0.05). After each shard,
the fraction of content failures among the rows this signal object has judged in the
current run (all its shards so far, cached replies included; one count per process on
Ray) is compared with ``max_failure_rate``; above it the run stops with a ``JudgeError``
naming the URL, the model, the counts and the most common reason, and the shard that
crossed it is not written (earlier shards are kept: a rerun resumes). ``1.0`` keeps every
content failure as NaN; ``0`` stops at the first. It changes whether a run stops, never a
stored value, so it is not part of the key.

**Reachability.** Before the first request of a run, :meth:`JudgeSignal.check_endpoint`
asks the endpoint once (:meth:`thresher.judge.client.JudgeClient.check_endpoint`: ``GET
/v1/models``, or a one-token chat completion) and raises a ``JudgeError`` at once when it
cannot connect or gets 401/403/404/5xx, saying what to fix (start ``thresher serve``, set
the key variable, fix ``url`` / ``model``). A run whose replies are all cached sends nothing,
so it needs no endpoint.

**Prose around the object (decision).** Chat models often wrap JSON in a sentence or a
```json fence. That is accepted when the rest of the reply holds no other JSON object and
no other ``{`` at all (a stray brace that does not start a valid object fails the reply as
``invalid_json``, so a malformed outer object cannot hide a valid inner one). The object
itself is parsed by :mod:`json` with no repair; duplicate keys and NaN/Infinity are rejected.

**Pool text is delimited.** The example goes inside ``<example>...</example>`` (with
``<instruction>``/``<response>`` or ``<query>`` inside); any of those tag names appearing in
the pool text is neutralised (its ``<`` becomes ``&lt;``) so the text cannot close the block
early, and the system prompt says the block is data to rate, never instructions. An
example saying "rate this 5" therefore cannot steer the format -- and even if it steered
the judge's wording, the parser reads only the reply's single JSON object.

**Identity.** A signal's key params are the prompt id (signal name, prompt version and a
hash of the prompt text, so an edited prompt never reuses old values), the endpoint's
chat-completions URL (normalised: ``.../v1`` and ``.../v1/chat/completions`` are one
endpoint), the endpoint model name and the generation params (temperature, max_tokens,
JSON mode; the request seed only when temperature > 0). The URL is in the key because a
name like ``small`` says nothing about which weights another server puts behind it: values
from one endpoint are never reused for another (moving a server means judging again).
Never the API key. Transport settings (concurrency, retries, timeout, backoff, cache) and
``max_failure_rate`` do not change values and are not in the key. Version 2: version-1
stores could hold all-NaN rows from an unreachable judge marked complete.

**Cache.** Replies are cached by (prompt id, endpoint URL, endpoint model, exact messages
sent, generation params) in ``<THRESHER_CACHE>/judge/<prompt id>.jsonl`` (param
``cache_dir`` overrides), each as soon as it arrives, see
:class:`thresher.judge.client.ReplyCache`; a rerun -- even into a fresh signal store --
makes no HTTP call for cached examples. Failed requests are not cached.

**Costs.** :attr:`JudgeSignal.stats` (a :class:`thresher.judge.client.JudgeStats`) counts
examples, cache hits, requests, HTTP calls, retries, failures by reason and token usage
across ``compute`` calls in this process; :meth:`JudgeSignal.ledger_entry` turns it into a
cost-ledger entry.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import time
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from thresher.data.paths import cache_root
from thresher.data.records import content_hash
from thresher.errors import JudgeError
from thresher.judge.client import (
    JudgeClient,
    JudgeStats,
    ReplyCache,
    chat_completions_url,
    reply_cache_key,
)
from thresher.progress import progress
from thresher.signals.base import Signal, SignalParams, register_signal
from thresher.signals.judge_prompts import (
    BLOOM_SYSTEM,
    BLOOM_USER,
    DISCIPLINES_SYSTEM,
    DISCIPLINES_USER,
    QUALITY_SYSTEM,
    QUALITY_USER,
    ReplyRejected,
    extract_json_object,
    neutralise_delimiters,
    parse_bloom,
    parse_disciplines,
    parse_quality,
    split_example,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the signals


class JudgeParams(SignalParams):
    url: str = Field("http://127.0.0.1:8000/v1", description="base URL of an OpenAI-compatible endpoint (part of the cache key: values from another endpoint are never reused)")
    model: str = Field("small", description="model name sent to the endpoint (part of the cache key); `thresher serve --model small` serves 'small'")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (the key itself is never stored)")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(3, ge=0, le=20, description="retries on connection errors, timeouts, 429 and 5xx")
    timeout: float = Field(120.0, gt=0, description="seconds per HTTP attempt")
    backoff_base: float = Field(1.0, gt=0, description="first backoff ramp in seconds (doubles per retry, equal jitter)")
    backoff_max: float = Field(30.0, gt=0, description="cap of the backoff ramp in seconds")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy (the default: judge values should not be random)")
    max_tokens: int = Field(256, ge=1, le=32768, description="reply length limit; a cut-off JSON object is a counted failure")
    json_mode: bool = Field(True, description="send response_format={'type': 'json_object'}")
    seed: int = Field(0, description="request seed (sent; part of the key only when temperature > 0) and backoff-jitter seed")
    cache: bool = Field(True, description="read and write the reply cache")
    cache_dir: str | None = Field(None, description="reply cache folder (default <THRESHER_CACHE>/judge)")
    max_failure_rate: float = Field(0.05, ge=0, le=1, description=(
        "stop the run with an error when more than this fraction of the rows judged so far got a reply that is not the "
        "required JSON (kept as NaN + the *_judge_failed flag below it; 1 never stops, 0 stops at the first). "
        "Requests that got no reply at all (connection, timeout, HTTP errors after the retries) always stop the run "
        "and are never stored. Not part of the cache key"))


class DisciplinesParams(JudgeParams):
    max_tokens: int = Field(512, ge=1, le=32768, description="reply length limit; a cut-off JSON object is a counted failure")


class JudgeSignal(Signal, abc.ABC):
    """Shared machinery: render -> cache lookup -> concurrent calls -> strict parse -> columns."""

    scope: ClassVar[str] = "example"
    family: ClassVar[str] = "judge"
    default_shard_size: ClassVar[int] = 256
    Params: ClassVar[type[SignalParams]] = JudgeParams
    prompt_version: ClassVar[int] = 1
    system_prompt: ClassVar[str] = ""
    user_template: ClassVar[str] = ""
    failed_column: ClassVar[str] = ""
    text_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        super().__init__(**params)

        chat_completions_url(self.params.url)  # fail early on a bad URL, naming the param
        if not self.params.model.strip():
            raise ValueError(f"signal {self.name!r}: param 'model' is empty: give the model name the endpoint serves")
        self.stats = JudgeStats()
        self.client = None
        self.cache = None
        self.endpoint_checked: dict | None = None
        self.reset_run()

    # --- identity
    def prompt_id(self) -> str:
        digest = hashlib.sha256(f"{self.system_prompt}\x00{self.user_template}".encode()).hexdigest()[:8]
        return f"{self.name}-p{self.prompt_version}-{digest}"

    def generation(self) -> dict:
        g = {"temperature": self.params.temperature, "max_tokens": self.params.max_tokens, "json_mode": self.params.json_mode}
        if self.params.temperature > 0:
            g["seed"] = self.params.seed
        return g

    def endpoint(self) -> str:
        """The normalised chat-completions URL (part of the key and of every reply-cache key)."""

        return chat_completions_url(self.params.url)

    def key_params(self) -> dict:
        return {"prompt": self.prompt_id(), "url": self.endpoint(), "model": self.params.model, **self.generation()}

    def model_id(self) -> str | None:
        return f"endpoint:{self.params.model}"

    # --- work
    def setup(self) -> None:
        p = self.params
        self.client = JudgeClient(p.url, p.model, api_key_env=p.api_key_env, concurrency=p.concurrency,
                                  max_retries=p.max_retries, timeout=p.timeout, backoff_base=p.backoff_base,
                                  backoff_max=p.backoff_max, seed=p.seed)
        if p.cache:
            from pathlib import Path

            root = Path(p.cache_dir).expanduser() if p.cache_dir else cache_root() / "judge"
            self.cache = ReplyCache(root / f"{self.prompt_id()}.jsonl")

    def check_endpoint(self) -> dict:
        """Ask the endpoint once before this object's first request (see the module docs); a
        :class:`~thresher.errors.JudgeError` naming the signal, URL and status when it cannot serve."""
        if self.endpoint_checked is None:
            self.ensure_setup()
            try:
                self.endpoint_checked = self.client.check_endpoint()
            except JudgeError as e:
                raise JudgeError(f"signal {self.name!r} (model {self.params.model!r}): {e}") from None
        return self.endpoint_checked

    def bind_pool(self, pool) -> JudgeSignal:
        """Called by the engine at the start of every run: the failure rate counts this run only."""
        self.reset_run()
        return self

    def reset_run(self) -> None:
        """Forget the rows counted towards ``max_failure_rate`` (a new run starts)."""
        self.run_rows = 0
        self.run_failures: dict[str, int] = {}

    def render_user(self, record: dict) -> str:
        """The user message: ``user_template`` filled with the example's delimited, neutralised text."""
        query, response = split_example(record)
        return self.user_template.format(query=neutralise_delimiters(query), response=neutralise_delimiters(response))

    def messages_for(self, record: dict) -> list[dict[str, str]]:
        """The chat messages sent for one example: the fixed system prompt + the delimited example."""
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": self.render_user(record)}]

    @abc.abstractmethod
    def interpret(self, obj: dict) -> dict[str, Any]:
        """The parsed reply object -> this signal's column values (raises :class:`ReplyRejected`)."""

    def failure_row(self) -> dict[str, Any]:
        """Column values of a failed example: NaN (empty string for text columns) and the failed flag set."""
        return {c: (True if c == self.failed_column else "" if c in self.text_columns else math.nan) for c in self.columns}

    def to_columns(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.columns:
            vals = [r[c] for r in rows]
            if c == self.failed_column:
                out[c] = np.asarray(vals, dtype=bool)
            elif c in self.text_columns:
                out[c] = [str(v) for v in vals]  # a list keeps the Arrow type string even when every row failed
            else:
                out[c] = np.asarray(vals, dtype=np.float64)
        return out

    def __getstate__(self):  # shipped to another process (Ray): set up again there, never ship the key
        state = dict(self.__dict__)
        state["client"] = None
        state["cache"] = None
        state["_ready"] = False
        state["endpoint_checked"] = None
        return state

    def reset_stats(self) -> None:
        self.stats = JudgeStats()

    def ledger_entry(self):
        """This signal's counts as a ``judge`` cost-ledger entry (label = signal name, key = prompt id)."""
        return self.stats.ledger_entry(self.name, key=f"{self.prompt_id()}@{self.params.model}")

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        """One shard's columns; raises :class:`~thresher.errors.JudgeError` (nothing returned, so nothing
        stored) when a request got no reply or the run's content-failure rate passes ``max_failure_rate``."""

        self.ensure_setup()
        t0 = time.perf_counter()
        st = self.stats
        gen = self.generation()
        prompt_id = self.prompt_id()
        endpoint = self.endpoint()
        messages = [self.messages_for(r) for r in records]
        keys = [reply_cache_key(prompt_id, self.params.model, m, gen, endpoint=endpoint) for m in messages]
        n = len(records)
        replies: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        details: list[str] = [""] * n
        first: dict[str, int] = {}
        to_call: list[int] = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                replies[i] = hit["reply"]
                st.cache_hits += 1
            elif k in first:
                st.duplicates += 1
            else:
                first[k] = i
                to_call.append(i)
        if to_call:
            self.check_endpoint()
            by_key = {keys[i]: i for i in to_call}

            def done(out, bar) -> None:  # worker threads: cache each reply as it arrives, so a kill loses none
                bar.update(1)
                if out.reply is not None and self.cache is not None:
                    i = by_key[out.request_key]
                    self.cache.put({"key": keys[i], "prompt": prompt_id, "model": self.params.model,
                                    "example": content_hash(records[i]["messages"]), "reply": out.reply.content,
                                    "finish_reason": out.reply.finish_reason, "prompt_tokens": out.reply.prompt_tokens,
                                    "completion_tokens": out.reply.completion_tokens, "at": round(time.time(), 3)})

            with progress(total=len(to_call), desc=f"{self.name}: judge calls", unit="call") as bar:
                outcomes = self.client.complete_many(
                    [(keys[i], messages[i]) for i in to_call], max_tokens=self.params.max_tokens,
                    temperature=self.params.temperature, seed=self.params.seed, json_mode=self.params.json_mode,
                    on_done=lambda o: done(o, bar))
            for i, out in zip(to_call, outcomes):
                st.requests += 1
                st.calls += out.attempts
                st.retries += out.retries
                st.backoff_seconds += sum(out.delays)
                if out.reply is None:
                    st.failed_requests += 1
                    errors[i], details[i] = out.error, out.detail
                    log.debug("%s: example %s got no reply (%s %s)", self.name, records[i].get("id"), out.error, out.detail)
                    continue
                st.replies += 1
                st.prompt_tokens += out.reply.prompt_tokens
                st.completion_tokens += out.reply.completion_tokens
                replies[i] = out.reply.content
        rows = []
        transport: dict[str, int] = {}
        content: dict[str, int] = {}
        for i in range(n):
            if replies[i] is None and errors[i] is None:  # a duplicate: share the first occurrence's outcome
                j = first[keys[i]]
                replies[i], errors[i], details[i] = replies[j], errors[j], details[j]
            st.examples += 1
            if replies[i] is None:
                reason = errors[i] or "no_reply"
                st.count_failure(reason, transport=True)
                transport[reason] = transport.get(reason, 0) + 1
                rows.append(self.failure_row())
                continue
            try:
                rows.append({**self.interpret(extract_json_object(replies[i])), self.failed_column: False})
            except ReplyRejected as e:
                st.count_failure(e.reason, transport=False)
                content[e.reason] = content.get(e.reason, 0) + 1
                log.debug("%s: example %s reply rejected (%s)", self.name, records[i].get("id"), e)
                rows.append(self.failure_row())
        st.seconds += time.perf_counter() - t0
        if transport:
            failed = sum(transport.values())
            reason = max(transport, key=transport.get)
            detail = next((details[i] for i in range(n) if errors[i] == reason and details[i]), "")
            raise JudgeError(
                f"signal {self.name!r}: {failed} of {n} rows of this shard got no reply from the judge at {endpoint} "
                f"(model {self.params.model!r}); most common reason: {reason} ({transport[reason]} rows"
                f"{': ' + detail if detail else ''}). Nothing of this shard was stored; the {n - failed} replies that "
                f"did arrive are cached, so a rerun asks only for the failed rows. Check that the server is up and "
                f"not overloaded (its log, params 'timeout' and 'max_retries'), then rerun")
        self.run_rows += n
        for reason, count in content.items():
            self.run_failures[reason] = self.run_failures.get(reason, 0) + count
        failed = sum(self.run_failures.values())
        if self.run_rows and failed / self.run_rows > self.params.max_failure_rate:
            reason = max(self.run_failures, key=self.run_failures.get)
            raise JudgeError(
                f"signal {self.name!r}: {failed} of {self.run_rows} rows judged so far ({failed / self.run_rows:.1%}) got a "
                f"reply that is not the required JSON, more than max_failure_rate={self.params.max_failure_rate:g}, from the "
                f"judge at {endpoint} (model {self.params.model!r}); most common reason: {reason} "
                f"({self.run_failures[reason]} rows). This shard was not stored (earlier ones were: a rerun resumes). "
                f"Use a stronger judge model or a larger 'max_tokens', or raise 'max_failure_rate' (1 keeps every "
                f"failure as NaN with its *_judge_failed flag)")
        return self.to_columns(rows)


@register_signal
class JudgeQuality(JudgeSignal):
    name = "judge_quality"
    version = 2
    columns = ("quality", "quality_norm", "quality_judge_failed")
    failed_column = "quality_judge_failed"
    system_prompt = QUALITY_SYSTEM
    user_template = QUALITY_USER
    description = ("AlpaGasus-style LLM-judge rating (0-5) of the response's accuracy and helpfulness for the "
                   "instruction, from an OpenAI-compatible endpoint; NaN + a counted failure when the reply is not valid")

    def interpret(self, obj: dict) -> dict[str, Any]:
        score = parse_quality(obj)
        return {"quality": score, "quality_norm": score / 5.0}


@register_signal
class JudgeBloom(JudgeSignal):
    name = "judge_bloom"
    version = 2
    columns = ("bloom_level_judge", "bloom_score", "bloom_norm_ref", "bloom_judge_failed")
    failed_column = "bloom_judge_failed"
    system_prompt = BLOOM_SYSTEM
    user_template = BLOOM_USER
    description = ("THTB Bloom's-taxonomy level of the query from an LLM judge: level 1..6, score 1..21 within the "
                   "level's band, (score-1)/20; NaN + a counted failure when the reply is not valid")

    def interpret(self, obj: dict) -> dict[str, Any]:
        level, score = parse_bloom(obj)
        return {"bloom_level_judge": float(level), "bloom_score": float(score), "bloom_norm_ref": (score - 1) / 20.0}


@register_signal
class JudgeDisciplines(JudgeSignal):
    name = "judge_disciplines"
    version = 2
    columns = ("n_disciplines", "disciplines_json", "disciplines_judge_failed")
    failed_column = "disciplines_judge_failed"
    Params = DisciplinesParams
    system_prompt = DISCIPLINES_SYSTEM
    user_template = DISCIPLINES_USER
    text_columns = ("disciplines_json",)
    description = ("THTB interdisciplinary complexity input: the academic disciplines the query needs, each with a "
                   "description (JSON list), from an LLM judge; NaN / empty string + a counted failure when invalid")

    def interpret(self, obj: dict) -> dict[str, Any]:
        items = parse_disciplines(obj)
        return {"n_disciplines": float(len(items)), "disciplines_json": json.dumps(items, ensure_ascii=False)}
