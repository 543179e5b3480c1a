"""``thresher bench CONFIG.yaml``: every method x budget x seed on one task, one table.

A bench config (YAML, read with ``yaml.safe_load``)::

    name: arith-quick
    pool: {arith: {pool_size: 600}}        # the built-in testbed (hidden labels -> defect counts)
    # pool: {gsm8k-mix: {pool_size: 4000}} # the real-data testbed (GSM8K + Alpaca/ShareGPT, gsm8k task)
    # pool: {path: data/pool.jsonl}        # or any pool file, with `task:` naming the task
    task: {name: arith}                    # ignored for testbed pools (the testbed makes its own task)
    model: micro                           # oracle base model (micro, small, hub id, path)
    train: {steps: 500}                    # TrainConfig overrides for the oracle
    budgets: [0.05, 0.1, 0.3]
    seeds: [0, 1, 2]
    oracle_budget: 15                      # oracle runs a search method may spend per selection
    scorer: {model: micro, warmup_examples: 300}   # the model-based signals' scorer (default auto: micro on arith, else small)
    engine: local                          # or ray (oracle runs dispatched as Ray tasks)
    decontaminate: true                    # exclude pool examples overlapping the test split before selecting (default)
    workers: 2                             # final fine-tunes of a seed run in 2 processes at once (default 1)
    methods:
      - random
      - full
      - {name: ifd}
      - {name: thtb, label: thtb-offline, params: {quality: "loss:low"}}
      - {name: random, label: random-600, budgets: [600]}   # this method's own budgets (the bench's otherwise)
    references: [clean-only, base]         # reference rows, not selectors (clean-only: from the hidden labels)

Order of work, per seed: every (method, budget) row still missing is selected first (search
methods call the oracle while they select), then the final subsets are fine-tuned together
(``Oracle.score_many``, ``workers`` processes at once), then each is scored once on test and
its row is written atomically to ``RUN_DIR/rows/``. The oracle caches every trained subset
and a search replays its trace, so a killed bench continues where it stopped. A row
(:data:`ROW_KEYS`) holds the method label, selector, params, budget, seed, subset size, dev
score, test score, the oracle runs and proxy calls the *selection* made (cached or not: the
cost the method needs on its own) plus the final training run, tokens trained, wall seconds,
the hidden-defect counts when the pool has them, ``reference`` (true only for reference
rows), and ``settings``: what the row depends on beyond its id (pool fingerprint, task, model,
training, method params, scorer, inner oracle; :func:`~thresher.bench.config.row_settings`). A
rerun keeps a finished row only under the same settings: a changed ``train:`` or method param
stops it with an error naming the rows and what changed, or with ``--rerun-changed`` redoes them.
``full`` and the references run once per seed, ``full`` and ``clean-only`` at budget ``1.0``.

References (``references:``) are rows that are not selectors, to read the selectors against.
``clean-only`` trains on every example the hidden labels call ``clean`` (an upper reference; it
needs labels: the arith and gsm8k-mix testbeds, or ``pool: {path: ..., labels: FILE}``). ``base``
is the base model without fine-tuning (budget ``0``, no subset; scored once, cached across
seeds): does training on any subset help at all?

Decontamination (``decontaminate: true``, the default; ``thresher bench --no-decontaminate`` or
``decontaminate: false`` turns it off with a warning): before any selection, the pool examples
that overlap the task's test split (:mod:`thresher.decontam`: exact, 13-gram, MinHash) are
excluded, so every method selects from, and resolves its budget on, the same clean pool; dev
overlap is reported, not excluded. The full report goes to ``RUN_DIR/decontamination.json`` and
every row states its counts: ``decontamination: {test: {excluded}, dev: {overlap}}``.

The statistics and the table: :mod:`thresher.bench.results`.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from thresher.bench.config import (
    LABELLED_REFERENCES,
    REFERENCE_BUDGETS,
    REFERENCES,
    BenchConfig,
    BenchConfigError,
    MethodSpec,
    build_pool_and_task,
    changed_settings,
    method_params,
    row_settings,
)
from thresher.bench.results import inner_fidelity, markdown_table, summarise
from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger
from thresher.data.store import SignalStore
from thresher.decontam import exclude_test_overlap, off_meta
from thresher.engine.local import run_signal
from thresher.models.load import tier_of
from thresher.models.train import TrainConfig
from thresher.oracle.core import Oracle, score_row_fields
from thresher.select.base import (
    SELECTORS,
    Budget,
    Selection,
    SignalView,
    SubsetSignalView,
    make_selector,
    selector_class,
)
from thresher.tasks.arith import defect_counts

#: the keys of every bench row (the demo's too); rows also carry per-domain scores, the method's
#: diagnostics and the test correctness vector (``test_correct``) the paired statistics read
ROW_KEYS = ("method", "selector", "params", "budget", "seed", "n_selected", "dev", "test", "oracle_runs", "proxy_calls",
            "tokens_trained", "wall_s", "defects", "decontamination", "reference", "settings")

def row_id(label: str, budget: str, seed: int) -> str:
    return f"{label}__b{budget}__s{seed}".replace("/", "_")


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"



@dataclass
class _Pending:
    """A row selected but not yet trained: what its row needs from the selection phase."""
    rid: str
    label: str
    selector: str
    budget: str
    ids: list[str]
    params: dict
    diagnostics: dict
    oracle_runs: int  # the selection's oracle runs + the final one
    proxy_calls: int
    select_seconds: float
    reference: bool = False
    settings: dict = field(default_factory=dict)  # config.row_settings: what a resumed bench checks


def _plan(cfg: BenchConfig, seed: int) -> list[tuple[MethodSpec | str, str]]:
    """The (method or reference name, budget) rows of one seed, in table order, each once:
    the bench's budgets (``full`` at 1.0), then methods with their own budgets, then the references."""
    plan: dict[str, tuple[MethodSpec | str, str]] = {}
    for b in cfg.budgets:
        for m in cfg.methods:
            if m.budgets is None:
                budget = "1.0" if m.name == "full" else b  # all of the pool (a fraction; "1" would mean one row)
                plan.setdefault(row_id(m.label, budget, seed), (m, budget))
    for m in cfg.methods:
        for b in m.budgets or []:
            plan.setdefault(row_id(m.label, b, seed), (m, b))
    for ref in cfg.references:
        budget = REFERENCE_BUDGETS.get(ref, "1.0")
        plan.setdefault(row_id(ref, budget, seed), (ref, budget))
    return list(plan.values())


