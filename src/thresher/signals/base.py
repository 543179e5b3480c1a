"""Signals: per-example numbers (or vectors) computed once and cached. A signal never decides.

A signal is a class registered by name with a ``version``, validated ``Params`` (pydantic)
and either

- ``scope = "example"``: ``compute(records) -> {column: array}``, a pure map over a batch
  of pool records (run shard by shard, resumable, on the local or the Ray engine); or
- ``scope = "pool"``: ``compute_pool(pool, inputs) -> {column: array}`` over the whole pool
  (clustering, dedup groups, normalisations), with its ``requires()`` signals computed first
  and passed in as ``inputs``.

Vector signals (``kind = "vector"``) also return ``"__vectors__"``: a float32 matrix
stored beside the ids, not as Parquet cells.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from thresher.data.store import SignalKey
from thresher.errors import UnknownNameError
from thresher.models.load import resolve_scorer
from thresher.params import validate_params
from thresher.registry import Registry
from thresher.tasks import get_task

VECTORS = "__vectors__"


class SignalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal:
    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    scope: ClassVar[str] = "example"  # or "pool"
    kind: ClassVar[str] = "scalar"  # or "vector"
    columns: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    Params: ClassVar[type[SignalParams]] = SignalParams
    # example-scope signals that load a model can ask for a larger shard or a process of its own
    default_shard_size: ClassVar[int] = 2048
    heavy: ClassVar[bool] = False
    #: CPU-bound and model-free: the local engine computes its shards in one forked process per core
    #: (:mod:`thresher.engine.processes`); a subclass may make it a property of its params
    process_shards: ClassVar[bool] = False
    #: the ``model`` param is the scorer: ``model="auto"`` resolves on the pool (:meth:`for_pool`)
    scorer_model: ClassVar[bool] = False
    #: the param naming the sentence encoder (where there is one): ``"auto"`` resolves on the pool (:meth:`for_pool`)
    encoder_param: ClassVar[str] = "embed_model"

    def __init__(self, **params: Any):
        self.params = validate_params(self.Params, params, f"signal {self.name!r}")
        self._ready = False
        #: set by the engine while a shard computes: called with the examples done so far (:meth:`advance`)
        self.on_progress = None

    def for_pool(self, pool) -> Signal:
        """This signal as it runs on ``pool``: a scorer ``model="auto"`` becomes the model it
        resolves to there (:func:`thresher.models.load.resolve_scorer`) and a sentence encoder
        ``"auto"`` (the :attr:`encoder_param`) the encoder it resolves to for the pool's size
        (:func:`thresher.signals.embed.resolve_encoder`), so ``auto`` never enters a cache
        key; otherwise the signal itself."""
        update: dict[str, Any] = {}
        if self.scorer_model and getattr(self.params, "model", None) == "auto":
            update["model"] = resolve_scorer("auto", pool)
        if getattr(self.params, self.encoder_param, None) == "auto":
            from thresher.signals.embed import resolve_encoder

            update[self.encoder_param] = resolve_encoder("auto", len(pool) if pool is not None else None)
        return type(self)(**{**self.params.model_dump(), **update}) if update else self

    def advance(self, n: float) -> None:
        """Report ``n`` more examples of the current shard done (for the engine's progress bar)."""
        cb = getattr(self, "on_progress", None)
        if cb is not None:
            cb(n)

    # --- identity
    def model_id(self) -> str | None:
        """The model a signal depends on (part of the cache key), if any."""
        return None

    def key_params(self) -> dict:
        return self.params.model_dump(mode="json")

    def key(self, pool) -> SignalKey:
        sig = self.for_pool(pool)
        if sig is not self:
            return sig.key(pool)
        return SignalKey(pool.fingerprint, self.name, self.version, self.key_params(), self.model_id())

    def requires(self) -> list["Signal"]:
        return []

    # --- work
    def setup(self) -> None:
        """Load heavy things once per worker (models, encoders)."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        raise TypeError(f"signal {self.name!r} is pool-scoped: use compute_pool")

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        raise TypeError(f"signal {self.name!r} is example-scoped: use compute")

    def describe(self) -> dict:
        schema = self.Params.model_json_schema().get("properties", {})
        params = {k: {"default": v.get("default"), "type": v.get("type", v.get("anyOf", "")), "description": v.get("description", "")} for k, v in schema.items()}
        return {"name": self.name, "version": self.version, "family": self.family, "scope": self.scope, "kind": self.kind,
                "columns": list(self.columns), "description": self.description, "params": params}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params.model_dump()})"


class ReadsTaskDev:
    """Mixin for signals computed against a target task's dev split (params ``task`` and
    ``task_params``): :meth:`dev` loads the task's dev view once; the test split stays sealed."""

    _dev = None

    def dev(self):
        if self._dev is None:
            self._dev = get_task(self.params.task, **self.params.task_params).dev_view()
        return self._dev

#: every signal class by name; the built-in families are imported on first access
SIGNALS: Registry[type[Signal]] = Registry("signal", tuple(f"thresher.signals.{m}" for m in (
    "text", "lm", "embed", "hidden", "geometry", "dedup", "judge", "heuristics", "reward", "dynamics")))
#: column name -> the signal that produces it (a column belongs to exactly one signal)
COLUMN_OWNERS: dict[str, str] = {}


def register_signal(cls: type[Signal]) -> type[Signal]:
    SIGNALS.register(cls)
    for c in cls.columns:
        owner = COLUMN_OWNERS.get(c)
        if owner is not None and owner != cls.name:
            raise ValueError(f"column {c!r} of signal {cls.name!r} is already produced by {owner!r}")
        COLUMN_OWNERS[c] = cls.name
    return cls


def resolve(name: str) -> tuple[type[Signal], str | None]:
    """A signal name or one of its columns -> (signal class, column or None)."""
    if name in SIGNALS:
        return SIGNALS[name], None
    if name in COLUMN_OWNERS:
        return SIGNALS[COLUMN_OWNERS[name]], name
    raise UnknownNameError(SIGNALS.unknown_message(name, extra=list(COLUMN_OWNERS)))


def make_signal(name: str, **params) -> Signal:
    """The signal ``name`` (or the owner of column ``name``) with ``params``; an unknown param
    is an error naming the accepted ones (a misspelt param must never compute the default)."""
    cls, _ = resolve(name)
    return cls(**params)


def list_signals() -> list[dict]:
    return [cls().describe() if _constructible(cls) else {"name": cls.name, "description": cls.description, "columns": list(cls.columns)} for cls in SIGNALS.values()]


def _constructible(cls) -> bool:
    try:
        cls()
        return True
    except ValueError:
        return False

