"""The Python API: every CLI command is one of these functions."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .engine import run_signal
from .ledger import CostLedger
from .oracle import Oracle, Score
from .pool import LoadReport, Pool, load_pool
from .select.base import Budget, Selection, SignalView, make_selector
from .signals.base import Signal, make_signal, resolve
from .store import SignalStore
from .tasks.base import DevTask, Task
from .models.load import tier_of
from .train import TrainConfig

DEFAULT_STORE = ".thresher/store"


def default_store() -> str:
    return os.environ.get("THRESHER_STORE", DEFAULT_STORE)


def as_pool(pool: Pool | str | os.PathLike, **load_kw) -> Pool:
    if isinstance(pool, Pool):
        return pool
    p, _ = load_pool(pool, **load_kw)
    return p


def load(path: str | os.PathLike, out: str | os.PathLike | None = None, on_error: str = "raise",
         rejects: str | os.PathLike | None = None, **kw) -> tuple[Pool, LoadReport]:
    """Load and normalise a pool; optionally write it as Parquet (or JSONL)."""
    pool, report = load_pool(path, on_error=on_error, rejects_path=rejects, **kw)
    if out:
        pool.save(out)
    return pool, report


def get_task(name: str, **params) -> Task:
    from .tasks import get_task as _get

    return _get(name, **params)


def score(pool: Pool | str, signals: list[str | Signal], store: str | os.PathLike | None = None, *, engine: str = "local",
          params: dict[str, Any] | None = None, shard_size: int | None = None, show_progress: bool = True,
          ray_address: str | None = None, ray_actors: int | None = None) -> list:
    """Compute signals (by signal or column name) into the store. Returns one run record per signal.

    ``params`` go to every requested signal that has a parameter of that name; a key
    ``SIGNAL.NAME`` (e.g. ``embedding.model``) goes to that signal only and wins.
    """
    pool = as_pool(pool)
    st = SignalStore(store or default_store())
    runs, seen = [], set()
    for s in signals:
        if isinstance(s, Signal):
            sig = s
        else:
            cls, _ = resolve(s)
            sig = cls(**signal_params_for(cls, params or {}))
        if sig.key(pool).digest in seen:
            continue
        seen.add(sig.key(pool).digest)
        runs.append(run_signal(sig, pool, st, engine=engine, shard_size=shard_size, show_progress=show_progress,
                               ray_address=ray_address, ray_actors=ray_actors))
    return runs


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


def select(pool: Pool | str, method: str, budget, *, store: str | os.PathLike | None = None, seed: int = 0,
           task: Task | DevTask | str | None = None, oracle: Oracle | None = None, out: str | os.PathLike | None = None,
           compute_missing: bool = False, engine: str = "local", show_progress: bool = True,
           oracle_model: str = "micro", oracle_steps: int | None = None, **params) -> Selection:
    """Run a selector on stored signals; write ``out`` (+ ``.meta.json``) when given.

    With ``compute_missing=True`` the signals the method needs are scored first (a
    separate step: the selector itself still only reads the store). A method that
    measures subsets (HARP, AutoSelection) gets ``oracle``, or else one built here on
    ``task`` with ``oracle_model`` (and ``oracle_steps`` training steps, default: the
    tier's); it only ever sees dev scores.
    """
    pool = as_pool(pool)
    st = SignalStore(store or default_store())
    if isinstance(task, str):
        task = get_task(task)
    selector = make_selector(method, **params)
    if selector.uses_oracle and oracle is None:
        if not isinstance(task, Task):
            raise ValueError(f"method {method!r} fine-tunes on candidate subsets: give the target task (--task) so an oracle "
                             "can score them on its dev split")
        overrides = {"steps": oracle_steps} if oracle_steps else {}
        oracle = make_oracle(task, pool, model=oracle_model, **overrides)
    if compute_missing:
        for sig in selector.required_signals():
            run_signal(sig, pool, st, engine=engine, show_progress=show_progress)
    artifacts = Path(str(out) + ".artifacts") if out else None
    sel = selector.select(pool, SignalView(pool, st), Budget.parse(budget), task=task, seed=seed, oracle=oracle,
                          artifacts_dir=artifacts)
    if out:
        sel.save(out, pool)
    return sel


def train(records_or_pool, model: str = "micro", out: str | os.PathLike | None = None, config: TrainConfig | None = None,
          show_progress: bool = True, **overrides):
    """Fine-tune ``model`` on records (a Pool, a path, or a list of records); save to ``out``."""
    from .models.load import LoadedModel, load_model, save_model
    from .train import attach_lora, finetune

    recs = list(as_pool(records_or_pool)) if not isinstance(records_or_pool, list) else records_or_pool
    tier = tier_of(model)
    cfg = config or TrainConfig.for_tier(tier, **overrides)
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
    from .evaluate import evaluate as _evaluate
    from .models.load import load_model

    if isinstance(task, str):
        task = get_task(task)
    if split not in ("dev", "test"):
        raise ValueError("split must be 'dev' or 'test'")
    items = task.dev if split == "dev" else task._sealed_test()
    if limit:
        items = items[:limit]
    lm = load_model(model)
    return _evaluate(lm.model, lm.tokenizer, task, items, batch_size=batch_size, show_progress=show_progress)


def make_oracle(task: Task, pool: Pool, model: str = "micro", cache_dir: str | os.PathLike | None = None,
                ledger: CostLedger | None = None, **train_overrides) -> Oracle:
    tier = tier_of(model)
    return Oracle(task, pool, model=model, train=TrainConfig.for_tier(tier, **train_overrides), cache_dir=cache_dir, ledger=ledger)


__all__ = ["load", "score", "select", "train", "evaluate", "get_task", "make_oracle", "Budget", "Selection", "Score", "Pool",
           "SignalStore", "make_signal"]