def run_bench(cfg: BenchConfig, run_dir: str | os.PathLike, console=None, show_progress: bool = True,
              select_only: bool = False, rerun_changed: bool = False) -> list[dict]:
    """Run (or continue) a bench; returns every row, in table order.

    ``select_only``: stop after the selections (``RUN_DIR/selections/ROW.jsonl``): no final
    training, no rows (search methods still call the oracle while they select).
    ``rerun_changed``: redo the finished rows made under other settings than the config gives now
    (:func:`~thresher.bench.config.row_settings`) instead of stopping with an error; their old rows
    and artifacts move to ``RUN_DIR/rows-replaced/``.
    """
    from rich.console import Console

    console = console or Console()
    run_dir = Path(run_dir)
    (run_dir / "rows").mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {**cfg.to_dict(), "commit": _git_commit(), "python": platform.python_version(),
                                           "machine": f"{platform.machine()} {os.cpu_count()} cpus"})
    pool, task, labels = build_pool_and_task(cfg, run_dir / "data")
    if LABELLED_REFERENCES & set(cfg.references) and labels is None:
        raise BenchConfigError(f"{cfg.source}: references {cfg.references} need the pool's hidden labels, and it has none")
    refs = f" + references {', '.join(cfg.references)}" if cfg.references else ""
    console.print(f"bench {cfg.name}: pool {len(pool)} ({pool.fingerprint[:12]}), task {task.name} dev {len(task.dev)} "
                  f"test {task.test_size}; model {cfg.model}; {len(cfg.methods)} methods x {len(cfg.budgets)} budgets x "
                  f"{len(cfg.seeds)} seeds{refs}; {cfg.workers} oracle worker(s) -> {run_dir}")
    store = SignalStore(run_dir / "store")
    view = SignalView(pool, store)
    ledger = CostLedger(run_dir / "ledger.jsonl")
    _check_finished_rows(cfg, pool.fingerprint, run_dir, rerun_changed, console)
    sel_pool, sel_view, decon = _decontaminated(pool, task, view, cfg, run_dir, console, show_progress)

    # 1. the signals every method needs (a scoring step; selectors only read)
    selectors = {}
    for m in cfg.methods:
        if m.name not in SELECTORS:
            raise BenchConfigError(f"{cfg.source}: {SELECTORS.unknown_message(m.name)}")
        selectors[m.label] = make_selector(m.name, **method_params(selector_class(m.name).Params, m.params, cfg))
    needed = {}
    for sel in selectors.values():
        for sig in sel.required_signals():
            needed.setdefault(sig.key(pool).digest, sig)
    t0 = time.perf_counter()
    runs = [run_signal(sig, pool, store, show_progress=show_progress) for sig in needed.values()]
    if needed:
        console.print(f"signals: {', '.join(sorted({s.name for s in needed.values()}))} ready in {time.perf_counter() - t0:.0f}s")
    for line in dict.fromkeys(x for r in runs for x in ([r.scorer] if r.scorer else []) + list(r.notes)):
        console.print(f"  {line}", markup=False)  # the scorer each model signal used (resolved), and what the runs noted

    tier = tier_of(cfg.model)
    rows: dict[str, dict] = {}
    order: list[str] = []
    for seed in cfg.seeds:
        train = TrainConfig.for_tier(tier, **{**cfg.train, "seed": seed})
        oracle = Oracle(task, pool, model=cfg.model, train=train, cache_dir=run_dir / "oracle", ledger=ledger,
                        show_progress=show_progress, workers=cfg.workers, engine=cfg.engine, ray_address=cfg.ray_address)
        inner = oracle.inner(**cfg.inner_oracle) if cfg.inner_oracle else None  # the searches' cheaper oracle
        inner_scored: dict[str, list] = {}
        # 2. select every row of this seed still missing (a finished row is read back)
        pending: list[_Pending] = []
        for what, budget in _plan(cfg, seed):
            label = what if isinstance(what, str) else what.label
            rid = row_id(label, budget, seed)
            order.append(rid)
            path = run_dir / "rows" / f"{rid}.json"
            if path.exists():
                rows[rid] = json.loads(path.read_text())
                continue
            if isinstance(what, str):
                pending.append(_reference(what, rid, budget, seed, sel_pool, pool, labels, run_dir))
            else:
                h0 = len(inner.history) if inner else 0
                pending.append(_select(what, selectors[what.label], rid, budget, seed, sel_pool, sel_view, pool,
                                       inner.task if inner else task, inner or oracle, ledger, decon, run_dir))
                if inner:
                    inner_scored[rid] = inner.history[h0:]
            pending[-1].settings = row_settings(cfg, pool.fingerprint, what)
        if select_only or not pending:
            continue
        # 3. the final fine-tunes of this seed together (cfg.workers processes), then test once per selection
        if len(pending) > 1:
            console.print(f"seed {seed}: fine-tuning {len(pending)} final subsets ({cfg.workers} worker(s))")
        trained = [p for p in pending if p.ids]  # the base reference trains nothing
        devs = dict(zip([p.rid for p in trained], oracle.score_many([p.ids for p in trained], labels=[p.rid for p in trained],
                                                                     workers=cfg.workers) if trained else []))
        for p in pending:
            dev = devs[p.rid] if p.ids else oracle.base_score("dev")
            test = oracle.score_test(p.ids, label=p.rid) if p.ids else oracle.base_score("test")
            row = {
                "method": p.label, "selector": p.selector, "params": p.params, "budget": p.budget, "seed": seed,
                "n_selected": len(p.ids), "dev": round(dev.value, 4), "test": round(test.value, 4),
                "dev_per_domain": dev.per_domain, "test_per_domain": test.per_domain,
                "oracle_runs": p.oracle_runs, "proxy_calls": p.proxy_calls, "tokens_trained": dev.tokens,
                "wall_s": round(p.select_seconds + dev.seconds + test.seconds, 1),
                "defects": _defects(p.ids, labels), "diagnostics": p.diagnostics,
                "decontamination": _row_decontamination(decon), "reference": p.reference, "settings": p.settings,
                **score_row_fields(dev, test),  # metric, test_correct (accuracy) / test_items (loglik)
            }
            if inner_scored.get(p.rid):  # the search used the inner oracle: how faithfully it ranked subsets
                row.update(oracle.fidelity(inner_scored[p.rid], cfg.inner_oracle["fidelity_subsets"], f"fidelity {p.rid}"))
            atomic_write_json(run_dir / "rows" / f"{p.rid}.json", row)
            rows[p.rid] = row
            console.print(f"  {p.rid}: n={len(p.ids)} dev {dev.value:.3f} test {test.value:.3f} oracle runs {row['oracle_runs']}"
                          f" proxy calls {p.proxy_calls} ({row['wall_s']:.0f}s)")
    if select_only:
        return []
    rows_list = [rows[rid] for rid in order if rid in rows]
    summary, commit = summarise(rows_list), _git_commit()
    atomic_write_json(run_dir / "results.json", {"config": cfg.to_dict(), "commit": commit, "rows": rows_list,
                                            "summary": summary, "inner_fidelity": inner_fidelity(rows_list),
                                            "ledger": ledger.summary()})
    preamble = (f"# bench {cfg.name}\n\nmodel {cfg.model}, train {cfg.train or 'tier defaults'}, seeds {cfg.seeds}, oracle "
                f"budget for search methods {cfg.oracle_budget}, inner oracle {cfg.inner_oracle or 'none'}, commit `{commit}`\n")
    (run_dir / "table.md").write_text(markdown_table(rows_list, summary, preamble))
    return rows_list


