"""Training-dynamics signals: what a scorer makes of an example while (or after) it learns the pool.

A model that has trained on the rest of the pool finds an inconsistent example (a wrong
answer, an answer that breaks the pool's conventions) surprising; an example the model
learns only late, or never, is ambiguous or mislabelled (Swayamdipta et al. 2020,
*Dataset Cartography*). Both signals are pool-scoped (they need the whole pool), train
the scorer themselves (``micro``: from scratch; ``small`` and other pretrained models:
LoRA, :meth:`TrainConfig.for_tier`) and score answers with the ``lm`` signal's batched
statistics (:func:`thresher.signals.lm.batched_answer_stats` with ``token_ce=True``, then
:func:`~thresher.signals.lm.lm_columns` / :func:`~thresher.signals.lm.local_error_columns`),
so a loss here averages over the same answer tokens as the ``lm`` signal's ``loss``.

``crossfit_loss`` (columns ``xfit_loss``, ``xfit_loss_max``, ``xfit_loss_final``,
``xfit_fold``): the pool is split into ``folds`` seeded folds; for each fold a fresh
scorer is fine-tuned on the other folds (records in pool order; init and batch order
seeded with ``seed + fold``) and scores the held-out fold, so every example's loss comes
from a model that never saw it. With ``group_duplicates`` (default) examples with
identical messages share a fold, so no model trains on an exact copy of an example it
scores either. Disjointness is asserted in code for every fold, and each fold's training
and held-out ids are recorded (SHA-256 digests) in the run's cost. Each finished fold is
cached in ``$THRESHER_CACHE/dynamics/`` under the signal key, so a killed run resumes at
the next fold.

``datamap`` (columns ``dm_confidence``, ``dm_variability``, ``dm_correctness``): one
training run on the whole pool; at ``checkpoints`` evenly spaced steps (the last at the
end) every example is scored. Generation stands in for the paper's classification as
follows: the *probability of the gold answer* at a checkpoint is ``exp(-loss)``, the
geometric-mean per-token probability of the answer tokens (length-normalised sequence
probability; the same tokens as ``loss``); ``dm_confidence`` is its mean over
checkpoints, ``dm_variability`` its standard deviation (population, ddof=0, as in the
paper's code); ``dm_correctness`` is the fraction of checkpoints at which *every* answer
token has probability > 0.5 (max token loss < ln 2), which certifies that greedy decoding
reproduces the answer (a lower bound on a greedy match, computed without generating).

**Cost.** ``crossfit_loss``: ``folds`` trainings of ``steps`` steps and one scoring pass
over the pool (the conditioned pass only); ``datamap``: one training and ``checkpoints``
scoring passes. Defaults: micro 500 steps per fold (the tier's TrainConfig; fewer leave
the model unable to do the arithmetic, and the loss uninformative) and 500 for the data
map, batch 32: 0.06-0.15 s a step on 2 CPU cores (measured: 5 folds x 500 steps on a
1000-example arith pool in 365 s with one thread beside another job; the data map in
45 s). ``small`` (SmolLM2-135M, LoRA, batch 8): 60 steps per fold and 120 for the data
map; on CPU a step costs ~10 s and scoring ~0.4 s an example (one thread, short arith
examples, same machine), so ``crossfit_loss`` is about an hour and ``datamap`` half an
hour plus its passes per 1000 examples: use a GPU. The run's cost (trainings, steps,
seconds, per-fold digests) is kept in the store's metadata (``cost``).
"""
from __future__ import annotations

import hashlib
import math
import time
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from thresher.models.chat import DEFAULT_FINAL_MARKERS
from thresher.signals.base import Signal, SignalParams, register_signal

#: default training steps when neither ``steps`` nor ``epochs`` is given, by tier
XFIT_STEPS = {"micro": 500, "small": 60}  # TrainConfig.for_tier's (arith wrong-answer AUC of xfit_loss: 0.55 at 200, 0.76 at 500)
DATAMAP_STEPS = {"micro": 500, "small": 120}
#: a token with probability above this is the greedy choice
GREEDY_P = 0.5


