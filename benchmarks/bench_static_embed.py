"""Benchmark: static embeddings (``static``) against all-MiniLM-L6-v2 (``minilm``): speed and agreement.

The sample mixes GSM8K train problems (outside the GSM8K dev split), Alpaca and ShareGPT
examples from the shared data (seeded), embedded as the ``embedding`` signal embeds them
(``text="all"``: user + answer). Both encoders run in this process on one thread. Reported:

- speed: texts/s of each encoder on the sample (CPU seconds of this process, and wall),
  the static one from a fresh encoder (its word cache empty) and again warm; and on
  the 5,000 Alpaca texts (the Alpaca-length figure);
- cosine scale: mean, sd and quantiles of the cosines of ``--pairs`` random pairs under
  each encoder, and the median cosine of a text to its nearest neighbour;
- pairwise agreement: Spearman of those random-pair cosines, and the mean overlap of
  each text's 10 nearest neighbours;
- selections made with each encoder and compared (overlap = |A & B| / k; chance = k / n):
  DEITA's representation filter (``repr_filter``, threshold 0.9, order = a seeded
  shuffle) at the same threshold and at the static threshold that rejects as many
  candidates as 0.9 does for MiniLM, with the Jaccard of the two rejected sets; task relevance top-k (``top_m_mean_cosine``, m = 5,
  to the GSM8K dev split's question + answer); k-means clusters (k = round(sqrt(n/2)),
  adjusted Rand index, with MiniLM-vs-MiniLM under another seed as the reference);
- ``semantic_dedup``'s rule at 0.95 (pairs with cosine >= 0.95 inside one k-means
  cluster of the same encoder) on the sample plus ``--planted`` near duplicates of sample
  texts (GSM8K problems with every number + 1; other texts with their last sentence
  dropped, or a prefix when they have fewer than 3 sentences): pairs each encoder links,
  planted pairs found, Jaccard of the linked sets, and the static threshold that links as
  many pairs as 0.95 does for MiniLM.

A TF-IDF reference (word unigrams, sublinear tf) shows what a bag of words alone agrees
with MiniLM; ``--variants`` also scores other distillation recipes against MiniLM (recipe 1,
without the common-direction removal, among them) on the same figures.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false THRESHER_THREADS=1 THRESHER_SHARED_DATA=/work/shared/data \\
        python benchmarks/bench_static_embed.py --variants --json docs/results/static-embeddings.json

The first run distils the static matrix into ``$THRESHER_CACHE`` (~1-2 minutes; timed apart).
"""
from __future__ import annotations

import argparse
import random
import re
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


def nearest_cosine(x: np.ndarray) -> np.ndarray:
    """Each unit row's cosine to its nearest other row."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return s.max(axis=1)


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


def plant_near_duplicates(texts: list[str], sources: list[str], n: int, seed: int) -> list[tuple[int, str]]:
    """(sample position, near-duplicate text) for n seeded texts: half GSM8K with every number + 1,
    half others with the last sentence dropped (or "Please answer: " prefixed when under 3 sentences)."""
    rng = random.Random(f"bench-static-plant-{seed}")
    gsm = [i for i, s in enumerate(sources) if s == "gsm8k"]
    other = [i for i, s in enumerate(sources) if s != "gsm8k"]
    out = [(i, re.sub(r"\d+", lambda m: str(int(m.group()) + 1), texts[i])) for i in rng.sample(gsm, n // 2)]
    for i in rng.sample(other, n - n // 2):
        sents = re.split(r"(?<=[.!?])\s+", texts[i].strip())
        out.append((i, " ".join(sents[:-1]) if len(sents) > 2 else "Please answer: " + texts[i]))
    return out


def cluster_pair_cosines(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every pair i < j of unit rows in the same cluster (semantic_dedup's candidates)."""
    iu, ju = np.triu_indices(len(x), 1)
    same = labels[iu] == labels[ju]
    iu, ju = iu[same], ju[same]
    return iu, ju, (x @ x.T)[iu, ju]


def linked(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], t: float) -> set:
    i, j, c = pairs
    hit = c >= t
    return set(zip(i[hit].tolist(), j[hit].tolist()))


def jaccard(a: set, b: set) -> float:
    return round(len(a & b) / len(a | b), 3) if a | b else 1.0


