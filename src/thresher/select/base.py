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
from pydantic import BaseModel, ConfigDict

from thresher.data.io import atomic_write_json
from thresher.data.pool import Pool, write_jsonl
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal
from thresher.errors import ConfigError
from thresher.params import validate_params
from thresher.registry import Registry
from thresher.signals.base import VECTORS, Signal, make_signal, resolve

# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """A subset size: a fraction of the pool (0 < b <= 1) or a count (an integer >= 1).

    How a typed budget reads: ``0.3`` and ``30%`` are fractions; ``1500`` is a count; a
    number with a decimal point up to 1 is a fraction, so ``1.0`` (and ``100%``) is the
    whole pool while ``1`` is one row; ``1500.0`` is a count. A count larger than the pool
    selects the whole pool and says so (:meth:`describe`, ``Selection.budget_note``).
    """

    value: float
    is_fraction: bool

    @classmethod
    def parse(cls, b: str | float | int | Budget) -> Budget:
        if isinstance(b, Budget):
            return b
        if isinstance(b, str):
            s = b.strip()
            if s.endswith("%"):
                try:
                    pct = float(s[:-1])
                except ValueError:
                    raise ConfigError(f"budget {b!r}: expected a fraction like 0.3, a percentage like 30% or a count like 1500") from None
                if not 0 < pct <= 100:
                    raise ConfigError(f"budget {b!r}: a percentage must be in (0%, 100%]")
                return cls.parse(pct / 100)
            try:
                b = int(s) if s.isdigit() else float(s)
            except ValueError:
                raise ConfigError(f"budget {b!r}: expected a fraction like 0.3, a percentage like 30% or a count like 1500") from None
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ConfigError(f"budget {b!r}: must be a number")
        if isinstance(b, int) or (isinstance(b, float) and b > 1 and float(b).is_integer()):
            if b < 1:
                raise ConfigError(f"budget {b}: a count must be >= 1")
            return cls(float(int(b)), False)
        if isinstance(b, float) and 0 < b <= 1:
            return cls(b, True)
        raise ConfigError(f"budget {b!r}: a fraction must be in (0, 1], a count an integer >= 1")

    def size(self, n: int) -> int:
        if self.is_fraction:
            return max(1, min(n, int(round(self.value * n))))
        return min(n, int(self.value))

    def describe(self, n: int) -> str:
        """The budget resolved on a pool of ``n`` rows, e.g. ``budget 1.0 = 100% of 2000 = 2000 rows``."""
        k = self.size(n)
        rows = f"{k} row{'s' if k != 1 else ''}"
        if self.is_fraction:
            return f"budget {self} = {self.value * 100:g}% of {n} = {rows}"
        if self.value > n:
            return f"budget {self} > pool {n}: selecting all {rows}"
        return f"budget {self} = {rows} of {n}"

    def __str__(self) -> str:
        # a fraction always shows as one (1.0, never 1, which would read back as a count of one row)
        if self.is_fraction:
            return f"{self.value:.1f}" if float(self.value).is_integer() else f"{self.value:g}"
        return str(int(self.value))


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
    #: the budget resolved on the pool (rows asked for), and what the user must know about it:
    #: a count above the pool size, or a method that returned a different size (empty when neither)
    n_requested: int | None = None
    budget_note: str = ""
    #: where the method wrote its plots, traces and reports (None when it wrote nothing)
    artifacts_dir: str | None = None
    #: what decontamination excluded before selection (test overlap) and found (dev overlap); see
    #: :func:`thresher.decontam.exclude_test_overlap` (None: no task was given)
    decontamination: dict | None = None

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
        meta = self.meta()
        meta["ids"] = self.ids
        atomic_write_json(meta_path, meta)
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
        signal = signal.for_pool(self.pool)  # a scorer "auto" is the model it resolves to here (named in the hint below)
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


class SubsetSignalView(SignalView):
    """The signals of ``parent``'s pool restricted to ``pool``, a subset of it (e.g. the pool
    without its test-contaminated examples): reads what is stored for the parent pool and keeps
    the rows of ``pool``'s ids, in ``pool``'s order. Pool-scope values (cluster and group ids)
    are the parent pool's: labels, still comparable with each other."""

    def __init__(self, pool: Pool, parent: SignalView):
        super().__init__(pool, parent.store)
        self.parent = parent
        self._rows = np.asarray(parent.pool.positions(pool.ids), dtype=np.int64)

    def _read(self, signal: Signal) -> dict[str, Any]:
        key = signal.key(self.parent.pool)
        if key.digest not in self._cache:
            self._cache[key.digest] = {k: np.asarray(v)[self._rows] for k, v in self.parent._read(signal).items()}
        return self._cache[key.digest]


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
    #: set by ``run()`` of a resumable method: the work done for this selection in earlier
    #: sessions that it replayed from its trace instead of redoing (per ledger kind, the
    #: fields of :meth:`CostLedger.summary`); None for a method that never replays
    replayed_cost: dict | None = None

    def __init__(self, **params: Any):
        self.params = validate_params(self.Params, params, f"selector {self.name!r}")

    def required_signals(self) -> list[Signal]:
        return []

    def run(self, pool: Pool, signals: SignalView, k: int, *, task=None, seed: int = 0, oracle=None) -> tuple[list[str], dict]:
        """Return (ids in selection order, diagnostics). Subclasses implement this."""
        raise TypeError(f"{type(self).__name__} does not implement run()")

    def select(self, pool: Pool, signals: SignalView, budget, *, task=None, seed: int = 0, oracle=None,
               artifacts_dir: str | os.PathLike | None = None) -> Selection:
        """Run the method. ``artifacts_dir`` (optional) is where a method may write its plots,
        traces and reports; it lists what it wrote in ``diagnostics["artifacts"]`` (paths
        relative to that folder). A folder this call created and the method left empty is removed.

        The selection records the resolved budget (``n_requested`` rows) and, in
        ``budget_note``, a count larger than the pool (the whole pool is selected) or a method
        that returned another number of rows than requested, and why."""
        b = Budget.parse(budget)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        created_dir = False
        if self.artifacts_dir:
            created_dir = not self.artifacts_dir.exists()
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
        self.replayed_cost = None
        n = len(pool)
        k = b.size(n)
        t0 = time.perf_counter()
        ids, diag = self.run(pool, signals, k, task=task, seed=seed, oracle=oracle)
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"selector {self.name!r} returned duplicate ids")
        cost = selection_cost(oracle.ledger.summary(mark) if oracle is not None else {}, self.replayed_cost)
        wrote = None
        if self.artifacts_dir is not None and self.artifacts_dir.is_dir():
            if any(self.artifacts_dir.iterdir()):
                wrote = str(self.artifacts_dir)
            elif created_dir:
                self.artifacts_dir.rmdir()
        return Selection(ids=list(ids), method=self.name, params=self.params.model_dump(mode="json"), budget=str(b), seed=seed,
                         pool_fingerprint=pool.fingerprint, pool_size=n, cost=cost, diagnostics=diag,
                         seconds=time.perf_counter() - t0, n_requested=k,
                         budget_note=self.budget_note(b, n, k, len(ids), diag), artifacts_dir=wrote)

    def budget_note(self, budget: Budget, n: int, k: int, n_selected: int, diagnostics: dict) -> str:
        """What the user must know about the budget ('' when the method selected exactly k of a
        budget that fits the pool). Methods whose size is not the budget say why in
        ``diagnostics["budget_note"]``; AutoSelection's ``budget_mode`` is named."""
        notes = []
        if not budget.is_fraction and budget.value > n:
            notes.append(f"budget {budget} > pool {n}: selecting all")
        if n_selected != k:
            why = (diagnostics.get("budget_note") or diagnostics.get("note")) if isinstance(diagnostics, dict) else None
            mode = diagnostics.get("budget_mode") if isinstance(diagnostics, dict) else None
            if not why and mode == "free":
                why = "budget_mode=free: the recipe sets the subset size; -p budget_mode=cap caps it at the budget"
            elif not why and mode == "cap":
                why = "budget_mode=cap caps every subset at the budget, but the best recipe kept fewer rows"
            notes.append(f"budget not honoured: {self.name} selected {n_selected} of the {k} rows requested"
                         + (f" ({why})" if why else ""))
        return "; ".join(notes)