class DynamicsParams(SignalParams):
    model: str = Field("auto", description="scorer model trained here: auto (micro on the arith testbed, small on any other pool), micro, small, a hub id or a path")
    steps: int | None = Field(None, ge=1, description="training steps per run (default by tier: see the signal); exclusive with epochs")
    epochs: float | None = Field(None, gt=0, description="instead of steps: passes over the training examples (steps = ceil(epochs * n / batch_size))")
    batch_size: int | None = Field(None, ge=1, description="training batch (default: TrainConfig.for_tier, 32 micro / 8 small)")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: TrainConfig.for_tier)")
    seed: int = Field(0, description="folds, model init and batch order")
    max_length: int = Field(512, ge=8, description="scoring: conversations are cut to this many tokens")
    token_budget: int | None = Field(None, ge=64, description="max padded tokens per scoring batch (not in the key)")

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


class CrossfitParams(DynamicsParams):
    folds: int = Field(5, ge=2, description="K: each fold is scored by a scorer trained on the other K-1")
    group_duplicates: bool = Field(True, description="examples with identical messages share a fold (no model trains on a copy of what it scores)")
    topk: int = Field(8, ge=1, description="(as the lm signal's; only loss_max and loss_final are kept)")
    final_markers: tuple[str, ...] = Field(DEFAULT_FINAL_MARKERS, description="xfit_loss_final: the final-answer segment, as the lm signal's loss_final")


class DatamapParams(DynamicsParams):
    checkpoints: int = Field(5, ge=2, description="how many evenly spaced checkpoints of the run score the pool (the last at the end)")


