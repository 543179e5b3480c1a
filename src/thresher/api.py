"""The Python API: every CLI command is one of these functions."""
from __future__ import annotations

import difflib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger
from thresher.data.pool import (
    LoadReport,
    Pool,
    as_pool,
    check_save_path,
    load_pool,
    rejects_path_for,
)
from thresher.data.store import SignalStore, default_store
from thresher.decontam import (
    DecontaminationOffWarning,
    DecontamReport,
    exclude_test_overlap,
    off_meta,
)
from thresher.decontam import decontaminate as _decontaminate
from thresher.engine.local import run_signal, scorer_line, stored_notes
from thresher.errors import ConfigError, StoreError
from thresher.models.evaluate import evaluate as _evaluate
from thresher.models.load import (
    LoadedModel,
    check_model_spec,
    load_model,
    save_model,
    tier_of,
)
from thresher.models.train import TrainConfig, attach_lora, finetune
from thresher.oracle.core import Oracle, Score
from thresher.select.autoselection import RecipeSelector
from thresher.select.autoselection.operators import SignalSettings
from thresher.select.autoselection.recipe import as_recipe
from thresher.select.base import (
    Budget,
    Selection,
    SignalView,
    SubsetSignalView,
    make_selector,
)
from thresher.signals.base import Signal, make_signal, resolve
from thresher.tasks import get_task as _get
from thresher.tasks.base import DevTask, Task
from thresher.threads import apply_threads


def load(path: str | os.PathLike, out: str | os.PathLike | None = None, on_error: str = "raise",
         rejects: str | os.PathLike | None = None, **kw) -> tuple[Pool, LoadReport]:
    """Load and normalise a pool; optionally write it as Parquet (or JSONL).

    Rejected rows (``on_error="skip"``) go to ``rejects``, by default beside ``out`` as
    ``<out stem>.rejects.jsonl`` (never beside the input); with neither, they are only in
    the report. A clean load removes a stale rejects file there (``report.stale_rejects_removed``).
    """
    if out:
        check_save_path(out)  # a bad output suffix fails before the input is read
    if rejects is None and out:
        rejects = rejects_path_for(out)
    pool, report = load_pool(path, on_error=on_error, rejects_path=rejects, **kw)
    if out:
        pool.save(out)
    return pool, report


def get_task(name: str, **params) -> Task:
    return _get(name, **params)


def score(pool: Pool | str, signals: list[str | Signal], store: str | os.PathLike | None = None, *, engine: str = "local",
          params: dict[str, Any] | None = None, shard_size: int | None = None, show_progress: bool = True,
          ray_address: str | None = None, ray_actors: int | None = None) -> list:
    """Compute signals (by signal or column name) into the store. Returns one run record per signal.

    ``params`` go to every requested signal that has a parameter of that name; a key
    ``SIGNAL.NAME`` (e.g. ``embedding.model``) goes to that signal only and wins.
    """
    classes = [type(s) if isinstance(s, Signal) else resolve(s)[0] for s in signals]
    check_signal_params(classes, params or {})
    pool = as_pool(pool)
    st = open_store(store)
    sigs, seen = [], set()
    for s, cls in zip(signals, classes):
        sig = s if isinstance(s, Signal) else cls(**signal_params_for(cls, params or {}))
        if sig.key(pool).digest in seen:
            continue
        seen.add(sig.key(pool).digest)
        sigs.append(sig)
    if any(not _stored(st, sig, pool) for sig in sigs):
        ensure_writable(st)
    return [run_signal(sig, pool, st, engine=engine, shard_size=shard_size, show_progress=show_progress,
                       ray_address=ray_address, ray_actors=ray_actors) for sig in sigs]


def open_store(store: str | os.PathLike | None = None) -> SignalStore:
    """The signal store at ``store`` (default ``$THRESHER_STORE`` or ``.thresher/store``); a path
    that is a file, or a directory that cannot be created, is a :class:`StoreError` naming it."""
    root = Path(store or default_store())
    if root.exists() and not root.is_dir():
        raise StoreError(f"signal store {root} is a file, not a directory: give --store a directory")
    try:
        return SignalStore(root)
    except OSError as e:
        raise StoreError(f"signal store {root}: cannot create the directory ({e.strerror or e})") from None


