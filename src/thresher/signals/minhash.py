"""MinHash signatures of texts, vectorised with numpy and bit-identical to datasketch.

What is computed (the values ``datasketch.MinHash(num_perm, seed)`` of datasketch >= 2.0,
default ``"affine32"`` scheme, holds after ``update_batch`` with a text's shingles):

- shingles: the word ``ngram``-grams of a text, each the UTF-8 bytes of ``" ".join(words[i:i+n])``
  with words = ``\\w+`` runs of the lower-cased text; a text of 1 to n-1 words is one shingle
  (all its words), a text without a word has none (:func:`thresher.signals.dedup.word_shingles`);
- ``h(s)`` = the first 4 bytes of SHA-1(s) read as a little-endian uint32 (datasketch's
  ``sha1_hash32``), then the 32-bit MurmurHash3 finaliser ``fmix32``;
- ``sig[k] = min over shingles of (a_k * h + b_k) mod 2^32`` with ``a_k`` odd and ``b_k`` drawn
  from ``np.random.RandomState(seed)`` (:func:`permutations`); a text without a shingle keeps
  2^32 - 1 everywhere (datasketch's "empty" MinHash). Values fit uint32 and are stored so.
- LSH banding of the signatures: :mod:`thresher.signals.minhash_lsh`.

How: texts go in batches; a batch's words are joined into one byte buffer, every shingle is a
slice of it, SHA-1 (FIPS 180-4) runs in numpy over all shingles at once (no Python call per
shingle), permutations and minima run over blocks of shingles (``np.minimum.reduceat``).
"""
from __future__ import annotations

import re

import numpy as np

from thresher.progress import progress

MAX_HASH = np.uint32(0xFFFFFFFF)  # an empty MinHash's value
_WORDS = re.compile(r"\w+")
_SPACE = 0x20
# ASCII byte -> itself lower-cased when it is a \w character ([A-Za-z0-9_]), else a blank
_ASCII_TABLE = bytes(ord(chr(c).lower()) if chr(c).isascii() and (chr(c).isalnum() or c == 0x5F) else _SPACE
                     for c in range(256))
_H0 = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)
_SHA_CHUNK = 16384      # shingles per vectorised SHA-1 call (16 x 64 KB word columns: cache-sized)
_PERM_ELEMS = 1 << 19   # shingles x permutations per block of the min-reduction (2 MB of uint32)
_BATCH_CHARS = 1 << 22  # characters of text per batch (the word buffer and shingle arrays scale with it)