def ids_digest(ids) -> str:
    """SHA-256 of ids in the given order (the recorded identity of a training / held-out set)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def assign_folds(pool, k: int, seed: int, group_duplicates: bool = True) -> np.ndarray:
    """One fold in ``[0, k)`` per example, deterministic for (ids, seed) and independent of pool order.

    Groups (an example, or with ``group_duplicates`` all examples with identical messages)
    are taken in the order of ``sha256(seed:group)`` and each goes to the smallest fold so
    far (lowest index on ties): folds differ in size by at most the largest group."""
    from thresher.data.records import content_hash

    n = len(pool)
    if n < k:
        raise ValueError(f"crossfit_loss: {k} folds need at least {k} examples (the pool has {n})")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(pool):
        g = content_hash(r["messages"]) if group_duplicates else f"id:{r['id']}"
        groups.setdefault(g, []).append(i)
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    fold = np.full(n, -1, dtype=np.int64)
    sizes = [0] * k
    for g in order:
        f = min(range(k), key=lambda j: (sizes[j], j))
        fold[groups[g]] = f
        sizes[f] += len(groups[g])
    return fold


def cartography(probs: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Dataset-cartography statistics from per-checkpoint values ([n, checkpoints]).

    ``dm_confidence``: mean of the gold answer's probability over checkpoints;
    ``dm_variability``: its population standard deviation (ddof=0); ``dm_correctness``:
    the fraction of checkpoints marked correct. A NaN probability (no answer token)
    makes the row NaN."""
    p = np.asarray(probs, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if p.ndim != 2 or p.shape != c.shape:
        raise ValueError(f"cartography: probs and correct must be [n, checkpoints] of one shape, got {p.shape} and {c.shape}")
    bad = np.isnan(p).any(axis=1)
    out = {"dm_confidence": p.mean(axis=1), "dm_variability": p.std(axis=1, ddof=0), "dm_correctness": c.mean(axis=1)}
    for v in out.values():
        v[bad] = np.nan
    return out


def train_config(params: DynamicsParams, n_train: int, seed: int, default_steps: dict[str, int]):
    """The TrainConfig of one run: the tier's (TrainConfig.for_tier) with this signal's overrides;
    ``epochs`` become steps over ``n_train`` examples."""
    from thresher.models.load import tier_of
    from thresher.models.train import TrainConfig

    tier = tier_of(params.model)
    base = TrainConfig.for_tier(tier, batch_size=params.batch_size, lr=params.lr, seed=seed)
    if params.epochs is not None:
        steps = max(1, math.ceil(params.epochs * n_train / base.batch_size))
    else:
        steps = params.steps or default_steps[tier]
    return TrainConfig.for_tier(tier, steps=steps, batch_size=params.batch_size, lr=params.lr, seed=seed)


def fresh_scorer(spec: str, cfg, seed: int):
    """(model to train, tokenizer): a freshly initialised micro model, or a pretrained one with LoRA attached."""
    from thresher.models.load import load_model
    from thresher.models.train import attach_lora

    lm = load_model(spec, seed=seed)
    model = lm.model
    if cfg.mode == "lora":
        model = attach_lora(model, cfg)
    return model, lm.tokenizer


class AnswerScorer:
    """Scores a fixed list of records' answers with any model (encoded once): the lm signal's
    conditioned pass, per-token CE kept, reduced by the lm signal's own column functions."""

    def __init__(self, tokenizer, records, max_length: int, final_markers=DEFAULT_FINAL_MARKERS,
                 token_budget: int | None = None, topk: int = 8):
        from thresher.models.chat import encode_pair
        from thresher.models.load import quiet_length_warning

        tok = quiet_length_warning(tokenizer)
        pairs = [encode_pair(tok, r["messages"], max_length=max_length, final_markers=final_markers) for r in records]
        self.cond = [(p.cond.input_ids, p.cond.answer_mask) for p in pairs]
        self.final = [p.final_mask for p in pairs]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.budget, self.topk = token_budget, topk

    def __len__(self) -> int:
        return len(self.cond)

    def score(self, model) -> dict[str, np.ndarray]:
        """``loss``, ``loss_max``, ``loss_final`` (and the other lm local-error columns) per record."""
        from thresher.signals.lm import (
            CPU_TOKEN_BUDGET,
            GPU_TOKEN_BUDGET,
            batched_answer_stats,
            lm_columns,
            local_error_columns,
            target_flags,
        )

        n = len(self.cond)
        if not n:
            return {c: np.zeros(0) for c in ("loss", "loss_max", "loss_final")}
        model.eval()
        budget = self.budget or (CPU_TOKEN_BUDGET if next(model.parameters()).device.type == "cpu" else GPU_TOKEN_BUDGET)
        sums, counts, per_token = batched_answer_stats(model, self.cond, self.pad, budget, full=False, token_ce=True)
        local = local_error_columns(per_token, [target_flags(c, f) for c, f in zip(self.cond, self.final)], self.topk)
        # lm_columns wants an answer-alone pass too; only its conditioned columns are read here
        cols = lm_columns(sums, counts, sums, counts, local)
        return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k in ("loss", "loss_max", "loss_final")}


