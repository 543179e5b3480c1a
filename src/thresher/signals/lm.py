"""Model signals from one batched forward pass per example and condition.

For every example, two sequences go through the scorer model (both from
:func:`thresher.models.chat.encode_pair`):

- *conditioned*: the whole conversation in the model's chat template;
- *answer alone* (Cherry's unconditioned pass, ``'### Response:' + output`` in the
  reference code): every assistant turn's header followed by its content
  (``<|im_start|>assistant\n`` + answer for SmolLM2, ``<bos><|assistant|>`` + answer for
  the micro tier), turns separated by their end-of-turn text.

**Which tokens.** Every statistic averages over the same tokens: the *content* tokens of
every assistant turn, excluding the template's end-of-turn tokens (``<|im_end|>\n``,
``<eos>``) and the assistant header. The conditioned and the answer-alone pass score the
very same token ids (the answer-alone sequence is cut from the conditioned one), so
``ifd`` is a ratio of two means over one token set. Training (``models.train``) keeps the
end-of-turn tokens in its loss, so a tuned model learns to stop; scoring does not.

Columns: ``loss`` (mean cross-entropy of the answer tokens given the instruction),
``ppl`` = exp(loss), ``loss_alone``, ``ppl_alone``, ``ifd`` (Cherry: loss / loss_alone),
``ifd_ppl_ratio`` (the perplexity-ratio variant, ppl / ppl_alone = exp(loss - loss_alone),
offered for AutoSelection), ``entropy`` and ``varentropy`` of the next-token
distribution averaged over answer positions (``H = -sum p log p``,
``V = sum p (log p + H)^2``), ``answer_tokens``, and localised errors from the
conditioned pass's per-token losses (no extra pass): ``loss_max``, ``loss_top5pct`` (mean
of the ceil(5%) largest, at least one), ``loss_topk`` (mean of the ``topk`` largest) and
``loss_final`` (mean over the final-answer segment: after the last ``####``, else after
the last "The answer is", else the last line; ``final_markers`` param).

Sequences from both conditions are sorted by length and packed into dynamic batches
under a token budget (padding counted), so the work is a few large forward passes, not
one per example. The LM head is applied only at answer positions when the model
exposes its decoder and output embeddings (a standard HF causal LM); otherwise the full
logits are used. fp32 on CPU; bf16/fp16 on GPU. Examples whose answer is cut away by
``max_length`` get NaN (counted, never guessed); a partly cut answer is scored on the
surviving tokens in both passes.

**Scorer.** ``model="auto"`` (the default) is ``micro`` on the arith testbed and
``small`` (SmolLM2-135M-Instruct) on any other pool; it resolves on the pool before the
cache key is made (:meth:`Signal.for_pool`), so the key names the real model.

**Long examples.** A conversation is cut to its first ``max_length`` tokens on purpose
(transformers' "sequence length is longer than the specified maximum" warning is
silenced), and one longer than ``max_length * 8`` characters is tokenised only as far as
those tokens need (:func:`thresher.models.chat.encode_pair`), so a 5 MB example costs what
a capped one does. The run reports how many examples were truncated and capped (the
engine's log line and the store's metadata, ``notes``).

**Progress.** The engine's bar moves per forward batch, not per shard.
"""
from __future__ import annotations

import hashlib
import random
from typing import Literal

import numpy as np
from pydantic import Field

from thresher.data.paths import cache_root
from thresher.data.store import SignalKey
from thresher.models.chat import (
    DEFAULT_FINAL_MARKERS,
    batches_by_length,
    encode_pair,
    truncation_note,
)
from thresher.models.load import (
    LoadedModel,
    describe_model,
    is_micro,
    load_model,
    model_identity,
    quiet_length_warning,
    resolve_scorer,
    resolve_spec,
    save_model,
    tier_of,
)
from thresher.models.train import TrainConfig, attach_lora, finetune
from thresher.signals.base import Signal, SignalParams, register_signal
from thresher.signals.vllm_backend import VLLMScorer, vllm_available