def ensure_writable(st: SignalStore) -> None:
    """Raise a :class:`StoreError` naming the store directory unless a file can be created in it
    (checked before any signal is computed, so a read-only store fails at once, not mid-run)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check-", dir=st.root)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise StoreError(f"signal store {st.root} is not writable ({e.strerror or e}); signals must be computed into it: "
                         "give --store a writable directory (or fix its permissions)") from None


def _stored(st: SignalStore, sig: Signal, pool: Pool) -> bool:
    key = sig.key(pool)
    return st.is_complete(key) and bool(st.meta(key).get("verified"))


def check_signal_params(classes: list, params: dict) -> None:
    """Refuse params that no requested signal takes (a misspelt or misplaced key must never be
    silently ignored): the error lists the keys each requested signal accepts."""
    classes = list({c.name: c for c in classes}.values())
    names = {c.name for c in classes}
    unused = []
    for k in params:
        if "." in k:
            if k.split(".", 1)[0] not in names:
                unused.append(k)
        elif not any(k in c.Params.model_fields for c in classes):
            unused.append(k)
    if not unused:
        return
    accepted = sorted({f for c in classes for f in c.Params.model_fields})
    hints = []
    for k in unused:
        close = difflib.get_close_matches(k.split(".", 1)[-1], accepted, n=1, cutoff=0.6)
        if close:
            hints.append(f"{k!r}: did you mean {close[0]!r}?")
    per_signal = "; ".join(f"{c.name}: {', '.join(c.Params.model_fields) or '(no parameters)'}" for c in classes)
    what = ", ".join(repr(k) for k in unused)
    verb = "is" if len(unused) == 1 else "are"
    raise ConfigError(f"param{'s' if len(unused) > 1 else ''} {what} {verb} taken by none of the requested signals "
                      f"({', '.join(sorted(names))})"
                      + (f" ({'; '.join(hints)})" if hints else "")
                      + f". Accepted keys per signal: {per_signal}; a SIGNAL.KEY key must name a requested signal")


def signal_params_for(cls, params: dict) -> dict:
    """The subset of ``params`` that signal class ``cls`` accepts (``NAME.key`` scoped keys win)."""
    accepted = set(cls.Params.model_fields)
    out = {k: v for k, v in params.items() if "." not in k and k in accepted}
    for k, v in params.items():
        if "." in k:
            owner, key = k.split(".", 1)
            if owner == cls.name:
                if key not in accepted:
                    raise ValueError(f"signal {cls.name!r} has no parameter {key!r}; it takes {sorted(accepted)}")
                out[key] = v
    return out


def decontaminate(pool: Pool | str, task: Task | str, out: str | os.PathLike | None = None, *, n: int = 13,
                  splits: tuple[str, ...] = ("test", "dev"), show_progress: bool = True, **params) -> DecontamReport:
    """Which pool examples overlap the task's test and dev items (exact, word n-gram, MinHash);
    see :mod:`thresher.decontam`. Writes the report as JSON to ``out`` when given.

    ``params``: ``min_words``, ``shingle``, ``num_perm``, ``threshold``, ``seed``, ``rules``,
    ``examples``, ``batch_size`` (:func:`thresher.decontam.decontaminate`).
    """
    pool = as_pool(pool)
    if isinstance(task, str):
        task = get_task(task)
    report = _decontaminate(pool, task, splits=splits, n=n, show_progress=show_progress, **params)
    if out:
        atomic_write_json(Path(out), report.to_dict())
    return report


def compute_required(selector, pool: Pool, st: SignalStore, *, engine: str = "local", show_progress: bool = True) -> None:
    """Score the signals ``selector`` reads that the store lacks (a step of its own: the selector
    itself only reads); a store that must be written to is checked for writability first."""
    needed = selector.required_signals()
    if any(not _stored(st, sig, pool) for sig in needed):
        ensure_writable(st)
    for sig in needed:
        run_signal(sig, pool, st, engine=engine, show_progress=show_progress)


def select(pool: Pool | str, method: str, budget, *, store: str | os.PathLike | None = None, seed: int = 0,
           task: Task | DevTask | str | None = None, oracle: Oracle | None = None, out: str | os.PathLike | None = None,
           compute_missing: bool = False, engine: str = "local", show_progress: bool = True,
           oracle_model: str = "micro", oracle_steps: int | None = None,
           artifacts_dir: str | os.PathLike | None = None, decontaminate: bool = True, **params) -> Selection:
    """Run a selector on stored signals; write ``out`` (+ ``.meta.json``) when given.

    With ``compute_missing=True`` the signals the method needs are scored first (a
    separate step: the selector itself still only reads the store). A method that
    measures subsets (HARP, AutoSelection) gets ``oracle``, or else one built here on
    ``task`` with ``oracle_model`` (and ``oracle_steps`` training steps, default: the
    tier's); it only ever sees dev scores.

    ``budget``: a float up to 1 is a fraction (``1.0`` = the whole pool), an integer a count
    (``1`` = one row); ``Selection.n_requested`` is the resolved row count and
    ``Selection.budget_note`` says when it was not met (a count above the pool size selects
    all). A method's plots, traces and reports go to ``artifacts_dir``, by default
    ``<out>.artifacts/`` beside the output (``Selection.artifacts_dir`` when it wrote any).

    Decontamination (on whenever a task is given): the pool examples that overlap the task's
    test split (:mod:`thresher.decontam`: exact, 13-gram and MinHash rules) are excluded
    before the method sees the pool, so the budget is resolved on, and filled from, the rest;
    dev overlap is reported, not excluded. ``Selection.decontamination`` (in the meta file)
    records ``{"test": {"excluded", "ids"}, "dev": {"overlap", "ids"}, ...}``;
    ``pool_fingerprint`` stays the given pool's (``save`` checks it; the reduced view's is
    ``decontamination["view_fingerprint"]``). ``decontaminate=False`` turns it off with a
    :class:`~thresher.decontam.DecontaminationOffWarning` and records ``{"off": true}``.
    """
    budget = Budget.parse(budget)
    pool = as_pool(pool)
    st = open_store(store)
    if isinstance(task, str):
        task = get_task(task)
    selector = make_selector(method, **params)
    view_pool, decon = pool, None  # decontamination: the pool the selector sees, and what was excluded
    if task is not None and decontaminate:
        view_pool, _, decon = exclude_test_overlap(pool, task, show_progress=show_progress)
    elif task is not None:
        warnings.warn(f"decontamination is off: pool examples that overlap the {task.name} test split may be selected",
                      DecontaminationOffWarning, stacklevel=2)
        decon = off_meta()
    if selector.uses_oracle and oracle is None:
        if not isinstance(task, Task):
            raise ValueError(f"method {method!r} fine-tunes on candidate subsets: give the target task (--task) so an oracle "
                             "can score them on its dev split")
        overrides = {"steps": oracle_steps} if oracle_steps else {}
        oracle = make_oracle(task, pool, model=oracle_model, **overrides)
    if compute_missing:
        compute_required(selector, pool, st, engine=engine, show_progress=show_progress)
    if artifacts_dir is None and out:
        artifacts_dir = Path(str(out) + ".artifacts")
    view = SignalView(pool, st)
    if view_pool is not pool:
        view = SubsetSignalView(view_pool, view)
    sel = selector.select(view_pool, view, budget, task=task, seed=seed, oracle=oracle,
                          artifacts_dir=artifacts_dir)
    if decon is not None:
        sel.pool_fingerprint, sel.decontamination = pool.fingerprint, decon
    note_scorers(sel, selector, pool, st)
    if out:
        sel.save(out, pool)
    return sel


def note_scorers(sel: Selection, selector, pool: Pool, st: SignalStore) -> None:
    """Record in ``sel.diagnostics`` the model(s) the selector's signals were scored with, resolved
    on the pool (``scorer``: ``scorer: small (SmolLM2-135M-Instruct)``; ``auto`` never shows) and
    what their runs noted (``signal_notes``: e.g. how many examples were truncated)."""
    import logging

    try:
        signals = selector.required_signals()
    except Exception as e:  # noqa: BLE001 - the selection is made; a method that cannot list its signals names none
        logging.getLogger(__name__).debug("no scorer noted for %s: %s", selector.name, e)
        return
    lines: list[str] = []
    notes: list[str] = []
    for sig in signals:
        sig = sig.for_pool(pool)
        line = scorer_line(sig)
        if line and line not in lines:
            lines.append(line)
        key = sig.key(pool)
        if st.is_complete(key):
            notes.extend(n for n in stored_notes(st, key) if n not in notes)
    if lines and isinstance(sel.diagnostics, dict):
        sel.diagnostics["scorer"] = "; ".join(lines)
    if notes and isinstance(sel.diagnostics, dict):
        sel.diagnostics["signal_notes"] = notes


def train(records_or_pool, model: str = "micro", out: str | os.PathLike | None = None, config: TrainConfig | None = None,
          show_progress: bool = True, **overrides):
    """Fine-tune ``model`` on records (a Pool, a path, or a list of records); save to ``out``."""

    check_model_spec(model)
    _check_positive(overrides, ("steps", "batch_size", "max_length"), integer=True, what="train")
    _check_positive(overrides, ("epochs", "lr"), integer=False, what="train")
    recs = list(as_pool(records_or_pool)) if not isinstance(records_or_pool, list) else records_or_pool
    if not recs:
        raise ConfigError(f"train: no training records in {records_or_pool}")
    tier = tier_of(model)
    cfg = config or TrainConfig.for_tier(tier, **overrides)
    apply_threads(cfg.threads)  # the config's, else the user's --threads / THRESHER_THREADS, else the available cores
    lm = load_model(model, seed=cfg.seed)
    m = lm.model
    if cfg.mode == "lora":
        m = attach_lora(m, cfg)
    result = finetune(m, lm.tokenizer, recs, cfg, show_progress=show_progress)
    if cfg.mode == "lora":
        m = m.merge_and_unload()
    trained = LoadedModel(m, lm.tokenizer, model, f"{lm.model_id}+ft")
    if out:
        save_model(trained, out)
    return trained, result


def evaluate(model: str, task: Task | str, split: str = "dev", batch_size: int = 64, show_progress: bool = True, limit: int | None = None):
    """Score a model (spec or directory) on a task split by generation + answer extraction."""

    check_model_spec(model)
    _check_positive({"batch_size": batch_size, "limit": limit}, ("batch_size", "limit"), integer=True, what="eval")
    if split not in ("dev", "test"):
        raise ConfigError(f"eval: --split {split!r}: must be 'dev' or 'test'")
    if isinstance(task, str):
        task = get_task(task)
    items = task.dev if split == "dev" else task._sealed_test()
    if limit:
        items = items[:limit]
    apply_threads()  # the user's --threads / THRESHER_THREADS, else the available cores
    lm = load_model(model)
    return _evaluate(lm.model, lm.tokenizer, task, items, batch_size=batch_size, show_progress=show_progress)


def _check_positive(values: dict, names: tuple, *, integer: bool, what: str) -> None:
    """``--name`` options that must be positive (integers, when ``integer``) when given."""
    for name in names:
        v = values.get(name)
        if v is None:
            continue
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (integer and int(v) != v)
        if bad:
            kind = "an integer >= 1" if integer else "a number > 0"
            raise ConfigError(f"{what}: --{name.replace('_', '-')} must be {kind} (got {v!r})")


def make_oracle(task: Task, pool: Pool, model: str = "micro", cache_dir: str | os.PathLike | None = None,
                ledger: CostLedger | None = None, **train_overrides) -> Oracle:
    tier = tier_of(model)
    return Oracle(task, pool, model=model, train=TrainConfig.for_tier(tier, **train_overrides), cache_dir=cache_dir, ledger=ledger)


__all__ = ["load", "score", "select", "decontaminate", "train", "evaluate", "get_task", "make_oracle", "Budget", "Selection", "Score", "Pool",
           "SignalStore", "make_signal"]


def run_recipe(recipe, pool, out: str | os.PathLike | None = None, *, store: str | os.PathLike | None = None,
               budget=None, cap_to_budget: bool = False, settings: dict | SignalSettings | None = None,
               compute_missing: bool = False, engine: str = "local", show_progress: bool = True):
    """Execute a recipe on a pool; write the subset (``out``, JSONL + ``.meta.json``) and its state.

    ``recipe``: a YAML path (or text, or a list of steps). ``settings`` override the file's
    ``signals`` section. ``budget`` (optional) only sets k for ``budget_used`` unless
    ``cap_to_budget``. With ``compute_missing`` the signals the recipe and its state read are
    computed first (a separate step; executing the recipe itself never computes).
    Returns (Selection, state dict); the state is also written to ``<out stem>.state.json``.
    """
    pool = as_pool(pool)
    rf = as_recipe(recipe)
    params: dict[str, Any] = {"recipe": rf.recipe.to_list(full=True), "cap_to_budget": cap_to_budget}
    chosen = settings if settings is not None else rf.settings
    if chosen is not None:
        params["signals"] = chosen.model_dump(mode="json") if isinstance(chosen, SignalSettings) else dict(chosen)
    selector = RecipeSelector(**params)
    st = open_store(store)
    if compute_missing:
        compute_required(selector, pool, st, engine=engine, show_progress=show_progress)
    sel = selector.select(pool, SignalView(pool, st), Budget.parse(budget if budget is not None else 1.0))
    note_scorers(sel, selector, pool, st)
    if budget is None:  # no budget was asked for: the recipe alone sets the size
        sel.n_requested, sel.budget_note = None, ""
    if out:
        out = Path(out)
        sel.save(out, pool)
        state_path = out.with_name(out.name.rsplit(".", 1)[0] + ".state.json")
        atomic_write_json(state_path, {"recipe": sel.diagnostics["recipe"], "state": sel.diagnostics["state"],
                                       "steps": sel.diagnostics["steps"]}, default=None)
    return sel, sel.diagnostics["state"]