def _check_finished_rows(cfg: BenchConfig, fingerprint: str, run_dir: Path, rerun_changed: bool, console) -> None:
    """A resumed bench keeps a finished row only if it was made under the settings the config gives
    now (:func:`~thresher.bench.config.row_settings`): a changed ``train:`` or method param would
    otherwise mix rows of two experiments in one table. Changed rows stop the bench with a
    :class:`BenchConfigError` naming them and what changed, or with ``rerun_changed`` move to
    ``RUN_DIR/rows-replaced/`` (row and artifacts) and are redone. Rows written before rows carried
    their settings are kept and counted."""
    changed: list[tuple[str, list[str]]] = []
    unchecked = 0
    for seed in cfg.seeds:
        for what, budget in _plan(cfg, seed):
            rid = row_id(what if isinstance(what, str) else what.label, budget, seed)
            path = run_dir / "rows" / f"{rid}.json"
            if not path.exists():
                continue
            old = json.loads(path.read_text()).get("settings")
            if old is None:
                unchecked += 1
                continue
            diff = changed_settings(old, row_settings(cfg, fingerprint, what))
            if diff:
                changed.append((rid, diff))
    if unchecked:
        console.print(f"note: {unchecked} finished row(s) were written before rows recorded their settings; kept unchecked")
    if not changed:
        return
    listing = "; ".join(f"{rid} ({', '.join(d)})" for rid, d in changed[:8]) + (f"; {len(changed) - 8} more" if len(changed) > 8 else "")
    replaced = run_dir / "rows-replaced" / time.strftime("%Y%m%d-%H%M%S")
    if not rerun_changed:
        raise BenchConfigError(f"{run_dir}: {len(changed)} finished row(s) were made under other settings than {cfg.source or 'the config'} "
                               f"gives now: {listing}. Run into a new --out, or pass --rerun-changed to redo them (their old rows "
                               f"move to {replaced.parent})")
    for rid, _ in changed:
        (replaced / "artifacts").mkdir(parents=True, exist_ok=True)
        os.replace(run_dir / "rows" / f"{rid}.json", replaced / f"{rid}.json")
        if (run_dir / "artifacts" / rid).exists():  # a search's trace would replay the old search
            os.replace(run_dir / "artifacts" / rid, replaced / "artifacts" / rid)
    console.print(f"{len(changed)} row(s) made under other settings will be redone: {listing}; old rows in {replaced}", markup=False)


