"""Score a model on task items: greedy generation and answer extraction (``accuracy``), or the
gold answer's log-likelihood (``loglik``: one batched forward pass per item, no generation).

On CUDA both run under bf16 autocast (:func:`autocast_for`).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from thresher.models.chat import encode_conversation, encode_prompt, pad_batch
from thresher.models.load import quiet_length_warning
from thresher.progress import progress
from thresher.signals.lm import (
    CPU_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET,
    batched_answer_stats,
)
from thresher.tasks.base import DevTask, TaskItem


@dataclass
class EvalResult:
    accuracy: float
    n: int
    per_domain: dict[str, float]
    correct: list[bool] = field(repr=False)
    outputs: list[str] = field(repr=False)
    seconds: float = 0.0
    generated_tokens: int = 0


def autocast_for(model):
    """bf16 autocast when ``model`` sits on a CUDA device (fp16 where bf16 is unsupported); a no-op elsewhere."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 64,
             desc: str = "generate", show_progress: bool = True) -> tuple[list[str], int]:
    """Greedy completions for chat prompts, batched with left padding, length-sorted."""
    import torch

    enc = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    outs: list[str] = [""] * len(enc)
    n_tokens = 0
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    model.eval()
    with progress(total=len(enc), desc=desc, disable=not show_progress) as bar, torch.inference_mode(), autocast_for(model):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, att, _ = pad_batch([enc[i] for i in idx], pad, side="left")
            ids_t, att_t = torch.from_numpy(ids).to(device), torch.from_numpy(att).to(device)
            gen = model.generate(input_ids=ids_t, attention_mask=att_t, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=eos)
            new = gen[:, ids.shape[1]:]
            for row, i in zip(new.tolist(), idx):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                row = [t for t in row if t != pad]
                n_tokens += len(row)
                outs[i] = tokenizer.decode(row, skip_special_tokens=True)
            bar.update(len(idx))
    return outs, n_tokens


def evaluate(model, tokenizer, task: DevTask, items: list[TaskItem], batch_size: int = 64, desc: str = "eval",
             show_progress: bool = True) -> EvalResult:
    t0 = time.perf_counter()
    outs, n_tok = generate(model, tokenizer, [task.messages(it) for it in items], task.max_new_tokens, batch_size, desc, show_progress)
    correct = [task.is_correct(o, it) for o, it in zip(outs, items)]
    by = defaultdict(list)
    for c, it in zip(correct, items):
        by[it.domain].append(c)
    per = {d: sum(v) / len(v) for d, v in sorted(by.items())}
    return EvalResult(accuracy=sum(correct) / max(1, len(correct)), n=len(items), per_domain=per, correct=correct,
                      outputs=outs, seconds=time.perf_counter() - t0, generated_tokens=n_tok)


@dataclass
class LoglikResult:
    """Gold-answer log-likelihood: per item, the mean log-probability per answer content token."""

    loglik: float  # mean over items (NaN items, whose answer was cut away, left out)
    n: int
    per_domain: dict[str, float]
    values: list[float] = field(repr=False)
    answer_tokens: list[int] = field(repr=False)
    seconds: float = 0.0


def gold_sequences(tokenizer, task: DevTask, items: list[TaskItem], max_length: int | None = 2048):
    """(ids, content-only answer mask) per item: the prompt plus the gold answer
    (``target``, else ``answer``) in the chat template, scored on the answer's content
    tokens only (the ``lm`` signal's mask, ``encode_conversation(..., turn_end=False)``)."""

    out = []
    for it in items:
        e = encode_conversation(tokenizer, task.demo_messages(it), max_length=max_length, turn_end=False)
        out.append((e.input_ids, e.answer_mask))
    return out


def loglik_eval(model, tokenizer, task: DevTask, items: list[TaskItem], token_budget: int | None = None,
                max_length: int | None = 2048) -> LoglikResult:
    """Mean log-probability per answer token of each item's gold answer (higher is better).

    Same fast path as the ``lm`` signal (:func:`thresher.signals.lm.batched_answer_stats`:
    length-sorted batches under a token budget, LM head at answer positions only); CE only.
    """

    t0 = time.perf_counter()
    quiet_length_warning(tokenizer)
    seqs = gold_sequences(tokenizer, task, items, max_length)
    device = next(model.parameters()).device
    budget = token_budget or (CPU_TOKEN_BUDGET if device.type == "cpu" else GPU_TOKEN_BUDGET)
    budget = max(budget, max((len(s) for s, _ in seqs), default=1))  # one long item still fits a batch
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    with autocast_for(model):
        sums, counts = batched_answer_stats(model, seqs, pad, budget, full=False)
    vals = [float(-s / c) if c > 0 else math.nan for s, c in zip(sums[:, 0], counts)]
    by = defaultdict(list)
    for v, it in zip(vals, items):
        if not math.isnan(v):
            by[it.domain].append(v)
    per = {d: sum(v) / len(v) for d, v in sorted(by.items())}
    ok = [v for v in vals if not math.isnan(v)]
    return LoglikResult(loglik=sum(ok) / len(ok) if ok else math.nan, n=len(items), per_domain=per, values=vals,
                        answer_tokens=[int(c) for c in counts], seconds=time.perf_counter() - t0)


def evaluate_task(model, tokenizer, task: DevTask, items: list[TaskItem], batch_size: int = 64, desc: str = "eval",
                  show_progress: bool = True) -> dict:
    """Score ``items`` with the task's metric (and the other one with ``task.both_metrics``).

    Returns the oracle's result fields: ``metric``, ``value`` (the chosen metric), ``per_domain``
    and ``items`` (its per-domain and per-item values), ``n_items``, and per metric computed:
    ``accuracy`` / ``per_domain_accuracy`` / ``correct`` and ``loglik`` / ``per_domain_loglik`` /
    ``loglik_items``. ``accuracy`` is None when it was not computed.
    """
    metric = getattr(task, "metric", "accuracy")
    both = getattr(task, "both_metrics", False)
    out: dict = {"metric": metric, "n_items": len(items), "accuracy": None}
    if metric == "accuracy" or both:
        ev = evaluate(model, tokenizer, task, items, batch_size=batch_size, desc=desc, show_progress=show_progress)
        out.update(accuracy=ev.accuracy, per_domain_accuracy=ev.per_domain, correct=ev.correct, outputs_head=ev.outputs[:5],
                   generated_tokens=ev.generated_tokens)
    if metric == "loglik" or both:
        ll = loglik_eval(model, tokenizer, task, items)
        out.update(loglik=ll.loglik, per_domain_loglik=ll.per_domain, loglik_items=ll.values)
    if metric == "loglik":
        out.update(value=out["loglik"], per_domain=out["per_domain_loglik"], items=out["loglik_items"])
    else:
        out.update(value=out["accuracy"], per_domain=out["per_domain_accuracy"], items=[float(c) for c in out["correct"]])
    return out
