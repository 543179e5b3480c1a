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
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.progress import progress
from thresher.select.autoselection.dedup import ThresholdDedup
from thresher.select.autoselection.filters import TaskRelevanceFilter
from thresher.select.autoselection.operators import (
    OPERATORS,
    RecipeContext,
    make_operator,
)
from thresher.select.autoselection.params import SearchConfig
from thresher.select.autoselection.proposals import STRUCTURAL, RecipeProposals
from thresher.select.autoselection.recipe import Execution, Recipe
from thresher.select.autoselection.surrogate import (
    Surrogate,
    recipe_encoding,
    state_features,
    ucb_order,
)
from thresher.select.autoselection.trace import (
    ORACLE_COST_FIELDS,
    TRACE_VERSION,
    Candidate,
    Evaluation,
    Trace,
    best_so_far,
    oracle_call_cost,
    oracle_identity,
    recorded_cost,
)


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


@dataclass
class SearchResult:
    """The search's outcome: the best evaluation, every evaluation in order, the credit per operator
    and the search's counters."""

    best: Evaluation
    history: list[Evaluation]
    credit: dict
    stats: dict

    @property
    def ids(self) -> list[str]:
        return self.best.execution.ids

    def curve(self) -> list[float]:
        return best_so_far([e.score for e in self.history])


class RecipeSearch(RecipeProposals):
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

    # --- parents, surrogate, reseeding
    def trajectory_best(self) -> int:
        members = [e for e in self.history if e.trajectory == self.trajectory]
        return max(members, key=lambda e: (e.score, -e.index)).index

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
