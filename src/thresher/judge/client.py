"""A client for OpenAI-compatible chat-completions endpoints, built for LLM-judge signals.

What it does, and why:

- **Concurrency**: a thread pool of ``concurrency`` workers sharing one ``httpx.Client``
  (connection pool of the same size). Threads, not asyncio, so a signal can call it from
  any context (a notebook with a running event loop, a Ray actor, the CLI).
- **Retries**: connection errors and timeouts, HTTP 429 and 5xx (and 408/409, which
  OpenAI-style servers use for transient conflicts) are retried up to
  ``max_retries`` times with exponential backoff ``min(backoff_max, backoff_base * 2**k)``
  and equal jitter (half fixed, half uniform). The jitter comes from a
  ``random.Random`` seeded by ``(seed, request key, attempt)``, so the delays of a request
  do not depend on which thread ran it or what else was in flight. A numeric
  ``Retry-After`` header (capped at 60 s) lengthens the delay, never shortens it. Any
  other 4xx (bad request, wrong key, unknown model) is not transient: no retry.
- **Replies are not interpreted here**: a 200 answer yields its ``content`` and usage;
  validating that content is the judge signal's job (:mod:`thresher.signals.judge`).
- **Reachability** (:meth:`JudgeClient.check_endpoint`): one ``GET <base>/models`` (or,
  where a server has no such route, a one-token chat completion) before a long run, so a
  closed port, a missing key or a wrong URL fails in seconds with a :class:`JudgeError`
  that says what to fix, instead of after every row's retries.
- **API keys** come from the environment variable named by ``api_key_env`` only. The key
  is held in memory to build the ``Authorization`` header and is never logged, never put
  in a repr, a cache record, a signal key or a ledger entry.

:class:`ReplyCache` keeps replies in an append-only JSONL file so reruns do not call the
endpoint again (see its docstring for the key and the location).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from thresher.data.ledger import LedgerEntry
from thresher.errors import JudgeError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
RETRY_AFTER_CAP = 60.0


def _require_httpx():
    try:
        import httpx
    except ImportError as e:  # pragma: no cover - httpx ships with the [judge] extra
        raise ImportError("the LLM judge needs httpx: pip install 'thresher[judge]'") from e
    return httpx


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChatReply:
    """The part of a chat-completions answer a judge uses."""

    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass
class CallOutcome:
    """One request after its retries: a reply, or a reason code (and detail) for why there is none.

    Reason codes: ``http_<status>`` (a non-retryable status), ``retries_exhausted_<last
    error>`` (``http_503``, ``timeout``, ``connection_error_<exception>``...) and
    ``bad_response`` (an HTTP 200 whose body is not a chat completion).
    """

    reply: ChatReply | None
    error: str | None
    attempts: int
    delays: list[float] = field(default_factory=list)  # the backoff sleeps, in order
    detail: str = ""
    request_key: str = ""  # the key the request was made under (its reply-cache key for judge signals)

    @property
    def retries(self) -> int:
        return self.attempts - 1


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0 = first retry): equal jitter over an exponential ramp.

    ``d = min(cap, base * 2**attempt)``; the delay is ``d/2 + U(0, d/2)``, so it is never
    below half the ramp (no thundering herd of zero waits) and never above ``cap``.
    """
    ramp = min(cap, base * (2.0 ** attempt))
    return ramp / 2.0 + rng.uniform(0.0, ramp / 2.0)


def jitter_rng(seed: int, request_key: str, attempt: int) -> random.Random:
    """The RNG for one backoff draw: a function of (seed, request, attempt) only."""
    return random.Random(f"thresher-judge-backoff:{seed}:{request_key}:{attempt}")


