"""The ``thresher`` command line. Every command is also a function in :mod:`thresher.api`."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from thresher.errors import JudgeError, StoreError, ThresherError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: errors a user can meet: a bad option, file, name or config (exit 2), or a failing judge or
#: signal store (JudgeError, StoreError: exit 1); each becomes one ``error:`` line
USER_ERRORS = (ThresherError, OSError, ValueError, KeyError)


def _error_message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, ThresherError):
        where = " ".join(str(f) for f in (getattr(e, "filename", None), getattr(e, "filename2", None)) if f)
        msg = f"{e.strerror}: {where}" if e.strerror and where else (e.strerror or str(e))
    else:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return msg or type(e).__name__


def _error_code(e: BaseException) -> int:
    return 1 if isinstance(e, (JudgeError, StoreError)) else 2


class _Commands(TyperGroup):
    """The command group: an error a user can meet in any command (or sub-command) is printed as
    one ``error:`` line on stderr and exits 2 (1 for a failing judge or store), never a traceback;
    ``THRESHER_DEBUG=1`` lets it through with its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if os.environ.get("THRESHER_DEBUG"):
                raise
            _fail(_error_message(e), code=_error_code(e))


#: help is click's plain layout (option names never cut, descriptions wrapped to the terminal,
#: at most 120 columns): rich's tables truncated option names at 80 columns
HELP_SETTINGS = {"max_content_width": 120, "help_option_names": ["--help", "-h"]}
app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_SETTINGS,
                  pretty_exceptions_show_locals=False,
                  help="thresher: pick the SFT examples worth training on (THTB, TMAP, AutoSelection, HARP and baselines).")
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)


