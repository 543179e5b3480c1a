"""A bench config (``thresher bench CONFIG.yaml``): reading and checking it, the pool and task it
names, and the bench-level defaults it hands every method (scorer, oracle budget, target task).
The keys are described in :mod:`thresher.bench.run`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.data.pool import load_pool
from thresher.errors import ConfigError
from thresher.select.base import Budget, selector_class
from thresher.tasks import get_task
from thresher.tasks.arith import ArithConfig, ArithTestbed, read_defect_labels
from thresher.tasks.base import check_metric
from thresher.tasks.gsm8k_mix import GSM8KMixTestbed

#: reference rows a bench can add (not selectors): from the hidden labels, or the model not fine-tuned
REFERENCES = {"clean-only": "every example the hidden labels call clean",
              "base": "the base model, not fine-tuned (an empty subset)"}
#: a reference's budget label (its row id); the others run at 1.0
REFERENCE_BUDGETS = {"base": "0"}
#: the references built from the hidden labels (the others need none)
LABELLED_REFERENCES = {"clean-only"}


class BenchConfigError(ConfigError):
    pass


@dataclass
class MethodSpec:
    name: str
    label: str
    params: dict = field(default_factory=dict)
    budgets: list[str] | None = None  # this method's own budgets (None: the bench's)


@dataclass
class BenchConfig:
    name: str
    pool: dict
    task: dict
    model: str
    train: dict
    budgets: list
    seeds: list[int]
    methods: list[MethodSpec]
    oracle_budget: int = 15
    scorer: dict = field(default_factory=lambda: {"model": "auto"})  # micro on the arith testbed, small on any other pool
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 1
    source: str = ""
    #: exclude the pool examples that overlap the test split before selection (see the module docstring)
    decontaminate: bool = True
    #: reference rows (:data:`REFERENCES`), one per seed
    references: list[str] = field(default_factory=list)
    #: search small, train big: ``{steps: N, dev_size: M, fidelity_subsets: K}`` builds a cheaper oracle for the
    #: searches (:meth:`thresher.oracle.core.Oracle.inner`); final selections are scored by the full one, and up to K
    #: subsets a search scored are re-scored by it for the row's ``inner_fidelity`` (Spearman)
    inner_oracle: dict | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> BenchConfig:
        import yaml

        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise BenchConfigError(f"bench config not found: {p}") from None
        except yaml.YAMLError as e:
            raise BenchConfigError(f"{p}: invalid YAML: {e}") from None
        return cls.from_dict(raw, source=str(p), base=p.parent)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<dict>", base: Path | None = None) -> BenchConfig:
        if not isinstance(raw, dict):
            raise BenchConfigError(f"{source}: expected a mapping at the top level")
        known = {"name", "pool", "task", "model", "train", "budgets", "seeds", "methods", "oracle_budget", "scorer", "engine",
                 "ray_address", "workers", "decontaminate", "references", "inner_oracle"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BenchConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("pool", "methods", "budgets", "seeds"):
            if key not in raw:
                raise BenchConfigError(f"{source}: missing required key '{key}'")
        pool = raw["pool"]
        if not isinstance(pool, dict) or not ({"arith", "gsm8k-mix", "path"} & set(pool)):
            raise BenchConfigError(f"{source}: 'pool' must be {{arith: {{...}}}}, {{gsm8k-mix: {{...}}}} or {{path: FILE}}")
        if "path" in pool and base is not None and not Path(pool["path"]).is_absolute() and (base / pool["path"]).exists():
            pool = dict(pool, path=str(base / pool["path"]))
        methods = []
        for i, m in enumerate(raw["methods"]):
            if isinstance(m, str):
                m = {"name": m}
            if not isinstance(m, dict) or "name" not in m:
                raise BenchConfigError(f"{source}: methods[{i}] needs a 'name'")
            extra = sorted(set(m) - {"name", "label", "params", "budgets"})
            if extra:
                raise BenchConfigError(f"{source}: methods[{i}] has unknown key(s) {extra}")
            own = m.get("budgets")
            if own is not None and (not isinstance(own, list) or not own):
                raise BenchConfigError(f"{source}: methods[{i}].budgets must be a non-empty list")
            methods.append(MethodSpec(m["name"], m.get("label") or m["name"], dict(m.get("params") or {}),
                                      None if own is None else [str(Budget.parse(b)) for b in own]))
        references = raw.get("references") or []
        if not isinstance(references, list) or any(r not in REFERENCES for r in references):
            raise BenchConfigError(f"{source}: 'references' must be a list of {sorted(REFERENCES)} (reference rows, not "
                                   f"selectors), got {references!r}")
        if LABELLED_REFERENCES & set(references) and "path" in pool and not pool.get("labels"):
            raise BenchConfigError(f"{source}: references {references} need hidden labels: the testbed pools have them; "
                                   "for a pool file add 'labels: DEFECTS.jsonl' under 'pool'")
        labels = [m.label for m in methods] + list(references)
        if len(set(labels)) != len(labels):
            raise BenchConfigError(f"{source}: method labels must be unique (references included), got {labels}")
        budgets = [str(Budget.parse(b)) for b in raw["budgets"]]
        seeds = raw["seeds"]
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise BenchConfigError(f"{source}: 'seeds' must be a list of integers")
        task = raw.get("task") or {"name": "arith"}
        if isinstance(task, str):
            task = {"name": task}
        engine = raw.get("engine", "local")
        if engine not in ("local", "ray"):
            raise BenchConfigError(f"{source}: engine must be 'local' or 'ray'")
        return cls(name=raw.get("name") or Path(source).stem, pool=pool, task=task, model=raw.get("model", "micro"),
                   train=dict(raw.get("train") or {}), budgets=budgets, seeds=seeds, methods=methods,
                   oracle_budget=int(raw.get("oracle_budget", 15)), scorer=dict(raw.get("scorer") or {"model": "auto"}),
                   engine=engine, ray_address=raw.get("ray_address"), workers=int(raw.get("workers", 1)), source=source,
                   decontaminate=_flag(raw.get("decontaminate", True), "decontaminate", source),
                   references=list(dict.fromkeys(references)), inner_oracle=_inner_spec(raw.get("inner_oracle"), source),
                   **_task_metric_checked(task, source))

    def task_spec(self) -> tuple[str, dict]:
        """(task name, factory params) of the target task: what signals that read a dev split must name."""
        if "arith" in self.pool:
            return "arith", dict(self.pool["arith"] or {})
        if "gsm8k-mix" in self.pool:
            return "gsm8k-mix", dict(self.pool["gsm8k-mix"] or {})
        return self.task["name"], dict(self.task.get("params") or {})

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["methods"] = [m.__dict__ for m in self.methods]
        return d


def build_pool_and_task(cfg: BenchConfig, data_dir: str | os.PathLike | None = None):
    """(pool, task, hidden labels or None). A testbed also writes ``pool.jsonl`` and its hidden
    labels ``defects.jsonl`` into ``data_dir`` when given."""
    if "arith" in cfg.pool:
        pool, task, labels = ArithTestbed(ArithConfig(**(cfg.pool["arith"] or {}))).build(data_dir)
        return pool, _with_metric(task, cfg), labels
    if "gsm8k-mix" in cfg.pool:  # the real-data testbed; its task is gsm8k with the same dev split

        pool, task, labels = GSM8KMixTestbed(**(cfg.pool["gsm8k-mix"] or {})).build(data_dir)
        return pool, _with_metric(task, cfg), labels

    pool, _ = load_pool(cfg.pool["path"], on_error=cfg.pool.get("on_error", "raise"))
    labels = None
    if cfg.pool.get("labels"):
        labels = read_defect_labels(cfg.pool["labels"])
    params = {k: v for k, v in (cfg.task.get("params") or {}).items() if k not in ("metric", "both_metrics")}
    task = get_task(cfg.task["name"], **params)
    return pool, _with_metric(task, cfg), labels


def _with_metric(task, cfg: BenchConfig):
    """The task scored with the metric the config's ``task: {params: {metric, both_metrics}}`` names
    (testbed tasks too: the testbed builds the task, the config still picks its metric)."""
    p = cfg.task.get("params") or {}
    if "metric" not in p and "both_metrics" not in p:
        return task
    return task.with_metric(p.get("metric"), p.get("both_metrics"))


def _task_metric_checked(task: dict, source: str) -> dict:
    p = (task.get("params") or {}) if isinstance(task, dict) else {}
    try:
        check_metric(p.get("metric", "accuracy"), p.get("both_metrics", False))
    except ValueError as e:
        raise BenchConfigError(f"{source}: task params: {e}") from None
    return {}


def _inner_spec(raw, source: str) -> dict | None:
    if raw is None:
        return None
    known = {"steps", "dev_size", "fidelity_subsets"}
    if not isinstance(raw, dict) or not raw or set(raw) - known or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in raw.values()):
        raise BenchConfigError(f"{source}: 'inner_oracle' must map some of {sorted(known)} to positive integers, got {raw!r}")
    return {"fidelity_subsets": 3, **raw}


def method_params(cls_params, params: dict, cfg: BenchConfig) -> dict:
    """Bench-level defaults for the params a method has: scorer, oracle budget."""
    fields = cls_params.model_fields
    p = dict(params)
    sc = cfg.scorer
    # Superfiltering's weak scorer is the method itself: the bench's scorer never replaces it
    own_scorer = getattr(cls_params, "weak_scorer", False)
    if "scorer" in fields and "scorer" not in p and "model" in sc and not own_scorer:
        p["scorer"] = sc["model"]
    if "scorer_warmup" in fields and "scorer_warmup" not in p and "warmup_examples" in sc:
        p["scorer_warmup"] = sc["warmup_examples"]
    if "scorer_warmup_steps" in fields and "scorer_warmup_steps" not in p and "warmup_steps" in sc:
        p["scorer_warmup_steps"] = sc["warmup_steps"]
    if "oracle_budget" in fields and "oracle_budget" not in p:
        p["oracle_budget"] = cfg.oracle_budget
    task_name, task_params = cfg.task_spec()
    if "relevance_task" in fields and "relevance_task" not in p:
        p["relevance_task"], p["relevance_task_params"] = task_name, dict(task_params)
    if "signals" in fields:  # AutoSelection's signal settings: the bench's scorer and target task unless given
        settings = dict(p.get("signals") or {})
        if "task" not in settings:
            settings["task"], settings["task_params"] = task_name, dict(task_params)
        for ours, theirs in (("model", "scorer"), ("warmup_examples", "scorer_warmup"), ("warmup_steps", "scorer_warmup_steps")):
            if ours in sc and theirs not in settings:
                settings[theirs] = sc[ours]
        p["signals"] = settings
    return p


def row_settings(cfg: BenchConfig, pool_fingerprint: str, what: MethodSpec | str) -> dict:
    """What a row's result depends on beyond its id (method label, budget, seed), as plain JSON: the
    pool (its fingerprint), the task and the oracle's model for every row; the training settings for
    every fine-tuned row; the method, its params and the scorer for a method row; and the inner
    oracle and the oracle budget for a method that searches with the oracle. A resumed bench compares
    each finished row's ``settings`` with these (:func:`changed_settings`)."""
    s: dict[str, Any] = {"pool": pool_fingerprint, "task": cfg.task, "model": cfg.model, "decontaminate": cfg.decontaminate}
    if what == "base":  # the model not fine-tuned: no training, no selection
        return json.loads(json.dumps(s, sort_keys=True))
    s["train"] = cfg.train
    if isinstance(what, str):
        s["reference"] = what
    else:
        s.update(method=what.name, params=what.params, scorer=cfg.scorer)
        cls = selector_class(what.name)
        if getattr(cls, "uses_oracle", False) or "oracle_budget" in cls.Params.model_fields:
            s.update(inner_oracle=cfg.inner_oracle, oracle_budget=cfg.oracle_budget)
    return json.loads(json.dumps(s, sort_keys=True))


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings (top-level keys) that differ between a finished row's and the config's."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _flag(value, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise BenchConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    return value
