"""One oracle run: fine-tune the base model on a subset, then score task items.

A :class:`TrainEvalJob` holds everything a worker needs (it is picklable, so it runs
in-process, in a spawned worker process or as a Ray task alike); :func:`run_job` trains
and evaluates, :func:`eval_saved` scores a saved fine-tuned model (the one test scoring).
Both return plain dicts, which the oracle caches as JSON.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.data.io import atomic_dir
from thresher.models.evaluate import evaluate_task
from thresher.models.load import load_model, save_pretrained_dir
from thresher.models.train import TrainConfig, attach_lora, finetune
from thresher.tasks.base import DevTask, TaskItem
from thresher.threads import apply_threads


@dataclass
class TrainEvalJob:
    model: str
    train: dict  # TrainConfig as a dict
    task: DevTask
    items: list[TaskItem]
    records: list[dict] = field(default_factory=list)
    save_dir: str | None = None  # where the fine-tuned weights go (or, for eval_saved, come from)
    eval_batch_size: int = 64
    threads: int | None = None  # torch / BLAS threads of the run (None: thresher.threads decides)
    progress: bool = True
    desc: str = "oracle"


def run_job(job: TrainEvalJob) -> dict[str, Any]:
    """Train on the job's records (none: the base model) and evaluate on its items."""
    apply_threads(job.threads)  # the job's share, else the user's --threads / the available cores
    cfg = TrainConfig(**job.train)
    t0 = time.perf_counter()
    lm = load_model(job.model, seed=cfg.seed)
    model = lm.model
    if cfg.mode == "lora":
        model = attach_lora(model, cfg)
    elif cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    tr = None
    if job.records:
        tr = finetune(model, lm.tokenizer, job.records, cfg, desc=job.desc or "oracle train", show_progress=job.progress)
    ev = evaluate_task(model, lm.tokenizer, job.task, job.items, batch_size=job.eval_batch_size, desc="oracle eval",
                       show_progress=job.progress)
    if job.save_dir and job.records:
        Path(job.save_dir).parent.mkdir(parents=True, exist_ok=True)
        atomic_dir(job.save_dir, lambda tmp: save_pretrained_dir(model, lm.tokenizer, tmp))
    return {
        **ev,  # metric, value, per_domain, items, n_items, accuracy (None when not computed), correct / loglik fields
        "examples": tr.examples_seen if tr else 0, "tokens": tr.tokens_seen if tr else 0,
        "train_loss": tr.final_loss if tr else None, "seconds": time.perf_counter() - t0,
    }


def eval_saved(job: TrainEvalJob) -> dict[str, Any]:
    """Evaluate the fine-tuned model saved in ``job.save_dir`` on the job's items."""
    apply_threads(job.threads)
    cfg = TrainConfig(**job.train)
    t0 = time.perf_counter()
    if cfg.mode == "lora":
        from peft import PeftModel

        lm = load_model(job.model)
        model = PeftModel.from_pretrained(lm.model, job.save_dir)
        tok = lm.tokenizer
    else:
        lm = load_model(job.save_dir)
        model, tok = lm.model, lm.tokenizer
    ev = evaluate_task(model, tok, job.task, job.items, batch_size=job.eval_batch_size, desc="test eval", show_progress=job.progress)
    return {**ev, "seconds": time.perf_counter() - t0}