class _DynamicsSignal(Signal):
    version = 1
    scope = "pool"
    family = "dynamics"
    heavy = True
    scorer_model = True  # model="auto" resolves on the pool (Signal.for_pool) before the key is made
    default_steps: ClassVar[dict[str, int]] = {}

    def __init__(self, **params: Any):
        super().__init__(**params)
        #: the last compute_pool's cost (trainings, steps, seconds, ...): the engine keeps it in the store's metadata
        self.last_cost: dict | None = None
        #: crossfit_loss: per fold, (training ids, held-out ids) in pool order, from the last compute_pool
        self.fold_ids: list[tuple[list[str], list[str]]] = []

    def model_id(self) -> str | None:
        from thresher.models.load import model_identity

        return model_identity(self.params.model)

    def key_params(self) -> dict:
        d = self.params.model_dump(mode="json")
        d.pop("token_budget")  # batching does not change values beyond float noise
        if self.params.model != "auto":  # the effective training recipe (tier defaults included)
            cfg = train_config(self.params, 1, 0, self.default_steps)
            d["train"] = {"mode": cfg.mode, "steps": None if self.params.epochs is not None else cfg.steps,
                          "batch_size": cfg.batch_size, "lr": cfg.lr, "max_length": cfg.max_length,
                          "weight_decay": cfg.weight_decay, "warmup_frac": cfg.warmup_frac, "min_lr_frac": cfg.min_lr_frac,
                          **({"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha} if cfg.mode == "lora" else {})}
        return d


@register_signal
class CrossfitLoss(_DynamicsSignal):
    name = "crossfit_loss"
    columns = ("xfit_loss", "xfit_loss_max", "xfit_loss_final", "xfit_fold")
    Params = CrossfitParams
    default_steps = XFIT_STEPS
    description = ("K-fold cross-fitted answer loss: each fold scored by a scorer fine-tuned on the other folds only "
                   "(mean, max and final-answer token loss; the fold); K trainings")

    def fold_cache(self, pool):
        from thresher.data.paths import cache_root

        return cache_root() / "dynamics" / f"{self.name}-{self.key(pool).digest[:24]}"

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        sig = self.for_pool(pool)  # model="auto" -> the model it is on this pool
        if sig is not self:
            out = sig.compute_pool(pool, inputs)
            self.last_cost, self.fold_ids = sig.last_cost, sig.fold_ids
            return out
        import json

        from thresher.data.io import atomic_write_json
        from thresher.data.records import content_hash

        p = self.params
        t0 = time.perf_counter()
        n, ids = len(pool), pool.ids
        fold = assign_folds(pool, p.folds, p.seed, p.group_duplicates)
        if fold.shape != (n,) or fold.min() < 0 or fold.max() >= p.folds:
            raise AssertionError("crossfit_loss: every example needs exactly one held-out fold")
        out = {c: np.full(n, np.nan) for c in ("xfit_loss", "xfit_loss_max", "xfit_loss_final")}
        cache = self.fold_cache(pool)
        self.fold_ids = []
        folds_cost = []
        for f in range(p.folds):
            held = np.flatnonzero(fold == f)
            train = np.flatnonzero(fold != f)
            train_ids, held_ids = [ids[i] for i in train], [ids[i] for i in held]
            # the guarantee: no example is scored by a model trained on it (nor on an exact copy of it)
            if set(train_ids) & set(held_ids):
                raise AssertionError(f"crossfit_loss: fold {f}'s training set contains held-out examples")
            if p.group_duplicates:
                seen = {content_hash(pool[i]["messages"]) for i in train}
                if any(content_hash(pool[i]["messages"]) in seen for i in held):
                    raise AssertionError(f"crossfit_loss: fold {f}'s training set holds a copy of a held-out example")
            self.fold_ids.append((train_ids, held_ids))
            rec = {"fold": f, "n_train": len(train), "n_heldout": len(held),
                   "train_ids_sha256": ids_digest(train_ids), "heldout_ids_sha256": ids_digest(held_ids)}
            path = cache / f"fold-{f}-of-{p.folds}.json"
            cols = None
            if path.exists():
                try:
                    got = json.loads(path.read_text())
                    if got["train_ids_sha256"] == rec["train_ids_sha256"] and got["heldout_ids_sha256"] == rec["heldout_ids_sha256"]:
                        cols = {c: np.asarray(got[c], dtype=np.float64) for c in ("loss", "loss_max", "loss_final")}
                        rec.update(steps=got["steps"], seconds=got["seconds"], resumed=True)
                except (OSError, ValueError, KeyError):
                    cols = None
            if cols is None and not len(held):  # (large duplicate groups can leave a fold empty)
                cols = {c: np.zeros(0) for c in ("loss", "loss_max", "loss_final")}
                rec.update(steps=0, seconds=0.0, resumed=False)
            if cols is None:
                tf = time.perf_counter()
                cols, steps = self.run_fold(pool, train, held, f)
                rec.update(steps=steps, seconds=round(time.perf_counter() - tf, 3), resumed=False)
                atomic_write_json(path, {**rec, **{c: cols[c].tolist() for c in cols}})
            for c in ("loss", "loss_max", "loss_final"):
                out[f"xfit_{c}"][held] = cols[c]
            folds_cost.append(rec)
        trained = [r for r in folds_cost if not r["resumed"] and r["steps"]]
        self.last_cost = {"trainings": len(trained), "train_steps": sum(r["steps"] for r in trained),
                          "scored_examples": sum(r["n_heldout"] for r in trained),
                          "folds_resumed": sum(r["resumed"] for r in folds_cost),
                          "seconds": round(time.perf_counter() - t0, 3), "folds": folds_cost}
        out["xfit_fold"] = fold
        return out

    def run_fold(self, pool, train: np.ndarray, held: np.ndarray, f: int) -> tuple[dict[str, np.ndarray], int]:
        """Train a fresh scorer on the ``train`` rows (pool order, seed ``seed + f``) and score the ``held`` rows."""
        from thresher.models.train import finetune

        p = self.params
        seed = p.seed + f
        recs, scored = [pool[i] for i in train], [pool[i] for i in held]
        if not {r["id"] for r in recs}.isdisjoint(r["id"] for r in scored):  # on what the model really gets
            raise AssertionError(f"crossfit_loss: fold {f} would score examples its model trains on")
        cfg = train_config(p, len(recs), seed, self.default_steps)
        model, tok = fresh_scorer(p.model, cfg, seed)
        finetune(model, tok, recs, cfg, desc=f"crossfit fold {f + 1}/{p.folds}")
        scorer = AnswerScorer(tok, scored, p.max_length, p.final_markers, p.token_budget, p.topk)
        return scorer.score(model), cfg.steps


@register_signal
class DataMap(_DynamicsSignal):
    name = "datamap"
    columns = ("dm_confidence", "dm_variability", "dm_correctness")
    Params = DatamapParams
    default_steps = DATAMAP_STEPS
    description = ("dataset cartography (Swayamdipta et al. 2020): mean and std over training checkpoints of the "
                   "gold answer's per-token (geometric-mean) probability, and the fraction of checkpoints where "
                   "every answer token has p > 0.5; one training run")

    def checkpoint_steps(self, total: int) -> list[int]:
        """Evenly spaced steps (1-based, the last = ``total``) at which the pool is scored."""
        k = self.params.checkpoints
        if total < k:
            raise ValueError(f"datamap: {k} checkpoints need at least {k} training steps (got {total})")
        return sorted({max(1, round(total * (j + 1) / k)) for j in range(k)})

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        sig = self.for_pool(pool)  # model="auto" -> the model it is on this pool
        if sig is not self:
            out = sig.compute_pool(pool, inputs)
            self.last_cost = sig.last_cost
            return out
        from thresher.models.train import finetune

        p = self.params
        t0 = time.perf_counter()
        recs = list(pool)
        cfg = train_config(p, len(recs), p.seed, self.default_steps)
        model, tok = fresh_scorer(p.model, cfg, p.seed)
        scorer = AnswerScorer(tok, recs, p.max_length, token_budget=p.token_budget)
        at = set(self.checkpoint_steps(cfg.steps))
        probs, correct, score_s = [], [], [0.0]

        def checkpoint(step: int, m) -> None:
            if step not in at:
                return
            ts = time.perf_counter()
            cols = scorer.score(m)
            probs.append(per_token_probability(cols["loss"]))
            with np.errstate(invalid="ignore"):
                correct.append(cols["loss_max"] < math.log(1 / GREEDY_P))
            score_s[0] += time.perf_counter() - ts

        finetune(model, tok, recs, cfg, desc="datamap", callback=checkpoint, callback_every=1)
        if len(probs) != len(at):
            raise RuntimeError(f"datamap: scored {len(probs)} checkpoints of {len(at)}")
        P, C = np.stack(probs, axis=1), np.stack(correct, axis=1)
        self.last_cost = {"trainings": 1, "train_steps": cfg.steps, "checkpoints": sorted(at),
                          "scored_examples": len(recs) * len(at), "score_seconds": round(score_s[0], 3),
                          "seconds": round(time.perf_counter() - t0, 3)}
        return cartography(P, C)


def per_token_probability(loss: np.ndarray) -> np.ndarray:
    """The gold answer's length-normalised probability: exp(-mean token CE), the geometric mean of
    its token probabilities (NaN stays NaN)."""
    return np.exp(-np.asarray(loss, dtype=np.float64))
