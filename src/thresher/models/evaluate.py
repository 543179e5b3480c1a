"""Score a model on task items by greedy generation and answer extraction."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from thresher.models.chat import encode_prompt, pad_batch
from thresher.progress import progress
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
    with progress(total=len(enc), desc=desc, disable=not show_progress) as bar, torch.inference_mode():
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
