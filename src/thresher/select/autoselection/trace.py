"""What a recipe search records: the candidates it ranked, one :class:`Evaluation` per oracle
call with what that call cost, and the JSONL trace (a header line, then one line per
evaluation) that a rerun replays. See :mod:`thresher.select.autoselection.search` for how
the search uses them (resume, cost across sessions)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thresher.data.io import atomic_write_text
from thresher.select.autoselection.recipe import Execution, Recipe

TRACE_VERSION = 1


def _r(x, nd: int = 6):
    """``x`` rounded to ``nd`` decimals as a float; None stays None."""
    return None if x is None else round(float(x), nd)


@dataclass(eq=False)
class Candidate:
    """A proposed recipe, executed (its subset and state known) but not yet evaluated: the edit
    that made it and the surrogate's ``mu`` / ``sigma`` at it."""

    recipe: Recipe
    execution: Execution
    edit: dict
    mu: float | None = None
    sigma: float | None = None

    @property
    def ucb(self) -> float | None:
        return None if self.mu is None else self.mu + self._beta * self.sigma

    _beta: float = 1.5

    def summary(self, chosen: bool = False) -> dict:
        return {"recipe": self.recipe.to_list(), "describe": self.recipe.describe(), "edit": self.edit,
                "state": self.execution.state.to_dict(), "mu": _r(self.mu), "sigma": _r(self.sigma), "ucb": _r(self.ucb),
                "chosen": chosen}


@dataclass(eq=False)
class Evaluation:
    """One oracle evaluation of the search (one trace line)."""

    index: int
    phase: str  # warmup | edit | reseed | random
    trajectory: int
    recipe: Recipe
    execution: Execution
    score: float
    per_domain: dict
    cached: bool
    parent: int | None = None
    edit: dict | None = None
    mu: float | None = None
    sigma: float | None = None
    ucb: float | None = None
    candidates: list[dict] = field(default_factory=list)
    best_so_far: float = float("nan")
    seconds: float = 0.0
    replayed: bool = False
    llm: dict = field(default_factory=dict)
    #: what the oracle call cost when first done (see :func:`oracle_call_cost`)
    cost: dict = field(default_factory=dict)

    def line(self) -> dict:
        return {"kind": "evaluation", "index": self.index, "phase": self.phase, "trajectory": self.trajectory,
                "recipe": self.recipe.to_list(), "describe": self.recipe.describe(), "recipe_digest": self.recipe.digest(),
                "subset_digest": self.execution.subset_digest(), "n_selected": len(self.execution.ids),
                "state": self.execution.state.to_dict(), "steps": self.execution.steps, "mu": _r(self.mu),
                "sigma": _r(self.sigma), "ucb": _r(self.ucb), "score": self.score, "per_domain": self.per_domain,
                "cached": self.cached, "parent": self.parent, "edit": self.edit, "candidates": self.candidates,
                "best_so_far": self.best_so_far, "seconds": round(self.seconds, 3), "llm": self.llm, "cost": self.cost}


ORACLE_COST_FIELDS = ("calls", "runs", "cached", "examples", "tokens", "seconds")


def oracle_call_cost(score, ledger_summary: dict | None = None) -> dict:
    """What one oracle call cost: the ledger's account of it (``ledger_summary``: the
    ``"oracle"`` entry of :meth:`CostLedger.summary` over that call) when there is one, else
    from the :class:`Score` (a cached answer costs no run, examples, tokens or seconds)."""
    if ledger_summary:
        out = {f: ledger_summary.get(f, 0) for f in ORACLE_COST_FIELDS}
    elif score.cached:
        out = {"calls": 1, "runs": 0, "cached": 1, "examples": 0, "tokens": 0, "seconds": 0.0}
    else:
        out = {"calls": 1, "runs": 1, "cached": 0, "examples": int(score.n_examples), "tokens": int(score.tokens),
               "seconds": float(score.seconds)}
    out["seconds"] = round(float(out["seconds"]), 3)
    return out


def recorded_cost(line: dict) -> tuple[dict, bool]:
    """(cost, whether the line recorded it) of a trace evaluation line; a line written before
    the ``cost`` field counts one call, one run unless cached, and its wall seconds."""
    if isinstance(line.get("cost"), dict):
        return {f: line["cost"].get(f, 0) for f in ORACLE_COST_FIELDS}, True
    cached = bool(line.get("cached"))
    return {"calls": 1, "runs": 0 if cached else 1, "cached": int(cached), "examples": 0, "tokens": 0,
            "seconds": 0.0 if cached else float(line.get("seconds") or 0.0)}, False


def oracle_identity(oracle) -> dict:
    """The oracle's model and training-config key, as the trace header records them."""
    train = getattr(oracle, "train", None)
    return {"model": str(getattr(oracle, "model", type(oracle).__name__)),
            "train": train.key() if hasattr(train, "key") else None}


class Trace:
    """The search trace: a header line, then one JSON line per evaluation; replayable."""

    def __init__(self, path: str | os.PathLike | None, header: dict):
        self.path = Path(path) if path else None
        self.header = header
        self.replay: list[dict] = []
        self.dropped_lines = 0
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self._write_all([header])

    def _load(self) -> None:
        raw = self.path.read_text().split("\n")
        lines = [ln for ln in raw if ln.strip()]
        parsed = []
        for i, ln in enumerate(lines):
            try:
                parsed.append(json.loads(ln))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a torn last line from a kill: drop it, count it
                    self.dropped_lines += 1
                    continue
                raise ValueError(f"trace {self.path} line {i + 1} is not JSON (only a torn last line is tolerated)") from None
        if not parsed or parsed[0].get("kind") != "header":
            raise ValueError(f"trace {self.path}: the first line is not a search header; delete it or choose another trace path")
        old = parsed[0]
        diff = sorted(k for k in set(old) | set(self.header) if k != "started" and old.get(k) != self.header.get(k))
        if diff:
            raise ValueError(f"trace {self.path} was written by a different search (differs in {diff}); "
                             "delete it or choose another trace path")
        self.replay = [p for p in parsed[1:] if p.get("kind") == "evaluation"]
        for j, p in enumerate(self.replay):
            if p.get("index") != j:
                raise ValueError(f"trace {self.path}: evaluation line {j + 2} has index {p.get('index')}, expected {j}")
        if self.dropped_lines:
            self._write_all(parsed)

    def _write_all(self, records: list[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))

    def append(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_trace(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(header, evaluation lines) of a trace file, for plots and reports."""
    lines = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0].get("kind") != "header":
        raise ValueError(f"{path}: not a recipe-search trace (no header line)")
    return lines[0], [ln for ln in lines[1:] if ln.get("kind") == "evaluation"]


def best_so_far(scores: list[float]) -> list[float]:
    """The running maximum of ``scores``."""
    out, best = [], -math.inf
    for s in scores:
        best = max(best, s)
        out.append(best)
    return out