def dedup_figures(full_m: np.ndarray, full_s: np.ndarray, planted: set, threshold: float = 0.95) -> dict:
    """semantic_dedup's linking rule on both encoders' vectors of the sample + planted copies."""
    from thresher.signals.geometry import default_k, kmeans_cluster

    k = default_k(len(full_m))
    pm = cluster_pair_cosines(full_m, kmeans_cluster(full_m, k, seed=0)[0])
    ps = cluster_pair_cosines(full_s, kmeans_cluster(full_s, k, seed=0)[0])
    lm, ls = linked(pm, threshold), linked(ps, threshold)
    cs = np.sort(ps[2])[::-1]
    t_match = float(cs[len(lm) - 1]) if 0 < len(lm) <= len(cs) else threshold
    lq = linked(ps, t_match)
    return {"threshold": threshold, "k": k, "planted": len(planted), "pairs_minilm": len(lm), "pairs_static": len(ls),
            "planted_found_minilm": len(lm & planted), "planted_found_static": len(ls & planted),
            "jaccard_linked": jaccard(lm, ls), "static_threshold_matched": round(t_match, 4),
            "pairs_static_matched": len(lq), "jaccard_linked_matched": jaccard(lm, lq)}


def run(n: int, pairs: int, k: int, seed: int, n_planted: int) -> dict:
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
    out["cosine_scale"] = {name: {"mean": round(float(c.mean()), 3), "sd": round(float(c.std()), 3),
                                  **{f"q{int(q * 100)}": round(float(np.quantile(c, q)), 3) for q in (0.5, 0.9, 0.99)},
                                  "median_nn1": round(float(np.median(nearest_cosine(v))), 3)}
                           for name, c, v in (("minilm", cos_m, vm), ("static", cos_s, vs))}
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform(texts).astype(np.float32).toarray()
    cos_t = np.einsum("ij,ij->i", tfidf[i], tfidf[j])
    out["pairwise"]["tfidf_reference"] = {"spearman": round(float(spearmanr(cos_m, cos_t)[0]), 3),
                                          "knn10_overlap": round(knn_overlap(vm, tfidf), 3)}

    order = np.random.default_rng(seed + 1).permutation(len(texts))

    def rejected(kept, scanned) -> set:
        return set(order[:scanned].tolist()) - set(kept)

    out["deita_repr_filter"] = []
    for t in (0.9, 0.8):
        km, sm = repr_filter(vm, order, k, t)
        ks, ss = repr_filter(vs, order, k, t)
        t_match = threshold_matching(vs, order, k, sm - len(km))
        kq, sq = repr_filter(vs, order, k, t_match)
        out["deita_repr_filter"].append({
            "k": k, "threshold": t, "rejected_minilm": sm - len(km), "rejected_static": ss - len(ks),
            "overlap_same_threshold": round(overlap(km, ks, k), 3),
            "rejected_jaccard_same_threshold": jaccard(rejected(km, sm), rejected(ks, ss)), "static_threshold_matched": t_match,
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

    plants = plant_near_duplicates(texts, sources, n_planted, seed)
    planted_set = {(int(p), len(texts) + q) for q, (p, _) in enumerate(plants)}
    full_m = np.vstack([vm, encode_texts(minilm, [t for _, t in plants])[0]])
    full_s = np.vstack([vs, encode_texts(fresh, [t for _, t in plants])[0]])
    out["semantic_dedup"] = dedup_figures(full_m, full_s, planted_set)
    km9, sm9 = repr_filter(vm, order, k, 0.9)
    out["_context"] = {"texts": texts, "vm": vm, "i": i, "j": j, "order": order, "k": k, "dev": dev,
                       "rejected_minilm": rejected(km9, sm9), "top_minilm": set(top_m.tolist()), "labels_minilm": lm0,
                       "planted_texts": [t for _, t in plants], "full_m": full_m, "planted": planted_set,
                       "static_matrix": fresh.matrix}
    return out


def recipe_variants(ctx: dict) -> dict:
    """The figures of other distillation recipes (same token outputs, PCA seed 0), recipe 1 among them."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    from thresher.select.baselines import repr_filter
    from thresher.signals import static_embed as se
    from thresher.signals.geometry import default_k, kmeans_cluster, top_m_mean_cosine

    texts, vm, i, j, order, k = ctx["texts"], ctx["vm"], ctx["i"], ctx["j"], ctx["order"], ctx["k"]
    tok = se.load_tokenizer()
    real = se.real_token_ids(tok)
    raw = se.encode_vocabulary(real, show_progress=True)
    w = se.zipf_sif_weights(len(real))
    usage = se.usage_prior(tok, real)
    inv = 1.0 / np.arange(2, len(real) + 2)
    reduced = se.pca_reduce(raw, se.DEFAULT_DIM)[0]
    weighted = reduced * w[:, None]

    def top_pcs_removed(x: np.ndarray, n_pcs: int) -> np.ndarray:
        vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2][:n_pcs]
        return x - (x @ vt.T) @ vt

    recipe2 = se.remove_common_direction(weighted, usage)[0]
    variants = {
        "recipe 2 (PCA 256, SIF w, usage-prior common direction projected out)": recipe2,
        "recipe 1 (PCA 256, SIF w, nothing removed)": weighted,
        "usage-prior mean subtracted instead of projected out": weighted - usage @ weighted,
        "direction from step 3's id-order Zipf p instead": se.remove_common_direction(weighted, inv / inv.sum())[0],
        "all-but-the-top: top 2 PCs of the weighted rows removed": top_pcs_removed(weighted, 2),
        "recipe 2 + top 2 PCs removed": top_pcs_removed(recipe2, 2),
        "no SIF weights, usage-prior direction projected out": se.remove_common_direction(reduced, usage)[0],
    }
    cm = np.einsum("ij,ij->i", vm[i], vm[j])
    vdev = ctx["dev"]
    out = {}
    for name, rows in variants.items():
        m = np.zeros((tok.get_vocab_size(), rows.shape[1]), dtype=np.float32)
        m[real] = rows
        enc = se.StaticEncoder(tok, m, {})
        vs = enc.encode(texts, normalize_embeddings=True)
        cs = np.einsum("ij,ij->i", vs[i], vs[j])
        labels_s, _, _ = kmeans_cluster(vs, default_k(len(texts)), seed=0)
        kept, scanned = repr_filter(vs, order, k, 0.9)
        rej = set(order[:scanned].tolist()) - set(kept)
        rel = top_m_mean_cosine(vs, enc.encode(vdev, normalize_embeddings=True), 5)
        full_s = np.vstack([vs, enc.encode(ctx["planted_texts"], normalize_embeddings=True)])
        dd = dedup_figures(ctx["full_m"], full_s, ctx["planted"])
        out[name] = {"mean_cos": round(float(cs.mean()), 3), "sd_cos": round(float(cs.std()), 3),
                     "q99_cos": round(float(np.quantile(cs, 0.99)), 3), "median_nn1": round(float(np.median(nearest_cosine(vs))), 3),
                     "spearman": round(float(spearmanr(cm, cs)[0]), 3), "knn10_overlap": round(knn_overlap(vm, vs), 3),
                     "relevance_topk_overlap": round(len(ctx["top_minilm"] & set(np.argsort(-rel, kind="stable")[:k].tolist())) / k, 3),
                     "kmeans_ari": round(adjusted_rand_score(ctx["labels_minilm"], labels_s), 3),
                     "deita_rejected_0.9": len(rej), "deita_rejected_jaccard": jaccard(ctx["rejected_minilm"], rej),
                     "deita_threshold_matching_0.9": threshold_matching(vs, order, k, len(ctx["rejected_minilm"])),
                     "dedup_pairs_0.95": dd["pairs_static"], "dedup_jaccard": dd["jaccard_linked"],
                     "dedup_threshold_matching_0.95": dd["static_threshold_matched"]}
        if name.startswith("recipe 2 ("):
            out[name]["max_abs_diff_to_cached_matrix"] = float(np.abs(m - ctx["static_matrix"]).max())
    return out


def print_table(r: dict) -> None:
    sp, pw, tr, km, dd = r["speed"], r["pairwise"], r["task_relevance"], r["kmeans"], r["semantic_dedup"]
    cm, cs = r["cosine_scale"]["minilm"], r["cosine_scale"]["static"]
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
        ("random-pair cosine mean / sd, minilm", f"{cm['mean']} / {cm['sd']} (q50 {cm['q50']}, q90 {cm['q90']}, q99 {cm['q99']})"),
        ("random-pair cosine mean / sd, static", f"{cs['mean']} / {cs['sd']} (q50 {cs['q50']}, q90 {cs['q90']}, q99 {cs['q99']})"),
        ("median nearest-neighbour cosine minilm / static", f"{cm['median_nn1']} / {cs['median_nn1']}"),
        ("10-NN overlap", f"{pw['knn10_overlap']}"),
        ("  TF-IDF reference: Spearman / 10-NN overlap", (f"{pw['tfidf_reference']['spearman']} / "
                                                          f"{pw['tfidf_reference']['knn10_overlap']}")),
        *[row for de in r["deita_repr_filter"] for row in (
            (f"DEITA repr filter k={de['k']}: overlap at {de['threshold']}", (
                f"{de['overlap_same_threshold']} (rejected: minilm {de['rejected_minilm']}, static {de['rejected_static']}; "
                f"Jaccard of the rejected {de['rejected_jaccard_same_threshold']})")),
            (f"  at static threshold {de['static_threshold_matched']}", (
                f"{de['overlap_matched_threshold']} (rejected {de['rejected_static_matched']}, Jaccard of the rejected "
                f"{de['rejected_jaccard_matched']}; chance overlap {de['chance']})")))],
        (f"task relevance top-{tr['k']} overlap", (f"{tr['overlap_topk']} (Spearman {tr['spearman']}; gsm8k share "
                                                  f"{tr['gsm8k_share_topk_minilm']} / {tr['gsm8k_share_topk_static']})")),
        (f"k-means ARI static vs minilm (k={km['k']})", (f"{km['ari_static_vs_minilm']} (minilm seed 0 vs 1: "
                                                        f"{km['ari_minilm_seed0_vs_seed1']}; static: {km['ari_static_seed0_vs_seed1']})")),
        ("  ARI with the source label minilm / static", f"{km['ari_source_minilm']} / {km['ari_source_static']}"),
        (f"semantic_dedup at {dd['threshold']} (+{dd['planted']} planted): pairs linked", (
            f"minilm {dd['pairs_minilm']} ({dd['planted_found_minilm']} planted), static {dd['pairs_static']} "
            f"({dd['planted_found_static']} planted); Jaccard {dd['jaccard_linked']}")),
        (f"  at static threshold {dd['static_threshold_matched']}", (
            f"{dd['pairs_static_matched']} pairs; Jaccard {dd['jaccard_linked_matched']}")),
    ]
    for name, v in r.get("recipe_variants", {}).items():
        rows.append((f"variant: {name}", (
            f"cos {v['mean_cos']}+-{v['sd_cos']} (q99 {v['q99_cos']}, NN {v['median_nn1']}), Spearman {v['spearman']}, "
            f"10-NN {v['knn10_overlap']}, relevance {v['relevance_topk_overlap']}, ARI {v['kmeans_ari']}, DEITA rejects "
            f"{v['deita_rejected_0.9']} (J {v['deita_rejected_jaccard']}, 0.9 ~ {v['deita_threshold_matching_0.9']}), "
            f"dedup pairs {v['dedup_pairs_0.95']} (J {v['dedup_jaccard']}, 0.95 ~ {v['dedup_threshold_matching_0.95']})")))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="texts in the sample")
    ap.add_argument("--pairs", type=int, default=20000, help="random pairs for the cosine Spearman")
    ap.add_argument("--k", type=int, default=400, help="selection size for the overlaps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--planted", type=int, default=40, help="near duplicates of sample texts added for the semantic_dedup check")
    ap.add_argument("--variants", action="store_true", help="also score other distillation recipes (+1-2 minutes)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    r = run(args.n, args.pairs, args.k, args.seed, args.planted)
    ctx = r.pop("_context")
    if args.variants:
        r["recipe_variants"] = recipe_variants(ctx)
    print_table(r)
    if args.json:
        from thresher.data.io import atomic_write_json

        atomic_write_json(args.json, r, indent=1)


if __name__ == "__main__":
    main()
