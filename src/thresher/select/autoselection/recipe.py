"""Recipes: ordered lists of operators, loaded from YAML or built in Python, executed on a pool.

A recipe is written as a list of one-key mappings ``{operator: params}``::

    recipe:
      - exact_dedup: {}
      - task_relevance_filter: {fraction: 0.9}
      - quality_filter: {fraction: 0.7, quality: "loss:low"}

A recipe file is either that list at the top level, or a mapping with ``recipe`` (the
list) and optionally ``signals`` (the :class:`SignalSettings` naming the stored signals the
operators read), ``name`` and ``description``.

Executing a recipe (:meth:`Recipe.execute`) is deterministic and cheap: every step reads
stored signals and drops positions; no model is called. The result carries the subset and
its :class:`RealisedState` -- retain ratio, token ratio, distribution drift from the pool,
task relevance (overall and per dev domain), IFD and varentropy relative to the pool, and
the share of the example budget ``k`` it uses (``budget_used = n / k``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from thresher.data.io import atomic_write_text
from thresher.errors import ConfigError
from thresher.select.autoselection.operators import (
    OPERATORS,
    Operator,
    OperatorParams,
    RecipeContext,
    SignalSettings,
    StepOutcome,
    make_operator,
    register_operator,
)
from thresher.select.autoselection.sampling import Truncate
from thresher.signals.base import Signal


class RecipeError(ConfigError):
    """A recipe (file or list) that cannot be parsed or validated; the message names where."""


# --------------------------------------------------------------------------- realised state


@dataclass
class RealisedState:
    """What a subset looks like, computed by executing its recipe (no training).

    ``retain_ratio`` = n / pool size; ``token_ratio`` = tokens of the subset / tokens of the
    pool (the text signal, scorer tokenizer); ``drift`` = total-variation distance between
    the subset's and the pool's k-means cluster histograms (0 = same mix of regions, 1 =
    disjoint); ``relevance_mean``/``relevance_std`` of the task_relevance signal over the
    subset, and ``relevance_per_task`` its mean per dev domain; ``relative_ifd`` and
    ``relative_varentropy`` = subset mean / pool mean; ``budget_used`` = n / k (None when
    no budget was given). A part not computed (settings.state) is None.
    """

    n_selected: int
    retain_ratio: float
    token_ratio: float | None = None
    drift: float | None = None
    relevance_mean: float | None = None
    relevance_std: float | None = None
    relevance_per_task: dict[str, float] = field(default_factory=dict)
    relative_ifd: float | None = None
    relative_varentropy: float | None = None
    budget_used: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RealisedState:
        return cls(**d)


def _nanmean(v: np.ndarray) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def pool_reference(ctx: RecipeContext) -> dict:
    """Pool-level values the state is relative to (computed once per context)."""
    if "reference" in ctx.memo:
        return ctx.memo["reference"]
    s = ctx.settings
    ref: dict[str, Any] = {}
    if "tokens" in s.state:
        ref["tokens"] = float(np.asarray(ctx.column(s.text_signal(), "tokens_total"), dtype=np.float64).sum())
    if "drift" in s.state:
        clusters = np.asarray(ctx.column(s.kmeans_signal(), "cluster"))
        labels, counts = np.unique(clusters, return_counts=True)
        ref["cluster_labels"] = labels
        ref["cluster_hist"] = counts / counts.sum()
    if "relevance" in s.state:
        tr = np.asarray(ctx.column(s.relevance_signal(None), "task_relevance"), dtype=np.float64)
        ref["relevance_mean"] = float(np.nanmean(tr))
        ref["relevance_std"] = float(np.nanstd(tr))
        ref["relevance_per_task"] = {}
        for d in ctx.domains():
            v = np.asarray(ctx.column(s.relevance_signal(d), "task_relevance"), dtype=np.float64)
            ref["relevance_per_task"][d] = (float(np.nanmean(v)), float(np.nanstd(v)))
    if "ifd" in s.state:
        ref["ifd"] = _nanmean(ctx.column(s.lm_signal(), "ifd"))
    if "varentropy" in s.state:
        ref["varentropy"] = _nanmean(ctx.column(s.lm_signal(), "varentropy"))
    ctx.memo["reference"] = ref
    return ref


def realised_state(positions: np.ndarray, ctx: RecipeContext, k: int | None = None) -> RealisedState:
    """The state of the subset at ``positions`` (see :class:`RealisedState`)."""
    pos = np.asarray(positions, dtype=np.int64)
    n = len(pos)
    s = ctx.settings
    st = RealisedState(n_selected=n, retain_ratio=_r(n / max(1, ctx.n)), budget_used=_r(n / k) if k else None)
    if n == 0:
        return st
    ref = pool_reference(ctx)
    if "tokens" in s.state:
        tok = np.asarray(ctx.column(s.text_signal(), "tokens_total"), dtype=np.float64)
        st.token_ratio = _r(tok[pos].sum() / ref["tokens"]) if ref["tokens"] > 0 else None
    if "drift" in s.state:
        clusters = np.asarray(ctx.column(s.kmeans_signal(), "cluster"))[pos]
        idx = np.searchsorted(ref["cluster_labels"], clusters)
        hist = np.bincount(idx, minlength=len(ref["cluster_labels"])) / n
        st.drift = _r(0.5 * float(np.abs(hist - ref["cluster_hist"]).sum()))
    if "relevance" in s.state:
        tr = np.asarray(ctx.column(s.relevance_signal(None), "task_relevance"), dtype=np.float64)[pos]
        st.relevance_mean = _r(_nanmean(tr))
        ok = tr[~np.isnan(tr)]
        st.relevance_std = _r(float(ok.std())) if len(ok) else None
        st.relevance_per_task = {d: _r(_nanmean(np.asarray(ctx.column(s.relevance_signal(d), "task_relevance"))[pos]))
                                 for d in ctx.domains()}
    for part, col, attr in (("ifd", "ifd", "relative_ifd"), ("varentropy", "varentropy", "relative_varentropy")):
        if part in s.state:
            sub = _nanmean(np.asarray(ctx.column(s.lm_signal(), col))[pos])
            base = ref[part]
            setattr(st, attr, _r(sub / base) if sub is not None and base else None)
    return st


def state_signals(settings: SignalSettings) -> list[Signal]:
    """The stored signals the realised state reads."""
    out: list[Signal] = []
    if "tokens" in settings.state:
        out.append(settings.text_signal())
    if "drift" in settings.state:
        out.append(settings.kmeans_signal())
    if "relevance" in settings.state:
        out.append(settings.relevance_signal(None))
        out.extend(settings.relevance_signal(d) for d in settings.domains())
    if "ifd" in settings.state or "varentropy" in settings.state:
        out.append(settings.lm_signal())
    return out


# --------------------------------------------------------------------------- recipes


@dataclass(eq=False)
class Execution:
    """The result of executing a recipe: positions and ids (pool order), state, per-step trace."""

    positions: np.ndarray
    ids: list[str]
    state: RealisedState
    steps: list[dict]

    def subset_digest(self) -> str:
        return subset_digest(self.positions)


def subset_digest(positions) -> str:
    """A short digest of a subset (its sorted positions)."""
    arr = np.asarray(sorted(int(p) for p in positions), dtype=np.int64)
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


class Recipe:
    """An ordered, immutable list of operators."""

    def __init__(self, steps: list[Operator] | tuple[Operator, ...] = ()):
        for i, op in enumerate(steps):
            if not isinstance(op, Operator):
                raise RecipeError(f"recipe step {i + 1}: expected an Operator, got {type(op).__name__}")
        self.steps: tuple[Operator, ...] = tuple(steps)

    # --- construction
    @classmethod
    def from_list(cls, steps: Any, *, where: str = "recipe", lines: list[int] | None = None) -> Recipe:
        """Parse ``[{op: params}, ...]``; errors name ``where``, the step number (and YAML line)."""
        if steps is None:
            steps = []
        if not isinstance(steps, list):
            raise RecipeError(f"{where}: a recipe is a list of {{operator: params}} steps, got {type(steps).__name__}")
        ops = []
        for i, item in enumerate(steps):
            at = f"{where}: step {i + 1}" + (f" (line {lines[i]})" if lines and i < len(lines) else "")
            if isinstance(item, Operator):
                ops.append(item)
                continue
            if isinstance(item, str):
                item = {item: {}}
            if not isinstance(item, dict) or len(item) != 1:
                raise RecipeError(f"{at}: each step is a mapping with one key, the operator name (e.g. {{ifd_filter: {{fraction: 0.5}}}}), "
                                  f"got {item!r}")
            (name, params), = item.items()
            if name not in OPERATORS:
                raise RecipeError(f"{at}: unknown operator {name!r}; known operators: {', '.join(sorted(OPERATORS))}")
            if params is not None and not isinstance(params, dict):
                raise RecipeError(f"{at} ({name}): params must be a mapping, got {params!r}")
            try:
                ops.append(make_operator(name, params or {}))
            except (ValueError, KeyError) as e:
                raise RecipeError(f"{at}: {e.args[0] if e.args else e}") from None
        return cls(ops)

    def to_list(self, full: bool = False) -> list[dict]:
        return [op.to_dict(full=full) for op in self.steps]

    def canonical(self) -> str:
        """A canonical JSON text (every param, defaults included): equal recipes, equal text."""
        return json.dumps(self.to_list(full=True), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __eq__(self, other) -> bool:
        return isinstance(other, Recipe) and self.canonical() == other.canonical()

    def __hash__(self) -> int:
        return hash(self.canonical())

    def __repr__(self) -> str:
        return "Recipe[" + ", ".join(repr(op) for op in self.steps) + "]"

    def describe(self) -> str:
        """A one-line human form: ``truncate(fraction=0.5) > ifd_filter(fraction=0.7)``."""
        if not self.steps:
            return "(empty: the whole pool)"
        parts = []
        for op in self.steps:
            p = op.params.model_dump(mode="json", exclude_defaults=True)
            if op.name == "union":
                inner = Recipe.from_list(p.pop("recipe", op.params.recipe)).describe()
                parts.append(f"union[{inner}]")
                continue
            parts.append(f"{op.name}(" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")")
        return " > ".join(parts)

    # --- edits (new recipes; the original is unchanged)
    def replaced(self, i: int, op: Operator) -> Recipe:
        s = list(self.steps)
        s[i] = op
        return Recipe(s)

    def removed(self, i: int) -> Recipe:
        s = list(self.steps)
        del s[i]
        return Recipe(s)

    def inserted(self, i: int, op: Operator) -> Recipe:
        s = list(self.steps)
        s.insert(i, op)
        return Recipe(s)

    # --- execution
    def required_signals(self, settings: SignalSettings) -> list[Signal]:
        out: dict[str, Signal] = {}
        for op in self.steps:
            for sig in op.required_signals(settings):
                out.setdefault(json.dumps([sig.name, sig.key_params()], sort_keys=True, default=str), sig)
        return list(out.values())

    def positions(self, ctx: RecipeContext) -> np.ndarray:
        keep = np.arange(ctx.n, dtype=np.int64)
        for op in self.steps:
            keep = op.apply(keep, ctx).keep
        return keep

    def execute(self, ctx: RecipeContext, k: int | None = None, cap_to: int | None = None) -> Execution:
        """Run every step; ``cap_to`` adds a final seeded, source-stratified cap (the budget)."""
        keep = np.arange(ctx.n, dtype=np.int64)
        trace = []
        steps = list(self.steps)
        for op in steps:
            out = op.apply(keep, ctx)
            trace.append({"op": op.name, "n_in": len(keep), "n_out": len(out.keep),
                          "excluded_missing": out.excluded_missing, **({"notes": out.notes} if out.notes else {})})
            keep = out.keep
        if cap_to is not None and len(keep) > cap_to:
            out = Truncate(total=int(cap_to)).apply(keep, ctx)
            trace.append({"op": "budget_cap", "n_in": len(keep), "n_out": len(out.keep), "excluded_missing": 0,
                          "notes": {"cap": int(cap_to)}})
            keep = out.keep
        ids = [ctx.pool[int(p)]["id"] for p in keep]
        return Execution(positions=keep, ids=ids, state=realised_state(keep, ctx, k), steps=trace)


# --------------------------------------------------------------------------- the composite operator


class UnionParams(OperatorParams):
    recipe: list[dict[str, Any]] = Field(..., description="another recipe (a list of {op: params}) run on the whole pool")

    @field_validator("recipe")
    @classmethod
    def _check_recipe(cls, steps):
        Recipe.from_list(steps, where="union.recipe")  # validates every nested step, naming it
        return steps


@register_operator
class Union(Operator):
    name = "union"
    role = "set"
    description = "the input plus what another recipe selects from the whole pool (recovers data from another branch)"
    Params = UnionParams

    def __init__(self, **params):
        super().__init__(**params)
        self.other = Recipe.from_list(self.params.recipe, where="union.recipe")

    def required_signals(self, settings):
        return self.other.required_signals(settings)

    def apply(self, keep, ctx):
        other = self.other.positions(ctx)
        kept = np.union1d(np.asarray(keep, dtype=np.int64), other)
        return StepOutcome(kept, notes={"other_selected": len(other), "added": int(len(kept) - len(keep))})

    @classmethod
    def applicable(cls, ctx):
        return True


# --------------------------------------------------------------------------- files


@dataclass
class RecipeFile:
    recipe: Recipe
    settings: SignalSettings | None = None
    name: str = ""
    description: str = ""
    path: Path | None = None


FILE_KEYS = ("recipe", "signals", "name", "description")


def _step_lines(text: str, top_is_list: bool) -> list[int] | None:
    """1-based line numbers of the recipe's steps (for error messages), from the YAML node tree."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    node = root
    if not top_is_list and isinstance(root, yaml.MappingNode):
        node = next((v for k, v in root.value if getattr(k, "value", None) == "recipe"), None)
    if not isinstance(node, yaml.SequenceNode):
        return None
    return [item.start_mark.line + 1 for item in node.value]


