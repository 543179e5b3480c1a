"""Dedup keys: exact hashes, MinHash-LSH near-duplicate clusters, semantic duplicate groups."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals.base import VECTORS, make_signal
from thresher.signals.dedup import (
    SemanticDedup,
    _lsh_index,
    exact_key,
    groups_from_pairs,
    minhash_clusters,
    normalise_for_dedup,
    semantic_groups,
    word_shingles,
)
from thresher.signals.minhash import minhash_signatures, sha1_hash32
from thresher.signals.minhash_lsh import lsh_bands


def chat(i: int, user: str, answer: str) -> dict:
    return {"id": f"ex{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "source": "hand", "meta": {}}


@pytest.fixture()
def store(tmp_path) -> SignalStore:
    return SignalStore(tmp_path / "store")


# --------------------------------------------------------------------------- groups


def test_groups_from_pairs_by_hand():
    ids, sizes = groups_from_pairs(6, np.array([4, 2, 0]), np.array([2, 5, 1]))
    assert ids.tolist() == [0, 0, 2, 3, 2, 2]       # {0, 1}, {2, 4, 5}, {3}: id = smallest position
    assert sizes.tolist() == [2, 2, 3, 1, 3, 3]
    ids, sizes = groups_from_pairs(3, np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert ids.tolist() == [0, 1, 2] and sizes.tolist() == [1, 1, 1]


# --------------------------------------------------------------------------- exact


def test_exact_keys_equal_for_whitespace_and_case_variants(store):
    pool = Pool.from_records([
        chat(0, "What is  the Capital of France?", "Paris."),
        chat(1, "  what is the capital\nof FRANCE?\t", "paris.  "),
        chat(2, "What is the capital of Spain?", "Madrid."),
        chat(3, "What is the capital of France?", "Lyon."),
    ])
    sig = make_signal("exact_dedup")
    run_signal(sig, pool, store, show_progress=False)
    keys = read_signal(sig, pool, store)["exact_key"]
    assert isinstance(keys[0], str) and len(keys[0]) == 64
    assert keys[0] == keys[1]
    assert len({keys[0], keys[2], keys[3]}) == 3
    assert normalise_for_dedup("  A \n\t b  C ") == "a b c"
    expected = hashlib.sha256(b"what is the capital of france?\x1eparis.").hexdigest()
    assert keys[0] == expected == exact_key(pool[1])
    split_a = chat(9, "a b", "c")
    split_b = chat(9, "a", "b c")
    assert exact_key(split_a) != exact_key(split_b)


# --------------------------------------------------------------------------- MinHash


VOCAB = [f"w{i:03d}" for i in range(400)]


def words(seed: int, n: int = 100) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def replaced(ws: list[str], positions: list[int]) -> list[str]:
    out = list(ws)
    for p in positions:
        out[p] = "changed" + str(p)
    return out


def test_word_shingles():
    assert word_shingles("A b, c d e f", 5) == [b"a b c d e", b"b c d e f"]
    assert word_shingles("Hello there", 5) == [b"hello there"]  # shorter than n: one shingle
    assert word_shingles("?!", 5) == []


def test_minhash_finds_planted_near_duplicates_not_distinct_texts(store):
    a = words(1)
    texts = [
        " ".join(a),                                        # 0
        " ".join(words(2)),                                 # 1 distinct
        " ".join(replaced(a, [50])),                        # 2 one word changed: Jaccard 91/101 = 0.90 -> dup of 0
        "  ".join(w.upper() for w in a) + "\n",             # 3 case and whitespace only -> dup of 0
        " ".join(replaced(a, [10, 30, 50, 70, 90])),        # 4 five words changed: 71/121 = 0.59 -> distinct
        "Hello there",                                      # 5 short text
        "hello   THERE!",                                   # 6 same words as 5
    ]
    ids, sizes, empty = minhash_clusters(texts, threshold=0.8, num_perm=128, ngram=5, seed=1)
    assert ids.tolist() == [0, 1, 0, 0, 4, 5, 5]
    assert sizes.tolist() == [3, 1, 3, 3, 1, 2, 2]
    assert empty == 0
    # the same pool through the signal and the store (answer side only)
    pool = Pool.from_records([chat(i, "Tell me a story.", t) for i, t in enumerate(texts)])
    sig = make_signal("minhash", text="answer")
    run_signal(sig, pool, store, show_progress=False)
    cols = read_signal(sig, pool, store)
    assert cols["minhash_cluster"].tolist() == [0, 1, 0, 0, 4, 5, 5]
    assert cols["minhash_cluster_size"].tolist() == [3, 1, 3, 3, 1, 2, 2]
    # a stricter threshold separates the one-word change (estimated Jaccard ~0.9)
    strict, _, _ = minhash_clusters(texts, threshold=0.99)
    assert strict.tolist() == [0, 1, 2, 0, 4, 5, 5]


def test_minhash_texts_without_words_stay_alone():
    pool = Pool.from_records([chat(0, "q", "!!!"), chat(1, "q", "???"), chat(2, "q", "words here")])
    sig = make_signal("minhash", text="answer")
    with pytest.warns(UserWarning, match="2 of 3 examples have no word"):
        cols = sig.compute_pool(pool, {})
    assert cols["minhash_cluster"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="threshold"):
        make_signal("minhash", threshold=1.5)


# --------------------------------------------------------------------------- MinHash: the vectorised path equals datasketch

# ASCII and not (case folding, final sigma, CJK, a no-break space, a NUL), texts of one to four
# words, a shingle longer than one SHA-1 block, no word at all
ODD_TEXTS = [
    "The quick brown fox jumps over the lazy dog, then naps.",
    "Straße ÉTÉ naïve ΟΔΟΣ ΣΑΣ 東京 タワー x_y 42",
    "snake_case CamelCase\x00nul\u00a0nbsp\ttab  end",
    "one", "two words", "three little words", "four words in all",
    " ".join(["supercalifragilisticexpialidocious" * 2] * 6),
    "", "?!  ...", "\n",
]


def test_sha1_hash32_equals_hashlib_across_block_boundaries():
    msgs = [bytes(range(97, 97 + (n % 26))) * (n // 26 + 1) for n in (0, 1, 54, 55, 56, 63, 64, 119, 120, 200)]
    msgs = [m[:n] for m, n in zip(msgs, (0, 1, 54, 55, 56, 63, 64, 119, 120, 200))]
    buf = np.frombuffer(b"".join(msgs), dtype=np.uint8)
    lengths = np.array([len(m) for m in msgs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    expected = [int.from_bytes(hashlib.sha1(m).digest()[:4], "little") for m in msgs]
    assert sha1_hash32(buf, starts, lengths).tolist() == expected


@pytest.mark.parametrize(("num_perm", "seed", "ngram"), [(128, 1, 5), (64, 7, 3)])
def test_minhash_signatures_equal_datasketch_hashvalues(num_perm, seed, ngram):
    datasketch = pytest.importorskip("datasketch")
    texts = ODD_TEXTS + [" ".join(words(s, 30 + 7 * s)) for s in range(5)]
    sig, has = minhash_signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed, batch=4)
    assert sig.dtype == np.uint32 and sig.shape == (len(texts), num_perm)
    for i, t in enumerate(texts):
        m = datasketch.MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(word_shingles(t, ngram))
        assert sig[i].tolist() == m.hashvalues.tolist(), repr(t)
        assert has[i] == (not m.is_empty()) == bool(word_shingles(t, ngram)), repr(t)
    assert has.tolist().count(False) == 3 and (sig[~has] == 2**32 - 1).all()


def test_lsh_bands_are_datasketchs_and_lowered_where_it_cannot_band():
    datasketch = pytest.importorskip("datasketch")
    for num_perm in (32, 128):
        for t in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0):
            lsh = _lsh_index(datasketch.MinHashLSH, t, num_perm)
            assert lsh_bands(t, num_perm) == (lsh.b, lsh.r), (t, num_perm)
    assert lsh_bands(0.8, 128) == (9, 13) and lsh_bands(0.99, 128) == (4, 32)  # 0.99: banded at 0.94
    with pytest.raises(ValueError, match="num_perm=2"):
        lsh_bands(0.9, 2)


def near_duplicate_corpus(n_sources: int = 60) -> list[str]:
    """Sources of 20 to 120 words, each followed by copies with words deleted, swapped or
    inserted at 1 to 20%, an exact copy in another case, and texts without words."""
    rng = random.Random(3)
    texts = []
    for s in range(n_sources):
        src = words(100 + s, rng.randrange(20, 120))
        texts.append(" ".join(src))
        for rate in (0.01, 0.01, 0.02, 0.05, 0.1, 0.2):
            w = list(src)
            for _ in range(max(1, round(rate * len(w)))):
                p = rng.randrange(len(w) - 1)
                op = rng.choice(("delete", "swap", "insert"))
                if op == "delete":
                    del w[p]
                elif op == "swap":
                    w[p], w[p + 1] = w[p + 1], w[p]
                else:
                    w.insert(p, "inserted")
            texts.append(" ".join(w))
        if s % 5 == 0:
            texts.append(" ".join(src).upper())
        if s % 20 == 0:
            texts.append("!?")
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.99])
def test_minhash_clusters_equal_the_datasketch_implementation(threshold):
    pytest.importorskip("datasketch")
    texts = near_duplicate_corpus()
    ids, sizes, empty = minhash_clusters(texts, threshold=threshold)
    ref_ids, ref_sizes, ref_empty = minhash_clusters(texts, threshold=threshold, backend="datasketch")
    assert ids.tolist() == ref_ids.tolist()
    assert sizes.tolist() == ref_sizes.tolist()
    assert empty == ref_empty == 3
    # not a trivial partition: families of near copies are linked (at 0.99 only the case-changed copies)
    assert len(set(ids.tolist())) < len(texts) - 10
    assert sizes.max() == {0.5: 7, 0.8: 5, 0.99: 2}[threshold]


def test_minhash_clusters_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'numpy' or 'datasketch'"):
        minhash_clusters(["a b c"], backend="rensa")


# --------------------------------------------------------------------------- semantic


def test_semantic_groups_by_hand():
    # 0 and 1 at cosine 0.99 in cluster 0; 2 and 3 identical but in different clusters -> not linked
    x = np.array([[1, 0], [0.99, np.sqrt(1 - 0.99 ** 2)], [0, 1], [0, 1]], dtype=np.float32)
    ids, sizes = semantic_groups(x, np.array([0, 0, 1, 0]), threshold=0.95)
    assert ids.tolist() == [0, 0, 2, 3] and sizes.tolist() == [2, 2, 1, 1]
    ids, _ = semantic_groups(x, np.array([0, 0, 0, 0]), threshold=0.995)
    assert ids.tolist() == [0, 1, 2, 2]
    # small blocks give the same groups as one block
    ids_b, _ = semantic_groups(x, np.array([0, 0, 0, 0]), threshold=0.95, block=1)
    assert ids_b.tolist() == [0, 0, 2, 2]


def test_semantic_dedup_signal_end_to_end(store):
    pool = Pool.from_records([
        chat(0, "How do I cook pasta?", "Boil salted water and add the pasta."),
        chat(1, "HOW do I cook   pasta?", "boil salted water and add the PASTA."),  # the encoder is uncased
        chat(2, "Why did the stock market fall today?", "Interest rates rose."),
        chat(3, "Write a haiku about the ocean.", "Waves fold into foam."),
    ])
    sig = SemanticDedup()
    run_signal(sig, pool, store, show_progress=False)
    cols = read_signal(sig, pool, store)
    assert cols["semdup_group"].tolist() == [0, 0, 2, 3]
    assert cols["semdup_group_size"].tolist() == [2, 2, 1, 1]
    assert [s.name for s in sig.requires()] == ["embedding", "kmeans"]
    # the clusters it read are in the store too, under the same encoder
    km = read_signal(sig.kmeans(), pool, store)
    assert km["cluster"].tolist() == [0, 0, 0, 0]  # n = 4 -> k = round(sqrt(2)) = 1
    emb = read_signal(sig.requires()[0], pool, store)[VECTORS]
    assert float(emb[0] @ emb[1]) > 0.999
