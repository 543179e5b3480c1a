"""Benchmark: static embeddings (``static``) against all-MiniLM-L6-v2 (``minilm``): speed and agreement.

The sample mixes GSM8K train problems (outside the GSM8K dev split), Alpaca and ShareGPT
examples from the shared data (seeded), embedded as the ``embedding`` signal embeds them
(``text="all"``: user + answer). Both encoders run in this process on one thread. Reported:

- speed: texts/s of each encoder on the sample (CPU seconds of this process, and wall),
  the static one from a fresh encoder (its word cache empty) and again warm; and on
  the 5,000 Alpaca texts (the Alpaca-length figure);
- pairwise agreement: Spearman of the cosines of ``--pairs`` random pairs under each
  encoder, and the mean overlap of each text's 10 nearest neighbours;
- selections made with each encoder and compared (overlap = |A & B| / k; chance = k / n):
  DEITA's representation filter (``repr_filter``, threshold 0.9, order = a seeded
  shuffle) at the same threshold and at the static threshold that rejects as many
  candidates as 0.9 does for MiniLM; task relevance top-k (``top_m_mean_cosine``, m = 5,
  to the GSM8K dev split's question + answer); k-means clusters (k = round(sqrt(n/2)),
  adjusted Rand index, with MiniLM-vs-MiniLM under another seed as the reference).

A TF-IDF reference (word unigrams, sublinear tf) shows what a bag of words alone agrees
with MiniLM; ``--variants`` also scores other distillation recipes against MiniLM.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false THRESHER_THREADS=1 \\
        python benchmarks/bench_static_embed.py --variants --json docs/results/static-embeddings.json

The first run distils the static matrix into ``$THRESHER_CACHE`` (~1-2 minutes; timed apart).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np


def sample_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, sources): ~45% GSM8K, ~45% Alpaca, ~10% ShareGPT (as many as the sample file has)."""
    from thresher.data.pool import load_pool
    from thresher.signals.embed import embed_text
    from thresher.tasks.gsm8k import gsm8k_pool, shared_data_dir

    root = shared_data_dir()
    alpaca, _ = load_pool(root / "alpaca" / "alpaca_5000.json", fmt="alpaca", on_error="skip")
    sharegpt, _ = load_pool(root / "sharegpt" / "dummy_conversation.json", fmt="sharegpt", on_error="skip")
    gsm = gsm8k_pool()  # the dev split (dev_size=200, seed=0) is left out
    rng = random.Random(f"bench-static-{seed}")
    n_share = min(len(sharegpt), n // 10)
    n_gsm = (n - n_share) // 2
    picks = [("gsm8k", r) for r in rng.sample(list(gsm), n_gsm)]
    picks += [("alpaca", r) for r in rng.sample(list(alpaca), n - n_share - n_gsm)]
    picks += [("sharegpt", r) for r in rng.sample(list(sharegpt), n_share)]
    rng.shuffle(picks)
    return [embed_text(r, "all") for _, r in picks], [s for s, _ in picks]


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def overlap(a, b, k: int) -> float:
    return len(set(a) & set(b)) / k


def knn_overlap(x: np.ndarray, y: np.ndarray, m: int = 10) -> float:
    def nn(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return np.argpartition(-s, m, axis=1)[:, :m]

    a, b = nn(x), nn(y)
    return float(np.mean([len(set(a[i]) & set(b[i])) / m for i in range(len(x))]))


def threshold_matching(x: np.ndarray, order, k: int, target_rejected: int) -> float:
    """The repr_filter threshold on ``x`` whose rejections come closest to ``target_rejected`` (bisection)."""
    from thresher.select.baselines import repr_filter

    lo, hi = 0.5, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        kept, scanned = repr_filter(x, order, k, mid)
        if scanned - len(kept) > target_rejected:
            lo = mid
        else:
            hi = mid
    return round(hi, 4)


def run(n: int, pairs: int, k: int, seed: int) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    from thresher.select.baselines import repr_filter
    from thresher.signals import static_embed
    from thresher.signals.embed import encode_texts, load_encoder
    from thresher.signals.geometry import (
        default_k,
        dev_item_text,
        kmeans_cluster,
        top_m_mean_cosine,
    )
    from thresher.tasks import get_task
    from thresher.threads import apply_threads

    apply_threads(1)
    texts, sources = sample_texts(n, seed)
    out: dict = {"n": len(texts), "sources": {s: sources.count(s) for s in sorted(set(sources))}, "seed": seed,
                 "static_identity": static_embed.static_identity()}

    _, c, w = timed(lambda: static_embed.load_matrix(show_progress=True))
    out["static_load_seconds"] = {"cpu": round(c, 1), "wall": round(w, 1)}
    fresh = static_embed.load_static(show_progress=False)
    (vs, _), cs, ws = timed(lambda: encode_texts(fresh, texts))
    _, cs2, ws2 = timed(lambda: encode_texts(fresh, texts))
    minilm = load_encoder("minilm")
    encode_texts(minilm, texts[:8])  # warm-up
    (vm, _), cm, wm = timed(lambda: encode_texts(minilm, texts, batch_size=64))
    from thresher.data.pool import load_pool
    from thresher.signals.embed import embed_text
    from thresher.tasks.gsm8k import shared_data_dir

    alpaca, _ = load_pool(shared_data_dir() / "alpaca" / "alpaca_5000.json", fmt="alpaca", on_error="skip")
    al_texts = [embed_text(r, "all") for r in alpaca]
    alpaca_fresh = static_embed.load_static(show_progress=False)
    _, ca, wa = timed(lambda: alpaca_fresh.mean_vectors(al_texts))
    _, ca2, _wa2 = timed(lambda: alpaca_fresh.mean_vectors(al_texts))
    _ids, offsets = alpaca_fresh.token_ids(al_texts)
    _, ct, _ = timed(lambda: static_embed.load_static(show_progress=False).token_ids(al_texts))
    out["speed"] = {
        "minilm_texts_per_s_cpu": round(len(texts) / cm, 1), "minilm_texts_per_s_wall": round(len(texts) / wm, 1),
        "static_texts_per_s_cpu_cold": round(len(texts) / cs), "static_texts_per_s_wall_cold": round(len(texts) / ws),
        "static_texts_per_s_cpu_warm": round(len(texts) / cs2), "static_texts_per_s_wall_warm": round(len(texts) / ws2),
        "ratio_cpu_cold": round(cm / cs, 1),
        "alpaca_texts": len(al_texts), "alpaca_mean_tokens": round(float(np.diff(offsets).mean()), 1),
        "alpaca_static_texts_per_s_cpu_cold": round(len(al_texts) / ca), "alpaca_static_texts_per_s_cpu_warm": round(len(al_texts) / ca2),
        "alpaca_static_texts_per_s_wall_cold": round(len(al_texts) / wa), "alpaca_tokenize_share_cold": round(ct / ca, 2),
        "alpaca_fast_path_share": round(float(np.mean([not alpaca_fresh.fast.unsafe(t) for t in al_texts])), 3),
    }

    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(texts), pairs), rng.integers(0, len(texts), pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    cos_m, cos_s = np.einsum("ij,ij->i", vm[i], vm[j]), np.einsum("ij,ij->i", vs[i], vs[j])
    src = np.array(sources)
    same = src[i] == src[j]
    out["pairwise"] = {
        "pairs": len(i), "spearman": round(float(spearmanr(cos_m, cos_s)[0]), 3),
        "spearman_same_source": round(float(spearmanr(cos_m[same], cos_s[same])[0]), 3),
        "spearman_cross_source": round(float(spearmanr(cos_m[~same], cos_s[~same])[0]), 3),
        **{f"spearman_within_{s}": round(float(spearmanr(cos_m[(src[i] == s) & same], cos_s[(src[i] == s) & same])[0]), 3)
           for s in ("gsm8k", "alpaca")},
        "mean_cos_minilm": round(float(cos_m.mean()), 3), "mean_cos_static": round(float(cos_s.mean()), 3),
        "knn10_overlap": round(knn_overlap(vm, vs), 3),
    }
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform(texts).astype(np.float32).toarray()
    cos_t = np.einsum("ij,ij->i", tfidf[i], tfidf[j])
    out["pairwise"]["tfidf_reference"] = {"spearman": round(float(spearmanr(cos_m, cos_t)[0]), 3),
                                          "knn10_overlap": round(knn_overlap(vm, tfidf), 3)}
    out["_vectors"] = (vm, vs, i, j, src)

    order = np.random.default_rng(seed + 1).permutation(len(texts))

    def rejected(kept, scanned) -> set:
        return set(order[:scanned].tolist()) - set(kept)

    def jaccard(a: set, b: set) -> float:
        return round(len(a & b) / len(a | b), 3) if a | b else 1.0

    out["deita_repr_filter"] = []
    for t in (0.9, 0.8):
        km, sm = repr_filter(vm, order, k, t)
        ks, ss = repr_filter(vs, order, k, t)
        t_match = threshold_matching(vs, order, k, sm - len(km))
        kq, sq = repr_filter(vs, order, k, t_match)
        out["deita_repr_filter"].append({
            "k": k, "threshold": t, "rejected_minilm": sm - len(km), "rejected_static": ss - len(ks),
            "overlap_same_threshold": round(overlap(km, ks, k), 3), "static_threshold_matched": t_match,
            "rejected_static_matched": sq - len(kq), "overlap_matched_threshold": round(overlap(km, kq, k), 3),
            "rejected_jaccard_matched": jaccard(rejected(km, sm), rejected(kq, sq)), "chance": round(k / len(texts), 3)})

    task = get_task("gsm8k")
    dev = [dev_item_text(it, "all") for it in task.dev_view().dev]
    rel_m = top_m_mean_cosine(vm, encode_texts(minilm, dev)[0], 5)
    rel_s = top_m_mean_cosine(vs, encode_texts(fresh, dev)[0], 5)
    top_m, top_s = np.argsort(-rel_m, kind="stable")[:k], np.argsort(-rel_s, kind="stable")[:k]
    out["task_relevance"] = {"k": k, "dev_items": len(dev), "overlap_topk": round(overlap(top_m, top_s, k), 3),
                             "spearman": round(float(spearmanr(rel_m, rel_s)[0]), 3),
                             "gsm8k_share_topk_minilm": round(float(np.mean(src[top_m] == "gsm8k")), 3),
                             "gsm8k_share_topk_static": round(float(np.mean(src[top_s] == "gsm8k")), 3),
                             "chance": round(k / len(texts), 3)}

    n_clusters = default_k(len(texts))
    lm0, _, backend = kmeans_cluster(vm, n_clusters, seed=0)
    lm1, _, _ = kmeans_cluster(vm, n_clusters, seed=1)
    ls0, _, _ = kmeans_cluster(vs, n_clusters, seed=0)
    ls1, _, _ = kmeans_cluster(vs, n_clusters, seed=1)
    out["kmeans"] = {"k": n_clusters, "backend": backend, "ari_static_vs_minilm": round(adjusted_rand_score(lm0, ls0), 3),
                     "ari_minilm_seed0_vs_seed1": round(adjusted_rand_score(lm0, lm1), 3),
                     "ari_static_seed0_vs_seed1": round(adjusted_rand_score(ls0, ls1), 3),
                     "ari_source_minilm": round(adjusted_rand_score(src, lm0), 3),
                     "ari_source_static": round(adjusted_rand_score(src, ls0), 3)}
    return out


def recipe_variants(texts: list[str], vm: np.ndarray, i: np.ndarray, j: np.ndarray, seed: int) -> dict:
    """Agreement with MiniLM of static matrices made by other recipes (same token outputs, PCA seed 0)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    from thresher.signals import static_embed as se
    from thresher.signals.geometry import default_k, kmeans_cluster

    tok = se.load_tokenizer()
    real = se.real_token_ids(tok)
    raw = se.encode_vocabulary(real, show_progress=True)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    w_real = se.zipf_sif_weights(len(real))
    inv = 1.0 / (real + 1.0)
    w_id = se.SIF_A / (se.SIF_A + inv / (1.0 / np.arange(2, tok.get_vocab_size() + 2)).sum())  # rank = vocabulary id
    p_raw, p_unit = se.pca_reduce(raw, se.DEFAULT_DIM)[0], se.pca_reduce(unit, se.DEFAULT_DIM)[0]
    cm = np.einsum("ij,ij->i", vm[i], vm[j])
    labels_m, _, _ = kmeans_cluster(vm, default_k(len(texts)), seed=seed)
    variants = {"recipe (pca256, w = rank among real tokens)": p_raw * w_real[:, None], "pca256, no weights": p_raw,
                "pca256, w = rank by vocabulary id": p_raw * w_id[:, None], "unit token outputs, pca256, w = real rank":
                p_unit * w_real[:, None], "pca128, w = real rank": se.pca_reduce(raw, 128)[0] * w_real[:, None]}
    out = {}
    for name, rows in variants.items():
        m = np.zeros((tok.get_vocab_size(), rows.shape[1]), dtype=np.float32)
        m[real] = rows
        vs = se.StaticEncoder(tok, m, {}).encode(texts, normalize_embeddings=True)
        labels_s, _, _ = kmeans_cluster(vs, default_k(len(texts)), seed=seed)
        out[name] = {"spearman": round(float(spearmanr(cm, np.einsum("ij,ij->i", vs[i], vs[j]))[0]), 3),
                     "knn10_overlap": round(knn_overlap(vm, vs), 3),
                     "kmeans_ari": round(adjusted_rand_score(labels_m, labels_s), 3)}
    return out


def print_table(r: dict) -> None:
    sp, pw, tr, km = r["speed"], r["pairwise"], r["task_relevance"], r["kmeans"]
    rows = [
        ("sample", f"{r['n']} texts {r['sources']}"),
        ("minilm texts/s (cpu / wall)", f"{sp['minilm_texts_per_s_cpu']} / {sp['minilm_texts_per_s_wall']}"),
        ("static texts/s cold (cpu / wall)", f"{sp['static_texts_per_s_cpu_cold']} / {sp['static_texts_per_s_wall_cold']}"),
        ("static texts/s warm (cpu / wall)", f"{sp['static_texts_per_s_cpu_warm']} / {sp['static_texts_per_s_wall_warm']}"),
        ("speed ratio static/minilm (cpu, cold)", f"{sp['ratio_cpu_cold']}x"),
        ("alpaca-5000 static texts/s cpu (cold / warm)", (f"{sp['alpaca_static_texts_per_s_cpu_cold']} / "
                                                         f"{sp['alpaca_static_texts_per_s_cpu_warm']} "
                                                         f"({sp['alpaca_mean_tokens']} tokens/text, tokenising "
                                                         f"{sp['alpaca_tokenize_share_cold']:.0%} of the time)")),
        ("pairwise cosine Spearman (all / same src / cross src)", (f"{pw['spearman']} / {pw['spearman_same_source']} / "
                                                                  f"{pw['spearman_cross_source']}")),
        ("  within gsm8k / within alpaca", f"{pw['spearman_within_gsm8k']} / {pw['spearman_within_alpaca']}"),
        ("mean cosine minilm / static", f"{pw['mean_cos_minilm']} / {pw['mean_cos_static']}"),
        ("10-NN overlap", f"{pw['knn10_overlap']}"),
        ("  TF-IDF reference: Spearman / 10-NN overlap", (f"{pw['tfidf_reference']['spearman']} / "
                                                          f"{pw['tfidf_reference']['knn10_overlap']}")),
        *[row for de in r["deita_repr_filter"] for row in (
            (f"DEITA repr filter k={de['k']}: overlap at {de['threshold']}", (
                f"{de['overlap_same_threshold']} (rejected: minilm {de['rejected_minilm']}, static {de['rejected_static']})")),
            (f"  at static threshold {de['static_threshold_matched']}", (
                f"{de['overlap_matched_threshold']} (rejected {de['rejected_static_matched']}, Jaccard of the rejected "
                f"{de['rejected_jaccard_matched']}; chance overlap {de['chance']})")))],
        (f"task relevance top-{tr['k']} overlap", (f"{tr['overlap_topk']} (Spearman {tr['spearman']}; gsm8k share "
                                                  f"{tr['gsm8k_share_topk_minilm']} / {tr['gsm8k_share_topk_static']})")),
        (f"k-means ARI static vs minilm (k={km['k']})", (f"{km['ari_static_vs_minilm']} (minilm seed 0 vs 1: "
                                                        f"{km['ari_minilm_seed0_vs_seed1']}; static: {km['ari_static_seed0_vs_seed1']})")),
        ("  ARI with the source label minilm / static", f"{km['ari_source_minilm']} / {km['ari_source_static']}"),
    ]
    for name, v in r.get("recipe_variants", {}).items():
        rows.append((f"variant: {name}", f"Spearman {v['spearman']}, 10-NN {v['knn10_overlap']}, ARI {v['kmeans_ari']}"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="texts in the sample")
    ap.add_argument("--pairs", type=int, default=20000, help="random pairs for the cosine Spearman")
    ap.add_argument("--k", type=int, default=400, help="selection size for the overlaps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", action="store_true", help="also score other distillation recipes (+1-2 minutes)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    r = run(args.n, args.pairs, args.k, args.seed)
    vm, _, i, j, _ = r.pop("_vectors")
    if args.variants:
        r["recipe_variants"] = recipe_variants(sample_texts(args.n, args.seed)[0], vm, i, j, args.seed)
    print_table(r)
    if args.json:
        from thresher.data.io import atomic_write_json

        atomic_write_json(args.json, r, indent=1)


if __name__ == "__main__":
    main()