def chat_completions_url(url: str) -> str:
    """``http://host:port/v1`` (a base URL) -> ``.../v1/chat/completions``; a full endpoint URL is kept."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("judge param 'url' is empty: give the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"judge param 'url' must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    base = url.strip().rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + "/chat/completions"


def _is_loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")


# --------------------------------------------------------------------------- client


class JudgeClient:
    """Send chat-completions requests to one endpoint and model, concurrently, with retries.

    ``url``: the base URL (``http://127.0.0.1:8000/v1``) or the full ``/chat/completions`` URL.
    ``model``: the name sent in each request. ``api_key_env``: the environment variable
    holding the API key; when it is unset or empty no ``Authorization`` header is sent
    (fine for a local ``thresher serve`` without a key).
    """

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 3, timeout: float = 120.0, backoff_base: float = 1.0, backoff_max: float = 30.0,
                 seed: int = 0):
        if concurrency < 1:
            raise ValueError(f"judge param 'concurrency' must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"judge param 'max_retries' must be >= 0, got {max_retries}")
        if timeout <= 0:
            raise ValueError(f"judge param 'timeout' must be > 0, got {timeout}")
        if not model:
            raise ValueError("judge param 'model' is empty: give the model name the endpoint serves")
        self.endpoint = chat_completions_url(url)
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.seed = seed
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
            host = urlparse(self.endpoint).hostname
            if urlparse(self.endpoint).scheme == "http" and not _is_loopback(host):
                log.warning("sending the API key from $%s over plain http to %s: use https for remote endpoints",
                            api_key_env, host)
        self._http = None
        self._http_lock = threading.Lock()

    @property
    def has_api_key(self) -> bool:
        return "Authorization" in self._headers

    def __repr__(self) -> str:  # never shows the key
        return (f"JudgeClient(endpoint={self.endpoint!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"key_set={self.has_api_key}, concurrency={self.concurrency}, max_retries={self.max_retries})")

    def __getstate__(self):  # Ray / multiprocessing: ship params, never the key or the connection pool
        state = dict(self.__dict__)
        state["_headers"] = {"Content-Type": "application/json"}
        state["_http"] = None
        state["_http_lock"] = None
        state["_reload_key"] = True
        return state

    def __setstate__(self, state):
        reload_key = state.pop("_reload_key", False)
        self.__dict__.update(state)
        self._http_lock = threading.Lock()
        if reload_key:
            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            if key:
                self._headers["Authorization"] = f"Bearer {key}"

    def _client(self):
        httpx = _require_httpx()
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                    headers=self._headers,
                )
            return self._http

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def request_body(self, messages: Sequence[dict], *, max_tokens: int, temperature: float, seed: int | None,
                     json_mode: bool) -> dict:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                                "temperature": temperature, "n": 1}
        if seed is not None:
            body["seed"] = seed
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(self, request_key: str, messages: Sequence[dict], *, max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, json_mode: bool = True) -> CallOutcome:
        """One request with retries. Never raises for HTTP or network trouble: returns the reason."""
        httpx = _require_httpx()
        body = self.request_body(messages, max_tokens=max_tokens, temperature=temperature, seed=seed, json_mode=json_mode)
        client = self._client()
        delays: list[float] = []
        last_error = "unknown"
        for attempt in range(self.max_retries + 1):
            retry_after = 0.0
            try:
                resp = client.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                last_error = "timeout"
            except httpx.TransportError as e:  # connection refused/reset, DNS, protocol errors
                last_error = f"connection_error_{type(e).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        reply = parse_chat_response(resp.json())
                    except (BadResponse, json.JSONDecodeError) as e:
                        return CallOutcome(None, "bad_response", attempt + 1, delays, str(e)[:200], request_key)
                    return CallOutcome(reply, None, attempt + 1, delays, "", request_key)
                last_error = f"http_{resp.status_code}"
                if resp.status_code not in RETRYABLE_STATUS:
                    detail = _error_message(resp)[:200]
                    log.debug("judge request %s: HTTP %s (%s), not retried", request_key[:12], resp.status_code, detail)
                    return CallOutcome(None, last_error, attempt + 1, delays, detail, request_key)
                retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            delay = max(backoff_delay(attempt, self.backoff_base, self.backoff_max,
                                      jitter_rng(self.seed, request_key, attempt)), retry_after)
            delays.append(delay)
            time.sleep(delay)
        return CallOutcome(None, f"retries_exhausted_{last_error}", self.max_retries + 1, delays, "", request_key)

    def complete_many(self, requests: Sequence[tuple[str, Sequence[dict]]], *, max_tokens: int, temperature: float = 0.0,
                      seed: int | None = None, json_mode: bool = True,
                      on_done: Callable[[CallOutcome], None] | None = None) -> list[CallOutcome]:
        """Run ``(request_key, messages)`` requests with at most ``concurrency`` in flight; results in input order."""
        if not requests:
            return []

        def one(item):
            key, msgs = item
            out = self.complete(key, msgs, max_tokens=max_tokens, temperature=temperature, seed=seed, json_mode=json_mode)
            if on_done is not None:
                on_done(out)
            return out

        if self.concurrency == 1 or len(requests) == 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="judge") as ex:
            return list(ex.map(one, requests))

    # --- reachability

    @property
    def base_url(self) -> str:
        """The endpoint's base URL (``.../v1``): :attr:`endpoint` without ``/chat/completions``."""
        return self.endpoint[: -len("/chat/completions")]

    def _probe(self, method: str, url: str, body: dict | None, jitter_key: str) -> tuple[Any, int | None, str, str, int]:
        """One probe request with the client's retry policy: (response or None, status or None, error, detail, attempts).

        Retried like a judge call (connection errors, timeouts, 408/409/429, 5xx) except 501,
        which means the route does not exist.
        """
        httpx = _require_httpx()
        client = self._client()
        last_error, detail, status = "unknown", "", None
        for attempt in range(self.max_retries + 1):
            retry_after = 0.0
            try:
                resp = client.request(method, url, json=body)
            except httpx.TimeoutException:
                last_error, detail, status = "timeout", f"no answer within {self.timeout:g} s", None
            except httpx.TransportError as e:
                last_error, detail, status = f"connection_error_{type(e).__name__}", (str(e) or type(e).__name__)[:200], None
            else:
                status = resp.status_code
                if status == 200:
                    return resp, 200, "", "", attempt + 1
                if status == 501 or status not in RETRYABLE_STATUS:
                    return resp, status, f"http_{status}", _error_message(resp)[:200], attempt + 1
                last_error, detail = f"http_{status}", _error_message(resp)[:200]
                retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            time.sleep(max(backoff_delay(attempt, self.backoff_base, self.backoff_max,
                                         jitter_rng(self.seed, jitter_key, attempt)), retry_after))
        return None, status, last_error, detail, self.max_retries + 1

    def check_endpoint(self) -> dict:
        """Fail fast, with a :class:`JudgeError` saying what to fix, when the endpoint cannot serve requests.

        Sends ``GET <base>/models`` (retried like a judge call). 200: reachable (a warning is
        logged when the list does not name :attr:`model`). 401/403: the key is missing or
        wrong. No answer, or 5xx/429 after the retries: the server is down or failing. Any
        other answer (404, 405, 501: servers without that route) is settled by a one-token
        chat completion to :attr:`endpoint`, which must answer 200. Returns what was
        checked: ``{"url", "via", "status", "models"}``.
        """
        models_url = self.base_url + "/models"
        resp, status, error, detail, attempts = self._probe("GET", models_url, None, "probe-models")
        if status == 200:
            models = _listed_models(resp)
            if models is not None and self.model not in models:
                log.warning("judge endpoint %s does not list model %r (it lists %s); requests may be refused",
                            self.base_url, self.model, ", ".join(map(repr, models[:5])) or "none")
            return {"url": self.base_url, "via": "models", "status": 200, "models": models}
        if status is None or status in (401, 403) or (status in RETRYABLE_STATUS and status != 501):
            raise JudgeError(self._unreachable_message(models_url, status, error, detail, attempts))
        body = self.request_body([{"role": "user", "content": "Reply with OK."}], max_tokens=1, temperature=0.0,
                                 seed=None, json_mode=False)
        resp, status, error, detail, attempts = self._probe("POST", self.endpoint, body, "probe-chat")
        if status == 200:
            return {"url": self.base_url, "via": "chat", "status": 200, "models": None}
        raise JudgeError(self._unreachable_message(self.endpoint, status, error, detail, attempts))

    def _unreachable_message(self, url: str, status: int | None, error: str, detail: str, attempts: int) -> str:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        said = f" ({detail})" if detail else ""
        if status is None:
            what = "timed out" if error == "timeout" else "could not connect"
            fix = (f"start an OpenAI-compatible server there (e.g. `thresher serve --model small --port "
                   f"{urlparse(self.endpoint).port or 8000}`) or pass its base URL as the judge param 'url'")
            return f"judge endpoint {self.base_url} is not reachable: {what} to {url}{tries}{said}; {fix}"
        if status in (401, 403):
            key = (f"${self.api_key_env} is set but was refused: check the key" if self.has_api_key
                   else f"set the API key in ${self.api_key_env} (param 'api_key_env' names the variable)")
            return f"judge endpoint {self.base_url} refused us: HTTP {status} from {url}{said}; {key}"
        if status == 404:
            fix = (f"check that 'url' is the base URL (ending in /v1, e.g. http://127.0.0.1:8000/v1) and that the "
                   f"server serves model {self.model!r} (param 'model')")
        elif status >= 500 or status == 429:
            fix = "the server is failing or overloaded: check its log, or restart it (`thresher serve ...`)"
        else:
            fix = f"check the judge params 'url' and 'model' ({self.model!r})"
        return f"judge endpoint {self.base_url} cannot serve requests: HTTP {status} from {url}{tries}{said}; {fix}"


class BadResponse(JudgeError):
    """An HTTP 200 answer whose body is not an OpenAI chat completion."""


def parse_chat_response(payload: Any) -> ChatReply:
    """The first choice's content, finish reason and usage of an OpenAI chat-completions answer."""
    if not isinstance(payload, dict):
        raise BadResponse("the response body is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadResponse("the response has no 'choices'")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BadResponse("choices[0] has no 'message'")
    content = message.get("content")
    if content is None:  # e.g. a refusal: an empty reply, which the judge counts as a failure
        content = ""
    if not isinstance(content, str):
        raise BadResponse(f"choices[0].message.content is a {type(content).__name__}, expected a string")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}

    def count(name: str) -> int:
        v = usage.get(name, 0)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    finish = choices[0].get("finish_reason")
    return ChatReply(content, finish if isinstance(finish, str) else None, count("prompt_tokens"), count("completion_tokens"))


def _listed_models(resp) -> list[str] | None:
    """The model ids of a ``/models`` answer, or None when the body is not such a list."""
    try:
        data = resp.json().get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]


