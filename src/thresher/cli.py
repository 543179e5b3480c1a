"""The ``thresher`` command line. Every command is also a function in :mod:`thresher.api`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="thresher: pick the SFT examples worth training on (THTB, TMAP, AutoSelection, HARP and baselines).")
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)


def _parse_params(items: list[str] | None, config: Path | None = None) -> dict:
    """--param k=v (values parsed as JSON when they look like it) merged over a YAML --config."""
    import yaml

    out: dict = {}
    if config:
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise typer.BadParameter(f"{config}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{config}: expected a mapping of parameters")
        out.update(data.get("params", data))
    for it in items or []:
        if "=" not in it:
            raise typer.BadParameter(f"--param {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _fail(msg: str, code: int = 2):
    err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


@app.command()
def load(
    pool: str = typer.Argument(..., help="JSONL, JSON, Parquet, a datasets directory, or hf:NAME"),
    out: Optional[Path] = typer.Option(None, help="write the normalised pool here (.parquet or .jsonl)"),
    on_error: str = typer.Option("raise", help="raise: stop at the first bad row; skip: write rejects to a file and go on"),
    rejects: Optional[Path] = typer.Option(None, help="where skipped rows go (default: POOL.rejects.jsonl)"),
    split: Optional[str] = typer.Option(None, help="split of a Hugging Face dataset"),
):
    """Load a pool, normalise it (Alpaca / ShareGPT / OpenAI messages), report what was kept."""
    from .api import load as _load
    from .pool import PoolFormatError

    try:
        p, report = _load(pool, out=out, on_error=on_error, rejects=rejects, split=split)
    except (PoolFormatError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"{report.rows_read} rows read, {report.rows_kept} kept, {report.rows_rejected} rejected")
    if report.rejects_path:
        console.print(f"rejects written to {report.rejects_path}")
    console.print(f"fingerprint {p.fingerprint}")
    if out:
        console.print(f"normalised pool written to {out}")


@app.command()
def signals():
    """List the signals (and their columns and params) that `score` can compute."""
    from .signals.base import list_signals

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
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="signal param KEY=VALUE, or SIGNAL.KEY=VALUE for one signal only (repeatable)"),
    engine: str = typer.Option("local", help="local or ray"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --engine ray)"),
    actors: Optional[int] = typer.Option(None, help="Ray actor-pool size (default: cluster CPUs / torch threads)"),
    shard_size: Optional[int] = typer.Option(None, help="rows per shard (resume granularity)"),
    on_error: str = typer.Option("raise", help="pool loading: raise or skip"),
):
    """Compute signals over a pool into the store (resumable: finished shards are kept)."""
    from .api import score as _score

    params = _parse_params(param)
    if model:
        params["model"] = model
    try:
        runs = _score(pool, [s.strip() for s in signals.split(",") if s.strip()], store, engine=engine, params=params,
                      shard_size=shard_size, ray_address=address, ray_actors=actors)
    except (KeyError, ValueError) as e:
        _fail(str(e))
    for r in runs:
        state = "cached" if r.computed_shards == 0 and r.skipped_shards == 0 else f"{r.computed_shards} shards computed, {r.skipped_shards} resumed"
        console.print(f"{r.signal}: {r.rows} rows, {state}, {r.seconds:.1f}s -> {r.key.dirname()}")


@app.command()
def select(
    pool: str = typer.Argument(..., help="the pool file"),
    method: str = typer.Option(..., help="selection method (see `thresher methods`)"),
    budget: str = typer.Option(..., help="a fraction (0.3), a percentage (30%) or a count (1500)"),
    out: Path = typer.Option(..., help="FILE.jsonl for the selected records; FILE.meta.json is written beside it"),
    store: Optional[Path] = typer.Option(None, help="signal store directory"),
    seed: int = typer.Option(0, help="seed for every random choice"),
    task: Optional[str] = typer.Option(None, help="target task (arith, gsm8k or a task YAML): its dev split only"),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="method param KEY=VALUE (repeatable)"),
    config: Optional[Path] = typer.Option(None, help="YAML file of method params"),
    compute_missing: bool = typer.Option(False, help="score the signals the method needs first (a separate step)"),
    oracle_model: str = typer.Option("micro", help="methods that fine-tune on candidates (harp-*, autoselection): the model"),
    oracle_steps: Optional[int] = typer.Option(None, help="training steps of those runs (default: the tier's)"),
):
    """Select a subset with one method and write it with its metadata."""
    from .api import select as _select

    params = _parse_params(param, config)
    try:
        sel = _select(pool, method, budget, store=store, seed=seed, task=task, out=out, compute_missing=compute_missing,
                      oracle_model=oracle_model, oracle_steps=oracle_steps, **params)
    except (KeyError, ValueError) as e:
        _fail(str(e).strip('"'))
    console.print(f"{sel.method}: {len(sel)} of {sel.pool_size} selected (budget {sel.budget}, seed {sel.seed}) -> {out}")
    if sel.cost:
        console.print(f"cost: {json.dumps(sel.cost, default=str)}")
    if sel.diagnostics:
        console.print(f"diagnostics: {json.dumps(sel.diagnostics, default=str)[:400]}")


@app.command()
def methods():
    """List the selection methods and their params."""
    from .select.base import list_selectors

    for s in list_selectors():
        console.print(f"[bold]{s['name']}[/bold]: {s['description']}")
        if s["params"]:
            console.print(f"    params: {', '.join(s['params'])}")


@app.command()
def train(
    data: str = typer.Argument(..., help="training records (a selection JSONL or any pool file)"),
    out: Path = typer.Option(..., help="directory for the fine-tuned model"),
    model: str = typer.Option("micro", help="base model: micro (from scratch), small (SmolLM2 + LoRA), a hub id or a path"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (default: 400 micro, 60 small)"),
    epochs: Optional[float] = typer.Option(None, help="train for this many passes instead of a step count"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    batch_size: Optional[int] = typer.Option(None, help="batch size"),
    seed: int = typer.Option(0, help="seed"),
):
    """Fine-tune a model on a subset (micro: from scratch; small/HF: LoRA) and save it."""
    from .api import train as _train

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
):
    """Score a model on a task split by greedy generation + answer extraction."""
    from .api import evaluate

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
    from .tasks.arith import ArithConfig, ArithTestbed

    kw = {"pool_size": pool_size, "seed": seed}
    if wrong_answer is not None:
        kw["wrong_answer"] = wrong_answer
    pool, task, labels = ArithTestbed(ArithConfig(**kw)).build(out)
    console.print(f"{len(pool)} examples -> {out / 'pool.jsonl'}; labels -> {out / 'defects.jsonl'}; task {task}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output directory"),
    quick: bool = typer.Option(False, help="one seed, fewer methods, shorter training (under 3 minutes)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1; quick: 0)"),
    workers: Optional[int] = typer.Option(None, help="parallel fine-tuning processes (default: 2 on a machine with 2+ cores)"),
    steps: Optional[int] = typer.Option(None, help="fine-tuning steps per run"),
):
    """Select 30% of the arith pool with each method, fine-tune, score, and print the table."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.make(out, quick=quick, seeds=[int(s) for s in seeds.split(",")] if seeds else None, workers=workers, steps=steps)
    run_demo(cfg, console)