def _select(m: MethodSpec, selector, rid: str, budget: str, seed: int, sel_pool, sel_view, pool, task, oracle: Oracle,
            ledger: CostLedger, decon: dict, run_dir: Path) -> _Pending:
    mark = ledger.mark()
    t_sel = time.perf_counter()
    sel = selector.select(sel_pool, sel_view, Budget.parse(budget), task=task.dev_view(), seed=seed,
                          oracle=oracle.dev_view(),  # every method gets it: proxy calls land in the same ledger
                          artifacts_dir=run_dir / "artifacts" / rid)
    seconds = time.perf_counter() - t_sel
    sel.pool_fingerprint, sel.decontamination = pool.fingerprint, decon  # saved against the bench pool
    # every oracle call made for this selection, in this session or replayed from a resumed search trace
    search_oracle = sel.cost.get("oracle", {}).get("calls", ledger.count("oracle", since=mark))
    sel.save(run_dir / "selections" / f"{rid}.jsonl", pool)
    return _Pending(rid, m.label, m.name, budget, list(sel.ids), sel.params, sel.diagnostics, search_oracle + 1,
                    ledger.count("proxy", since=mark), seconds)


def _reference(name: str, rid: str, budget: str, seed: int, sel_pool, pool, labels: dict, run_dir: Path) -> _Pending:
    """A reference row's subset: from the hidden labels (of the pool the selectors saw), or none (base)."""
    ids = [] if name == "base" else [i for i in sel_pool.ids if labels.get(i) == "clean"]
    if not ids and name != "base":
        raise BenchConfigError(f"reference {name}: the hidden labels call no example of the pool clean")
    sel = Selection(ids=ids, method=name, params={}, budget=budget, seed=seed, pool_fingerprint=pool.fingerprint,
                    pool_size=len(sel_pool), diagnostics={"reference": REFERENCES[name]})
    sel.save(run_dir / "selections" / f"{rid}.jsonl", pool)
    return _Pending(rid, name, name, budget, ids, {}, sel.diagnostics, 1 if ids else 0, 0, 0.0, reference=True)