def _retry_after_seconds(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP)
    except ValueError:  # an HTTP date: fall back to our own backoff
        return 0.0


def _error_message(resp) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message", "")) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):  # not JSON, or JSON without an error object
        return resp.text[:200]


# --------------------------------------------------------------------------- cache


def reply_cache_key(prompt_id: str, model: str, messages: Sequence[dict], generation: dict, *,
                    endpoint: str | None = None) -> str:
    """sha256 over (prompt id, endpoint model, the exact messages sent, generation params and, when
    given, the endpoint URL -- judge signals give it, so a reply from another server is never reused)."""
    payload = {"prompt": prompt_id, "model": model, "messages": list(messages), "generation": generation}
    if endpoint is not None:
        payload["endpoint"] = endpoint
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    """Endpoint replies in an append-only JSONL file, one record per line.

    Location: ``<THRESHER_CACHE or ~/.cache/thresher>/judge/<prompt id>.jsonl`` unless a
    signal's ``cache_dir`` param says otherwise (the signal store does not reach signals,
    so the thresher cache is the shared place). A record holds the cache key (see
    :func:`reply_cache_key`: prompt id, endpoint model, the exact messages, the
    generation params and, for judge signals, the endpoint URL -- hashed), the prompt id,
    the endpoint model, the example's content hash, the raw reply text, finish reason and
    token usage -- never the URL in clear or an API key.

    Only replies are cached (HTTP 200), valid or not, each as soon as it arrives: the
    reply is parsed again on every read, so a parser fix applies without new calls.
    Transport failures are not cached, so a rerun asks again exactly the examples whose
    request failed. Appends hold an exclusive ``flock`` so several processes
    (Ray workers) can share the file; a torn or unreadable line is skipped and counted in
    ``corrupt_lines`` (and logged) -- that example is simply asked again.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.corrupt_lines = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            _flock(f, shared=True)
            text = f.read()
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec, problem = None, str(e)
            else:
                ok = isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("reply"), str)
                problem = "" if ok else "not a record with string 'key' and 'reply'"
            if problem:
                self.corrupt_lines += 1
                log.warning("judge cache %s line %d is unreadable (%s); that example will be asked again", self.path, lineno, problem)
                continue
            self.entries[rec["key"]] = rec

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, record: dict) -> None:
        if "key" not in record or "reply" not in record:
            raise ValueError("a judge cache record needs 'key' and 'reply'")
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                _flock(f, shared=False)
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.entries[record["key"]] = record


def _flock(f, shared: bool) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: single-process use only
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)


# --------------------------------------------------------------------------- run statistics


@dataclass
class JudgeStats:
    """What a judge signal did, for the cost ledger. Invariants (checked by :meth:`check`):

    ``examples = cache_hits + duplicates + requests``; ``requests = replies + failed_requests``;
    ``calls = requests + retries``; ``failures = transport_failures + parse_failures``;
    ``sum(failure_reasons.values()) = failures``. Failures count examples: a duplicate of a
    failed request is a failed example too (``transport_failures >= failed_requests``).
    """

    examples: int = 0  # examples judged (rows filled)
    cache_hits: int = 0  # answered from the reply cache
    duplicates: int = 0  # identical to another example of the same batch: asked once, reused
    requests: int = 0  # distinct requests sent to the endpoint
    calls: int = 0  # HTTP attempts, retries included
    retries: int = 0
    replies: int = 0  # requests that got an HTTP 200 reply
    failed_requests: int = 0  # requests without a reply (non-retryable status, retries exhausted, bad body)
    transport_failures: int = 0  # examples left without a reply (failed requests and their duplicates)
    parse_failures: int = 0  # examples whose reply (fresh, cached or shared) failed strict validation
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    backoff_seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return self.transport_failures + self.parse_failures

    @property
    def succeeded(self) -> int:
        return self.examples - self.failures

    def count_failure(self, reason: str, transport: bool) -> None:
        if transport:
            self.transport_failures += 1
        else:
            self.parse_failures += 1
        self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1

    def check(self) -> None:
        problems = []
        if self.examples != self.cache_hits + self.duplicates + self.requests:
            problems.append("examples != cache_hits + duplicates + requests")
        if self.requests != self.replies + self.failed_requests:
            problems.append("requests != replies + failed_requests")
        if self.calls != self.requests + self.retries:
            problems.append("calls != requests + retries")
        if sum(self.failure_reasons.values()) != self.failures:
            problems.append("failure reasons do not add up to failures")
        if problems:
            raise AssertionError(f"judge stats do not add up ({'; '.join(problems)}): {self.as_dict()}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["failures"] = self.failures
        d["succeeded"] = self.succeeded
        return d

    def ledger_entry(self, label: str, key: str = ""):
        """A :class:`thresher.data.ledger.LedgerEntry` of kind ``judge`` (runs = requests sent)."""

        return LedgerEntry(kind="judge", label=label, runs=self.requests, examples=self.examples,
                           tokens=self.prompt_tokens + self.completion_tokens, seconds=self.seconds,
                           cached=self.requests == 0 and self.examples > 0, key=key, extra=self.as_dict())
