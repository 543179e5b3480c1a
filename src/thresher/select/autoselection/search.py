"""AutoSelection's search over recipes under a budget of oracle evaluations.

Two layers: executing a recipe is cheap (cached signals only) and yields a subset and its
realised state; evaluating a subset is expensive (one oracle run: fine-tune and score dev).
The search spends its ``oracle_budget`` (default 15) like this:

1. **Warm-up**: one recipe per target retain ratio (default 0.65, 0.4, 0.1), each a
   ``truncate`` followed by 1-3 random filters/dedups, the truncate fraction set so the
   realised retain ratio lands near the target; all evaluated.
2. **Surrogate**: a scikit-learn ``GaussianProcessRegressor`` (constant x Matern 5/2 + white
   noise, ``normalize_y=True``) from features -- the recipe encoding (per library operator:
   present, and its main parameter as a retention code) plus the realised state -- to the
   oracle score, refit before every pick. Features are min-max scaled over every recipe
   executed so far (evaluated and candidates).
3. **Local edits**: the parent is the best recipe of the current trajectory (trajectory 0
   holds the warm-ups, so at first this is the best so far). Every possible one-operator
   edit (remove a step, loosen or tighten one step's main parameter, add an operator at a
   random position, union with the best other evaluated recipe) is executed; edits whose
   subset is empty or already seen are discarded. Five are kept in a seeded shuffled order,
   at least one that *realises* more examples than the parent (loosening) and one fewer
   (tightening) when such edits exist. They are ranked by UCB ``mu + 1.5 sigma`` and the top
   one is evaluated.
4. **Credit**: each evaluated edit's score change against its parent is split evenly over
   the operators it added or re-parameterised (+) and over those it removed (-).
5. **Reseeding**: after ``patience`` (4) evaluations without improving the trajectory's
   best, a new trajectory starts from a motif of positive-credit operators (weighted draw,
   1-3 of them; params from the best evaluated recipe using each, else random) behind a
   random truncate; it is evaluated and becomes the new parent.
6. The result is the best evaluated recipe overall and its subset.

**Budget accounting (decision).** The oracle budget counts the distinct subsets a search
evaluates (candidates whose subset was already evaluated are never proposed). Subsets the
shared oracle cache already holds cost no compute -- the ledger marks them ``cached`` and
counts only non-cached runs as cost -- but they still count against the search's budget,
so a search's trajectory does not depend on what else happens to be in the cache.

**Example budget k (decision).** Following the paper, the recipe decides the subset size:
with ``budget_mode="free"`` (default) k only enters the realised state as ``budget_used =
n / k``. With ``budget_mode="cap"`` every recipe's subset is capped at k by a final seeded,
source-stratified truncate, for comparisons at an equal example budget.

**Trace and resume.** Every evaluation appends one JSON line (the recipe, its state, the
surrogate's mu/sigma, the oracle score, the candidates it was chosen from with theirs) after
a header line naming the search's config. A rerun with the same trace path replays the
lines: the search runs its deterministic logic again and takes the recorded scores instead
of calling the oracle (a recipe that does not match its recorded line is an error), then
continues. A torn last line (a kill mid-write) is dropped and counted.

**Cost across sessions (decision).** Each evaluation line records what its oracle call cost
when it was first done (``cost``: calls, runs, cached, examples, tokens, seconds -- the
ledger's account of that call, so a call the oracle cache answered is ``runs: 0, cached:
1``). A replayed evaluation costs nothing now but its work was spent for this search, so
:meth:`RecipeSearch.replayed_cost` sums the recorded costs of the replayed lines and the
selector reports them with this session's ledger: the selection's cost is the total over
all sessions (``runs`` = every oracle run this search made), split into
``runs_this_session`` and ``runs_replayed_from_trace`` (see
:func:`thresher.select.base.selection_cost`). A line is written once, by the session that
did the work, so nothing is counted twice. Lines from before this field (no ``cost``) count
one call, one run unless ``cached``, and their wall ``seconds``; they are counted under
``replayed_without_cost_record``. Not counted: an oracle run cut off by the kill (its
partial work left no result), and the rare run that finished but whose line a kill
prevented (milliseconds apart): on resume the oracle cache answers it, so it counts as
cached.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from thresher.data.io import atomic_write_text
from thresher.progress import progress
from thresher.select.autoselection.operators import (
    OPERATORS,
    Operator,
    RecipeContext,
    TaskRelevanceFilter,
    ThresholdDedup,
    Truncate,
    make_operator,
)
from thresher.select.autoselection.recipe import (
    Execution,
    RealisedState,
    Recipe,
    Union,
    pool_reference,
)
from thresher.select.bayesopt import fit_gp, gp_predict

TRACE_VERSION = 1
#: operators that the random generators and the motif never draw as "filters"
STRUCTURAL = ("truncate", "union", "source_mix")


class SearchConfig(BaseModel):
    """Settings of the recipe search (all recorded in the trace header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oracle_budget: int = Field(15, ge=1, description="oracle evaluations (distinct subsets) the search may spend")
    warmup_retain: list[float] = Field([0.65, 0.4, 0.1], description="target retain ratios of the warm-up recipes")
    edits_per_step: int = Field(5, ge=2, description="local edits proposed and ranked per step")
    ucb_beta: float = Field(1.5, ge=0.0, description="UCB = mu + beta * sigma")
    patience: int = Field(4, ge=1, description="evaluations without improving the trajectory's best before reseeding")
    operators: list[str] | None = Field(None, description="operators the search may use (default: every applicable one)")
    operator_defaults: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fixed params per operator, e.g. {'quality_filter': {'quality': 'judge'}}")
    budget_mode: Literal["free", "cap"] = Field("free", description="free: the recipe sets the size (k only in budget_used); cap: cap every subset at k")
    max_steps: int = Field(6, ge=1, description="at most this many steps in a recipe")
    proposer: Literal["rule", "llm"] = Field("rule", description="local edits from rules (default, offline) or an LLM")
    ranker: Literal["gp", "llm"] = Field("gp", description="pick the candidate by GP UCB (default) or ask an LLM")
    gp_restarts: int = Field(3, ge=0, description="GP kernel-hyperparameter optimiser restarts")

    @field_validator("warmup_retain")
    @classmethod
    def _check_retain(cls, v):
        if not v or any(not 0 < x <= 1 for x in v):
            raise ValueError("warmup_retain must be a non-empty list of ratios in (0, 1]")
        return v

    @field_validator("operators")
    @classmethod
    def _check_ops(cls, v):
        if v is not None:
            unknown = [o for o in v if o not in OPERATORS]
            if unknown:
                raise ValueError(f"unknown operators {unknown}; known: {sorted(OPERATORS)}")
        return v


def library_signals(names: list[str] | None, settings, operator_defaults: dict | None = None) -> list:
    """Every stored signal the search's operators may read: each operator at its defaults
    (plus ``operator_defaults``), every dedup threshold on its grid, task relevance overall
    and per dev domain."""

    out: dict[str, Any] = {}
    for name in names or sorted(OPERATORS):
        cls = OPERATORS[name]
        if name in STRUCTURAL:  # truncate, union, source_mix read no signal of their own
            continue
        variants: list[dict] = [{}]
        if issubclass(cls, ThresholdDedup):
            variants = [{"threshold": t} for t in cls.threshold_grid]
        elif issubclass(cls, TaskRelevanceFilter):
            variants = [{"domain": None}] + [{"domain": d} for d in settings.domains()]
        for v in variants:
            op = make_operator(name, {**v, **(operator_defaults or {}).get(name, {})})
            for sig in op.required_signals(settings):
                out.setdefault(json.dumps([sig.name, sig.key_params()], sort_keys=True, default=str), sig)
    return list(out.values())


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class Candidate:
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


def _r(x, nd: int = 6):
    return None if x is None else round(float(x), nd)


# --------------------------------------------------------------------------- features and surrogate


def recipe_encoding(recipe: Recipe, library: list[str], ctx: RecipeContext, max_steps: int) -> list[float]:
    """Per library operator: (present, mean retention code; 1 when absent), then the step count."""
    out: list[float] = []
    for name in library:
        codes = [op.retention_code(ctx) for op in recipe.steps if op.name == name]
        out += [1.0 if codes else 0.0, float(np.mean(codes)) if codes else 1.0]
    out.append(len(recipe) / max_steps)
    return out


def state_features(state: RealisedState, ctx: RecipeContext) -> list[float]:
    """The realised state as numbers: ratios, drift, relevance shifts (in pool standard
    deviations), relative IFD/varentropy clipped to [0, 2] / 2, and budget_used clipped to 3 / 3.
    Parts that were not computed are 0 for every recipe (so they carry no weight)."""

    ref = pool_reference(ctx) if state.n_selected else {}
    f = [state.retain_ratio, state.token_ratio or 0.0, state.drift or 0.0]
    if state.relevance_mean is not None and ref.get("relevance_std"):
        f.append((state.relevance_mean - ref["relevance_mean"]) / ref["relevance_std"])
        f.append((state.relevance_std or 0.0) / ref["relevance_std"])
    else:
        f += [0.0, 0.0]
    for d in (ctx.domains() if "relevance" in ctx.settings.state else []):
        m, s = ref.get("relevance_per_task", {}).get(d, (0.0, 0.0))
        v = state.relevance_per_task.get(d)
        f.append((v - m) / s if v is not None and s else 0.0)
    for rel in (state.relative_ifd, state.relative_varentropy):
        f.append(min(max(rel, 0.0), 2.0) / 2.0 if rel is not None else 0.0)
    f.append(min(state.budget_used, 3.0) / 3.0 if state.budget_used is not None else 0.0)
    return f


def scale_columns(rows: np.ndarray) -> np.ndarray:
    """Min-max scale every column to [0, 1] over the given rows (a constant column -> 0)."""
    lo = rows.min(axis=0)
    span = rows.max(axis=0) - lo
    span[span == 0] = 1.0
    return (rows - lo) / span


class Surrogate:
    """GP regression (scikit-learn) from feature rows to oracle scores, with UCB ranking."""

    def __init__(self, seed: int = 0, restarts: int = 3):
        self.seed = seed
        self.restarts = restarts
        self.gp = None

    def fit_predict(self, x_seen: np.ndarray, y_seen: np.ndarray, x_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit on (x_seen, y_seen), predict mean and std at x_new (features scaled jointly).

        The GP is :func:`thresher.select.bayesopt.fit_gp` with one shared Matern 5/2 length
        scale starting at sqrt(d) / 2 (bounds 1e-2..1e3) and white noise starting at 1e-2;
        BLAS threads are left as they are."""
        x_seen = np.asarray(x_seen, dtype=np.float64)
        x_new = np.asarray(x_new, dtype=np.float64)
        both = scale_columns(np.vstack([x_seen, x_new]))
        xs, xn = both[: len(x_seen)], both[len(x_seen):]
        d = xs.shape[1]
        self.gp = fit_gp(xs, np.asarray(y_seen, dtype=np.float64), seed=self.seed, nu=2.5, length_scale=math.sqrt(d) / 2,
                         ard=False, length_scale_bounds=(1e-2, 1e3), noise=1e-2, restarts=self.restarts, one_blas_thread=False)
        return gp_predict(self.gp, xn, one_blas_thread=False)


def ucb_order(mu: np.ndarray, sigma: np.ndarray, beta: float) -> np.ndarray:
    """Candidate indices by UCB, best first (ties: lower index first)."""
    ucb = np.asarray(mu) + beta * np.asarray(sigma)
    return np.argsort(-ucb, kind="stable")


# --------------------------------------------------------------------------- trace


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
    out, best = [], -math.inf
    for s in scores:
        best = max(best, s)
        out.append(best)
    return out


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    best: Evaluation
    history: list[Evaluation]
    credit: dict
    stats: dict

    @property
    def ids(self) -> list[str]:
        return self.best.execution.ids

    def curve(self) -> list[float]:
        return best_so_far([e.score for e in self.history])


def oracle_identity(oracle) -> dict:
    train = getattr(oracle, "train", None)
    return {"model": str(getattr(oracle, "model", type(oracle).__name__)),
            "train": train.key() if hasattr(train, "key") else None}


class RecipeSearch:
    """The AutoSelection search (see the module docs). ``run()`` returns a :class:`SearchResult`."""

    method = "autoselection"

    def __init__(self, ctx: RecipeContext, oracle, config: SearchConfig | None = None, *, seed: int = 0,
                 k: int | None = None, trace_path: str | os.PathLike | None = None, advisor=None,
                 label: str = "autoselection", show_progress: bool = True):
        self.ctx = ctx
        self.oracle = oracle
        self.config = config or SearchConfig()
        self.seed = seed
        self.k = k
        self.label = label
        self.show_progress = show_progress
        self.rng = random.Random(f"{self.method}-{seed}")
        self.library = self._library()
        self.advisor = advisor
        if (self.config.proposer == "llm" or self.config.ranker == "llm") and advisor is None:
            raise ValueError("proposer/ranker 'llm' needs an LLM advisor (see thresher.select.autoselection.llm)")
        self.trace = Trace(trace_path, self.header())
        self.history: list[Evaluation] = []
        self.seen_subsets: set[str] = set()
        self.credit: dict[str, dict] = {}
        self.trajectory = 0
        self.stats = {"candidates_executed": 0, "candidates_discarded_duplicate": 0, "candidates_discarded_empty": 0,
                      "candidates_discarded_too_long": 0, "steps_without_loosening": 0, "steps_without_tightening": 0,
                      "reseeds": 0, "replayed": 0, "replayed_without_cost_record": 0, "oracle_cached": 0, "oracle_new_runs": 0,
                      "trace_lines_dropped": self.trace.dropped_lines, "stopped": ""}
        self.surrogate = Surrogate(seed=seed, restarts=self.config.gp_restarts)

    # --- setup
    def _library(self) -> list[str]:
        names = self.config.operators or sorted(OPERATORS)
        return sorted(n for n in names if OPERATORS[n].applicable(self.ctx))

    def header(self) -> dict:
        return {"kind": "header", "method": self.method, "version": TRACE_VERSION, "seed": self.seed, "k": self.k,
                "config": self.config.model_dump(mode="json"), "settings": self.ctx.settings.model_dump(mode="json"),
                "pool": self.ctx.pool.fingerprint, "pool_size": self.ctx.n, "oracle": oracle_identity(self.oracle),
                "library": self.library, "started": time.time()}

    def filter_ops(self) -> list[str]:
        return [n for n in self.library if n not in STRUCTURAL]

    def new_op(self, name: str, params: dict | None = None) -> Operator:
        """An operator with ``params`` (or random ones), the configured fixed params on top."""
        p = dict(params) if params is not None else OPERATORS[name].random_params(self.rng, self.ctx)
        p.update(self.config.operator_defaults.get(name, {}))
        return make_operator(name, p)

    def execute(self, recipe: Recipe) -> Execution:
        cap = self.k if self.config.budget_mode == "cap" else None
        return recipe.execute(self.ctx, k=self.k, cap_to=cap)

    # --- evaluation (oracle or replay)
    def evaluate(self, recipe: Recipe, execution: Execution, phase: str, *, parent: int | None = None,
                 edit: dict | None = None, chosen: Candidate | None = None, candidates: list[dict] | None = None,
                 llm: dict | None = None) -> Evaluation:
        i = len(self.history)
        t0 = time.perf_counter()
        digest = execution.subset_digest()
        if i < len(self.trace.replay):
            rec = self.trace.replay[i]
            if rec.get("recipe_digest") != recipe.digest() or rec.get("subset_digest") != digest:
                raise ValueError(f"trace {self.trace.path}: evaluation {i} recorded {rec.get('describe')!r} but the search "
                                 f"now proposes {recipe.describe()!r}; the trace is from a different run (delete it)")
            score, per_domain, cached, replayed = float(rec["score"]), dict(rec.get("per_domain") or {}), bool(rec["cached"]), True
            cost, recorded = recorded_cost(rec)
            self.stats["replayed"] += 1
            self.stats["replayed_without_cost_record"] += 0 if recorded else 1
        else:
            ledger = getattr(self.oracle, "ledger", None)
            mark = ledger.mark() if ledger is not None else 0
            sc = self.oracle.score(execution.ids, label=f"{self.label} s{self.seed} #{i} {phase}")
            score, per_domain, cached, replayed = float(sc.value), dict(sc.per_domain), bool(sc.cached), False
            cost = oracle_call_cost(sc, ledger.summary(mark).get("oracle") if ledger is not None else None)
            self.stats["oracle_cached" if cached else "oracle_new_runs"] += 1
        prev_best = max((e.score for e in self.history), default=-math.inf)
        ev = Evaluation(index=i, phase=phase, trajectory=self.trajectory, recipe=recipe, execution=execution, score=score,
                        per_domain=per_domain, cached=cached, parent=parent, edit=edit,
                        mu=chosen.mu if chosen else None, sigma=chosen.sigma if chosen else None,
                        ucb=chosen.ucb if chosen else None, candidates=candidates or [],
                        best_so_far=max(prev_best, score), seconds=time.perf_counter() - t0, replayed=replayed, llm=llm or {},
                        cost=cost)
        self.history.append(ev)
        self.seen_subsets.add(digest)
        if not replayed:
            self.trace.append(ev.line())
        return ev

    def replayed_cost(self) -> dict:
        """The oracle work of the evaluations this session replayed from the trace (done in
        earlier sessions), in the ledger summary's shape: ``{"oracle": {calls, runs, ...}}``."""
        tot: dict = {f: 0 for f in ORACLE_COST_FIELDS}
        tot["seconds"] = 0.0
        for e in self.history:
            if e.replayed:
                for f in ORACLE_COST_FIELDS:
                    tot[f] += e.cost.get(f, 0)
        tot["seconds"] = round(tot["seconds"], 3)
        if self.stats["replayed_without_cost_record"]:
            tot["replayed_without_cost_record"] = self.stats["replayed_without_cost_record"]
        return {"oracle": tot}

    @property
    def remaining(self) -> int:
        return self.config.oracle_budget - len(self.history)

    # --- random recipes (warm-up, random baseline)
    def random_filters(self, n_ops: int) -> list[Operator]:
        names = self.filter_ops()
        picks = self.rng.sample(names, min(n_ops, len(names)))
        return [self.new_op(n) for n in picks]

    def warmup_recipe(self, target: float, attempts: int = 25) -> tuple[Recipe, Execution] | None:
        """``truncate`` + 1-3 random filters, the truncate fraction set so the retain ratio lands near ``target``."""
        best = None
        for _ in range(attempts):
            ops = self.random_filters(self.rng.randint(1, 3))
            filt = Recipe(ops)
            n_f = len(filt.positions(self.ctx))
            if n_f == 0:
                continue
            frac = target * self.ctx.n / n_f
            if frac > 1.0:  # the filters alone keep too little for this target: draw again
                continue
            frac = max(0.05, round(frac, 3))
            recipe = Recipe([Truncate(fraction=frac)] + ops)
            ex = self.execute(recipe)
            if len(ex.ids) == 0 or ex.subset_digest() in self.seen_subsets:
                continue
            gap = abs(ex.state.retain_ratio - target)
            if best is None or gap < best[0]:
                best = (gap, recipe, ex)
            if gap <= 0.05:
                break
        return None if best is None else (best[1], best[2])

    def random_recipe(self, attempts: int = 25) -> tuple[Recipe, Execution] | None:
        """A uniformly random recipe: truncate(fraction in 0.1..1.0) + 1-3 random filters/dedups."""
        for _ in range(attempts):
            ops = [self.new_op("truncate")] + self.random_filters(self.rng.randint(1, 3))
            recipe = Recipe(ops)
            ex = self.execute(recipe)
            if len(ex.ids) and ex.subset_digest() not in self.seen_subsets:
                return recipe, ex
        return None

    # --- local edits
    def trajectory_best(self) -> int:
        members = [e for e in self.history if e.trajectory == self.trajectory]
        return max(members, key=lambda e: (e.score, -e.index)).index

    def moves(self, parent: Recipe) -> list[tuple[str, Any]]:
        moves: list[tuple[str, Any]] = []
        for i, _ in enumerate(parent.steps):
            moves += [("remove", i), ("loosen", i), ("tighten", i)]
        present = {op.name for op in parent.steps}
        moves += [("add", n) for n in self.library if n not in present and n != "union"]
        if "union" in self.library and "union" not in present and len(self.history) > 1:
            moves.append(("union", None))
        self.rng.shuffle(moves)
        return moves

    def realise(self, parent: Recipe, move: tuple[str, Any], parent_index: int) -> tuple[Recipe, dict] | None:
        kind, arg = move
        if kind == "remove":
            return parent.removed(arg), {"kind": "remove", "op": parent.steps[arg].name, "step": arg}
        if kind in ("loosen", "tighten"):
            op = parent.steps[arg]
            params = op.nudged(self.rng, kind)
            if params is None:
                return None
            return parent.replaced(arg, make_operator(op.name, params)), {"kind": kind, "op": op.name, "step": arg}
        if kind == "add":
            pos = self.rng.randint(0, len(parent))
            return parent.inserted(pos, self.new_op(arg)), {"kind": "add", "op": arg, "step": pos}
        if kind == "union":
            others = [e for e in self.history if e.index != parent_index and e.recipe != parent]
            if not others:
                return None
            other = max(others, key=lambda e: (e.score, -e.index))
            op = Union(recipe=other.recipe.to_list(full=True))
            return parent.inserted(len(parent), op), {"kind": "union", "op": "union", "step": len(parent), "other": other.index}
        raise ValueError(f"unknown move {kind!r}")

    def admit(self, recipe: Recipe, seen: set[str]) -> Execution | None:
        """Execute a proposed recipe; None (counted) if too long, empty or an already seen subset."""
        if len(recipe) > self.config.max_steps:
            self.stats["candidates_discarded_too_long"] += 1
            return None
        ex = self.execute(recipe)
        self.stats["candidates_executed"] += 1
        if len(ex.ids) == 0:
            self.stats["candidates_discarded_empty"] += 1
            return None
        if ex.subset_digest() in seen:
            self.stats["candidates_discarded_duplicate"] += 1
            return None
        return ex

    def rule_edits(self, parent_index: int, n: int, seen: set[str]) -> list[Candidate]:
        """``n`` local edits of the parent, at least one loosening and one tightening when possible."""
        parent = self.history[parent_index]
        n_parent = len(parent.execution.ids)
        pool: list[Candidate] = []
        local_seen = set(seen)
        for move in self.moves(parent.recipe):
            made = self.realise(parent.recipe, move, parent_index)
            if made is None:
                continue
            recipe, edit = made
            ex = self.admit(recipe, local_seen)
            if ex is None:
                continue
            local_seen.add(ex.subset_digest())
            n_child = len(ex.ids)
            edit["direction"] = "loosen" if n_child > n_parent else ("tighten" if n_child < n_parent else "same-size")
            pool.append(Candidate(recipe, ex, edit, _beta=self.config.ucb_beta))
        chosen: list[Candidate] = []
        for want in ("loosen", "tighten"):
            hit = next((c for c in pool if c.edit["direction"] == want and c not in chosen), None)
            if hit is not None:
                chosen.append(hit)
            else:
                self.stats[f"steps_without_{'loosening' if want == 'loosen' else 'tightening'}"] += 1
        for c in pool:
            if len(chosen) >= n:
                break
            if c not in chosen:
                chosen.append(c)
        return chosen[:n]

    def propose(self, parent_index: int) -> tuple[list[Candidate], dict]:
        n = self.config.edits_per_step
        llm_info: dict = {}
        cands: list[Candidate] = []
        seen = set(self.seen_subsets)
        if self.config.proposer == "llm":
            parent = self.history[parent_index]
            recipes, llm_info = self.advisor.propose(parent, self.history, self.library, n)
            for recipe in recipes:
                ex = self.admit(recipe, seen)
                if ex is None:
                    continue
                seen.add(ex.subset_digest())
                n_p, n_c = len(parent.execution.ids), len(ex.ids)
                direction = "loosen" if n_c > n_p else ("tighten" if n_c < n_p else "same-size")
                cands.append(Candidate(recipe, ex, {"kind": "llm", "direction": direction}, _beta=self.config.ucb_beta))
            llm_info["accepted"] = len(cands)
            if len(cands) < n:
                llm_info["rule_fallback_edits"] = n - len(cands)
        if len(cands) < n:
            cands += self.rule_edits(parent_index, n - len(cands), seen)
        return cands, llm_info

    # --- surrogate
    def features(self, recipe: Recipe, execution: Execution) -> list[float]:
        return (recipe_encoding(recipe, self.library, self.ctx, self.config.max_steps)
                + state_features(execution.state, self.ctx))

    def predict(self, cands: list[Candidate]) -> None:
        if len(self.history) < 2:
            for c in cands:
                c.mu, c.sigma = 0.0, 1.0
            return
        xs = np.array([self.features(e.recipe, e.execution) for e in self.history])
        ys = np.array([e.score for e in self.history])
        xn = np.array([self.features(c.recipe, c.execution) for c in cands])
        mu, sd = self.surrogate.fit_predict(xs, ys, xn)
        for c, m, s in zip(cands, mu, sd):
            c.mu, c.sigma = float(m), float(s)

    # --- credit and reseeding
    @staticmethod
    def step_map(recipe: Recipe) -> dict[str, str]:
        out, seen = {}, {}
        for op in recipe.steps:
            j = seen.get(op.name, 0)
            seen[op.name] = j + 1
            out[f"{op.name}#{j}"] = json.dumps(op.to_dict(full=True), sort_keys=True)
        return out

    def assign_credit(self, child: Evaluation) -> dict:
        parent = self.history[child.parent]
        delta = child.score - parent.score
        pm, cm = self.step_map(parent.recipe), self.step_map(child.recipe)
        plus = sorted({k.split("#")[0] for k in cm if k not in pm or pm[k] != cm[k]})
        minus = sorted({k.split("#")[0] for k in pm if k not in cm})
        for names, sign in ((plus, 1.0), (minus, -1.0)):
            for name in names:
                c = self.credit.setdefault(name, {"credit": 0.0, "count": 0})
                c["credit"] += sign * delta / len(names)
                c["count"] += 1
        return {"delta": round(delta, 6), "plus": plus, "minus": minus}

    def motif(self) -> list[str]:
        positive = sorted(((n, c["credit"]) for n, c in self.credit.items()
                           if c["credit"] > 0 and n not in STRUCTURAL and n in self.library), key=lambda t: (-t[1], t[0]))
        if positive:
            names, weights = [n for n, _ in positive], [w for _, w in positive]
            size = min(len(names), self.rng.randint(1, 3))
            picks: list[str] = []
            while len(picks) < size:
                n = self.rng.choices(names, weights=weights, k=1)[0]
                i = names.index(n)
                picks.append(n)
                del names[i], weights[i]
            return picks
        best = max(self.history, key=lambda e: (e.score, -e.index))
        ops = [op.name for op in best.recipe.steps if op.name not in STRUCTURAL]
        return ops or self.rng.sample(self.filter_ops(), min(2, len(self.filter_ops())))

    def reseed_recipe(self, attempts: int = 25) -> tuple[Recipe, Execution] | None:
        motif = self.motif()
        ranked = sorted(self.history, key=lambda e: (-e.score, e.index))
        for attempt in range(attempts):
            ops: list[Operator] = [Truncate(fraction=self.rng.choice([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]))]
            for name in motif:
                donor = next((op for e in ranked for op in e.recipe.steps if op.name == name), None)
                ops.append(self.new_op(name, donor.params.model_dump(mode="json") if donor is not None and attempt == 0 else None))
            recipe = Recipe(ops)
            ex = self.admit(recipe, self.seen_subsets)
            if ex is not None:
                return recipe, ex
        return None

    def reseed(self) -> bool:
        made = self.reseed_recipe()
        if made is None:
            return False
        self.trajectory += 1
        self.stats["reseeds"] += 1
        self.evaluate(*made, phase="reseed", edit={"kind": "reseed", "motif": [op.name for op in made[0].steps[1:]]})
        return True

    # --- main loop
    def run(self) -> SearchResult:

        with progress(total=self.config.oracle_budget, desc=f"{self.label} s{self.seed}", disable=not self.show_progress) as bar:
            for target in self.config.warmup_retain:
                if self.remaining <= 0:
                    break
                made = self.warmup_recipe(target) or self.random_recipe()
                if made is None:
                    self.stats["stopped"] = "no warm-up recipe with a new, non-empty subset"
                    break
                self.evaluate(*made, phase="warmup", edit={"kind": "warmup", "target_retain": target})
                bar.update(1)
            stagnation = 0
            while self.remaining > 0 and self.history:
                parent_index = self.trajectory_best()
                cands, llm_info = self.propose(parent_index)
                if not cands:
                    if not self.reseed():
                        self.stats["stopped"] = "no new candidate subsets (edits and reseeds exhausted)"
                        break
                    stagnation = 0
                    bar.update(1)
                    continue
                self.predict(cands)
                order = ucb_order(np.array([c.mu for c in cands]), np.array([c.sigma for c in cands]), self.config.ucb_beta)
                pick = int(order[0])
                if self.config.ranker == "llm":
                    llm_pick, rank_info = self.advisor.rank(self.history[parent_index], cands)
                    llm_info = {**llm_info, "ranker": rank_info}
                    if llm_pick is not None:
                        pick = llm_pick
                chosen = cands[pick]
                summaries = [c.summary(chosen=(j == pick)) for j, c in enumerate(cands)]
                parent_score = self.history[parent_index].score
                ev = self.evaluate(chosen.recipe, chosen.execution, "edit", parent=parent_index, edit=dict(chosen.edit),
                                   chosen=chosen, candidates=summaries, llm=llm_info)
                ev.edit["credit"] = self.assign_credit(ev)
                bar.update(1)
                stagnation = 0 if ev.score > parent_score else stagnation + 1
                if stagnation >= self.config.patience and self.remaining > 0:
                    if self.reseed():
                        bar.update(1)
                    stagnation = 0
        if not self.history:
            raise RuntimeError(f"{self.label}: no recipe could be evaluated ({self.stats['stopped']})")
        best = max(self.history, key=lambda e: (e.score, -e.index))
        return SearchResult(best, self.history, self.credit, dict(self.stats))


class RandomRecipeSearch(RecipeSearch):
    """The baseline: ``oracle_budget`` random recipes (truncate + 1-3 random filters), best kept."""

    method = "random_recipes"

    def run(self) -> SearchResult:

        with progress(total=self.config.oracle_budget, desc=f"{self.label} s{self.seed}", disable=not self.show_progress) as bar:
            while self.remaining > 0:
                made = self.random_recipe()
                if made is None:
                    self.stats["stopped"] = "no new random recipe subset"
                    break
                self.evaluate(*made, phase="random", edit={"kind": "random"})
                bar.update(1)
        if not self.history:
            raise RuntimeError(f"{self.label}: no recipe could be evaluated")
        best = max(self.history, key=lambda e: (e.score, -e.index))
        return SearchResult(best, self.history, self.credit, dict(self.stats))
