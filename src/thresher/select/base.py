"""Selectors: turn stored signals into a :class:`Selection`. A selector never scores.

Every method, now and later, has the same form::

    selector = make_selector(name, **params)
    selection = selector.select(pool, signals, budget, task=dev_task, seed=seed, oracle=dev_oracle)

``signals`` is a :class:`SignalView` that reads already-computed signals from the
store (it raises, naming the missing signal and the command that computes it, instead
of computing). ``task`` is the dev-only view of the target task; ``oracle`` (for search
methods) scores dev only.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..pool import Pool, write_jsonl
from ..signals.base import VECTORS, Signal, make_signal, resolve
from ..store import SignalStore


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """A subset size: a fraction of the pool (0 < b <= 1) or a count (an integer >= 1)."""

    value: float
    is_fraction: bool

    @classmethod
    def parse(cls, b: "str | float | int | Budget") -> "Budget":
        if isinstance(b, Budget):
            return b
        if isinstance(b, str):
            s = b.strip()
            if s.endswith("%"):
                return cls.parse(float(s[:-1]) / 100)
            try:
                b = int(s) if s.isdigit() else float(s)
            except ValueError:
                raise ValueError(f"budget {b!r}: expected a fraction like 0.3, a percentage like 30% or a count like 1500") from None
        if isinstance(b, bool):
            raise ValueError("budget must be a number")
        if isinstance(b, int) or (isinstance(b, float) and b > 1 and float(b).is_integer()):
            if b < 1:
                raise ValueError(f"budget {b}: a count must be >= 1")
            return cls(float(int(b)), False)
        if isinstance(b, float) and 0 < b <= 1:
            return cls(b, True)
        raise ValueError(f"budget {b!r}: a fraction must be in (0, 1], a count an integer >= 1")

    def size(self, n: int) -> int:
        if self.is_fraction:
            return max(1, min(n, int(round(self.value * n))))
        return min(n, int(self.value))

    def __str__(self) -> str:
        return f"{self.value:g}" if self.is_fraction else str(int(self.value))


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    ids: list[str]
    method: str
    params: dict
    budget: str
    seed: int
    pool_fingerprint: str
    pool_size: int
    cost: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    seconds: float = 0.0
    created: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return len(self.ids)

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("ids")
        d["n_selected"] = len(self.ids)
        return d

    def save(self, out: str | os.PathLike, pool: Pool) -> tuple[Path, Path]:
        """Write the selected records (JSONL, in selection order) and ``<out>.meta.json``, atomically."""
        out = Path(out)
        if pool.fingerprint != self.pool_fingerprint:
            raise ValueError("this selection was made on a different pool (fingerprint mismatch)")
        rows = [pool.get(i) for i in self.ids]
        write_jsonl(out, rows)
        meta_path = meta_path_for(out)
        tmp = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
        meta = self.meta()
        meta["ids"] = self.ids
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, meta_path)
        return out, meta_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Selection":
        p = Path(path)
        mp = p if p.name.endswith(".meta.json") else meta_path_for(p)
        d = json.loads(mp.read_text())
        d.pop("n_selected", None)
        return cls(**d)


def meta_path_for(out: Path) -> Path:
    name = out.name
    for suf in (".jsonl", ".json"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return out.with_name(name + ".meta.json")


# --------------------------------------------------------------------------- signal access


class SignalView:
    """Read-only access to stored signals for one pool. Never computes."""

    def __init__(self, pool: Pool, store: SignalStore):
        self.pool = pool
        self.store = store
        self._cache: dict[str, dict[str, Any]] = {}

    def _read(self, signal: Signal) -> dict[str, Any]:
        from ..engine import read_signal

        key = signal.key(self.pool)
        if key.digest not in self._cache:
            if not self.store.is_complete(key):
                params = " ".join(f"--param {k}={v}" for k, v in signal.key_params().items() if v is not None)
                raise KeyError(
                    f"signal {signal.name!r} with {signal.key_params()} is not in the store {self.store.root} for pool "
                    f"{self.pool.name!r}; compute it first: thresher score POOL --signals {signal.name} {params}".rstrip()
                )
            self._cache[key.digest] = read_signal(signal, self.pool, self.store)
        return self._cache[key.digest]

    def column(self, name: str, **signal_params) -> np.ndarray:
        """A scalar column (by column name, e.g. 'ifd'), aligned with pool order."""
        cls, col = resolve(name)
        if col is None:
            if len(cls.columns) != 1:
                raise KeyError(f"signal {name!r} has several columns {cls.columns}: name one")
            col = cls.columns[0]
        sig = make_signal(cls.name, **signal_params)
        return np.asarray(self._read(sig)[col])

    def signal(self, signal: Signal) -> dict[str, Any]:
        return self._read(signal)

    def vectors(self, name: str, **signal_params) -> np.ndarray:
        sig = make_signal(name, **signal_params)
        if sig.kind != "vector":
            raise KeyError(f"signal {name!r} is not a vector signal")
        return self._read(sig)[VECTORS]


# --------------------------------------------------------------------------- selectors


class SelectorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selector:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[SelectorParams]] = SelectorParams
    uses_oracle: ClassVar[bool] = False
    uses_task: ClassVar[bool] = False
    artifacts_dir: Path | None = None

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as e:
            raise ValueError(f"selector {self.name!r}: invalid params: {e}") from None

    def required_signals(self) -> list[Signal]:
        return []

    def run(self, pool: Pool, signals: SignalView, k: int, *, task=None, seed: int = 0, oracle=None) -> tuple[list[str], dict]:
        """Return (ids in selection order, diagnostics). Subclasses implement this."""
        raise TypeError(f"{type(self).__name__} does not implement run()")

    def select(self, pool: Pool, signals: SignalView, budget, *, task=None, seed: int = 0, oracle=None,
               artifacts_dir: str | os.PathLike | None = None) -> Selection:
        """Run the method. ``artifacts_dir`` (optional) is where a method may write its plots,
        traces and reports; it lists what it wrote in ``diagnostics["artifacts"]`` (paths
        relative to that folder)."""
        b = Budget.parse(budget)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        if self.artifacts_dir:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        if self.uses_task and task is None:
            raise ValueError(f"selector {self.name!r} needs the task's dev split (task=...)")
        if self.uses_oracle and oracle is None:
            raise ValueError(f"selector {self.name!r} needs an oracle (it measures subsets on dev)")
        if task is not None and hasattr(task, "_sealed_test"):
            task = task.dev_view()  # selection sees dev only
        if oracle is not None and hasattr(oracle, "score_test"):
            oracle = oracle.dev_view()
        mark = oracle.ledger.mark() if oracle is not None else 0
        t0 = time.perf_counter()
        ids, diag = self.run(pool, signals, b.size(len(pool)), task=task, seed=seed, oracle=oracle)
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"selector {self.name!r} returned duplicate ids")
        cost = oracle.ledger.summary(mark) if oracle is not None else {}
        return Selection(ids=list(ids), method=self.name, params=self.params.model_dump(mode="json"), budget=str(b), seed=seed,
                         pool_fingerprint=pool.fingerprint, pool_size=len(pool), cost=cost, diagnostics=diag,
                         seconds=time.perf_counter() - t0)


SELECTORS: dict[str, type[Selector]] = {}


def register_selector(cls: type[Selector]) -> type[Selector]:
    if cls.name in SELECTORS and SELECTORS[cls.name] is not cls:
        raise ValueError(f"selector {cls.name!r} is already registered")
    SELECTORS[cls.name] = cls
    return cls


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in ("baselines", "thtb", "tmap", "autoselection", "harp"):
        try:
            importlib.import_module(f"thresher.select.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"thresher.select.{mod}":
                raise


def selector_class(name: str) -> type[Selector]:
    _load_builtin()
    if name not in SELECTORS:
        raise KeyError(f"unknown selection method {name!r}; known: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]


def make_selector(name: str, **params) -> Selector:
    return selector_class(name)(**params)


def list_selectors() -> list[dict]:
    _load_builtin()
    return [{"name": n, "description": c.description, "params": list(c.Params.model_fields)} for n, c in sorted(SELECTORS.items())]


def unique_signals(signals) -> list:
    """Signals in order, each (name, key params) once: what a method asks the engine to compute."""
    out: dict[str, object] = {}
    for sig in signals:
        out.setdefault(json.dumps([sig.name, sig.key_params()], sort_keys=True, default=str), sig)
    return list(out.values())


def top_by(values: np.ndarray, ids: list[str], k: int, descending: bool = True) -> tuple[list[str], int]:
    """Top-k ids by value (NaN excluded and counted); ties broken by pool order (stable)."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    idx = np.nonzero(ok)[0]
    keyv = -v[idx] if descending else v[idx]
    order = idx[np.argsort(keyv, kind="stable")]
    return [ids[i] for i in order[:k]], int((~ok).sum())
