"""Cheap stand-ins for the oracle: in-context-learning (ICL) proxies on a tiny validation set.

Fine-tuning a model for every candidate subset is what a search cannot afford. TMAP's
proxy instead asks how much a subset's examples help the target model *in context*:

1. **Anchor points** (:mod:`thresher.select.tmap.anchors`): a tiny validation set
   carved from the task's dev split. The dev items are clustered -- by sentence
   embedding of question + gold response (default), or by their per-item correctness
   vectors across several reference models when those are given (the anchor-points /
   tinyBenchmarks idea) -- and each cluster contributes its **medoid** (the member with
   the smallest sum of distances to the other members; ties go to the earlier dev item),
   weighted by the cluster's share of the dev items.
2. **The proxy** (:class:`ICLProxy`): for a subset, ``m`` demonstrations are drawn from it
   with fixed seeds and prepended, in the model's own chat format, to each anchor
   question. Two measures, selectable:

   - ``loglik`` (default): the mean log-probability per token of the gold response
     (only the final assistant turn is scored; the demonstrations are context), one
     batched forward pass per prompt -- several times cheaper than generating. The
     tokens averaged over are the gold content tokens only, the same rule as the ``lm``
     signal: not the assistant header, not the template's end-of-turn tokens;
   - ``accuracy``: greedy generation and the task's answer check.

   ``J = sum_j weight_j * mean_over_draws(value_j)``. No training.

**Demonstration draws (decision).** The subset is put in pool order, so a draw depends
only on *which* examples are in it. With ``sharing="per_question"`` (default) every
anchor question gets its own ``m`` demonstrations (draw ``d``, question ``j`` use the
generator seeded ``(seed, d, j)``), so one call averages over ``n_anchors * m``
demonstrations and the estimate reflects the subset as a whole; ``sharing="shared"``
uses one set of ``m`` demonstrations per draw for every question (the classic few-shot
set-up). The positions drawn are the same for every subset of the same size (common
random numbers), so two subsets differ in what sits at those positions, not in luck.
System turns of pool examples are left out of demonstrations (counted); when a prompt
would exceed ``max_length`` tokens its earliest demonstrations are dropped (counted).

**Shared prefix (``share_prefix=True``, the default; ``loglik`` only).** Prompts whose
system turn and demonstrations are the same (every anchor of a draw with
``sharing="shared"``) start with the same tokens. That prefix goes through the model once
(``use_cache=True``); its key/value cache is expanded along the batch and only each
anchor's own tokens (question + gold answer, right-padded, positions continuing after the
prefix) are run on top of it. The statistics are the same CE sums over the same answer
tokens, so values equal the per-prompt path's up to float noise (1e-4 tested), and the
proxy's identity (cache key) does not change. The prefix is tokenised on its own and must
be token-for-token the first tokens of every full prompt; an anchor where the template's
tokenisation merges across the boundary (or whose prefix is shared by no other prompt)
takes the per-prompt path and is counted (``ProxyScore.extra``). With the default
``sharing="per_question"`` each prompt has its own demonstrations and nothing but the
system turn is shared, so prompts there go the per-prompt way.

Every proxy call goes into the cost ledger (``kind="proxy"``); a repeated subset is
answered from memory and recorded as cached.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from thresher.data.ledger import CostLedger, LedgerEntry
from thresher.models.chat import encode_conversation, encode_prompt
from thresher.models.evaluate import generate
from thresher.models.load import load_model
from thresher.oracle.core import ids_digest
from thresher.progress import progress
from thresher.select.tmap.anchors import Anchors
from thresher.signals.lm import (
    _block_stats,
    _head_parts,
    _head_stats,
    batched_answer_stats,
)
from thresher.tasks.base import DevTask, TaskItem

ProxyMetric = Literal["loglik", "accuracy"]
DemoSharing = Literal["per_question", "shared"]


# --------------------------------------------------------------------------- the ICL proxy


@dataclass
class ProxyScore:
    """One proxy measurement of a subset."""

    value: float
    metric: str
    per_anchor: list[float]
    per_draw: list[float]
    n_prompts: int
    tokens: int
    seconds: float
    cached: bool
    key: str
    subset_size: int
    demos_dropped_for_length: int = 0
    system_turns_dropped: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def last_turn_mask(mask: list[bool]) -> list[bool]:
    """Keep only the last contiguous run of True (the final assistant turn) of an answer mask."""
    out = [False] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = True
        i -= 1
    return out


class ICLProxy:
    """``J(subset)``: how well the target model does on the anchors with the subset's
    examples in context (see the module docs). Load the model once; call :meth:`score`."""

    def __init__(self, task: DevTask, anchors: Anchors, *, model: str = "small", metric: ProxyMetric = "loglik",
                 demos: int = 4, draws: int = 2, sharing: DemoSharing = "per_question", gold: Literal["target", "answer"] = "target",
                 seed: int = 0, token_budget: int = 4096, max_length: int = 2048, gen_batch_size: int = 16,
                 ledger: CostLedger | None = None, show_progress: bool = True, loaded=None, share_prefix: bool = True):
        if metric not in ("loglik", "accuracy"):
            raise ValueError(f"proxy metric must be 'loglik' or 'accuracy', got {metric!r}")
        if sharing not in ("per_question", "shared"):
            raise ValueError(f"demo sharing must be 'per_question' or 'shared', got {sharing!r}")
        if gold not in ("target", "answer"):
            raise ValueError(f"gold must be 'target' or 'answer', got {gold!r}")
        if demos < 0 or draws < 1:
            raise ValueError(f"need demos >= 0 and draws >= 1, got demos={demos}, draws={draws}")
        self.task = task
        self.anchors = anchors
        self.items = anchors.items(task.dev)
        self.model_spec = model
        self.metric = metric
        self.m = demos
        self.draws = draws
        self.sharing = sharing
        self.gold = gold
        self.seed = seed
        self.token_budget = token_budget
        self.max_length = max_length
        self.gen_batch_size = gen_batch_size
        self.ledger = ledger if ledger is not None else CostLedger()
        self.show_progress = show_progress
        # values do not depend on it (float noise only): not part of identity()
        self.share_prefix = share_prefix
        self._loaded = loaded
        if loaded is not None:
            loaded.model.eval()
        self._memo: dict[str, ProxyScore] = {}
        self.calls = 0
        self.fresh_calls = 0

    # --- model
    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_model(self.model_spec)
            self._loaded.model.eval()
        return self._loaded

    def identity(self) -> str:
        """What the proxy's values depend on (cache key material)."""
        raw = ["content-mask", self.model_spec, self.metric, self.m, self.draws, self.sharing, self.gold, self.seed, self.max_length,
               [it.id for it in self.items], [round(w, 9) for w in self.anchors.weights], self.task.fingerprint()]
        return hashlib.sha256(repr(raw).encode()).hexdigest()[:16]

    # --- demonstrations
    def demo_positions(self, n_subset: int, draw: int) -> np.ndarray:
        """[n_anchors, m] positions into a subset (in pool order) of size ``n_subset``."""
        m = min(self.m, n_subset)
        out = np.zeros((len(self.items), m), dtype=np.int64)
        if m == 0:
            return out
        for j in range(len(self.items)):
            rng = np.random.default_rng([self.seed, draw, j if self.sharing == "per_question" else 0])
            out[j] = rng.choice(n_subset, size=m, replace=False)
        return out

    def _prompt_messages(self, demo_records: list[dict], item: TaskItem) -> tuple[list[dict], int]:
        q = self.task.messages(item)
        system = [t for t in q if t["role"] == "system"]
        rest = [t for t in q if t["role"] != "system"]
        turns, dropped = [], 0
        for r in demo_records:
            for t in r["messages"]:
                if t["role"] == "system":
                    dropped += 1
                else:
                    turns.append({"role": t["role"], "content": t["content"]})
        return system + turns + rest, dropped

    def _demo_groups(self, records: list[dict]) -> list[tuple[int, int, list[dict]]]:
        """(draw, anchor j, demo records) for every prompt of one call."""
        groups = []
        for d in range(self.draws):
            pos = self.demo_positions(len(records), d)
            for j in range(len(self.items)):
                groups.append((d, j, [records[p] for p in pos[j]]))
        return groups

    def _encode_loglik(self, demos: list[dict], item: TaskItem, with_messages: bool = False):
        """(ids, answer mask, demos dropped for length, system turns dropped); with
        ``with_messages`` also the prompt messages (without the gold turn)."""
        gold = (item.target or item.answer) if self.gold == "target" else item.answer
        tok = self.loaded.tokenizer
        dropped_len = 0
        while True:
            msgs, sys_dropped = self._prompt_messages(demos, item)
            # scoring mask: content tokens only (no end-of-turn tokens), as in the lm signal
            enc = encode_conversation(tok, msgs + [{"role": "assistant", "content": gold}], turn_end=False, last_turn=True)
            if len(enc.input_ids) <= self.max_length or not demos:
                break
            demos = demos[1:]
            dropped_len += 1
        if len(enc.input_ids) > self.max_length:
            raise ValueError(f"proxy: anchor {item.id!r} alone is {len(enc.input_ids)} tokens, over max_length={self.max_length}")
        mask = enc.answer_mask
        if not any(mask[1:]):
            raise ValueError(f"proxy: no gold-answer tokens to score for anchor {item.id!r}")
        if with_messages:
            return enc.input_ids, mask, dropped_len, sys_dropped, msgs
        return enc.input_ids, mask, dropped_len, sys_dropped

    # --- scoring
    def score_ids(self, pool, ids, label: str = "") -> ProxyScore:
        """Score the subset ``ids`` of ``pool`` (order does not matter: demos come from pool order)."""
        pos = sorted(pool.positions(sorted(set(ids))))
        return self.score([pool[p] for p in pos], key=ids_digest(ids), label=label)

    def score(self, records: list[dict], *, key: str | None = None, label: str = "") -> ProxyScore:
        """Score a subset given as records (put them in a canonical order first: see :meth:`score_ids`)."""
        if not records:
            raise ValueError("the proxy cannot score an empty subset")
        key = key or ids_digest([r["id"] for r in records])
        self.calls += 1
        if key in self._memo:
            hit = ProxyScore(**{**self._memo[key].to_dict(), "cached": True, "seconds": 0.0})
            self._record(hit, label)
            return hit
        t0 = time.perf_counter()
        groups = self._demo_groups(records)
        if self.metric == "loglik":
            vals, tokens, dlen, dsys = self._loglik(groups)
        else:
            vals, tokens, dlen, dsys = self._accuracy(groups)
        n_a = len(self.items)
        table = np.asarray(vals, dtype=np.float64).reshape(self.draws, n_a)
        per_anchor = table.mean(axis=0)
        per_draw = [self.anchors.weighted(table[d]) for d in range(self.draws)]
        sc = ProxyScore(value=self.anchors.weighted(per_anchor), metric=self.metric, per_anchor=[float(v) for v in per_anchor],
                        per_draw=[float(v) for v in per_draw], n_prompts=len(groups), tokens=int(tokens),
                        seconds=time.perf_counter() - t0, cached=False, key=key, subset_size=len(records),
                        demos_dropped_for_length=dlen, system_turns_dropped=dsys,
                        extra=dict(getattr(self, "_last_extra", {})) if self.metric == "loglik" else {})
        self._memo[key] = sc
        self.fresh_calls += 1
        self._record(sc, label)
        return sc

    def _record(self, sc: ProxyScore, label: str) -> None:
        self.ledger.record(LedgerEntry(kind="proxy", label=label or "icl proxy", examples=sc.n_prompts if not sc.cached else 0,
                                       tokens=sc.tokens if not sc.cached else 0, seconds=sc.seconds, cached=sc.cached, key=sc.key,
                                       extra={"metric": sc.metric, "value": sc.value, "subset_size": sc.subset_size,
                                              "proxy": self.identity()}))

    def _loglik(self, groups):
        seqs, prompts, dlen, dsys = [], [], 0, 0
        for _, j, demos in groups:
            ids, mask, a, b, msgs = self._encode_loglik(demos, self.items[j], with_messages=True)
            seqs.append((ids, mask))
            prompts.append((j, msgs))
            dlen += a
            dsys += b
        tok = self.loaded.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        extra = {}
        if self.share_prefix:
            sums, counts, extra = self._shared_prefix_stats(seqs, prompts, pad)
        else:
            sums, counts = batched_answer_stats(self.loaded.model, seqs, pad, self.token_budget, full=False)
            extra = {"forward_tokens": sum(len(s) for s, _ in seqs)}
        vals = -sums[:, 0] / np.maximum(counts, 1)
        self._last_extra = extra
        return vals, sum(len(s) for s, _ in seqs), dlen, dsys

    def prefix_messages(self, item: TaskItem, msgs: list[dict]) -> list[dict]:
        """The shared part of a prompt: system turn + demonstrations (every turn before the
        anchor's own question)."""
        n_own = sum(1 for t in self.task.messages(item) if t["role"] != "system")
        return msgs[: len(msgs) - n_own]

    def prefix_ids(self, pre: list[dict]) -> list[int] | None:
        """Token ids of prefix messages tokenised on their own (None for no messages)."""
        if not pre:
            return None
        return list(encode_conversation(self.loaded.tokenizer, pre, turn_end=False).input_ids)

    def plan_prefixes(self, seqs, prompts) -> tuple[dict[tuple, list[int]], list[int], dict]:
        """Group prompts by shared prefix: ({prefix ids: prompt indices (2 or more)}, the
        indices that take the per-prompt path, counts). A prompt's prefix must be exactly
        its first tokens (``full_ids == prefix_ids + suffix_ids``) and contain no scored
        target; otherwise it is a boundary fallback."""
        cache: dict[tuple, list[int] | None] = {}
        by_prefix: dict[tuple, list[int]] = {}
        rest, boundary = [], 0
        for i, ((ids, mask), (j, msgs)) in enumerate(zip(seqs, prompts)):
            pre_msgs = self.prefix_messages(self.items[j], msgs)
            key = repr(pre_msgs)
            if key not in cache:
                cache[key] = self.prefix_ids(pre_msgs)
            pre = cache[key]
            if pre is None:
                rest.append(i)
                continue
            P = len(pre)
            if not (P < len(ids) and ids[:P] == pre and not any(mask[: P + 1])):
                boundary += 1
                rest.append(i)
                continue
            by_prefix.setdefault(tuple(pre), []).append(i)
        shared = {}
        for pre, members in by_prefix.items():
            if len(members) >= 2:
                shared[pre] = members
            else:
                rest.extend(members)
        counts = {"prefix_shared": sum(len(m) for m in shared.values()), "prefix_groups": len(shared),
                  "prefix_boundary_fallback": boundary, "prefix_unshared": len(rest) - boundary}
        return shared, sorted(rest), counts

    def _shared_prefix_stats(self, seqs, prompts, pad: int):
        n = len(seqs)
        sums = np.zeros((n, 3), dtype=np.float64)
        sums[:, 1:] = np.nan
        counts = np.zeros(n, dtype=np.int64)
        shared, rest, info = self.plan_prefixes(seqs, prompts)
        fwd = 0
        if rest:
            s, c = batched_answer_stats(self.loaded.model, [seqs[i] for i in rest], pad, self.token_budget, full=False)
            sums[rest], counts[rest] = s, c
            fwd += sum(len(seqs[i][0]) for i in rest)
        for pre, members in shared.items():
            ce, cnt = prefix_answer_ce(self.loaded.model, list(pre), [seqs[i] for i in members], pad, self.token_budget)
            sums[members, 0], counts[members] = ce, cnt
            fwd += len(pre) + sum(len(seqs[i][0]) - len(pre) for i in members)
        info["forward_tokens"] = int(fwd)
        return sums, counts, info

    def _accuracy(self, groups):
        prompts, dsys = [], 0
        for _, j, demos in groups:
            msgs, b = self._prompt_messages(demos, self.items[j])
            prompts.append(msgs)
            dsys += b
        lm = self.loaded
        outs, n_gen = generate(lm.model, lm.tokenizer, prompts, self.task.max_new_tokens, self.gen_batch_size,
                               desc="proxy generate", show_progress=self.show_progress)
        vals = [1.0 if self.task.is_correct(o, self.items[j]) else 0.0 for o, (_, j, _) in zip(outs, groups)]

        prompt_tokens = sum(len(encode_prompt(lm.tokenizer, p)) for p in prompts)
        return vals, prompt_tokens + n_gen, 0, dsys