def _parse_params(items: list[str] | None, config: Path | None = None) -> dict:
    """--param k=v (values parsed as JSON when they look like it) merged over a YAML --config
    (a mapping of params, or a mapping with a ``params:`` mapping)."""
    import yaml

    from thresher.errors import ConfigError

    out: dict = {}
    if config:
        if not config.exists():
            raise ConfigError(f"--config {config}: file not found")
        if config.is_dir():
            raise ConfigError(f"--config {config}: is a directory, expected a YAML file")
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {config}: invalid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {config}: expected a mapping of parameters (name: value), got {type(data).__name__}")
        params = data.get("params", data)
        if not isinstance(params, dict):
            raise ConfigError(f"--config {config}: field 'params' must be a mapping of name: value, got {type(params).__name__}")
        out.update({str(k): v for k, v in params.items()})
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--param {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--param {it!r}: expected KEY=VALUE (the key is empty)")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _summary(value, width: int = 60) -> str:
    """A short rendering of one diagnostics value: scalars as they are (cut at ``width``),
    mappings as ``{N keys}``, lists as ``[N items]`` (short lists of scalars in full)."""
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    if isinstance(value, (list, tuple)):
        if value and len(value) <= 6 and all(isinstance(v, (int, float, str, bool)) or v is None for v in value):
            text = json.dumps(list(value), default=str)
            if len(text) <= width:
                return text
        return f"[{len(value)} items]"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


THREADS_HELP = ("torch / BLAS threads this command and its workers use, shared among parallel workers (default: "
                "$THRESHER_THREADS, else the cores this process may run on); 1 beside another heavy process")


def _threads(n: Optional[int]) -> None:
    """--threads: the thread budget of this command and the processes it starts (thresher.threads)."""
    from thresher.threads import set_threads

    set_threads(n)


#: a resumed bench or demo meets finished rows made under other settings (another config, pool or train)
RERUN_CHANGED_HELP = ("redo the finished rows made under other settings than the config gives now (their old rows move "
                      "to RUN_DIR/rows-replaced/); without it such rows stop the run with an error naming them")


def _fail(msg: str, code: int = 2):
    err.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def load(
    pool: str = typer.Argument(..., help="JSONL, JSON, Parquet, a datasets directory, or hf:NAME"),
    out: Optional[Path] = typer.Option(None, help="write the normalised pool here (.parquet or .jsonl)"),
    on_error: str = typer.Option("raise", help="raise: stop at the first bad row; skip: write rejects to a file and go on"),
    rejects: Optional[Path] = typer.Option(None, help="where skipped rows go (default: beside --out, as OUT_STEM.rejects.jsonl)"),
    split: Optional[str] = typer.Option(None, help="split of a Hugging Face dataset"),
):
    """Load a pool, normalise it (Alpaca / ShareGPT / OpenAI messages), report what was kept."""
    from thresher.api import load as _load
    from thresher.errors import ThresherError

    try:
        p, report = _load(pool, out=out, on_error=on_error, rejects=rejects, split=split)
    except (ThresherError, ValueError, OSError) as e:
        _fail(str(e))
    console.print(f"{report.rows_read} rows read, {report.rows_kept} kept, {report.rows_rejected} rejected")
    if report.rejects_path:
        console.print(f"rejects written to {report.rejects_path}")
    elif report.rejects:
        for r in report.rejects[:5]:
            console.print(f"  rejected {r.where}{f' field {r.field!r}' if r.field else ''}: {r.reason}", markup=False)
        console.print("rejects not written: name a file with --rejects (or give --out to write them beside it)")
    if report.stale_rejects_removed:
        console.print(f"removed the stale rejects file {report.stale_rejects_removed} (nothing was rejected this time)")
    console.print(f"fingerprint {p.fingerprint}")
    if out:
        console.print(f"normalised pool written to {out}")


@app.command()
def signals():
    """List the signals (and their columns and params) that `score` can compute."""
    from thresher.signals.base import list_signals

    for s in list_signals():
        console.print(f"[bold]{s['name']}[/bold] ({s.get('family', '')}, {s.get('scope', '')}): {s['description']}")
        console.print(f"    columns: {', '.join(s['columns'])}")
        for k, v in (s.get("params") or {}).items():
            console.print(f"    --param {k}=... (default {v['default']!r}) {v.get('description', '')}")


@app.command()
def score(
    pool: str = typer.Argument(..., help="the pool file"),
    signals: str = typer.Option(..., "--signals", "-s", help="comma-separated signal or column names (see `thresher signals`)"),
    store: Optional[Path] = typer.Option(None, help="signal store directory (default .thresher/store or $THRESHER_STORE)"),
    model: Optional[str] = typer.Option(None, help="model for model-based signals and tokenizers (micro, small, hub id, path)"),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="signal param KEY=VALUE, or SIGNAL.KEY=VALUE for one signal only (repeatable); "
                                       "a key that no requested signal takes is an error listing the accepted ones"),
    engine: str = typer.Option("local", help="local or ray"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)"),
    actors: Optional[int] = typer.Option(None, help="Ray actor-pool size (default: cluster CPUs / torch threads)"),
    shard_size: Optional[int] = typer.Option(None, help="rows per shard (resume granularity)"),
    on_error: str = typer.Option("raise", help="pool loading: raise or skip"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
):
    """Compute signals over a pool into the store (resumable: finished shards are kept)."""
    from thresher.api import score as _score

    _threads(threads)
    params = _parse_params(param)
    if model:
        params["model"] = model
    # errors (a bad param, pool or store; a failing judge) become one error line in main()
    runs = _score(pool, [s.strip() for s in signals.split(",") if s.strip()], store, engine=engine, params=params,
                  shard_size=shard_size, ray_address=address, ray_actors=actors)
    for r in runs:
        state = "cached" if r.computed_shards == 0 and r.skipped_shards == 0 else f"{r.computed_shards} shards computed, {r.skipped_shards} resumed"
        console.print(f"{r.signal}: {r.rows} rows, {state}, {r.seconds:.1f}s -> {r.key.dirname()}")
        for line in ([r.scorer] if r.scorer else []) + list(r.notes):
            console.print(f"  {line}", markup=False)


@app.command()
def select(
    pool: str = typer.Argument(..., help="the pool file"),
    method: str = typer.Option(..., help="selection method (see `thresher methods`)"),
    budget: str = typer.Option(..., help="a fraction (0.3; 1.0 = the whole pool), a percentage (30%) or a count (1500; 1 = one "
                               "row); a count above the pool size selects the whole pool"),
    out: Path = typer.Option(..., help="FILE.jsonl for the selected records; FILE.meta.json is written beside it, "
                             "the method's plots and reports in FILE.jsonl.artifacts/"),
    store: Optional[Path] = typer.Option(None, help="signal store directory"),
    seed: int = typer.Option(0, help="seed for every random choice"),
    task: Optional[str] = typer.Option(None, help="target task (arith, gsm8k or a task YAML): its dev split only"),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="method param KEY=VALUE (repeatable)"),
    config: Optional[Path] = typer.Option(None, help="YAML file of method params"),
    compute_missing: bool = typer.Option(False, help="score the signals the method needs first (a separate step)"),
    oracle_model: str = typer.Option("micro", help="methods that fine-tune on candidates (harp-*, autoselection): the model"),
    oracle_steps: Optional[int] = typer.Option(None, help="training steps of those runs (default: the tier's)"),
    decontaminate: bool = typer.Option(True, "--decontaminate/--no-decontaminate",
                                       help="with --task: leave out the pool examples that overlap the task's test split "
                                       "before selecting (exact, 13-gram, MinHash; see `thresher decontaminate`); dev "
                                       "overlap is reported"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
):
    """Select a subset with one method and write it with its metadata."""
    from thresher.api import select as _select
    from thresher.decontam import DecontaminationOffWarning
    from thresher.select.base import Budget, meta_path_for

    _threads(threads)
    params = _parse_params(param, config)
    if task and not decontaminate:
        err.print(f"[bold yellow]warning:[/bold yellow] --no-decontaminate: pool examples that overlap the {escape(task)} "
                  "test split may be selected (and inflate its test score)", soft_wrap=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecontaminationOffWarning)  # the line above said it
        sel = _select(pool, method, budget, store=store, seed=seed, task=task, out=out, compute_missing=compute_missing,
                      oracle_model=oracle_model, oracle_steps=oracle_steps, decontaminate=decontaminate, **params)
    _print_decontamination(sel.decontamination, task)
    resolved = Budget.parse(sel.budget).describe(sel.pool_size)
    console.print(f"{sel.method}: {len(sel)} of {sel.pool_size} selected ({resolved}; seed {sel.seed}) -> {out}", markup=False, soft_wrap=True)
    if sel.budget_note:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(sel.budget_note)}", soft_wrap=True)
    if sel.cost:
        console.print(f"cost: {json.dumps(sel.cost, default=str)}", markup=False, soft_wrap=True)
    for line in [(sel.diagnostics or {}).get("scorer")] + list((sel.diagnostics or {}).get("signal_notes") or []):
        if line:  # the model the signals were scored with (resolved: never "auto"), and what their runs noted
            console.print(line, markup=False)
    diag = {k: v for k, v in (sel.diagnostics or {}).items() if k not in ("artifacts", "scorer", "signal_notes")}
    if diag:
        console.print("diagnostics:", ", ".join(f"{k}={_summary(v)}" for k, v in diag.items()), markup=False, soft_wrap=True)
        console.print(f"full diagnostics and metadata: {meta_path_for(Path(out))}", markup=False, soft_wrap=True)
    else:
        console.print(f"metadata: {meta_path_for(Path(out))}", markup=False, soft_wrap=True)
    if sel.artifacts_dir:
        names = sel.diagnostics.get("artifacts") or sorted(p.name for p in Path(sel.artifacts_dir).iterdir())
        console.print(f"artifacts: {sel.artifacts_dir}/ ({', '.join(map(str, names))})", markup=False, soft_wrap=True)


