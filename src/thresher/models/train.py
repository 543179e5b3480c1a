"""Fine-tuning on a subset: from scratch (micro tier), LoRA (peft) or full fine-tuning.

Loss is the mean cross-entropy over answer tokens only (every assistant turn), with the
answer mask from the model's chat template (:mod:`thresher.models.chat`).

On CUDA the forward pass runs under bf16 autocast (fp16 where bf16 is unsupported); the
weights stay as loaded (bf16 on CUDA, see :func:`thresher.models.load.load_model`) and
peft keeps the LoRA adapters in fp32, so the trainable parameters and AdamW state are fp32.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from thresher.models.chat import encode_conversation, pad_batch
from thresher.models.load import quiet_length_warning
from thresher.progress import progress
from thresher.threads import apply_threads


@dataclass(frozen=True)
class TrainConfig:
    """How the oracle fine-tunes. ``steps`` fixes the compute per run (the default for the
    micro tier, so subsets are compared at equal compute); ``epochs`` instead trains a
    number of passes over the subset (papers' convention; cost then scales with size)."""

    mode: Literal["scratch", "lora", "full"] = "scratch"
    steps: int | None = 500
    epochs: float | None = None
    batch_size: int = 32
    lr: float = 8e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    max_length: int = 256
    grad_clip: float = 1.0
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    threads: int | None = None  # torch / BLAS threads (None: thresher.threads decides); not in the key

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("TrainConfig needs exactly one of steps or epochs")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def key(self) -> str:
        d = asdict(self)
        d.pop("threads")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def for_tier(cls, tier: str, **overrides) -> TrainConfig:
        if tier.startswith("micro"):
            base = dict(mode="scratch", steps=500, batch_size=32, lr=8e-3)
        else:
            base = dict(mode="lora", steps=60, batch_size=8, lr=5e-4, max_length=384)
        base.update({k: v for k, v in overrides.items() if v is not None})
        if "epochs" in overrides and overrides["epochs"] is not None:
            base["steps"] = None
        return cls(**base)


@dataclass
class TrainResult:
    steps: int
    examples_seen: int
    tokens_seen: int
    answer_tokens_seen: int
    seconds: float
    final_loss: float
    loss_curve: list[float] = field(default_factory=list)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def encode_records(tokenizer, records, max_length: int):
    """Training encodings cut to ``max_length`` tokens on purpose (a longer example is tokenised
    only as far as needed; transformers' "longer than the maximum" warning is silenced)."""

    quiet_length_warning(tokenizer)
    enc = []
    for r in records:
        e = encode_conversation(tokenizer, r["messages"], max_length=max_length)
        if not any(e.answer_mask[1:]):
            continue  # the answer was cut off entirely by max_length: nothing to learn
        enc.append(e)
    return enc


def attach_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.lora_targets if t in names]
    if not targets:
        raise ValueError(f"none of the LoRA targets {cfg.lora_targets} exist in this model")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def finetune(model, tokenizer, records, cfg: TrainConfig, desc: str = "train", show_progress: bool = True,
             callback=None, callback_every: int = 50) -> TrainResult:
    """Train ``model`` in place on ``records`` (pool records with ``messages``)."""
    import torch

    if cfg.threads:  # (otherwise the caller's: every entry point sets them through thresher.threads)

        apply_threads(cfg.threads)
    encoded = encode_records(tokenizer, records, cfg.max_length)
    if not encoded:
        raise ValueError("nothing to train on: the subset is empty (or every answer was truncated away)")
    n = len(encoded)
    steps = cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * n / cfg.batch_size))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    total_samples = steps * cfg.batch_size if cfg.steps is not None else math.ceil(cfg.epochs * n)

    def index_stream():
        while True:  # shuffled passes over the subset, one after another
            perm = list(range(n))
            rng.shuffle(perm)
            yield from perm

    stream = index_stream()
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = lambda: torch.autocast(device_type="cuda", dtype=amp)
    else:
        import contextlib

        autocast = contextlib.nullcontext
    t0 = time.perf_counter()
    tokens = ans_tokens = seen = 0
    curve = []
    ema = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with progress(total=steps, desc=desc, disable=not show_progress) as bar:
        for step in range(steps):
            batch = [encoded[next(stream)] for _ in range(min(cfg.batch_size, total_samples - seen))]
            ids, att, ans = pad_batch([e.input_ids for e in batch], pad, masks=[e.answer_mask for e in batch])
            ids_t = torch.from_numpy(ids).to(device)
            att_t = torch.from_numpy(att).to(device)
            labels = torch.from_numpy(np.where(ans, ids, -100)).to(device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, cfg)
            with autocast():
                out = model(input_ids=ids_t, attention_mask=att_t, labels=labels)
            loss = out.loss.float()
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            curve.append(lv)
            tokens += int(att.sum())
            ans_tokens += int(ans[:, 1:].sum())
            seen += len(batch)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{ema:.3f}")
            if callback is not None and (step + 1) % callback_every == 0:
                model.eval()
                callback(step + 1, model)
                model.train()
    model.eval()
    return TrainResult(steps=steps, examples_seen=seen, tokens_seen=tokens, answer_tokens_seen=ans_tokens,
                       seconds=time.perf_counter() - t0, final_loss=float(ema), loss_curve=curve[:: max(1, steps // 100)])