# --------------------------------------------------------------------------- hashing


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), uint32 [num_perm]: a = 2 * U[0, 2^31) + 1 (odd), b = U[0, 2^32), drawn in this order
    from ``np.random.RandomState(seed)`` (datasketch's affine32 permutations)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (a bijection on uint32), on a copy."""
    h = h ^ (h >> 16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> 13
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> 16
    return h


def _rotl(x: np.ndarray, k: int) -> np.ndarray:
    y = x << k
    y |= x >> (32 - k)
    return y


def _sha1_state(words: np.ndarray) -> list[np.ndarray]:
    """SHA-1 of messages already padded to ``words.shape[1] // 16`` blocks: the 5 state words."""
    n = words.shape[0]
    state = [np.full(n, h, dtype=np.uint32) for h in _H0]
    for blk in range(words.shape[1] // 16):
        w = list(np.ascontiguousarray(words[:, 16 * blk:16 * blk + 16].T))
        a, b, c, d, e = state
        for t in range(80):
            if t >= 16:
                x = w[(t - 3) & 15] ^ w[(t - 8) & 15]
                x ^= w[(t - 14) & 15]
                x ^= w[t & 15]
                w[t & 15] = _rotl(x, 1)
            if t < 20:
                f = c ^ d
                f &= b
                f ^= d
            elif 40 <= t < 60:
                f = b | c
                f &= d
                f |= b & c
            else:
                f = b ^ c
                f ^= d
            f += _rotl(a, 5)
            f += e
            f += np.uint32(_K[t // 20])
            f += w[t & 15]
            a, b, c, d, e = f, a, _rotl(b, 30), c, d
        state = [s + v for s, v in zip(state, (a, b, c, d, e))]
    return state


def sha1_hash32(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``sha1_hash32(bytes(buf[s:s + l]))`` (first 4 digest bytes, little-endian) for every (s, l), uint32.

    ``buf`` is uint8. Messages are padded per FIPS 180-4 and hashed in groups of equal block count.
    """
    out = np.empty(len(starts), dtype=np.uint32)
    if not len(starts):
        return out
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    nblocks = (lengths + 8) // 64 + 1
    width = int(nblocks.max()) * 64
    padded = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    counts = np.bincount(nblocks)
    for nb in np.flatnonzero(counts).tolist():
        group = np.arange(len(nblocks)) if counts[nb] == len(nblocks) else np.flatnonzero(nblocks == nb)
        step = max(1, _SHA_CHUNK // nb)  # (about 1 MB of message bytes at a time)
        for lo in range(0, len(group), step):
            g = group[lo:lo + step]
            # the message's big-endian 32-bit words; then zero what follows it, append the 0x80
            # byte and end with the bit length (FIPS 180-4 5.1.1), word by word
            words = windows[starts[g], :64 * nb].copy().view(">u4").astype(np.uint32)
            ln = lengths[g]
            at, rem = ln // 4, (ln % 4).astype(np.uint64)
            words *= np.arange(16 * nb) <= at[:, None]
            keep = ((np.uint64(0xFFFFFFFF00000000) >> (rem * np.uint64(8))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            pad = (np.uint64(0x80000000) >> (rem * np.uint64(8))).astype(np.uint32)
            row = np.arange(len(g))
            words[row, at] = (words[row, at] & keep) | pad
            words[:, -2] = (ln * 8) >> 32
            words[:, -1] = (ln * 8) & 0xFFFFFFFF
            out[g] = _sha1_state(words)[0].byteswap()
    return out


def _ascii_words(texts: list[str]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """The words of ASCII texts without a Python call per text or word: (buffer of the words joined by
    one space, word starts, word ends, each word's text). On ASCII, ``\\w`` is [A-Za-z0-9_] and
    ``lower`` maps A-Z only, so one byte table lower-cases and blanks everything else."""
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    raw = np.frombuffer(" ".join(texts).encode("ascii").translate(_ASCII_TABLE), dtype=np.uint8)
    is_word = raw != _SPACE
    edge = np.diff(np.concatenate([[False], is_word, [False]]).view(np.int8))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    keep = is_word.copy()
    keep[ends[:-1]] = True  # one blank between consecutive words (it is the byte right after a word)
    new_pos = np.cumsum(keep, dtype=np.int64) - 1
    text_start = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])  # texts joined by one blank: no word spans two
    owner = np.searchsorted(text_start, starts, "right") - 1
    return raw[keep].tobytes(), new_pos[starts], new_pos[ends - 1] + 1, owner


def _unicode_words(texts: list[str]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_ascii_words` for any text: ``\\w+`` of the lower-cased text, by the regex."""
    find = _WORDS.findall
    words: list[str] = []
    counts = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        ws = find(t.lower())
        counts[i] = len(ws)
        words.extend(ws)
    buf = " ".join(words).encode("utf-8")
    spaces = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == _SPACE)
    if words and len(spaces) + 1 != len(words):  # \w+ holds no blank, no UTF-8 character holds byte 0x20
        raise AssertionError("minhash: word boundaries disagree with the regex (please report)")
    starts = np.concatenate([[0], spaces + 1]) if words else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([spaces, [len(buf)]]) if words else np.zeros(0, dtype=np.int64)
    return buf, starts, ends, np.repeat(np.arange(len(texts)), counts)


def text_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(buffer, uint8; word starts, word ends, int64; words per text, int64): the ``\\w+`` words of
    each lower-cased text, in text order, as byte ranges of one UTF-8 buffer in which the words of a
    text are joined by one blank (ASCII texts by byte tables, the others by the regex)."""
    ascii_ = np.fromiter((t.isascii() for t in texts), dtype=bool, count=len(texts))
    parts = []
    for sel, split in ((np.flatnonzero(ascii_), _ascii_words), (np.flatnonzero(~ascii_), _unicode_words)):
        if len(sel):
            buf, st, en, owner = split([texts[i] for i in sel])
            parts.append((buf, st, en, sel[owner]))
    if not parts:
        return np.zeros(0, dtype=np.uint8), *(np.zeros(0, dtype=np.int64),) * 2, np.zeros(len(texts), dtype=np.int64)
    shift = np.cumsum([0] + [len(p[0]) + 1 for p in parts[:-1]])
    buf = np.frombuffer(b" ".join(p[0] for p in parts), dtype=np.uint8)
    starts = np.concatenate([p[1] + s for p, s in zip(parts, shift)])
    ends = np.concatenate([p[2] + s for p, s in zip(parts, shift)])
    owner = np.concatenate([p[3] for p in parts])
    if len(parts) > 1:
        order = np.argsort(owner, kind="stable")
        starts, ends, owner = starts[order], ends[order], owner[order]
    return buf, starts, ends, np.bincount(owner, minlength=len(texts)).astype(np.int64)


def shingle_hashes(texts: list[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(``sha1_hash32`` of every word-``ngram`` shingle, uint32 [S]; offsets, int64 [len(texts) + 1]).

    Text i's shingles are ``[offsets[i], offsets[i + 1])``, one per word position (repeats kept: a
    minimum does not change), the same byte strings :func:`thresher.signals.dedup.word_shingles`
    gives: each a slice of :func:`text_words`' buffer from a word's start to a later word's end.
    """
    if ngram < 1:
        raise ValueError(f"minhash: ngram must be >= 1, got {ngram}")
    buf, w_start, w_end, counts = text_words(texts)
    per_text = np.where(counts >= ngram, counts - ngram + 1, counts > 0).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_text)]).astype(np.int64)
    total = int(offsets[-1])
    if not total:
        return np.zeros(0, dtype=np.uint32), offsets
    first_word = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], per_text)  # shingle index within its text
    first = np.repeat(first_word, per_text) + k
    last = first + np.repeat(np.minimum(counts, ngram), per_text) - 1
    return sha1_hash32(buf, w_start[first], w_end[last] - w_start[first]), offsets


def signatures_from_hashes(hv: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures, uint32 [len(offsets) - 1, len(a)]: per text, the minimum over its shingle
    hashes ``hv`` (already ``sha1_hash32``) of ``(a * fmix32(h) + b) mod 2^32``; 2^32 - 1 for a text
    without a shingle."""
    n, p = len(offsets) - 1, len(a)
    out = np.full((n, p), MAX_HASH, dtype=np.uint32)
    if not len(hv):
        return out
    hv = fmix32(np.asarray(hv, dtype=np.uint32))
    rows = np.flatnonzero(np.diff(offsets) > 0)
    starts = offsets[rows]  # the non-empty texts tile [0, len(hv))
    chunk = max(256, _PERM_ELEMS // p)
    a_col, b_col = a[:, None], b[:, None]
    for lo in range(0, len(hv), chunk):
        hi = min(lo + chunk, len(hv))
        i0 = int(np.searchsorted(starts, lo, "right")) - 1  # the text that holds shingle lo
        i1 = int(np.searchsorted(starts, hi, "left"))
        phv = a_col * hv[lo:hi]  # [p, hi - lo], uint32 arithmetic wraps: mod 2^32
        phv += b_col
        red = np.minimum.reduceat(phv, np.maximum(starts[i0:i1], lo) - lo, axis=1).T
        r = rows[i0:i1]
        out[r] = np.minimum(out[r], red)  # a text cut by a block edge gets the minimum of both parts
    return out


def _batches(texts: list[str], batch: int, chars: int = _BATCH_CHARS) -> list[tuple[int, int]]:
    """[lo, hi) ranges of at most ``batch`` texts and, unless one text alone is longer, ``chars`` characters."""
    out, lo, size = [], 0, 0
    for i, t in enumerate(texts):
        if i > lo and (i - lo >= batch or size + len(t) > chars):
            out.append((lo, i))
            lo, size = i, 0
        size += len(t)
    if lo < len(texts):
        out.append((lo, len(texts)))
    return out


def minhash_signatures(texts: list[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 1, batch: int = 4096,
                       show_progress: bool = False, desc: str = "minhash") -> tuple[np.ndarray, np.ndarray]:
    """(signatures, uint32 [n, num_perm]; has_shingle, bool [n]) of ``texts``, in batches of at most
    ``batch`` texts (and about 4M characters: bounded memory for long texts).

    Row i equals ``datasketch.MinHash(num_perm=num_perm, seed=seed)`` updated with
    ``word_shingles(texts[i], ngram)`` (its ``hashvalues``); a text without a word has no shingle
    and the empty signature (all 2^32 - 1).
    """
    if num_perm < 1:
        raise ValueError(f"minhash: num_perm must be >= 1, got {num_perm}")
    a, b = permutations(num_perm, seed)
    n = len(texts)
    sig = np.empty((n, num_perm), dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    with progress(total=n, desc=desc, disable=not show_progress, unit="ex") as bar:
        for lo, hi in _batches(texts, batch):
            hv, offsets = shingle_hashes(texts[lo:hi], ngram)
            sig[lo:hi] = signatures_from_hashes(hv, offsets, a, b)
            has[lo:hi] = np.diff(offsets) > 0
            bar.update(hi - lo)
    return sig, has
