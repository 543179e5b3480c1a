"""Hidden-state embeddings of the target model, and RDS+ similarities to a task's dev items.

RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning", arXiv
2503.01807) embeds every example with the model that will be fine-tuned: the final
layer's hidden states over the whole conversation in the model's chat template,
mean-pooled with weights proportional to the token position (1..T, normalised to sum
to 1), so later tokens, which have seen more of the text, count more.

- ``hidden_embedding`` (example scope, vector): that embedding for every pool example,
  L2-normalised, float32; ``hidden_norm`` is the pooled vector's L2 norm before the
  normalisation. ``pooling``: ``position_weighted`` (RDS+, the default), ``mean``
  (plain mean over the tokens) or ``last`` (the last token's state).
- ``rds_similarity`` (pool scope, vector of width D = the task's dev items): the cosine
  of every pool example to every dev item, the dev items embedded the same way (same
  model, pooling, truncation); ``rds_max_similarity`` is the row maximum. The ``rds``
  selector (:mod:`thresher.select.baselines`) only reads this matrix. It is N x D
  float32 in the store: fine up to a few thousand dev items.

**Model.** ``model`` is the target model *as loaded*: its base weights, with no warm-up
(the paper embeds with the pretrained model it goes on to fine-tune). ``auto`` is
``micro`` on the arith testbed (the micro tier as built, seed 0: a freshly initialised
character model, which the arith oracle trains from scratch) and ``small``
(SmolLM2-135M-Instruct) on any other pool, resolved before the cache key is made.

**Dev items** are embedded as the conversations the task trains and evaluates on:
``dev_text="all"`` (the default, like the paper, which embeds its query examples'
full text) is the task's prompt for the question as the user turn(s) and the gold
worked response (``target``, else ``answer``) as the assistant turn
(:meth:`DevTask.demo_messages`); ``dev_text="user"`` is the prompt alone.

**Computation.** Conversations are tokenised with the chat template
(:func:`thresher.models.chat.encode_pair`'s conditioned ids: the same tokens the ``lm``
signal scores), cut to ``max_tokens`` (counted in the run's notes), sorted by length and
packed into right-padded batches under a token budget; the attention mask keeps padding
out of every real token's state (a causal model: a token sees only earlier ones) and out
of the pooling, so batching does not change the values (beyond float noise). The
decoder's final hidden states are taken without the LM head (the same tensor as
``output_hidden_states[-1]``), pooled in float32. The token budget only changes the speed
and is not in the cache key; ``dtype`` is (bf16 on a GPU by default, fp32 on CPU).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from thresher.models.chat import batches_by_length, encode_pair, truncation_note
from thresher.models.load import (
    describe_model,
    is_micro,
    load_model,
    model_identity,
    quiet_length_warning,
    resolve_scorer,
)
from thresher.signals.base import (
    VECTORS,
    ReadsTaskDev,
    Signal,
    SignalParams,
    register_signal,
)

Pooling = Literal["position_weighted", "mean", "last"]
DevText = Literal["all", "user"]

CPU_TOKEN_BUDGET = 2048
GPU_TOKEN_BUDGET = 16384

#: loaded models by (spec, dtype), shared by the two signals of one process (the pool's
#: signal and the dev items' embedding in ``rds_similarity``)
_MODELS: dict[tuple[str, str | None], Any] = {}


# --------------------------------------------------------------------------- helpers


def load_target(spec: str, dtype: str | None = None):
    """The model and tokenizer of ``spec`` as loaded (no warm-up), once per process (eval mode)."""
    key = (spec, dtype)
    if key not in _MODELS:
        lm = load_model(spec, dtype=dtype)
        lm.model.eval()
        quiet_length_warning(lm.tokenizer)  # truncation is deliberate and counted
        _MODELS[key] = lm
    return _MODELS[key]


def hidden_model_id(spec: str) -> str:
    """The cache-key id of the embedding model: a micro preset is its fresh seed-0 initialisation."""

    return f"{spec}-init-seed0" if is_micro(spec) else model_identity(spec)


def conversation_ids(tokenizer, messages, max_tokens: int) -> tuple[list[int], bool, bool]:
    """Token ids of a conversation in the chat template, cut to ``max_tokens``: (ids, truncated, capped)."""

    p = encode_pair(tokenizer, messages, max_length=max_tokens)
    return list(p.cond.input_ids), bool(p.truncated), bool(p.capped)


def pooling_weights(lengths, T: int, pooling: str):
    """[B, T] float32 pooling weights for right-padded rows of the given lengths (rows sum to 1;
    an empty row is all zero): position-weighted (1..L), uniform, or the last token only."""
    import torch

    lengths = torch.as_tensor(lengths, dtype=torch.long)
    pos = torch.arange(1, T + 1, dtype=torch.float32)[None, :].expand(len(lengths), T)
    real = pos <= lengths[:, None]
    if pooling == "position_weighted":
        w = torch.where(real, pos, torch.zeros_like(pos))
    elif pooling == "mean":
        w = real.float()
    elif pooling == "last":
        w = (pos == lengths[:, None].float()).float()
    else:
        raise ValueError(f"pooling must be 'position_weighted', 'mean' or 'last', got {pooling!r}")
    total = w.sum(dim=1, keepdim=True)
    return w / torch.where(total > 0, total, torch.ones_like(total))


def final_hidden(model, ids, att):
    """The final layer's hidden states [B, T, d] (after the final norm: ``hidden_states[-1]``);
    through the decoder alone, without the LM head, when the model exposes it."""
    dec = None
    try:
        dec = model.get_decoder()
    except (AttributeError, NotImplementedError):
        pass
    if dec is not None and dec is not model:
        return dec(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    return model(input_ids=ids, attention_mask=att, use_cache=False, output_hidden_states=True).hidden_states[-1]


def pooled_hidden(model, seqs: list[list[int]], pad_id: int, *, pooling: str = "position_weighted",
                  token_budget: int = CPU_TOKEN_BUDGET, max_rows: int | None = None, on_batch=None) -> np.ndarray:
    """Pooled final hidden states [N, d] (float32, not normalised) of token sequences, in their order.

    Length-sorted, right-padded batches (:func:`thresher.models.chat.batches_by_length`, an
    empty sequence counted as one token); padding is masked out of attention and pooling.
    An empty sequence gets a zero vector. ``on_batch`` (optional) is called with the number
    of sequences after every batch.
    """
    import torch

    n = len(seqs)
    dim = int(getattr(model.config, "hidden_size", 0) or 0)
    out = np.zeros((n, dim), dtype=np.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b in batches_by_length([len(s) for s in seqs], token_budget, max_rows, min_length=1):
            live = [i for i in b if len(seqs[i])]
            if live:
                lengths = [len(seqs[i]) for i in live]
                T = max(lengths)
                ids = torch.full((len(live), T), pad_id, dtype=torch.long)
                att = torch.zeros((len(live), T), dtype=torch.long)
                for r, i in enumerate(live):
                    ids[r, : lengths[r]] = torch.tensor(seqs[i], dtype=torch.long)
                    att[r, : lengths[r]] = 1
                h = final_hidden(model, ids.to(device), att.to(device)).float()
                w = pooling_weights(lengths, T, pooling).to(h.device)
                pooled = torch.einsum("bt,btd->bd", w, h).cpu().numpy()
                if out.shape[1] != pooled.shape[1]:  # a config without hidden_size
                    out = np.zeros((n, pooled.shape[1]), dtype=np.float32)
                out[live] = pooled
            if on_batch is not None:
                on_batch(len(b))
    return out


def unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows scaled to unit L2 norm as float32, the norms in float64); a zero row stays zero."""
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x / safe[:, None], dtype=np.float32), norms


