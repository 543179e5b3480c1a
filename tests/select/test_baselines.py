"""The comparison baselines on hand cases and small real stores."""
from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import run_signal
from thresher.select.base import SignalView, make_selector
from thresher.select.baselines import hashed_ngrams, repr_filter
from thresher.select.dsir_features import (
    PoolNgrams,
    _hashed_ngrams_reference,
    _shift,
    _word_crcs,
    hashed_ngram_batch,
)
from thresher.select.quality import minmax, quality_source, rank_normalise
from thresher.signals.base import make_signal


def test_rank_and_minmax_normalisation():
    v = np.array([3.0, 1.0, np.nan, 3.0, 2.0])
    assert np.allclose(rank_normalise(v), [0.8333333, 0.0, np.nan, 0.8333333, 0.3333333], equal_nan=True)
    assert np.allclose(minmax(v), [1.0, 0.0, np.nan, 1.0, 0.5], equal_nan=True)
    assert np.allclose(rank_normalise(np.array([2.0, 2.0])), [0.5, 0.5])
    assert np.allclose(minmax(np.array([4.0, 4.0])), [0.0, 0.0])


def test_quality_specs():
    assert quality_source("judge").column == "quality_norm"
    q = quality_source("reward:some/reward-model")
    assert (q.signal.name, q.column, q.normalise) == ("reward", "reward_norm", "as_is")
    q = quality_source("loss:low", signal_params={"model": "micro", "warmup_examples": 10})
    assert (q.signal.name, q.column, q.direction) == ("lm", "loss", "low")
    with pytest.raises(ValueError, match="direction"):
        quality_source("loss:sideways")
    with pytest.raises(ValueError, match="unknown signal"):
        quality_source("nonsense")


def test_repr_filter_is_the_sequential_rule():
    ang = np.deg2rad([0, 10, 50, 55, 120, 121, 200])
    emb = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    # cos(10 deg)=0.985, cos(5 deg)=0.996, cos(1 deg)=0.9998: with threshold 0.9 the 2nd, 4th and 6th are redundant
    kept, scanned = repr_filter(emb, list(range(7)), k=10, threshold=0.9, block=3)
    assert kept == [0, 2, 4, 6] and scanned == 7
    kept, scanned = repr_filter(emb, list(range(7)), k=2, threshold=0.9, block=2)
    assert kept == [0, 2] and scanned == 3


def test_repr_filter_blocks_equal_the_one_by_one_rule():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 8))
    x = np.concatenate([base, base[:60] + 0.05 * rng.standard_normal((60, 8))])  # 60 near-copies
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(len(emb))

    def one_by_one(k, threshold):
        kept = []
        for pos, i in enumerate(order):
            if not kept or float((emb[kept] @ emb[i]).max()) < threshold:
                kept.append(int(i))
                if len(kept) == k:
                    return kept, pos + 1
        return kept, len(order)

    for k, threshold in ((200, 0.9), (1000, 0.9), (50, 0.6)):
        expected = one_by_one(k, threshold)
        assert 0 < len(expected[0]) <= k
        for block in (1, 7, 256):
            assert repr_filter(emb, order, k, threshold, block=block) == expected, (k, threshold, block)
    kept, scanned = repr_filter(emb, order, 1000, 0.9)
    assert scanned == len(emb) and len(kept) < len(emb)  # near-copies were rejected


def test_hashed_ngrams_are_stable_and_count_bigrams():
    a = hashed_ngrams("Ann has 3 pens", 1000, 2)
    assert len(a) == 4 + 3 and (a == hashed_ngrams("ann HAS 3 pens!", 1000, 2)).all()
    assert a.tolist() == [zlib.crc32(g.encode()) % 1000 for g in ("ann", "has", "3", "pens", "ann has", "has 3", "3 pens")]


# Texts the batched featuriser must hash exactly like the per-gram reference: empty, no words,
# one word, words of 1..4-byte UTF-8 characters, Greek final sigma and Turkish dotted I (whose
# lower-casing changes length), combining marks, non-ASCII digits and letters, underscores,
# NUL and newlines between words, words over 64 bytes (hashed by zlib), lone surrogates.
HAND_TEXTS = [
    "", "   ", "!?", "one", "Ann has 3 pens", "ann HAS 3 pens!", "a b", "a b c", "x\ny\n\nz",
    "ΟΔΟΣ ΣΙΣΥΦΟΣ σς Σ", "İstanbul ĞÜŞ İİ", "中文 字符,测试。", "😀 emoji x😀y 𝔘𝔫𝔦", "cafe\u0301 naïve Ⅻ ²3 ٣٤",
    "snake_case __init__ _", "a\x00b c\td", "x" * 70 + " " + "é" * 40 + " " + "中" * 30 + " y", "word " * 50,
    "lone \ud800 surrogate \udfff x", "ǅungla ﬃ ß ẞ",
]