def _print_decontamination(meta: dict | None, task: str | None) -> None:
    """The selection's decontamination line (nothing without a task; off was warned about before)."""
    if not meta or meta.get("off"):
        return
    test, dev = meta["test"], meta["dev"]
    rules = ", ".join(f"{k} {v}" for k, v in test.get("by_rule", {}).items())
    line = (f"decontamination: {test['excluded']} pool examples that overlap the {task} test split excluded before "
            f"selection{f' ({rules})' if test['excluded'] else ''}; {dev['overlap']} overlap dev (kept: reported only)")
    if test.get("note"):
        line += f"; {test['note']}"
    console.print(line, markup=False, soft_wrap=True)


@app.command("decontaminate")
def decontaminate_(
    pool: str = typer.Argument(..., help="the pool file"),
    task: str = typer.Option(..., help="the task whose dev and test items are checked (arith, gsm8k or a task YAML)"),
    n: int = typer.Option(13, "--n", min=1, help="words per n-gram (the GPT-3 / Llama 13-gram rule)"),
    out: Optional[Path] = typer.Option(None, help="write the full report here (JSON: per split, counts per rule, examples, "
                                       "the matched eval item ids of every contaminated pool id)"),
    threshold: float = typer.Option(0.8, min=0.01, max=1.0, help="MinHash rule: estimated Jaccard (word 5-gram shingles) "
                                    "that counts as a near duplicate"),
    splits: str = typer.Option("test,dev", help="comma-separated: test, dev"),
    examples: int = typer.Option(5, min=0, help="examples per split in the report (and printed)"),
):
    """Find the pool examples that overlap the task's test and dev items (exact, word n-gram, MinHash).

    Both the user and the assistant text of every example are checked. `select` and `bench` run
    this by default when a task is given and leave out the test overlaps before selecting.
    """
    from thresher.api import decontaminate as _decontaminate

    report = _decontaminate(pool, task, out=out, n=n, threshold=threshold, examples=examples,
                            splits=tuple(s.strip() for s in splits.split(",") if s.strip()))
    console.print(f"pool {report.pool['name']} ({report.pool['size']} examples), task {report.task}; "
                  f"{report.seconds:.1f}s ({report.examples_per_s:,.0f} examples/s)", markup=False, soft_wrap=True)
    for s, r in report.splits.items():
        rules = ", ".join(f"{k} {v}" for k, v in r.by_rule.items())
        sides = ", ".join(f"{k} {v}" for k, v in r.by_side.items())
        console.print(f"{s} ({r.items} items): {r.contaminated} pool examples overlap {r.items_hit} items ({rules}; "
                      f"text: {sides})", markup=False, soft_wrap=True)
        for ex in r.examples:
            how = f"'{ex['gram']}'" if "gram" in ex else f"jaccard {ex['jaccard']}" if "jaccard" in ex else "same text"
            console.print(f"  {ex['pool_id']} ~ {ex['item_id']} [{ex['rule']}, {ex['side']}]: {how}", markup=False,
                          soft_wrap=True)
    if out:
        console.print(f"report: {out}", markup=False, soft_wrap=True)


