"""DSIR's hashed word n-gram features, computed in batches with numpy.

The features are defined by :func:`hashed_ngrams`: the lower-cased ``\\w+`` words of a
text (Python ``re``, Unicode), its unigrams and, for ``n >= 2``, its space-joined word
2..n-grams, each mapped to ``zlib.crc32(gram.encode("utf-8")) % buckets``; per text the
ids come in that order (all unigrams, then all bigrams, then all trigrams, each by
position). :func:`hashed_ngram_batch` computes exactly those ids for many texts at once
without a Python call per word or per gram:

- the lower-cased texts are joined by ``"\\n"`` (no word character) and UTF-8 encoded;
  words are the maximal runs of bytes of ``\\w`` characters (ASCII bytes by a 256-entry
  table, multi-byte characters decoded from their bytes); ``\\w`` membership of each
  distinct code point is asked of ``re`` itself (:func:`_is_word_char`);
- each word's CRC-32 is computed over its UTF-8 bytes by the table-driven recurrence,
  vectorised across words (words longer than 64 bytes go through ``zlib.crc32``);
- CRC-32 is affine over GF(2): ``crc32(A + B) = Z^len(B)(crc32(A)) ^ crc32(B)`` where ``Z``
  is the linear map "feed one zero byte to the raw register" and ``len`` counts bytes (the
  rule behind zlib's ``crc32_combine``). So the hash of an m-gram is
  ``Z^{L}(Z(h_{m-1}) ^ crc32(b" ")) ^ c_last`` from the hash ``h_{m-1}`` of its first
  m-1 words, the last word's hash ``c_last`` and its byte length ``L``; ``Z^L`` is applied
  as four 256-entry tables (one per register byte), built per distinct length.

:class:`PoolNgrams` keeps a whole pool's ids compactly (uint16 for up to 65,535 buckets)
and sums any per-bucket values over each example with the same float result as numpy's
``values[ids].sum()`` on that example alone (see :meth:`PoolNgrams.sums`).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import islice

import numpy as np

_WORD = re.compile(r"\w+")
_MASK32 = np.uint32(0xFFFFFFFF)
_VECTOR_MAX_BYTES = 64  # longer words are hashed by zlib one at a time (they are rare)
_SPACE_CRC = np.uint32(zlib.crc32(b" "))


def _crc_table() -> np.ndarray:
    """The 256-entry table of reflected CRC-32 (polynomial 0xEDB88320), as zlib uses."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0xEDB88320), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_table()


def _is_word_char(code_points: np.ndarray) -> np.ndarray:
    """Whether each code point is a ``\\w`` character for Python ``re`` (asked of ``re`` itself, once per distinct one)."""
    distinct, inverse = np.unique(code_points, return_inverse=True)
    flags = np.fromiter((_WORD.match(chr(c)) is not None for c in distinct.tolist()), dtype=np.int8, count=len(distinct))
    return flags[inverse.reshape(-1)]


