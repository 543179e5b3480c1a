"""``thresher serve``: an OpenAI-compatible chat-completions server over any causal LM thresher loads.

Any spec :func:`thresher.models.load.load_model` accepts works (``small`` =
SmolLM2-135M-Instruct, a hub id, a local directory, a ``.gguf`` file); so does an already
loaded :class:`~thresher.models.load.LoadedModel`. The point is to give the LLM-judge
signals (:mod:`thresher.signals.judge`) a local, offline, reproducible endpoint; any
OpenAI client can use it too.

Endpoints
    ``POST /v1/chat/completions``: ``model`` (must be the served name), ``messages``
    (system/user/assistant, ``developer`` is taken as system; content a string or a list
    of text parts), ``max_tokens`` (or ``max_completion_tokens``; default 512, capped by
    the context window), ``temperature`` (0 = greedy; OpenAI's default 1 otherwise),
    ``top_p``, ``seed``, ``n`` (1 only), ``stream`` (false only), ``stop``,
    ``response_format`` (``text`` or ``json_object``: accepted, not enforced by a grammar --
    the judge validates replies strictly anyway), ``user`` (ignored). Any other field is a
    400 naming it. The answer follows the OpenAI schema, with ``usage`` token counts and
    ``finish_reason`` ``stop`` (end-of-sequence token or a stop string) or ``length``.
    ``GET /v1/models``: the served model. ``GET /health``: status and request counters
    (``requests``, ``in_flight``, ``max_in_flight``: the largest number of chat requests
    inside the server at once, waiting or generating).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
bad request (a prompt longer than the context window included), 401 for a missing or
wrong key, 404 for an unknown model name, 500 if generation itself fails.

**Requests are serialised, not batched (decision).** One generation runs at a time, in
arrival order, always on the same dedicated worker thread (a one-thread executor); the
others wait inside the server and count as in flight. One thread matters on CPU: torch's
OpenMP pool belongs to the calling thread, and alternating between pool threads left
an idle pool spinning against the busy one -- measured 5-10x slower generation with two
requests in flight. Batching co-arriving requests would raise throughput,
but with padding the float sums of a request depend on what else shared its batch, so a
greedy reply could change with the load -- a judge endpoint whose answers depend on
traffic defeats caching and reproducibility. Greedy requests are deterministic; sampled
requests with a ``seed`` are reproducible (without one, the server draws a seed from its
own seeded sequence).

**API key.** When the environment variable ``THRESHER_SERVE_KEY`` (name configurable) is
set and non-empty at start-up, every ``/v1`` request must carry ``Authorization: Bearer
<key>``; ``/health`` stays open. The key is never logged. The server binds to loopback
(127.0.0.1) unless told otherwise, and warns when it listens on another address without
a key.
"""
import asyncio
import hmac
import logging
import os
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thresher.errors import ThresherError
from thresher.models.chat import TemplateError, encode_prompt
from thresher.models.load import LoadedModel, load_model

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
SERVE_KEY_ENV = "THRESHER_SERVE_KEY"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"`thresher serve` needs {module}: pip install 'thresher[serve]'") from e


# --------------------------------------------------------------------------- request schema


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object"]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported: send stream=false")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops or None