def fuzz_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ0189 _-.,\n\téßΣσςİı中文😀\u0301²٣Ⅻ\x00"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(count)]


def test_crc32_combine_rule_matches_zlib():
    """crc32(a + b) from crc32(a), crc32(b) and len(b) in bytes, and the vectorised word CRCs."""
    rng = random.Random(1)
    for _ in range(500):
        a, b = ("".join(rng.choice("ab Z9éΣ中😀\n") for _ in range(rng.randint(0, 80))).encode() for _ in range(2))
        got = _shift(np.array([zlib.crc32(a)], np.uint32), np.array([len(b)]))[0] ^ np.uint32(zlib.crc32(b))
        assert int(got) == zlib.crc32(a + b), (a, b)
    words = [bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 3, 4, 7, 8, 9, 63, 64, 65, 200]))) for _ in range(300)]
    buf = np.frombuffer(b"".join(words), np.uint8)
    lengths = np.array([len(w) for w in words])
    crcs = _word_crcs(buf, np.cumsum(lengths) - lengths, lengths)
    assert crcs.tolist() == [zlib.crc32(w) for w in words]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_batched_hashed_ngrams_equal_the_per_gram_reference(n):
    texts = HAND_TEXTS + fuzz_texts(200, seed=n)
    for buckets in (16, 10_000, 2**31 + 11, 2**40):
        refs = [_hashed_ngrams_reference(t, buckets, n) for t in texts]
        ids, counts = hashed_ngram_batch(texts, buckets, n)
        assert counts.tolist() == [len(r) for r in refs]
        assert np.array_equal(ids, np.concatenate(refs)), buckets
        for t, r in zip(HAND_TEXTS, refs):
            assert hashed_ngrams(t, buckets, n).dtype == np.int64 and np.array_equal(hashed_ngrams(t, buckets, n), r), t
    assert len(hashed_ngrams("", 100, n)) == 0 and len(hashed_ngrams("one", 100, n)) == 1
    assert len(hashed_ngrams("a b c d", 100, n)) == sum(max(4 - m + 1, 0) for m in range(1, n + 1))
    padded, counts = hashed_ngram_batch(["a b", "", "c"], 100, 2, lead=100, dtype=np.uint16)
    assert padded.dtype == np.uint16 and counts.tolist() == [3, 0, 1]
    assert padded.tolist() == [100, *hashed_ngrams("a b", 100, 2).tolist(), 100, 100, *hashed_ngrams("c", 100, 2).tolist()]