def _apply_cols(cols: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The GF(2)-linear map with columns ``cols`` (``cols[i]`` = image of bit i) applied to each of ``v``."""
    bits = (v[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return np.bitwise_xor.reduce(np.where(bits.astype(bool), cols[None, :], np.uint32(0)), axis=1).astype(np.uint32)


@lru_cache(maxsize=1)
def _zero_byte_cols() -> np.ndarray:
    """Columns of Z: one zero byte through the raw CRC register, ``r -> T[r & 255] ^ (r >> 8)``."""
    r = np.uint32(1) << np.arange(32, dtype=np.uint32)
    return (_TABLE[r & np.uint32(0xFF)] ^ (r >> np.uint32(8))).astype(np.uint32)


@lru_cache(maxsize=4096)
def _shift_table(length: int) -> np.ndarray:
    """Z^length as four 256-entry tables, flattened (1024,): ``Z^L(x) = XOR_j t[256 j + byte_j(x)]``."""
    result = np.uint32(1) << np.arange(32, dtype=np.uint32)  # identity
    base = _zero_byte_cols()
    e = int(length)
    while e:
        if e & 1:
            result = _apply_cols(base, result)
        e >>= 1
        if e:
            base = _apply_cols(base, base)
    out = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for bit in range(8):
            out[j, 1 << bit : 2 << bit] = out[j, : 1 << bit] ^ result[8 * j + bit]
    return out.reshape(-1)


def _shift(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``Z^lengths[i](x[i])`` for every i (uint32 ``x``; lengths in bytes, >= 0)."""
    if len(x) == 0:
        return x.astype(np.uint32)
    present = np.flatnonzero(np.bincount(lengths))
    tables = np.concatenate([_shift_table(int(L)) for L in present])
    slot = np.zeros(int(present[-1]) + 1, dtype=np.intp)
    slot[present] = np.arange(len(present), dtype=np.intp) * 1024
    base = slot[lengths]
    out = tables[base + (x & 0xFF)]
    out ^= tables[base + (256 + ((x >> 8) & 0xFF))]
    out ^= tables[base + (512 + ((x >> 16) & 0xFF))]
    out ^= tables[base + (768 + (x >> 24))]
    return out


def _word_crcs(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``zlib.crc32(bytes(buf[s : s + L]))`` for each word (start ``s``, byte length ``L`` >= 1): the
    table-driven update ``r -> T[(r ^ byte) & 255] ^ (r >> 8)`` from 0xFFFFFFFF, one byte position
    at a time across all words still running, then ``r ^ 0xFFFFFFFF``."""
    out = np.empty(len(starts), dtype=np.uint32)
    long_words = np.flatnonzero(lengths > _VECTOR_MAX_BYTES)
    for i in long_words:
        out[i] = zlib.crc32(buf[starts[i] : starts[i] + lengths[i]])
    short = np.flatnonzero(lengths <= _VECTOR_MAX_BYTES) if len(long_words) else np.arange(len(starts))
    if len(short) == 0:
        return out
    # longest first (a radix sort on a uint8 key), so the words still running at byte k are a prefix
    order = short[np.argsort((_VECTOR_MAX_BYTES - lengths[short]).astype(np.uint8), kind="stable")]
    s, lens = starts[order], lengths[order]
    running = len(order) - np.cumsum(np.bincount(lens, minlength=_VECTOR_MAX_BYTES + 1))  # [k]: words with > k bytes
    reg = np.full(len(order), _MASK32, dtype=np.uint32)
    for k in range(int(lens[0])):
        m = int(running[k])
        r, at = reg[:m], s[:m]
        x = r ^ buf[at]
        x &= 0xFF
        r >>= 8
        r ^= _TABLE[x]
        at += 1
    reg ^= _MASK32
    out[order] = reg
    return out


@lru_cache(maxsize=1)
def _ascii_word_bytes() -> np.ndarray:
    """``table[b]`` for a UTF-8 byte: 1 for an ASCII word character, else 0 (multi-byte characters are decoded)."""
    table = np.zeros(256, dtype=np.int8)
    table[:128] = _is_word_char(np.arange(128))
    return table


def _words(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the lower-cased texts joined by newlines, each word's byte start, each
    word's byte length, each text's word count); words in text order, then position."""
    encoded = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    joined = b"\n".join(encoded)
    ascii_only = joined.isascii()
    buf = np.frombuffer(joined, dtype=np.uint8)
    flag = np.zeros(len(buf) + 2, dtype=np.int8)
    flag[1:-1] = _ascii_word_bytes()[buf]
    lead = np.zeros(0, dtype=np.int64) if ascii_only else np.flatnonzero(buf >= 0xC0)  # first bytes of multi-byte characters
    if len(lead):
        b = [buf[np.minimum(lead + j, len(buf) - 1)].astype(np.uint32) for j in range(4)]
        width = 2 + (b[0] >= 0xE0).astype(np.int64) + (b[0] >= 0xF0)
        cont = [(x & 0x3F) for x in b[1:]]
        cp = np.where(width == 2, ((b[0] & 0x1F) << 6) | cont[0],
                      np.where(width == 3, ((b[0] & 0x0F) << 12) | (cont[0] << 6) | cont[1],
                               ((b[0] & 0x07) << 18) | (cont[0] << 12) | (cont[1] << 6) | cont[2]))
        is_word = _is_word_char(cp)
        for j in range(4):  # flag every byte of the character
            sel = width > j
            flag[1 + lead[sel] + j] = is_word[sel]
    edges = np.flatnonzero(np.diff(flag))  # a word's first byte, one past its last, the next's first, ...
    first, stop = edges[0::2], edges[1::2]
    words = np.diff(np.searchsorted(first, np.cumsum(sizes + 1)), prepend=0)
    return buf, first, stop - first, words


def _gram_counts(words: np.ndarray, n: int) -> np.ndarray:
    """Number of 1..n-grams of a text of ``words`` words: sum over m of max(words - m + 1, 0)."""
    return sum(np.maximum(words - m + 1, 0) for m in range(1, n + 1))


def hashed_ngram_batch(texts: Sequence[str], buckets: int, n: int, *, lead: int | None = None,
                       dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, counts)``: ``ids`` is ``hashed_ngrams(t, buckets, n)`` for every text ``t`` in
    order, concatenated, as ``dtype``; ``counts[i]`` is the number of text i's ids. With
    ``lead``, each text's part is preceded by one extra entry ``lead`` (not counted)."""
    if n < 1:
        raise ValueError(f"n (the longest n-gram) must be >= 1, got {n}")
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    texts = list(texts)
    buf, starts, lengths, words = _words(texts)
    counts = _gram_counts(words, n).astype(np.int64)
    pad = 0 if lead is None else 1
    size = counts + pad
    out = np.empty(int(size.sum()) + 1, dtype=dtype)  # the last slot takes the grams across two texts
    if pad:
        out[np.cumsum(size) - size] = lead
    if len(starts):
        crc = _word_crcs(buf, starts, lengths)
        w = np.repeat(words, words)  # per word: its text's word count
        local = np.arange(len(crc)) - np.repeat(np.cumsum(words) - words, words)  # position in its text
        at = np.repeat(np.cumsum(size) - size + pad, words) + local  # where its unigram goes
        modulus = np.uint32(buckets) if buckets < 2**32 else np.uint64(buckets)
        h = crc
        for m in range(1, n + 1):
            if m > 1:  # h[p]: the (m-1)-gram at word p; extend it by word p + m - 1
                x = _TABLE[h[:-1] & 0xFF] ^ (h[:-1] >> 8) ^ _SPACE_CRC  # Z(h) ^ crc32(b" ") = crc32(gram + b" ")
                h = _shift(x, lengths[m - 1 :]) ^ crc[m - 1 :]
                at = at[:-1] + np.maximum(w[: len(h)] - m + 2, 0)  # after the text's (m-1)-grams
            out[np.where(local[: len(h)] <= w[: len(h)] - m, at, len(out) - 1)] = h % modulus
    return out[:-1], counts


def hashed_ngrams(text: str, buckets: int, n: int) -> np.ndarray:
    """Bucket ids (int64) of the lower-cased ``\\w+`` word 1..n-grams of ``text``: the unigrams, then
    the space-joined bigrams, ..., each ``zlib.crc32(gram.encode()) % buckets`` (stable across runs)."""
    return hashed_ngram_batch([text], buckets, n)[0]


def _hashed_ngrams_reference(text: str, buckets: int, n: int) -> np.ndarray:
    """The definition :func:`hashed_ngrams` computes, a gram at a time in Python (tests and
    ``benchmarks/bench_dsir.py`` pin equality against it; too slow for a large pool)."""
    words = _WORD.findall(text.lower())
    grams = list(words)
    for m in range(2, n + 1):
        grams += [" ".join(words[i : i + m]) for i in range(len(words) - m + 1)]
    return np.array([zlib.crc32(g.encode()) % buckets for g in grams], dtype=np.int64)


def batched(items: Iterable, size: int) -> Iterable[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class PoolNgrams:
    """The hashed n-gram ids of every text of a pool, computed ``batch`` texts at a time.

    Kept per example as ``[buckets, ids...]`` (a leading pad id whose value is 0, see
    :meth:`sums`) in the narrowest dtype that holds ``buckets``: 2 bytes a gram for up to
    65,535 buckets (about 340 MB for a million SFT examples of ~170 1-2-grams each).
    ``raw`` is the pool's bincount over the buckets (int64), ``counts`` the n-grams per example.
    """

    def __init__(self, texts: Iterable[str], buckets: int, n: int, batch: int = 5_000):
        self.buckets = int(buckets)
        dtype = next(d for d in (np.uint16, np.uint32, np.int64) if self.buckets <= np.iinfo(d).max)
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.raw = np.zeros(self.buckets, dtype=np.int64)
        per_batch = []
        for chunk in batched(texts, batch):
            padded, counts = hashed_ngram_batch(chunk, self.buckets, n, lead=self.buckets, dtype=dtype)
            per_batch.append(counts)
            self.raw += np.bincount(padded, minlength=self.buckets + 1)[: self.buckets]
            self._chunks.append((padded, np.cumsum(counts + 1) - (counts + 1)))  # segments start at the pads
        self.counts = np.concatenate(per_batch) if per_batch else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per example, ``values[ids].sum()`` of its ids (0.0 for none), with the same float result.

        ``np.add.reduceat`` adds a segment's first element to the pairwise sum of the rest,
        while ``ndarray.sum`` starts the pairwise sum from 0: the pad (value 0.0) in front
        of every segment makes the two agree to the bit.
        """
        ext = np.append(np.asarray(values, dtype=np.float64), 0.0)
        if len(ext) != self.buckets + 1:
            raise ValueError(f"values must have one entry per bucket ({self.buckets}), got {len(ext) - 1}")
        parts = [np.add.reduceat(ext[padded], seg_start) for padded, seg_start in self._chunks if len(seg_start)]
        return np.concatenate(parts) if parts else np.zeros(0)
