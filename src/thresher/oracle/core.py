"""The oracle: fine-tune the base model on a subset and score the task's dev split.

Results are cached by (pool fingerprint, subset ids, base model, train config, task dev
fingerprint, and the task's metric when it is not plain accuracy), so asking twice costs nothing; every call goes into the cost ledger
(runs, examples seen, tokens, wall seconds). The trained weights of each run are kept
so the final selection's *test* score needs no retraining.

Selection code gets :meth:`Oracle.dev_view` (``score`` on dev only). The test split is
scored through :meth:`Oracle.score_test` once per final selection; the result is cached
and every test scoring is logged in ``test_log.jsonl``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger, LedgerEntry
from thresher.data.paths import cache_root
from thresher.data.pool import Pool
from thresher.models.load import model_identity, tier_of
from thresher.models.train import TrainConfig
from thresher.oracle.job import TrainEvalJob, eval_saved, run_job
from thresher.oracle.ray import run_oracle_jobs_ray
from thresher.stats import oracle_fidelity
from thresher.tasks.base import DevTask, Task
from thresher.threads import threads_for


@dataclass
class Score:
    """One oracle measurement."""

    value: float
    split: str
    per_domain: dict[str, float]
    n_examples: int
    tokens: int
    seconds: float
    cached: bool
    key: str
    n_items: int = 0
    train_loss: float | None = None
    #: per-item values of the chosen metric: 0/1 outcomes for ``accuracy``, mean answer-token
    #: log-probabilities for ``loglik`` (what HARP's ``domain_effects`` and the paired bootstrap read)
    correct: list = field(default_factory=list, repr=False)
    metric: str = "accuracy"
    #: every metric computed (``accuracy`` and / or ``loglik``), with per-domain and per-item values
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_domain_all: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    per_item: dict[str, list] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


def ids_digest(ids) -> str:
    h = hashlib.sha256()
    for i in sorted(set(ids)):
        h.update(i.encode())
        h.update(b"\n")
    return h.hexdigest()


class DevOracle:
    """What a search may use: dev scores and the ledger, nothing about test."""

    def __init__(self, oracle: Oracle):
        self._oracle = oracle
        self.ledger = oracle.ledger
        self.task = oracle.task.dev_view() if isinstance(oracle.task, Task) else oracle.task
        self.model = oracle.model
        self.train = oracle.train

    def score(self, ids, label: str = "") -> Score:
        return self._oracle.score(ids, label=label)

    def score_many(self, id_lists, labels=None, workers: int | None = None) -> list[Score]:
        return self._oracle.score_many(id_lists, labels=labels, workers=workers)

    @property
    def history(self) -> list[tuple[list[str], float]]:
        """Every (subset ids, dev value) this oracle scored, in order (inner-oracle fidelity reads it)."""
        return self._oracle.history

    def base_score(self) -> Score:
        return self._oracle.base_score()


class Oracle:
    def __init__(self, task: Task | DevTask, pool: Pool, model: str = "micro", train: TrainConfig | None = None,
                 cache_dir: str | os.PathLike | None = None, ledger: CostLedger | None = None, show_progress: bool = True,
                 eval_batch_size: int = 64, workers: int = 1, engine: str = "local", ray_address: str | None = None):
        self.task = task
        self.pool = pool
        self.model = model
        tier = tier_of(model)
        self.train = train or TrainConfig.for_tier(tier)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "oracle"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = ledger or CostLedger()
        self.show_progress = show_progress
        self.eval_batch_size = eval_batch_size
        self.workers = max(1, workers)
        self.engine = engine
        self.ray_address = ray_address
        self._model_id = model_identity(model)
        dev_task = task.dev_view() if isinstance(task, Task) else task
        self._dev_fp = dev_task.fingerprint()
        self._metric_tag = dev_task.metric_tag() if hasattr(dev_task, "metric_tag") else None
        #: (subset ids, dev value) of every dev scoring, in order
        self.history: list[tuple[list[str], float]] = []

    def dev_view(self) -> DevOracle:
        return DevOracle(self)

    # --- search small, train big
    def inner(self, steps: int | None = None, dev_size: int | None = None, seed: int = 0, **_ignored) -> Oracle:
        """A cheaper oracle for searches: ``steps`` training steps, a seeded ``dev_size``-item
        subset of the dev split (kept in dev order); same pool, model, cache folder and ledger.
        Its task keeps the test split, so selectors get the same kind of task (but never test it)."""
        task = self.task
        if dev_size is not None and dev_size < len(task.dev):
            if dev_size < 1:
                raise ValueError(f"inner oracle dev_size must be >= 1, got {dev_size}")
            import random

            keep = sorted(random.Random(f"inner-dev-{seed}").sample(range(len(task.dev)), dev_size))
            dev = [task.dev[i] for i in keep]
            task = task.with_dev(dev) if isinstance(task, Task) else dataclasses.replace(task, dev=dev)
        train = dataclasses.replace(self.train, steps=steps, epochs=None) if steps is not None else self.train
        return Oracle(task, self.pool, model=self.model, train=train, cache_dir=self.cache_dir, ledger=self.ledger,
                      show_progress=self.show_progress, eval_batch_size=self.eval_batch_size, workers=self.workers,
                      engine=self.engine, ray_address=self.ray_address)

    def fidelity(self, scored: list[tuple[list[str], float]], max_subsets: int = 3, label: str = "fidelity") -> dict:
        """Score up to ``max_subsets`` of the subsets an inner oracle scored (``scored``: its
        ``history`` slice) with this oracle, spread over the inner score range; returns
        ``{inner_fidelity (Spearman or None), inner_fidelity_n, inner_fidelity_pairs}``."""

        uniq: dict[str, tuple[list[str], float]] = {}
        for ids, v in scored:
            uniq.setdefault(ids_digest(ids), (ids, v))
        keys = sorted(uniq, key=lambda k: uniq[k][1])
        if len(keys) > max_subsets:  # evenly spaced in inner-score order: the extremes and the middle
            import numpy as np

            keys = [keys[int(round(i))] for i in np.linspace(0, len(keys) - 1, max_subsets)]
        if not keys:
            return {"inner_fidelity": None, "inner_fidelity_n": 0, "inner_fidelity_pairs": []}
        full = self.score_many([uniq[k][0] for k in keys], labels=[label] * len(keys))
        f = oracle_fidelity({k: uniq[k][1] for k in keys}, {k: s.value for k, s in zip(keys, full)})
        return {"inner_fidelity": f["spearman"], "inner_fidelity_n": f["n"],
                "inner_fidelity_pairs": [[k[:12], a, b] for k, a, b in f["pairs"]]}

    # --- keys and cache
    def key(self, ids, train: TrainConfig | None = None) -> str:
        cfg = train or self.train
        parts = [self.pool.fingerprint, ids_digest(ids), self._model_id, cfg.key(), self._dev_fp]
        if self._metric_tag:  # loglik (or both metrics) never reuses a cached accuracy result
            parts.append(self._metric_tag)
        raw = json.dumps(parts)
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def _dir(self, key: str) -> Path:
        return self.cache_dir / key

    def _load(self, key: str, split: str) -> dict | None:
        f = self._dir(key) / f"{split}.json"
        return json.loads(f.read_text()) if f.exists() else None

    def _save(self, key: str, split: str, result: dict) -> None:
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / f"{split}.json", result, indent=None, default=None)

    def _job(self, ids, label: str, threads: int | None = None) -> TrainEvalJob:
        key = self.key(ids)
        recs = [self.pool[p] for p in self.pool.positions(sorted(set(ids)))]
        dev_task = self.task.dev_view() if isinstance(self.task, Task) else self.task
        return TrainEvalJob(model=self.model, train=asdict(self.train), task=dev_task, items=dev_task.dev, records=recs,
                            save_dir=str(self._dir(key) / "model") if recs else None, eval_batch_size=self.eval_batch_size,
                            threads=threads, progress=self.show_progress, desc=f"oracle {label}".strip())

    @staticmethod
    def _value(res: dict) -> float:
        return res["value"] if "value" in res else res["accuracy"]  # (results cached before metrics had "value")

    def _to_score(self, key: str, res: dict, split: str, cached: bool) -> Score:
        metric = res.get("metric", "accuracy")
        items = res.get("items") if metric != "accuracy" else res.get("correct", [])
        metrics = {m: res.get(m) for m in ("accuracy", "loglik") if res.get(m) is not None}
        per_dom = {m: res[f"per_domain_{m}"] for m in ("accuracy", "loglik") if f"per_domain_{m}" in res}
        per_item = {}
        if "correct" in res:
            per_item["accuracy"] = [float(c) for c in res["correct"]]
        if "loglik_items" in res:
            per_item["loglik"] = list(res["loglik_items"])
        return Score(value=self._value(res), split=split, per_domain=res["per_domain"], n_examples=res.get("examples", 0),
                     tokens=res.get("tokens", 0), seconds=res["seconds"], cached=cached, key=key, n_items=res["n_items"],
                     train_loss=res.get("train_loss"), correct=list(items or []), metric=metric, metrics=metrics,
                     per_domain_all=per_dom, per_item=per_item)

    def _record(self, kind: str, label: str, key: str, res: dict, cached: bool, n_ids: int) -> None:
        self.ledger.record(LedgerEntry(kind=kind, label=label, examples=res.get("examples", 0), tokens=res.get("tokens", 0),
                                       seconds=0.0 if cached else res["seconds"], cached=cached, key=key,
                                       extra={"subset_size": n_ids, "score": self._value(res)}))

    # --- dev scoring
    def score(self, ids, label: str = "") -> Score:
        ids = list(ids)
        if not ids:
            raise ValueError("the oracle cannot train on an empty subset")
        key = self.key(ids)
        res = self._load(key, "dev")
        cached = res is not None
        if res is None:
            res = self._run([self._job(ids, label)])[0]
            self._save(key, "dev", res)
        self._record("oracle", label, key, res, cached, len(set(ids)))
        self.history.append((ids, self._value(res)))
        return self._to_score(key, res, "dev", cached)

    def score_many(self, id_lists, labels=None, workers: int | None = None) -> list[Score]:
        """Score several subsets; uncached ones run in parallel worker processes (or Ray tasks)."""
        labels = labels or [""] * len(id_lists)
        keys = [self.key(ids) for ids in id_lists]
        results: dict[str, dict] = {}
        todo = []
        for ids, key, label in zip(id_lists, keys, labels):
            got = self._load(key, "dev")
            if got is not None:
                results[key] = got
            elif key not in {k for k, _, _ in todo}:
                todo.append((key, ids, label))
        fresh = set()
        if todo:
            w = min(workers or self.workers, len(todo))
            threads = threads_for(w)  # the user's --threads (or the available cores) shared by the w workers
            outs = self._run([self._job(ids, label, threads) for _, ids, label in todo], workers=w)
            for (key, _, _), res in zip(todo, outs):
                self._save(key, "dev", res)
                results[key] = res
                fresh.add(key)
        scores = []
        seen_fresh = set()
        for ids, key, label in zip(id_lists, keys, labels):
            cached = key not in fresh or key in seen_fresh
            seen_fresh.add(key)
            self._record("oracle", label, key, results[key], cached, len(set(ids)))
            self.history.append((list(ids), self._value(results[key])))
            scores.append(self._to_score(key, results[key], "dev", cached))
        return scores

    def _run(self, jobs: list[TrainEvalJob], workers: int = 1) -> list[dict]:
        if self.engine == "ray":
            return run_oracle_jobs_ray(jobs, address=self.ray_address)
        if workers <= 1 or len(jobs) == 1:
            return [run_job(j) for j in jobs]
        jobs = [dataclasses.replace(j, progress=False) for j in jobs]
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            return list(ex.map(run_job, jobs))

    def base_score(self, split: str = "dev") -> Score:
        """The base model's score without fine-tuning, on ``dev`` (b_d in HARP) or ``test`` (the
        bench's ``base`` reference row). It does not depend on the training config: one cache
        entry per model, dev split and metric, so the test split is scored once."""
        if split not in ("dev", "test"):
            raise ValueError(f"base_score: split must be 'dev' or 'test', got {split!r}")
        parts = [self._model_id, self._dev_fp] + ([self._metric_tag] if self._metric_tag else [])
        key = "base-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
        res = self._load(key, split)
        cached = res is not None
        if res is None:
            job = self._job([], "base")
            if split == "test":
                job = dataclasses.replace(job, items=self._test_items(), desc="base test eval")
            res = run_job(job)
            if split == "test":
                self._save_test(key, "base", res)
            else:
                self._save(key, split, res)
        self._record("oracle" if split == "dev" else "test", "base", key, res, cached, 0)
        return self._to_score(key, res, split, cached)

    def _save_test(self, key: str, label: str, res: dict) -> None:
        """A test result, cached and logged (``test_log.jsonl``: every test scoring, one line each)."""
        self._save(key, "test", res)
        with open(self.cache_dir / "test_log.jsonl", "a") as f:
            f.write(json.dumps({"key": key, "label": label, "accuracy": res.get("accuracy"), "metric": res.get("metric", "accuracy"),
                                "value": self._value(res), "at": time.time()}) + "\n")

    def _test_items(self) -> list:
        if not isinstance(self.task, Task):
            raise TypeError("this oracle was given a dev-only task; test scoring needs the full Task")
        return self.task._sealed_test()

    # --- test scoring (final selections only)
    def score_test(self, ids, label: str = "") -> Score:
        """Score a final selection on the test split (cached: a selection is scored once)."""
        test_items = self._test_items()
        ids = list(ids)
        key = self.key(ids)
        res = self._load(key, "test")
        cached = res is not None
        if res is None:
            if self._load(key, "dev") is None or not (self._dir(key) / "model").exists():
                self.score(ids, label=label)
            dev_task = self.task.dev_view()
            job = TrainEvalJob(model=self.model, train=asdict(self.train), task=dev_task, items=test_items, records=[],
                               save_dir=str(self._dir(key) / "model"), eval_batch_size=self.eval_batch_size,
                               progress=self.show_progress, desc="test eval")
            res = eval_saved(job)
            self._save_test(key, label, res)
        self._record("test", label, key, res, cached, len(set(ids)))
        return self._to_score(key, res, "test", cached)


def score_row_fields(dev: Score, test: Score) -> dict:
    """A bench row's metric fields: ``metric``, ``dev_metrics`` / ``test_metrics`` (every metric
    computed), ``test_correct`` (per-item 0/1, when accuracy was computed) and, for a metric
    other than accuracy, ``test_items`` (its per-item values: what the paired bootstrap reads)."""
    out = {"metric": test.metric, "dev_metrics": dict(dev.metrics), "test_metrics": dict(test.metrics),
           "test_correct": [int(c) for c in test.per_item.get("accuracy", test.correct if test.metric == "accuracy" else [])]}
    if test.metric != "accuracy":
        out["test_items"] = [float(v) for v in test.correct]
    return out