@app.command()
def bench(
    config: Path = typer.Argument(..., help="bench config YAML (see examples/bench-quick.yaml)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/bench-<name>); rerun to continue a killed bench"),
    report: bool = typer.Option(True, help="write RUN_DIR/report.html at the end"),
):
    """Run every method x budget x seed of a config on its task; resumable."""
    from .bench import BenchConfig, BenchConfigError, run_bench
    from .report import write_report

    try:
        cfg = BenchConfig.load(config)
    except BenchConfigError as e:
        _fail(str(e))
    run_dir = out or Path("runs") / f"bench-{cfg.name}"
    run_bench(cfg, run_dir, console)
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
    from .report import screenshot as _shot
    from .report import write_report

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
    from .serve import serve as _serve

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

    from .thtb_guide import render_guide, thtb_guide

    try:
        g = thtb_guide(pool, str(store) if store else None, bloom=bloom, ic=ic, quality=quality, judge_url=judge_url,
                       judge_model=judge_model, compute_missing=compute)
    except (KeyError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(render_guide(g))
    if json_out:
        json_out.write_text(_json.dumps(g, indent=1))
        console.print(f"profile: {json_out}")


recipe_app = typer.Typer(help="AutoSelection recipes: ordered filter / dedup / mix steps in YAML.", no_args_is_help=True)
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
    from .select.autoselection.recipe import RecipeError, run_recipe

    try:
        sel, state = run_recipe(recipe, pool, out, store=store, budget=budget, cap_to_budget=cap, compute_missing=compute)
    except (RecipeError, KeyError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"{len(sel.ids)} examples (retain ratio {state['retain_ratio']:.3f}) -> {out}")
    for name, value in state.items():
        if value is not None and not isinstance(value, (dict, list)) and name not in ("n_selected", "retain_ratio"):
            console.print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