LOCAL_COLUMNS = ("loss_max", "loss_top5pct", "loss_topk", "loss_final")
LM_COLUMNS = ("loss", "ppl", "loss_alone", "ppl_alone", "ifd", "ifd_ppl_ratio", "entropy", "varentropy", "answer_tokens",
              *LOCAL_COLUMNS)


class LMParams(SignalParams):
    model: str = Field("auto", description="scorer model: auto (micro on the arith testbed, small on any other pool), micro, small, a hub id, a path or a .gguf file")
    warmup_examples: int | None = Field(None, ge=0, description="brief pre-experience (Cherry): fine-tune the scorer on this many random pool examples first; default 300 for micro, 0 otherwise")
    warmup_steps: int = Field(250, ge=1, description="steps of that warm-up")
    warmup_seed: int = 0
    max_length: int = Field(512, ge=8, description="conversations are cut to this many tokens (counted in the run's notes); a longer one is tokenised only as far as needed")
    token_budget: int | None = Field(None, ge=64, description="max padded tokens per forward batch (default: 1024 on CPU, where small blocks stay in cache, 16384 on GPU)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    backend: Literal["auto", "hf", "vllm"] = "auto"
    topk: int = Field(8, ge=1, description="k of loss_topk (mean of the k largest answer-token losses); part of the cache key")
    final_markers: tuple[str, ...] = Field(DEFAULT_FINAL_MARKERS, description="loss_final: the final answer is the text after the last occurrence of the first of these markers (case-insensitive) with text after it, else the answer's last line; part of the cache key")


def effective_warmup(params: LMParams) -> int:
    if params.warmup_examples is not None:
        return params.warmup_examples
    return 300 if is_micro(params.model) else 0


def scorer_model_id(params: LMParams, pool_fingerprint: str | None) -> str:
    base = model_identity(params.model)
    n = effective_warmup(params)
    if n:
        return f"{base}+warm{n}x{params.warmup_steps}s{params.warmup_seed}@{(pool_fingerprint or '')[:12]}"
    return base


def scorer_cache_dir(params: LMParams, pool_fingerprint: str):
    """Where a warmed-up scorer for this pool is cached (written once, then only loaded)."""

    mid = scorer_model_id(params, pool_fingerprint)
    return cache_root() / "scorers" / hashlib.sha256(mid.encode()).hexdigest()[:20]


def prepare_scorer(params: LMParams, pool, device: str | None = None):
    """Load the scorer; for a warm-up, train it once on a random pool slice and cache it."""

    n = effective_warmup(params)
    if is_micro(params.model) and n == 0:
        raise ValueError("an untrained micro model scores nothing: set warmup_examples > 0 for the micro scorer")
    dtype = None if params.dtype == "auto" else params.dtype
    if n == 0:
        return load_model(params.model, dtype=dtype, device=device)
    if pool is None:
        raise ValueError("a warmed-up scorer needs the pool it warms up on")
    mid = scorer_model_id(params, pool.fingerprint)
    cdir = scorer_cache_dir(params, pool.fingerprint)
    if (cdir / "config.json").exists():
        lm = load_model(str(cdir), dtype=dtype, device=device)
        lm.model_id = mid
        return lm
    lm = load_model(params.model, dtype=dtype, device=device, seed=params.warmup_seed)
    rng = random.Random(f"warmup-{params.warmup_seed}")
    idx = sorted(rng.sample(range(len(pool)), min(n, len(pool))))
    recs = [pool[i] for i in idx]
    tier = tier_of(params.model)
    cfg = TrainConfig.for_tier(tier, steps=params.warmup_steps, seed=params.warmup_seed)
    model = lm.model
    if cfg.mode == "lora":
        model = attach_lora(model, cfg)
    finetune(model, lm.tokenizer, recs, cfg, desc="scorer warm-up")
    if cfg.mode == "lora":
        model = model.merge_and_unload()
    out = LoadedModel(model, lm.tokenizer, params.model, mid)
    save_model(out, cdir)
    return out


def _head_parts(model):
    """(decoder, head) when the LM head can be applied to selected positions only."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    try:
        dec = model.get_decoder()
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if dec is None or head is None or dec is model:
        return None
    return dec, head


CPU_TOKEN_BUDGET = 1024   # 2-core AVX2 box: ~1.25x the tokens/s of 8192 (docs/results/signals.md)
GPU_TOKEN_BUDGET = 16384
HEAD_CHUNK = 512   # answer positions per LM-head GEMM (into one reused [512, vocab] buffer)
STATS_CHUNK = 64   # rows per statistics block (64 x 49K vocab x 4 B = 12.6 MB stays in cache)


def token_stats_(z, targets, full: bool = True):
    """Per-position CE, entropy and varentropy from [N, V] logits and [N] targets (float64 out).

    Works in place on ``z`` when it is float32 (it is scratch here: the LM-head output
    block); other dtypes are upcast into a copy first. With ``full=False`` only CE is
    computed (``logsumexp - z[target]``) and entropy / varentropy come back as None.
    The formulas are the straightforward ones, ``H = -sum p log p`` and
    ``V = sum p (log p + H)^2`` (centred, so no cancellation), evaluated with reductions
    that sum pairwise (``vecdot``), not with a sequential dot product.
    """
    import torch

    if z.dtype != torch.float32:
        z = z.float()
    lse = torch.logsumexp(z, dim=-1)
    ce = lse - z.gather(-1, targets[:, None]).squeeze(-1)
    if not full:
        return ce.double(), None, None
    logp = z.sub_(lse[:, None])
    p = torch.exp(logp)
    ent = -torch.linalg.vecdot(p, logp)
    dev = logp.add_(ent[:, None]).square_()
    var = torch.linalg.vecdot(p, dev)
    return ce.double(), ent.double(), var.double()


def _block_stats(z, targets, full: bool) -> list:
    """:func:`token_stats_` over ``z`` in STATS_CHUNK-row blocks (``z`` is scratch)."""
    return [token_stats_(z[k: k + STATS_CHUNK], targets[k: k + STATS_CHUNK], full) for k in range(0, z.shape[0], STATS_CHUNK)]


def _head_stats(head, hidden, targets, full: bool):
    """LM head over ``hidden`` rows in HEAD_CHUNK blocks, statistics in STATS_CHUNK blocks."""
    import torch

    n = hidden.shape[0]
    direct = isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == hidden.dtype
    buf = None
    if direct:
        buf = torch.empty((min(n, HEAD_CHUNK), head.weight.shape[0]), dtype=hidden.dtype, device=hidden.device)
    out = []
    for j in range(0, n, HEAD_CHUNK):
        h, t = hidden[j: j + HEAD_CHUNK], targets[j: j + HEAD_CHUNK]
        z = torch.mm(h, head.weight.t(), out=buf[: h.shape[0]]) if direct else head(h)
        out.extend(_block_stats(z, t, full))
    return out


def batched_answer_stats(model, seqs: list[tuple[list[int], list[bool]]], pad_id: int, token_budget: int,
                         full: bool | list[bool] = True, token_ce: bool = False, on_batch=None):
    """For each (ids, answer_mask): (sum CE, sum entropy, sum varentropy, n answer targets).

    Length-sorted dynamic batches (:func:`thresher.models.chat.batches_by_length` under
    ``token_budget`` padded tokens); the target at position t+1 counts when its mask is set.
    ``full`` (one flag, or one per sequence) says which sequences need entropy and
    varentropy; the others get CE only (cheaper) and NaN in those two sums.
    With ``token_ce=True`` a third value comes back: per sequence, the float64 array of the
    CE of its answer targets in sequence order (the values the sums add up; O(tokens) more).
    ``on_batch`` (optional) is called with the number of sequences after every batch.
    """
    import torch

    n = len(seqs)
    need = np.full(n, bool(full)) if isinstance(full, bool) else np.asarray(full, dtype=bool)
    if need.shape != (n,):
        raise ValueError(f"full: one flag per sequence expected ({n}), got {need.shape[0]}")
    sums = np.zeros((n, 3), dtype=np.float64)
    sums[~need, 1:] = np.nan
    counts = np.zeros(n, dtype=np.int64)
    per_token = [np.zeros(0, dtype=np.float64) for _ in range(n)] if token_ce else None
    parts = _head_parts(model)
    device = next(model.parameters()).device
    batches = batches_by_length([len(s) for s, _ in seqs], token_budget)
    with torch.inference_mode():
        for b in batches:
            T = max(len(seqs[i][0]) for i in b)
            ids = torch.full((len(b), T), pad_id, dtype=torch.long)
            att = torch.zeros((len(b), T), dtype=torch.long)
            tmask = torch.zeros((len(b), T), dtype=torch.bool)  # position t predicts a masked token t+1
            for r, i in enumerate(b):
                s, m = seqs[i]
                ids[r, : len(s)] = torch.tensor(s)
                att[r, : len(s)] = 1
                if len(s) > 1:
                    tmask[r, : len(s) - 1] = torch.tensor(m[1:], dtype=torch.bool)
            if not int(tmask.sum()):
                if on_batch is not None:
                    on_batch(len(b))
                continue
            ids, att, tmask = ids.to(device), att.to(device), tmask.to(device)
            targets = torch.roll(ids, shifts=-1, dims=1)[tmask]
            rows = np.asarray(b)[tmask.nonzero()[:, 0].cpu().numpy()]  # sequence of each answer position
            if parts is not None:
                dec, head = parts
                hidden = dec(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state[tmask]
            else:
                hidden = model(input_ids=ids, attention_mask=att, use_cache=False).logits[tmask]
            # positions needing entropy / varentropy first, then the CE-only ones
            for flag in (True, False):
                sel = need[rows] == flag
                if not sel.any():
                    continue
                pick = torch.from_numpy(np.flatnonzero(sel)).to(device)
                h, t = hidden.index_select(0, pick), targets.index_select(0, pick)
                # h is a copy (index_select): the full-logits path may work on it in place
                stats = _head_stats(head, h, t, flag) if parts is not None else _block_stats(h, t, flag)
                idx = rows[sel]
                ce = torch.cat([c for c, _, _ in stats]).cpu().numpy()
                np.add.at(sums[:, 0], idx, ce)
                if token_ce:  # positions are row-major: each sequence's targets are one run, in order
                    cut = np.flatnonzero(idx[1:] != idx[:-1]) + 1
                    for seg, i in zip(np.split(ce, cut), idx[np.concatenate([[0], cut])]):
                        per_token[i] = seg
                if flag:
                    np.add.at(sums[:, 1], idx, torch.cat([e for _, e, _ in stats]).cpu().numpy())
                    np.add.at(sums[:, 2], idx, torch.cat([v for _, _, v in stats]).cpu().numpy())
                np.add.at(counts, idx, 1)
            if on_batch is not None:
                on_batch(len(b))
    if token_ce:
        return sums, counts, per_token
    return sums, counts


@register_signal
class LMSignal(Signal):
    name = "lm"
    version = 2  # 2: content-only answer mask, answer-alone after the assistant header, localised-error columns
    family = "model"
    columns = LM_COLUMNS
    Params = LMParams
    heavy = True
    default_shard_size = 512
    scorer_model = True  # model="auto" resolves on the pool
    #: per-row flags compute() returns beside the columns (counted by the engine, never stored)
    TRUNCATED, CAPPED = "__truncated__", "__capped__"
    description = ("answer loss, perplexity, IFD (Cherry) and its perplexity-ratio variant, token entropy and varentropy, "
                   "localised errors (max, top 5%, top-k and final-answer token loss), from two batched forward passes per example")

    def key(self, pool):
        sig = self.for_pool(pool)
        if sig is not self:
            return sig.key(pool)
        return SignalKey(pool.fingerprint, self.name, self.version, self.key_params(), scorer_model_id(self.params, pool.fingerprint))

    def key_params(self) -> dict:
        d = self.params.model_dump(mode="json")
        if self.params.model != "auto":  # (an unresolved auto scorer keys nothing: key() resolves it first)
            d["warmup_examples"] = effective_warmup(self.params)
        d.pop("token_budget")  # batching does not change values beyond float noise
        # vLLM's entropy / varentropy come from a truncated top-k distribution: its values
        # never share a cache entry with the exact HF ones ("auto" keys as what it resolves to)
        if self.resolved_backend() == "vllm":
            d["backend"] = "vllm"
        else:
            d.pop("backend")
        return d

    def resolved_backend(self) -> str:
        """``hf`` or ``vllm``: ``auto`` takes vLLM when it is installed with CUDA (never for micro)."""
        if self.params.backend == "auto":
            return "vllm" if not is_micro(self.params.model) and vllm_available() else "hf"
        if self.params.backend == "vllm" and is_micro(self.params.model):
            raise ValueError("backend=vllm: the micro scorer is trained here and has no vLLM build; use backend=hf")
        return self.params.backend

    def model_id(self) -> str | None:
        return scorer_model_id(self.params, None)

    def bind_pool(self, pool) -> LMSignal:
        """Warm-up scorers train on the pool: bind it before setup (the engine does). An ``auto``
        scorer resolves on it here (before setup, which loads the model)."""
        self._pool = pool
        if self.params.model == "auto":
            self.params = self.params.model_copy(update={"model": resolve_scorer("auto", pool)})
        return self

    def describe_scorer(self) -> str:
        """``scorer: small (SmolLM2-135M-Instruct)``, with the warm-up when there is one."""

        line = f"scorer: {describe_model(self.params.model)}"
        n = effective_warmup(self.params) if self.params.model != "auto" else 0
        if n:
            line += f", warmed up on {n} pool examples x {self.params.warmup_steps} steps"
        return line

    def run_note(self, counts: dict[str, int], rows: int) -> str | None:
        """The run's line about long examples (None when none was cut)."""
        return truncation_note(counts.get(self.TRUNCATED, 0), counts.get(self.CAPPED, 0), rows, self.params.max_length)

    def prepare(self, pool) -> dict:
        """Driver side of a distributed run: do the warm-up here, once, so workers only load.

        Trains and caches a warmed-up scorer on disk (a no-op when it is cached already) and
        returns the worker state for :meth:`use_prepared`: ``artifact_dir`` (the cached
        scorer directory, or None when the scorer is the plain model spec) and ``model_id``.
        """
        self.bind_pool(pool)
        if effective_warmup(self.params) == 0:
            if is_micro(self.params.model):
                raise ValueError("an untrained micro model scores nothing: set warmup_examples > 0 for the micro scorer")
            return {"artifact_dir": None, "model_id": scorer_model_id(self.params, pool.fingerprint)}
        cdir = scorer_cache_dir(self.params, pool.fingerprint)
        if not (cdir / "config.json").exists():
            prepare_scorer(self.params, pool)
        return {"artifact_dir": str(cdir), "model_id": scorer_model_id(self.params, pool.fingerprint)}

    def use_prepared(self, state: dict) -> LMSignal:
        """Worker side: load the scorer :meth:`prepare` cached (no pool, no warm-up here)."""
        self._prepared = dict(state)
        return self

    def setup(self) -> None:
        prepared = getattr(self, "_prepared", None)
        if prepared is not None and prepared.get("artifact_dir"):
            dtype = None if self.params.dtype == "auto" else self.params.dtype
            self.loaded = load_model(prepared["artifact_dir"], dtype=dtype)
            self.loaded.model_id = prepared["model_id"]
        else:
            self.loaded = prepare_scorer(self.params, getattr(self, "_pool", None))
        self.tokenizer = quiet_length_warning(self.loaded.tokenizer)  # truncation is deliberate and counted
        self.model = self.loaded.model
        self.model.eval()
        self.vllm = None
        if self.resolved_backend() == "vllm":
            path = prepared.get("artifact_dir") if prepared else None
            self.vllm = VLLMScorer(path or resolve_spec(self.params.model)[0])

    def token_budget(self) -> int:
        if self.params.token_budget is not None:
            return self.params.token_budget
        return CPU_TOKEN_BUDGET if next(self.model.parameters()).device.type == "cpu" else GPU_TOKEN_BUDGET

    def encode(self, records: list[dict]):
        """(conditioned, answer-alone, final-answer masks): both passes score the same tokens.
        ``self.cut`` is set to the per-record (truncated, capped) flags."""
        cond, alone, final, cut = [], [], [], []
        for r in records:
            p = encode_pair(self.tokenizer, r["messages"], max_length=self.params.max_length,
                            final_markers=self.params.final_markers)
            cond.append((p.cond.input_ids, p.cond.answer_mask))
            alone.append((p.alone.input_ids, p.alone.answer_mask))
            final.append(p.final_mask)
            cut.append((p.truncated, p.capped))
        self.cut = np.asarray(cut, dtype=bool).reshape(len(records), 2)
        return cond, alone, final

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        cond, alone, final = self.encode(records)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.vllm is not None:
            sums, counts, per_token = self.vllm.answer_stats(cond + alone, token_ce=True)
        else:
            # entropy / varentropy are read from the conditioned pass only; each example is two
            # sequences, so every sequence scored is half an example of progress
            sums, counts, per_token = batched_answer_stats(self.model, cond + alone, pad, self.token_budget(),
                                                           full=[True] * len(cond) + [False] * len(alone), token_ce=True,
                                                           on_batch=lambda k: self.advance(k / 2))
        n = len(records)
        local = local_error_columns(per_token[:n], [target_flags(c, f) for c, f in zip(cond, final)], self.params.topk)
        out = lm_columns(sums[:n], counts[:n], sums[n:], counts[n:], local)
        out[self.TRUNCATED], out[self.CAPPED] = self.cut[:, 0].copy(), self.cut[:, 1].copy()
        return out


def target_flags(seq: tuple[list[int], list[bool]], flags: list[bool]) -> np.ndarray:
    """``flags`` (one per token) at the scored targets of ``seq``: positions t >= 1 whose answer
    mask is set, in order, aligned with :func:`batched_answer_stats`'s per-token CE."""
    _, mask = seq
    m = np.asarray(mask[1:], dtype=bool)
    return np.asarray(flags[1:], dtype=bool)[m]


def local_error_columns(per_token: list[np.ndarray], final: list[np.ndarray], topk: int) -> dict[str, np.ndarray]:
    """Localised-error columns from the per-token answer losses of the conditioned pass.

    ``loss_max``: the largest token loss; ``loss_top5pct``: the mean of the ceil(5%) largest
    (at least one token); ``loss_topk``: the mean of the ``min(topk, n)`` largest;
    ``loss_final``: the mean over the final-answer tokens (``final``: one flag per token,
    see :func:`thresher.models.chat.final_answer_span`). NaN without answer tokens.
    """
    n = len(per_token)
    out = {c: np.full(n, np.nan) for c in LOCAL_COLUMNS}
    for i, ce in enumerate(per_token):
        m = len(ce)
        if not m:
            continue
        out["loss_max"][i] = ce.max()
        k5 = max(1, -(-m // 20))
        out["loss_top5pct"][i] = np.partition(ce, m - k5)[m - k5:].mean()
        k = min(topk, m)
        out["loss_topk"][i] = np.partition(ce, m - k)[m - k:].mean()
        f = final[i]
        if len(f) == m and f.any():  # (a backend that skipped a target cannot align the flags)
            out["loss_final"][i] = ce[f].mean()
    return out


def lm_columns(cond_sums, cond_counts, alone_sums, alone_counts, local: dict | None = None) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(cond_counts > 0, cond_sums[:, 0] / np.maximum(cond_counts, 1), np.nan)
        ent = np.where(cond_counts > 0, cond_sums[:, 1] / np.maximum(cond_counts, 1), np.nan)
        var = np.where(cond_counts > 0, cond_sums[:, 2] / np.maximum(cond_counts, 1), np.nan)
        alone = np.where(alone_counts > 0, alone_sums[:, 0] / np.maximum(alone_counts, 1), np.nan)
        ifd = np.where(alone > 0, loss / alone, np.nan)
        ppl = np.exp(np.minimum(loss, 700))
        ppl_alone = np.exp(np.minimum(alone, 700))
        ratio = np.exp(np.clip(loss - alone, -700, 700))
    return {
        "loss": loss, "ppl": ppl, "loss_alone": alone, "ppl_alone": ppl_alone, "ifd": ifd, "ifd_ppl_ratio": ratio,
        "entropy": ent, "varentropy": var, "answer_tokens": cond_counts.astype(np.int64),
        **{c: np.asarray(local[c], dtype=np.float64) if local is not None else np.full(len(loss), np.nan) for c in LOCAL_COLUMNS},
    }