# --------------------------------------------------------------------------- hidden_embedding


class HiddenParams(SignalParams):
    model: str = Field("auto", description="target model whose final hidden states embed the examples, as loaded (no "
                                           "warm-up): auto (micro on the arith testbed, small elsewhere), micro, small, "
                                           "a hub id, a path or a .gguf file")
    pooling: Pooling = Field("position_weighted", description="position_weighted (RDS+: weights 1..T, normalised), mean, or last token")
    max_tokens: int = Field(512, ge=8, description="conversations are cut to this many tokens (counted in the run's notes)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="model dtype (auto: fp32 on CPU, bf16/fp16 on GPU)")
    token_budget: int | None = Field(None, ge=16, description="max padded tokens per forward batch (speed only; not in the "
                                                              "cache key; default 2048 on CPU, 16384 on GPU)")


class _HiddenBase(Signal):
    heavy = True
    scorer_model = True  # model="auto" resolves on the pool
    scorer_role = "embedding model"

    def model_id(self) -> str | None:
        return hidden_model_id(self.params.model)

    def _dtype(self) -> str | None:
        return None if self.params.dtype == "auto" else self.params.dtype

    def loaded(self):
        if self.params.model == "auto":
            raise ValueError(f"{self.name}: model 'auto' is micro on the arith testbed and small elsewhere: resolve it "
                             "on the pool first (signal.for_pool(pool)) or name the model")
        return load_target(self.params.model, self._dtype())

    def token_budget(self, model) -> int:
        if self.params.token_budget is not None:
            return self.params.token_budget
        return CPU_TOKEN_BUDGET if next(model.parameters()).device.type == "cpu" else GPU_TOKEN_BUDGET

    def describe_scorer(self) -> str:
        return f"{self.scorer_role}: {describe_model(self.params.model)}, base weights (no warm-up)"

    def embed_conversations(self, conversations: list[list[dict]], on_batch=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unit vectors float32 [N, d], raw norms float64 [N], per-row (truncated, capped) flags [N, 2])."""
        lm = self.loaded()
        tok, model = lm.tokenizer, lm.model
        seqs, cut = [], []
        for msgs in conversations:
            ids, truncated, capped = conversation_ids(tok, msgs, self.params.max_tokens)
            seqs.append(ids)
            cut.append((truncated, capped))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        raw = pooled_hidden(model, seqs, pad, pooling=self.params.pooling, token_budget=self.token_budget(model),
                            on_batch=on_batch)
        vecs, norms = unit(raw)
        return vecs, norms, np.asarray(cut, dtype=bool).reshape(len(conversations), 2)


@register_signal
class HiddenEmbedding(_HiddenBase):
    name = "hidden_embedding"
    version = 1
    family = "embedding"
    kind = "vector"
    columns = ("hidden_norm",)
    Params = HiddenParams
    default_shard_size = 1024
    TRUNCATED, CAPPED = "__truncated__", "__capped__"
    description = ("the target model's own embedding of each example (RDS+): final-layer hidden states over the chat-"
                   "templated conversation, position-weighted mean pooling by default, unit length; hidden_norm = L2 norm "
                   "before normalisation")

    def key_params(self) -> dict:
        d = self.params.model_dump(mode="json")
        d.pop("token_budget")  # batching changes the speed, not the values
        return d

    def bind_pool(self, pool) -> HiddenEmbedding:
        """An ``auto`` model resolves on the pool here (before setup, which loads it)."""
        if self.params.model == "auto":
            self.params = self.params.model_copy(update={"model": resolve_scorer("auto", pool)})
        return self

    def setup(self) -> None:
        self.loaded()

    def run_note(self, counts: dict[str, int], rows: int) -> str | None:
        return truncation_note(counts.get(self.TRUNCATED, 0), counts.get(self.CAPPED, 0), rows, self.params.max_tokens)

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        vecs, norms, cut = self.embed_conversations([r["messages"] for r in records], on_batch=self.advance)
        return {"hidden_norm": norms, VECTORS: vecs, self.TRUNCATED: cut[:, 0].copy(), self.CAPPED: cut[:, 1].copy()}


# --------------------------------------------------------------------------- rds_similarity


class RDSSimilarityParams(HiddenParams):
    task: str = Field("arith", description="task name (thresher.tasks.get_task) or a task .yaml path; only its dev split is used")
    task_params: dict[str, Any] = Field(default_factory=dict, description="keyword params for the task factory (e.g. seed, dev_size)")
    dev_text: DevText = Field("all", description="dev items embedded as prompt + gold worked response (all, like the paper) or the prompt alone (user)")


def dev_conversation(dev, item, dev_text: str) -> list[dict]:
    """A dev item as a conversation in the task's own prompt format (with its gold response for ``all``)."""
    if dev_text == "all":
        return dev.demo_messages(item)
    if dev_text == "user":
        return dev.messages(item)
    raise ValueError(f"rds_similarity: dev_text must be 'all' or 'user', got {dev_text!r}")


def cosine_matrix(x: np.ndarray, refs: np.ndarray, block: int = 8192) -> np.ndarray:
    """[N, D] float32 cosines of unit rows of ``x`` to unit rows of ``refs`` (row blocks, float64 products)."""
    out = np.empty((x.shape[0], refs.shape[0]), dtype=np.float32)
    r = np.asarray(refs, dtype=np.float64).T
    for s in range(0, x.shape[0], block):
        out[s: s + block] = np.asarray(x[s: s + block], dtype=np.float64) @ r
    return out


@register_signal
class RDSSimilarity(ReadsTaskDev, _HiddenBase):
    name = "rds_similarity"
    version = 1
    scope = "pool"
    family = "embedding"
    kind = "vector"
    columns = ("rds_max_similarity",)
    Params = RDSSimilarityParams
    description = ("RDS+: cosine of each example's hidden_embedding to each dev item of a task (embedded the same way; "
                   "vector of width = dev items, in dev order); rds_max_similarity = the largest of them")

    def key_params(self) -> dict:
        d = self.params.model_dump(mode="json")
        d.pop("token_budget")
        d["task_fingerprint"] = self.dev().fingerprint()  # the dev items themselves, not only the task name
        return d

    def embedding(self) -> HiddenEmbedding:
        """The pool-side signal this reads (same model, pooling, truncation, dtype)."""
        p = self.params
        return HiddenEmbedding(model=p.model, pooling=p.pooling, max_tokens=p.max_tokens, dtype=p.dtype,
                               token_budget=p.token_budget)

    def requires(self) -> list[Signal]:
        return [self.embedding()]

    def dev_vectors(self) -> np.ndarray:
        """The dev items' unit embeddings [D, d], in dev order."""
        dev = self.dev()
        if not dev.dev:
            raise ValueError(f"rds_similarity: task {self.params.task!r} has no dev items")
        vecs, _, _ = self.embed_conversations([dev_conversation(dev, it, self.params.dev_text) for it in dev.dev])
        return vecs

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        x = np.asarray(inputs["hidden_embedding"][VECTORS], dtype=np.float32)
        sims = cosine_matrix(x, self.dev_vectors())
        best = sims.max(axis=1).astype(np.float64) if sims.shape[1] else np.full(len(x), np.nan)
        return {"rds_max_similarity": best, VECTORS: sims}