def parse_recipe_yaml(text: str, where: str = "<recipe>") -> RecipeFile:
    """Parse recipe YAML text (see the module docs for the two accepted forms)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: invalid YAML: {e}") from None
    if isinstance(data, list):
        return RecipeFile(Recipe.from_list(data, where=where, lines=_step_lines(text, True)))
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a list of steps or a mapping with a 'recipe' key, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise RecipeError(f"{where}: unknown top-level keys {unknown}; allowed: {list(FILE_KEYS)}")
    if "recipe" not in data:
        raise RecipeError(f"{where}: no 'recipe' key (the list of steps)")
    recipe = Recipe.from_list(data["recipe"], where=where, lines=_step_lines(text, False))
    settings = None
    if data.get("signals") is not None:
        if not isinstance(data["signals"], dict):
            raise RecipeError(f"{where}: 'signals' must be a mapping of signal settings")
        try:
            settings = SignalSettings(**data["signals"])
        except ValueError as e:
            raise RecipeError(f"{where}: invalid 'signals' settings: {e}") from None
    return RecipeFile(recipe, settings, str(data.get("name") or ""), str(data.get("description") or ""))


def load_recipe(path: str | os.PathLike) -> RecipeFile:
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"recipe file {p} does not exist")
    rf = parse_recipe_yaml(p.read_text(), where=str(p))
    rf.path = p
    return rf


def recipe_yaml(recipe: Recipe, settings: SignalSettings | None = None, name: str = "", description: str = "") -> str:
    import yaml

    data: dict[str, Any] = {}
    if name:
        data["name"] = name
    if description:
        data["description"] = description
    if settings is not None:
        data["signals"] = settings.model_dump(mode="json", exclude_defaults=True)
    data["recipe"] = recipe.to_list(full=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def save_recipe(recipe: Recipe, path: str | os.PathLike, settings: SignalSettings | None = None, name: str = "",
                description: str = "") -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(p, recipe_yaml(recipe, settings, name, description))


def as_recipe(recipe: Recipe | RecipeFile | list | str | os.PathLike) -> RecipeFile:
    """A Recipe, a list of steps, YAML text or a path -> a RecipeFile."""
    if isinstance(recipe, RecipeFile):
        return recipe
    if isinstance(recipe, Recipe):
        return RecipeFile(recipe)
    if isinstance(recipe, list):
        return RecipeFile(Recipe.from_list(recipe))
    if isinstance(recipe, (str, os.PathLike)):
        s = os.fspath(recipe)
        if s.endswith((".yaml", ".yml")) or Path(s).is_file():
            return load_recipe(s)
        if "\n" in s or s.lstrip().startswith(("-", "recipe:")):
            return parse_recipe_yaml(s)
        raise RecipeError(f"recipe {s!r}: not a file (expected a .yaml path, YAML text or a list of steps)")
    raise RecipeError(f"recipe: expected a path, YAML text, a list of steps or a Recipe, got {type(recipe).__name__}")