def _decontaminated(pool, task, view: SignalView, cfg: BenchConfig, run_dir: Path, console, show_progress: bool = False):
    """(the pool the selectors see, its signal view, the selection meta): the pool without the examples
    that overlap the test split, its report in RUN_DIR/decontamination.json; or, when turned off, the
    pool itself and a warning."""
    if not cfg.decontaminate:
        console.print(f"[bold yellow]warning:[/bold yellow] decontamination is off: pool examples that overlap the "
                      f"{task.name} test split may be selected and inflate test scores")
        return pool, view, off_meta("decontaminate: false")
    clean, report, meta = exclude_test_overlap(pool, task, show_progress=show_progress)
    atomic_write_json(run_dir / "decontamination.json", report.to_dict())
    console.print(f"decontamination: {meta['test']['excluded']} pool examples that overlap the {task.name} test split "
                  f"excluded before selection, {meta['dev']['overlap']} that overlap dev kept (reported) "
                  f"({meta['seconds']:.1f}s) -> {run_dir / 'decontamination.json'}")
    return clean, (SubsetSignalView(clean, view) if clean is not pool else view), meta


def _row_decontamination(meta: dict) -> dict:
    if meta.get("off"):
        return {"off": True}
    return {"test": {"excluded": meta["test"]["excluded"]}, "dev": {"overlap": meta["dev"]["overlap"]}}


def _defects(ids, labels):
    if labels is None:
        return None

    return defect_counts(ids, labels)
