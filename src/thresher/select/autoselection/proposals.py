"""How the recipe search proposes recipes: random recipes (warm-up, the random baseline), one-operator
local edits of a parent (rule-based, or from the LLM advisor), credit per operator from
each edit's score change, and reseeding motifs built from positive-credit operators.

:class:`RecipeProposals` is the proposal half of :class:`~thresher.select.autoselection.search.RecipeSearch`
(which inherits it); it reads the search's ``ctx``, ``config``, ``rng``, ``k``, ``library``,
``history``, ``seen_subsets`` and ``advisor``, and updates ``credit`` and ``stats``.
"""
from __future__ import annotations

import json
from typing import Any

from thresher.select.autoselection.operators import OPERATORS, Operator, make_operator
from thresher.select.autoselection.recipe import Execution, Recipe, Union
from thresher.select.autoselection.sampling import Truncate
from thresher.select.autoselection.trace import Candidate, Evaluation

#: operators that the random generators and the motif never draw as "filters"
STRUCTURAL = ("truncate", "union", "source_mix")


class RecipeProposals:
    """Random recipes, local edits, credit assignment and reseeding (see the module docs)."""

    # --- building and executing recipes
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