COST_FIELDS = ("calls", "runs", "cached", "examples", "tokens", "seconds")


def selection_cost(session: dict, replayed: dict | None) -> dict:
    """A selection's cost: all the work done for it, in this session and in earlier ones.

    ``session`` is the ledger summary of this session (:meth:`CostLedger.summary` since the
    selection began); ``replayed`` (same shape, from a resumable method's trace) is the work
    of earlier sessions that this one replayed instead of redoing. Without ``replayed`` the
    cost is ``session`` as it is. With it, every kind's fields are the totals over both, and
    ``calls``, ``runs`` and ``seconds`` are also split into ``*_this_session`` and
    ``*_replayed_from_trace``. Nothing is counted twice: a replayed step never reaches the
    ledger, and a step done in this session is never in ``replayed``.
    """
    if replayed is None:
        return session
    out: dict[str, dict] = {}
    for kind in list(session) + [k for k in replayed if k not in session]:
        now, before = session.get(kind, {}), replayed.get(kind, {})
        row = {f: now.get(f, 0) + before.get(f, 0) for f in COST_FIELDS}
        row["seconds"] = float(row["seconds"])
        for f in ("calls", "runs", "seconds"):
            row[f"{f}_this_session"] = now.get(f, 0)
            row[f"{f}_replayed_from_trace"] = before.get(f, 0)
        row.update({f: v for f, v in before.items() if f not in COST_FIELDS})  # e.g. lines without a cost record
        out[kind] = row
    return out


#: every selection method by name; the built-in methods are imported on first access
SELECTORS: Registry[type[Selector]] = Registry("selection method", (
    "thresher.select.baselines", "thresher.select.thtb.selector", "thresher.select.tmap.selector",
    "thresher.select.autoselection", "thresher.select.harp.selector"))
register_selector = SELECTORS.register


def selector_class(name: str) -> type[Selector]:
    return SELECTORS.lookup(name)


def make_selector(name: str, **params) -> Selector:
    return selector_class(name)(**params)


def list_selectors() -> list[dict]:
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