def test_pool_ngrams_sums_are_numpys_per_example_sums_bit_for_bit():
    texts = HAND_TEXTS + fuzz_texts(300, seed=7) + ["the cat sat on the mat " * 400]  # one example of 4,799 n-grams
    feats = PoolNgrams(iter(texts), 997, 2, batch=37)  # several batches, the last one short
    refs = [_hashed_ngrams_reference(t, 997, 2) for t in texts]
    assert len(feats) == len(texts) and feats.counts.tolist() == [len(r) for r in refs]
    assert np.array_equal(feats.raw, np.bincount(np.concatenate(refs), minlength=997))
    values = np.random.default_rng(0).standard_normal(997) * np.random.default_rng(1).exponential(3.0, 997)
    sums = feats.sums(values)
    assert sums.tolist() == [float(values[r].sum()) for r in refs]  # exact, not approximately equal
    assert sums[0] == 0.0 and feats.counts[0] == 0
    with pytest.raises(ValueError, match="one entry per bucket"):
        feats.sums(values[:-1])
    assert len(PoolNgrams([], 997, 2)) == 0 and PoolNgrams([], 997, 2).sums(values).shape == (0,)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 arith-like and 40 off-topic examples with embeddings + k-means in a store."""
    recs = []
    for i in range(40):
        recs.append({"instruction": f"Bob has {i % 9 + 1} cups, gets {i % 7 + 1}. How many now?",
                     "output": f"{i % 9 + 1}+{i % 7 + 1}={i % 9 + i % 7 + 2}. The answer is {i % 9 + i % 7 + 2}."})
        recs.append({"instruction": f"Write a short poem about the colour number {i}.", "output": f"Colour {i} is bright and calm, a quiet song."})
    pool = Pool.from_records(recs)
    store = SignalStore(tmp_path_factory.mktemp("store"))
    for name, params in (("embedding", {}), ("kmeans", {"k": 4}), ("text", {}), ("reasoning_steps", {})):
        run_signal(make_signal(name, **params), pool, store, show_progress=False)
    return pool, store


def test_dsir_prefers_examples_like_the_task_dev_split(mixed):
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    pool, store = mixed
    task = ArithTestbed(ArithConfig(pool_size=50, dev_size=30, test_size=30)).task()
    sel = make_selector("dsir").select(pool, SignalView(pool, store), 40, task=task, seed=0)
    arith_like = sum("How many now" in pool.get(i)["messages"][0]["content"] for i in sel.ids)
    assert arith_like >= 38
    assert make_selector("dsir").select(pool, SignalView(pool, store), 40, task=task, seed=0).ids == sel.ids


def reference_dsir_weights(pool, task, weight, text="all") -> np.ndarray:
    """DSIRSelector's log weights as computed before the batched featuriser: one reference
    hashed_ngrams call and one numpy sum/mean per example."""
    from thresher.data.pool import assistant_text, record_text, user_text

    p = make_selector("dsir", weight=weight, text=text).params
    side = {"user": user_text, "answer": assistant_text, "all": record_text}[text]
    feats = [_hashed_ngrams_reference(side(r), p.buckets, p.ngrams) for r in pool]
    raw = np.bincount(np.concatenate(feats), minlength=p.buckets).astype(np.float64)
    tgt_texts = [f"{it.question}\n\n{it.target or it.answer}" if text == "all"
                 else (it.question if text == "user" else (it.target or it.answer)) for it in task.dev]
    tgt = np.bincount(np.concatenate([_hashed_ngrams_reference(t, p.buckets, p.ngrams) for t in tgt_texts]),
                      minlength=p.buckets).astype(np.float64)
    p_raw = (raw + 1.0) / (raw.sum() + p.buckets)
    log_ratio = np.log((tgt + p.prior_mass * p_raw) / (tgt.sum() + p.prior_mass)) - np.log(p_raw)
    if weight == "sum":
        return np.array([float(log_ratio[f].sum()) for f in feats])
    scale = max(float(np.median([len(f) for f in feats])), 1.0)
    return np.array([float(log_ratio[f].mean()) if len(f) else 0.0 for f in feats]) * scale


def assert_dsir_matches_reference(pool, task, k, text="all"):
    for weight in ("mean", "sum"):
        logw = reference_dsir_weights(pool, task, weight, text)
        for seed in (0, 3):
            ids, info = make_selector("dsir", weight=weight, text=text).run(pool, None, k, task=task, seed=seed)
            order = np.argsort(-(logw + np.random.default_rng(seed).gumbel(size=len(logw))), kind="stable")[:k]
            assert ids == [pool.ids[i] for i in order], (weight, seed)
            assert info["log_weight_mean"] == float(logw.mean())  # the weights agree to the bit, not just the order


def test_dsir_selects_exactly_what_the_per_gram_reference_did(arith_small):
    arith_pool, arith_task, _ = arith_small
    recs = [{"instruction": "?", "output": f"!{'!' * i}"} for i in range(3)]  # no n-grams: weight 0
    recs += [{"instruction": t, "output": f"Réponse {i} — ΟΔΟΣ"} for i, t in enumerate(HAND_TEXTS + fuzz_texts(60))
             if t.strip() and "\ud800" not in t]  # a pool holds no lone surrogates
    recs += [{"instruction": r["messages"][0]["content"], "output": r["messages"][1]["content"]} for r in list(arith_pool)[:100]]
    assert_dsir_matches_reference(Pool.from_records([{"id": f"r{i}", **r} for i, r in enumerate(recs)]), arith_task.dev_view(), 60)
    for text in ("all", "user", "answer"):
        assert_dsir_matches_reference(arith_pool, arith_task.dev_view(), 120, text=text)


def test_dsir_matches_the_reference_on_real_alpaca_and_gsm8k(shared_data):
    from thresher.data.pool import load_pool
    from thresher.tasks import get_task

    pool, _ = load_pool(shared_data / "alpaca" / "alpaca_5000.json", on_error="skip")
    assert len(pool) > 4000
    assert_dsir_matches_reference(pool, get_task("gsm8k").dev_view(), 1500)


def test_car_takes_the_best_of_every_cluster_then_global_quality(mixed):
    pool, store = mixed
    view = SignalView(pool, store)
    sel = make_selector("car", quality="chars_answer", k_clusters=4).select(pool, view, 6)
    clusters = view.signal(make_signal("kmeans", k=4))["cluster"]
    q = view.column("chars_answer")
    best_per_cluster = {c: max(np.nonzero(clusters == c)[0], key=lambda i: (q[i], -i)) for c in range(4)}
    first4 = pool.positions(sel.ids[:4])
    assert sorted(first4) == sorted(best_per_cluster.values())
    rest = [i for i in np.argsort(-q, kind="stable") if i not in first4][:2]
    assert pool.positions(sel.ids[4:]) == [int(i) for i in rest]
    assert sel.diagnostics["clusters"] == 4


def test_deita_skips_near_copies(mixed):
    pool, store = mixed
    view = SignalView(pool, store)
    sel = make_selector("deita", quality="chars_answer", complexity="reasoning_steps", threshold=0.9).select(pool, view, 10)
    emb = view.vectors("embedding")
    pos = pool.positions(sel.ids)
    sims = emb[pos] @ emb[pos].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.9
    assert sel.diagnostics["rejected_as_redundant"] > 0


def test_alpagasus_and_superfiltering_read_their_signals(micro_scored):
    pool, _, _, store, lm, _ = micro_scored
    view = SignalView(pool, store)
    sp = {"scorer": "micro", "scorer_warmup": 120, "scorer_warmup_steps": 40}
    sel = make_selector("alpagasus", quality="loss:low", **sp).select(pool, view, 30)
    loss = view.column("loss", **lm.params.model_dump())
    assert pool.positions(sel.ids) == [int(i) for i in np.argsort(loss, kind="stable")[:30]]
    sf = make_selector("superfiltering", scorer_warmup=60, scorer_warmup_steps=20)
    assert sf.required_signals()[0].params.model == "micro-tiny"
    run_signal(sf.required_signals()[0], pool, store, show_progress=False)
    sel = sf.select(pool, view, 20)
    tiny_ifd = view.column("ifd", model="micro-tiny", warmup_examples=60, warmup_steps=20)
    kept = tiny_ifd[pool.positions(sel.ids)]
    assert (kept < 1).all() and list(kept) == sorted(kept, reverse=True)


def test_default_scorer_is_micro_on_arith_and_a_real_lm_elsewhere(micro_scored):
    """scorer="auto" (the default of every scorer-using baseline): the arith testbed keeps its micro
    scorer (the very signals already stored), any other pool gets SmolLM2 (small); the selection says which."""
    pool, _, _, store, lm, text = micro_scored
    alpaca = Pool.from_records([{"id": f"r{i}", "messages": [{"role": "user", "content": f"Q{i}?"},
                                                            {"role": "assistant", "content": f"A{i}."}]} for i in range(3)],
                               name="alpaca", source="alpaca")
    sp = {"scorer_warmup": 120, "scorer_warmup_steps": 40}
    for method, params in (("ifd", sp), ("alpagasus", {**sp, "quality": "loss:low"}), ("thtb", sp),
                           ("topk", {**sp, "signal": "tokens_answer"})):
        sel = make_selector(method, **params)
        assert sel.params.scorer == "auto"
        on_arith = {s.key(pool) for s in sel.required_signals() if s.name in ("lm", "text")}
        assert on_arith and on_arith <= {lm.key(pool), text.key(pool)}, method
        elsewhere = {s.name: s.key(alpaca) for s in sel.required_signals() if s.name in ("lm", "text")}
        assert elsewhere, method
        if "lm" in elsewhere:  # the scorer: a real LM
            assert elsewhere["lm"].params["model"] == "small" and elsewhere["lm"].model.startswith("small+warm120"), method
        if "text" in elsewhere:  # token counts keep the text signal's own tokenizer (stored text signals stay valid)
            assert elsewhere["text"] == make_signal("text").key(alpaca), method
    # a weak scorer stays the method's own
    assert make_selector("superfiltering").required_signals()[0].key(alpaca).params["model"] == "micro-tiny"
    # api.select names the scorer the stored signals were computed with
    from thresher.api import select

    got = select(pool, "ifd", 40, store=store.root, **sp)
    assert got.diagnostics["scorer"] == ("scorer: micro (~0.11M-parameter character model, trained here), "
                                         "warmed up on 120 pool examples x 40 steps")
    assert got.ids == make_selector("ifd", scorer="micro", **sp).select(pool, SignalView(pool, store), 40).ids


def test_dsir_refuses_an_empty_dev_split(arith_small):
    pool, task, _ = arith_small
    with pytest.raises(ValueError, match="empty dev split"):
        make_selector("dsir").run(pool, None, 10, task=task.with_dev([]).dev_view(), seed=0)
