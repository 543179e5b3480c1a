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
from pydantic import BaseModel, ConfigDict, ValidationError

from ..store import SignalKey

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

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as e:
            raise ValueError(f"signal {self.name!r}: invalid params: {e}") from None
        self._ready = False

    # --- identity
    def model_id(self) -> str | None:
        """The model a signal depends on (part of the cache key), if any."""
        return None

    def key_params(self) -> dict:
        return self.params.model_dump(mode="json")

    def key(self, pool) -> SignalKey:
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


SIGNALS: dict[str, type[Signal]] = {}
COLUMN_OWNERS: dict[str, str] = {}


def register_signal(cls: type[Signal]) -> type[Signal]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in SIGNALS and SIGNALS[cls.name] is not cls:
        raise ValueError(f"signal {cls.name!r} is already registered by {SIGNALS[cls.name].__name__}")
    SIGNALS[cls.name] = cls
    for c in cls.columns:
        owner = COLUMN_OWNERS.get(c)
        if owner is not None and owner != cls.name:
            raise ValueError(f"column {c!r} of signal {cls.name!r} is already produced by {owner!r}")
        COLUMN_OWNERS[c] = cls.name
    return cls


def resolve(name: str) -> tuple[type[Signal], str | None]:
    """A signal name or one of its columns -> (signal class, column or None)."""
    _load_builtin()
    if name in SIGNALS:
        return SIGNALS[name], None
    if name in COLUMN_OWNERS:
        return SIGNALS[COLUMN_OWNERS[name]], name
    known = sorted(set(SIGNALS) | set(COLUMN_OWNERS))
    raise KeyError(f"unknown signal {name!r}; known signals and columns: {', '.join(known)}")


def make_signal(name: str, **params) -> Signal:
    cls, _ = resolve(name)
    accepted = set(cls.Params.model_fields)
    return cls(**{k: v for k, v in params.items() if k in accepted})


def list_signals() -> list[dict]:
    _load_builtin()
    return [cls().describe() if _constructible(cls) else {"name": cls.name, "description": cls.description, "columns": list(cls.columns)} for cls in SIGNALS.values()]


def _constructible(cls) -> bool:
    try:
        cls()
        return True
    except ValueError:
        return False


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in ("text", "lm", "embed", "geometry", "dedup", "judge", "heuristics", "reward"):
        try:
            importlib.import_module(f"thresher.signals.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"thresher.signals.{mod}":
                raise