def _cache_tensors(cache) -> list[tuple]:
    """[(keys, values)] per layer of a past-key-values cache (DynamicCache or legacy tuples)."""
    if hasattr(cache, "layers"):  # transformers >= 4.56: DynamicCache.layers[i].keys / .values
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "to_legacy_cache"):
        cache = cache.to_legacy_cache()
    return [(k, v) for k, v, *_ in cache]


def _cache_kwarg(net) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.x, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (older versions)."""
    import inspect

    try:
        params = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out):
    """The KV cache a forward pass returned (``cache`` or, in older versions, ``past_key_values``)."""
    keys = out.keys() if hasattr(out, "keys") else ()
    return out["cache"] if "cache" in keys else out["past_key_values"] if "past_key_values" in keys else out[1]


def _expanded_cache(kv: list[tuple], batch: int, config):
    """A fresh DynamicCache holding the prefix's keys / values for ``batch`` rows (views:
    the first update concatenates into new tensors, so the prefix tensors stay intact)."""
    from transformers import DynamicCache

    data = [(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in kv]
    try:
        return DynamicCache(data, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(data))


def prefix_answer_ce(model, prefix: list[int], seqs: list[tuple[list[int], list[bool]]], pad_id: int,
                     token_budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum CE, n targets) of the answer tokens of each ``(ids, mask)`` whose ids start with
    ``prefix`` (and whose mask is False up to ``len(prefix)``): the prefix is run once with
    ``use_cache=True``, then the suffixes in right-padded batches on the expanded cache,
    positions continuing after the prefix. Same targets and CE as
    :func:`thresher.signals.lm.batched_answer_stats` (``full=False``) on the whole sequences."""
    import torch

    P = len(prefix)
    n = len(seqs)
    sums = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    parts = _head_parts(model)
    device = next(model.parameters()).device
    net = parts[0] if parts is not None else model
    order = sorted(range(n), key=lambda i: len(seqs[i][0]))
    batches, cur, cur_max = [], [], 0
    for i in order:
        S = len(seqs[i][0]) - P
        big = max(cur_max, S)
        # suffix tokens under the budget; the expanded cache (B x (P + S)) under 16x it
        if cur and (big * (len(cur) + 1) > token_budget or (P + big) * (len(cur) + 1) > 16 * token_budget):
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, S)
    if cur:
        batches.append(cur)
    with torch.inference_mode():
        ckw = _cache_kwarg(net)
        out = net(input_ids=torch.tensor([prefix], dtype=torch.long, device=device), use_cache=True)
        kv = _cache_tensors(_output_cache(out))
        del out
        for b in batches:
            S = max(len(seqs[i][0]) - P for i in b)
            B = len(b)
            ids = torch.full((B, S), pad_id, dtype=torch.long)
            att = torch.zeros((B, P + S), dtype=torch.long)
            att[:, :P] = 1
            tmask = torch.zeros((B, S), dtype=torch.bool)  # suffix position s predicts a masked token s+1
            for r, i in enumerate(b):
                full, m = seqs[i]
                suf = full[P:]
                ids[r, : len(suf)] = torch.tensor(suf)
                att[r, P: P + len(suf)] = 1
                if len(suf) > 1:
                    tmask[r, : len(suf) - 1] = torch.tensor(m[P + 1:], dtype=torch.bool)
            if not int(tmask.sum()):
                continue
            ids, att, tmask = ids.to(device), att.to(device), tmask.to(device)
            pos = torch.arange(P, P + S, device=device).unsqueeze(0).expand(B, S)
            cache = _expanded_cache(kv, B, getattr(model, "config", None))
            res = net(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, **{ckw: cache})
            targets = torch.roll(ids, shifts=-1, dims=1)[tmask]
            rows = np.asarray(b)[tmask.nonzero()[:, 0].cpu().numpy()]
            if parts is not None:
                h = res.last_hidden_state[tmask]
                del res, cache
                stats = _head_stats(parts[1], h, targets, False)
            else:
                h = res.logits[tmask]
                del res, cache
                stats = _block_stats(h, targets, False)
            ce = torch.cat([c for c, _, _ in stats]).cpu().numpy()
            np.add.at(sums, rows, ce)
            np.add.at(counts, rows, 1)
    return sums, counts


def score_many(proxy: ICLProxy, pool, id_lists: list, labels: list[str] | None = None, show_progress: bool = True) -> list[ProxyScore]:
    """Score several subsets in turn, with a progress bar."""
    labels = labels or [""] * len(id_lists)
    out = []
    with progress(total=len(id_lists), desc="proxy", disable=not show_progress) as bar:
        for ids, lab in zip(id_lists, labels):
            out.append(proxy.score_ids(pool, ids, label=lab))
            bar.update(1)
    return out