@app.command()
def methods():
    """List the selection methods and their params."""
    from thresher.select.base import list_selectors

    for s in list_selectors():
        console.print(f"[bold]{s['name']}[/bold]: {s['description']}")
        if s["params"]:
            console.print(f"    params: {', '.join(s['params'])}")


def _tier_steps() -> dict[str, int]:
    """Default training steps per tier, read from TrainConfig so `train --help` says what it does."""
    from thresher.models.train import TrainConfig

    return {t: TrainConfig.for_tier(t).steps for t in ("micro", "small")}


_TRAIN_STEPS = _tier_steps()


@app.command()
def train(
    data: str = typer.Argument(..., help="training records (a selection JSONL or any pool file)"),
    out: Path = typer.Option(..., help="directory for the fine-tuned model"),
    model: str = typer.Option("micro", help="base model: micro (from scratch), small (SmolLM2 + LoRA), a hub id or a path"),
    steps: Optional[int] = typer.Option(None, help=f"optimizer steps (default: {_TRAIN_STEPS['micro']} micro, "
                                        f"{_TRAIN_STEPS['small']} small and hub models)"),
    epochs: Optional[float] = typer.Option(None, help="train for this many passes instead of a step count"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    batch_size: Optional[int] = typer.Option(None, help="batch size"),
    seed: int = typer.Option(0, help="seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
):
    """Fine-tune a model on a subset (micro: from scratch; small/HF: LoRA) and save it."""
    from thresher.api import train as _train

    _threads(threads)
    # errors (a missing file or model directory, a bad option) become one error line in main()
    _, res = _train(data, model=model, out=out, steps=steps, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    console.print(f"trained {res.steps} steps on {res.examples_seen} examples ({res.tokens_seen} tokens) in {res.seconds:.0f}s, "
                  f"final loss {res.final_loss:.3f} -> {out}")


@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="a model directory (from `thresher train`) or a model spec"),
    task: str = typer.Option("arith", help="arith, gsm8k or a task YAML"),
    split: str = typer.Option("dev", help="dev, or test (score a final model once)"),
    limit: Optional[int] = typer.Option(None, help="score only the first N items"),
    batch_size: int = typer.Option(64),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
):
    """Score a model on a task split by greedy generation + answer extraction."""
    from thresher.api import evaluate

    _threads(threads)
    # errors (an unknown task, a missing model directory, a bad option) become one error line in main()
    res = evaluate(model, task, split=split, batch_size=batch_size, limit=limit)
    console.print(f"{task} {split}: accuracy {res.accuracy:.4f} on {res.n} items; per domain "
                  + ", ".join(f"{k} {v:.3f}" for k, v in res.per_domain.items()))


@app.command("make-arith")
def make_arith(
    out: Path = typer.Option(..., help="directory for pool.jsonl and defects.jsonl"),
    pool_size: int = typer.Option(2000),
    seed: int = typer.Option(0),
    wrong_answer: Optional[float] = typer.Option(None, help="fraction of wrong answers (default 0.2)"),
):
    """Generate the arith testbed pool and its hidden defect labels (a side file no selector reads)."""
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    kw = {"pool_size": pool_size, "seed": seed}
    if wrong_answer is not None:
        kw["wrong_answer"] = wrong_answer
    pool, task, labels = ArithTestbed(ArithConfig(**kw)).build(out)
    console.print(f"{len(pool)} examples -> {out / 'pool.jsonl'}; labels -> {out / 'defects.jsonl'}; task {task}")


@app.command("make-pool")
def make_pool(
    testbed: str = typer.Argument(..., help="the testbed: gsm8k-mix (GSM8K + Alpaca/ShareGPT with labelled defects) or arith"),
    out: Path = typer.Option(..., help="directory for pool.jsonl and defects.jsonl"),
    seed: int = typer.Option(0, help="seed of every random choice (gsm8k-mix: also of the gsm8k dev split)"),
    pool_size: Optional[int] = typer.Option(None, help="examples in the pool (default: the testbed's, 4000 for gsm8k-mix)"),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="testbed setting KEY=VALUE, e.g. wrong_answer=0.2 (repeatable)"),
):
    """Generate a built-in testbed's pool and its hidden defect labels (a side file no selector reads)."""
    from collections import Counter

    from thresher.errors import ThresherError
    from thresher.tasks.arith import ArithConfig, ArithTestbed
    from thresher.tasks.gsm8k_mix import GSM8KMixTestbed

    testbeds = {"gsm8k-mix": GSM8KMixTestbed, "arith": lambda **kw: ArithTestbed(ArithConfig(**kw))}
    if testbed not in testbeds:
        _fail(f"unknown testbed {testbed!r}; known: {sorted(testbeds)}")
    kw = {**_parse_params(param), "seed": seed}
    if pool_size is not None:
        kw["pool_size"] = pool_size
    try:
        pool, task, labels = testbeds[testbed](**kw).build(out)
    except (ThresherError, ValueError, TypeError, FileNotFoundError) as e:
        _fail(str(e))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(Counter(labels.values()).items(), key=lambda kv: -kv[1]))
    console.print(f"{testbed}: {len(pool)} examples -> {out / 'pool.jsonl'}; labels -> {out / 'defects.jsonl'} ({counts}); "
                  f"task {task}", markup=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output directory (a bench run directory; rerun to continue a killed demo)"),
    quick: bool = typer.Option(False, help="one seed, fewer methods, a smaller pool (under 3 minutes)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1; quick: 0)"),
    workers: Optional[int] = typer.Option(None, help="parallel fine-tuning processes (default: 2 on a machine with 2+ cores)"),
    steps: Optional[int] = typer.Option(None, help="fine-tuning steps per run (default 500)"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    decontaminate: bool = typer.Option(True, "--decontaminate/--no-decontaminate",
                                       help="leave out the pool examples that overlap the test split before selecting"),
    rerun_changed: bool = typer.Option(False, "--rerun-changed", help=RERUN_CHANGED_HELP),
):
    """The bench preset: select 30% of the arith pool with each method, fine-tune, score, and print the table."""
    from thresher.bench.demo import run_demo
    from thresher.bench.presets import demo_config

    _threads(threads)
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        _fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    cfg = demo_config(quick=quick, seeds=seed_list, workers=workers, steps=steps, decontaminate=decontaminate)
    run_demo(cfg, out, console, rerun_changed=rerun_changed)


@app.command()
def bench(
    config: Path = typer.Argument(..., help="bench config YAML (see examples/bench-quick.yaml)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/bench-<name>); rerun to continue a killed bench"),
    report: bool = typer.Option(True, help="write RUN_DIR/report.html at the end"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    decontaminate: bool = typer.Option(True, "--decontaminate/--no-decontaminate",
                                       help="leave out the pool examples that overlap the test split before selecting "
                                       "(overrides the config's decontaminate: key when off)"),
    rerun_changed: bool = typer.Option(False, "--rerun-changed", help=RERUN_CHANGED_HELP),
):
    """Run every method x budget x seed of a config on its task; resumable."""
    from thresher.bench.report import write_report
    from thresher.bench.config import BenchConfig, BenchConfigError
    from thresher.bench.run import run_bench

    _threads(threads)
    try:
        cfg = BenchConfig.load(config)
    except BenchConfigError as e:
        _fail(str(e))
    run_dir = out or Path("runs") / f"bench-{cfg.name}"
    if not decontaminate:
        cfg.decontaminate = False  # run_bench prints the warning
    run_bench(cfg, run_dir, console, rerun_changed=rerun_changed)  # a changed finished row: an error line (_Commands)
    console.print(f"table: {run_dir / 'table.md'}")
    if report:
        console.print(f"report: {write_report(run_dir)}")


@app.command("report")
def report_(
    run_dir: Path = typer.Argument(..., help="a bench run directory"),
    out: Optional[Path] = typer.Option(None, help="HTML file (default RUN_DIR/report.html)"),
    screenshot: Optional[Path] = typer.Option(None, help="also render it in headless Chromium and save a PNG here"),
):
    """Write the self-contained HTML report of a bench run (plots inline)."""
    from thresher.bench.report import screenshot as _shot
    from thresher.bench.report import write_report

    try:
        path = write_report(run_dir, out)
    except FileNotFoundError as e:
        _fail(str(e))
    console.print(f"report: {path}")
    if screenshot:
        info = _shot(path, screenshot)
        console.print(f"screenshot: {screenshot} ({len(info['images'])} images, {info['rows'] - 1} rows)")


@app.command()
def serve(
    model: str = typer.Option("small", help="model to serve: micro, small, an HF id, a path or a .gguf file"),
    host: str = typer.Option("127.0.0.1", help="bind address (anything but loopback warns unless a key is set)"),
    port: int = typer.Option(8000, help="port"),
    served_name: Optional[str] = typer.Option(None, help="model name clients send (default: the model spec)"),
    api_key_env: str = typer.Option("THRESHER_SERVE_KEY", help="env var whose value, when set, is the required bearer key"),
    seed: int = typer.Option(0, help="sampling seed"),
):
    """Serve a model behind an OpenAI-compatible /v1/chat/completions endpoint (the local judge)."""
    from thresher.judge.serve import serve as _serve

    try:
        _serve(model, host, port, served_name=served_name, api_key_env=api_key_env, seed=seed)
    except ValueError as e:
        _fail(str(e))


@app.command("thtb-guide")
def thtb_guide_(
    pool: Path = typer.Argument(..., help="pool file (JSONL, JSON, Parquet) or dataset folder"),
    store: Optional[Path] = typer.Option(None, help="signal store (default $THRESHER_CACHE/store)"),
    bloom: str = typer.Option("heuristic", help="Bloom levels from the verb heuristic or a judge: heuristic|judge"),
    ic: str = typer.Option("none", help="interdisciplinary complexity: none|judge"),
    quality: Optional[str] = typer.Option(None, help="also profile a quality source (judge, reward:MODEL, COLUMN[:low])"),
    judge_url: str = typer.Option("http://127.0.0.1:8000/v1", help="OpenAI-compatible endpoint for judge signals"),
    judge_model: str = typer.Option("small", help="model name sent to the judge"),
    compute: bool = typer.Option(True, help="compute missing signals first"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the profile as JSON here"),
):
    """THTB annotation guidance: the pool's hardness profile and the categories it lacks."""
    import json as _json

    from thresher.select.thtb.guide import render_guide, thtb_guide

    try:
        g = thtb_guide(pool, str(store) if store else None, bloom=bloom, ic=ic, quality=quality, judge_url=judge_url,
                       judge_model=judge_model, compute_missing=compute)
    except (KeyError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(render_guide(g))
    if json_out:
        json_out.write_text(_json.dumps(g, indent=1))
        console.print(f"profile: {json_out}")


recipe_app = typer.Typer(cls=_Commands, help="AutoSelection recipes: ordered filter / dedup / mix steps in YAML.", no_args_is_help=True,
                         rich_markup_mode=None, context_settings=HELP_SETTINGS)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("run")
def recipe_run(
    recipe: Path = typer.Argument(..., help="recipe YAML (see examples/recipe-arith.yaml)"),
    pool: Path = typer.Option(..., help="pool file (JSONL, JSON, Parquet) or dataset folder"),
    out: Path = typer.Option(..., help="subset JSONL to write (+ .meta.json and .state.json beside it)"),
    store: Optional[Path] = typer.Option(None, help="signal store (default $THRESHER_CACHE/store)"),
    budget: Optional[str] = typer.Option(None, help="k or fraction; only reported as budget_used unless --cap"),
    cap: bool = typer.Option(False, help="cut the recipe's output to the budget"),
    compute: bool = typer.Option(True, help="compute the signals the recipe reads first"),
):
    """Execute a recipe on a pool and write the subset with its realised state."""
    from thresher.api import run_recipe
    from thresher.select.autoselection.recipe import RecipeError

    try:
        sel, state = run_recipe(recipe, pool, out, store=store, budget=budget, cap_to_budget=cap, compute_missing=compute)
    except (RecipeError, KeyError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"{len(sel.ids)} examples (retain ratio {state['retain_ratio']:.3f}) -> {out}")
    for name, value in state.items():
        if value is not None and not isinstance(value, (dict, list)) and name not in ("n_selected", "retain_ratio"):
            console.print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")


def main() -> None:
    """The console entry point: every command, with any error a user can meet turned into one
    ``error:`` line naming the file, field or option (``THRESHER_DEBUG=1`` shows the traceback)."""
    try:
        app()
    except USER_ERRORS as e:  # raised outside a command (the group catches those inside one)
        if os.environ.get("THRESHER_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {escape(_error_message(e))}", soft_wrap=True)
        sys.exit(_error_code(e))


if __name__ == "__main__":  # pragma: no cover
    main()