class ServeError(ThresherError):
    """An error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- generation


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class ChatGenerator:
    """Chat replies from one loaded model, one request at a time.

    :meth:`generate` holds a lock (safe to call from any thread); the server submits every
    request to :attr:`worker`, a one-thread executor, so the model always runs on the same
    thread, in arrival order.
    """

    def __init__(self, loaded, served_name: str, *, seed: int = 0, default_max_tokens: int = DEFAULT_MAX_TOKENS):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = served_name
        self.default_max_tokens = default_max_tokens
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        pad = self.model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thresher-generate")

    def close(self) -> None:
        self.worker.shutdown(wait=True)

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int | None, temperature: float, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None) -> Generation:
        import torch
        from jinja2 import TemplateError as JinjaTemplateError

        try:
            ids = encode_prompt(self.tokenizer, messages)
        except (TemplateError, JinjaTemplateError, ValueError) as e:  # e.g. a template that needs alternating roles
            raise ServeError(400, f"the chat template rejected the messages: {e}", param="messages") from None
        n_prompt = len(ids)
        ctx = self.context_length
        if max_tokens is None:
            max_new = self.default_max_tokens if ctx is None else min(self.default_max_tokens, ctx - n_prompt)
        else:
            max_new = max_tokens
        if ctx is not None and (n_prompt >= ctx or n_prompt + max_new > ctx):
            raise ServeError(400, f"this model's context window is {ctx} tokens; the prompt has {n_prompt} and "
                                  f"{max_new} more were requested", param="messages", code="context_length_exceeded")
        # explicit values, so a checkpoint's generation_config (repetition penalty, top-k...) cannot change the
        # OpenAI semantics of temperature / top_p
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.pad_id, "num_beams": 1,
                                  "repetition_penalty": 1.0}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        attention = torch.ones_like(input_ids)
        with self._lock, torch.inference_mode():
            if temperature > 0:
                s = seed if seed is not None else self._seeds.randrange(2**31)
                devices = [device.index or 0] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(s)
                    out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            else:
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = out[0, n_prompt:].tolist()
        finish = "length"
        if new and new[-1] in self.eos_ids:
            finish = "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if stop:
            cuts = [text.find(s) for s in stop if s in text]
            if cuts:
                text = text[: min(cuts)]
                finish = "stop"
        return Generation(text, finish, n_prompt, len(new))


# --------------------------------------------------------------------------- the app


class ServerCounters:
    """Request counters shown by ``/health`` (updated on the event loop only)."""

    def __init__(self):
        self.requests = 0
        self.completed = 0
        self.failed = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "completed": self.completed, "failed": self.failed,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}


def build_app(generator: ChatGenerator, api_key: str | None = None):
    """The FastAPI application serving ``generator``; ``api_key`` (if any) is required on ``/v1`` routes."""
    fastapi = _require("fastapi")
    from fastapi import Depends, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI(title="thresher serve", docs_url=None, redoc_url=None, openapi_url=None)
    counters = ServerCounters()
    app.state.counters = counters
    created = int(time.time())

    @app.exception_handler(ServeError)
    async def _serve_error(_request, exc: ServeError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs)
        return JSONResponse(ServeError(400, msg or "invalid request", param=param).body(), status_code=400)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ServeError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                             type_="authentication_error", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": generator.name, "object": "model", "created": created, "owned_by": "thresher"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": generator.name, "batching": "serialised", **counters.as_dict()}

    auth = [Depends(check_key)]  # a dependency runs before the body is validated: no key -> 401, not 400

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_name}", dependencies=auth)
    async def model(model_name: str):
        if model_name != generator.name:
            raise ServeError(404, f"model {model_name!r} is not served here; this server serves {generator.name!r}",
                             param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest):
        if body.model != generator.name:
            raise ServeError(404, f"model {body.model!r} is not served here; this server serves {generator.name!r}",
                             param="model", code="model_not_found")
        counters.requests += 1
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                generator.worker,
                lambda: generator.generate([m.as_dict() for m in body.messages],
                                           max_tokens=body.max_tokens or body.max_completion_tokens,
                                           temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                                           stop=body.stop))
        except ServeError:
            counters.failed += 1
            raise
        except Exception as e:
            counters.failed += 1
            log.exception("generation failed")
            raise ServeError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error") from None
        finally:
            counters.in_flight -= 1
        counters.completed += 1
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": generator.name,
            "system_fingerprint": f"thresher-{generator.loaded.model_id}"[:64],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        }

    return app


# --------------------------------------------------------------------------- running it


def load_generator(model, *, served_name: str | None = None, seed: int = 0,
                   default_max_tokens: int = DEFAULT_MAX_TOKENS) -> ChatGenerator:
    """A :class:`ChatGenerator` over a model spec (loaded with :func:`load_model`) or a ``LoadedModel``.

    The served name defaults to the model's identity (``small`` for the small tier, the
    spec for hub ids, ``<dir name>-<hash>`` for a local directory): that is the name
    clients send as ``model`` and the judge signals put in their cache key.
    """

    loaded = model if isinstance(model, LoadedModel) else load_model(str(model), seed=seed)
    return ChatGenerator(loaded, served_name or loaded.model_id, seed=seed, default_max_tokens=default_max_tokens)


def _api_key_from_env(api_key_env: str | None) -> str | None:
    return (os.environ.get(api_key_env) or None) if api_key_env else None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(model="small", host: str = "127.0.0.1", port: int = 8000, *, served_name: str | None = None,
          api_key_env: str = SERVE_KEY_ENV, seed: int = 0, default_max_tokens: int = DEFAULT_MAX_TOKENS,
          log_level: str = "info") -> None:
    """Serve ``model`` on ``http://host:port/v1`` until interrupted (blocking).

    ``model``: any spec :func:`thresher.models.load.load_model` accepts, or a
    ``LoadedModel``. ``served_name``: the model name clients send (default: the model's
    identity, e.g. ``small``). ``api_key_env``: the environment variable whose value, when
    set, becomes the required bearer key.
    """
    uvicorn = _require("uvicorn")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    key = _api_key_from_env(api_key_env)
    if not _is_loopback(host) and not key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model; "
                    "set $%s to require one", host, api_key_env)
    generator = load_generator(model, served_name=served_name, seed=seed, default_max_tokens=default_max_tokens)
    log.info("serving %r as %r on http://%s:%d/v1 (requests serialised; key required: %s)", model, generator.name,
             host, port, bool(key))
    uvicorn.run(build_app(generator, api_key=key), host=host, port=port, log_level=log_level)


def start_server_in_thread(model, port: int = 0, *, host: str = "127.0.0.1", served_name: str | None = None,
                           api_key_env: str = SERVE_KEY_ENV, seed: int = 0, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                           log_level: str = "warning", startup_timeout: float = 60.0):
    """Start the server in a background thread; return ``(base_url, stop)``.

    ``port=0`` picks a free port. ``base_url`` is ``http://host:port/v1`` (what the judge's
    ``url`` param takes). ``stop()`` shuts the server down and joins the thread. For tests
    and notebooks; use :func:`serve` for a long-running server.
    """
    uvicorn = _require("uvicorn")
    generator = load_generator(model, served_name=served_name, seed=seed, default_max_tokens=default_max_tokens)
    app = build_app(generator, api_key=_api_key_from_env(api_key_env))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"thresher-serve-{bound_port}",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start within {startup_timeout:.0f} s")
        time.sleep(0.02)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        generator.close()

    return f"http://{url_host}:{bound_port}/v1", stop
