"""Benchmark: MinHash near-duplicate clusters (the ``minhash`` signal) on a synthetic corpus.

The corpus (``--sizes``, 20K and 100K texts by default) is built from the shared data
(Alpaca-5000 instruction + input + output, GSM8K train question + answer, the ShareGPT sample's
turns): the base texts first, then (to reach the size with distinct texts) splices of two
random base texts (the first half of one's words, the second half of another's). Then
``--dup-share`` of the positions (10%) are overwritten by planted duplicates of an earlier
text: an exact copy with case and spacing changed, or a near copy with word deletions, swaps
of adjacent words or insertions at a rate of 1%, 3%, 5% or 10% (all kinds equally often).

Methods (each gives cluster ids; their agreement with the reference is reported):

- ``datasketch``: ``minhash_clusters(backend="datasketch")``, the implementation before the
  vectorised one (datasketch ``MinHash.generator`` + ``MinHashLSH`` query/insert per text);
- ``numpy``: ``minhash_clusters()`` (the default: vectorised, bit-identical hash values);
- ``rensa``: rensa's ``RMinHash`` signatures of the same shingles (``word_shingles``, bytes;
  ``digest_matrix_from_token_byte_sets``) with the numpy banding and verification (same b, r,
  same rule): rensa's permutations and hash differ, so its clusters may differ;
- ``rensa_flat``: rensa's ``RMinHash`` over the numpy path's SHA-1 shingle hashes
  (``digest_matrix_from_flat_token_hashes``: no Python per shingle).

Also timed on their own: ``word_shingles`` for every text (regex + Python sets), and the
numpy path's stages (shingle hashing, signatures, banding). Agreement with ``datasketch``
(or ``numpy`` when datasketch is skipped at that size): identical partition, and the pairs
of texts in one cluster: found by both, missed, extra. Planted-pair recall per kind.

    THRESHER_THREADS=1 python benchmarks/bench_minhash.py                      # 20K and 100K
    python benchmarks/bench_minhash.py --sizes 20000 --methods numpy,datasketch --json out.json
    python benchmarks/bench_minhash.py --sizes 1000000 --methods numpy --no-stages   # 1M, numpy only

Times are wall and CPU seconds of this process (``time.process_time``): on a shared machine the
CPU figure is the steadier one.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import time

import numpy as np

RATES = (0.01, 0.03, 0.05, 0.10)
EDITS = ("delete", "swap", "insert")


def base_texts() -> list[str]:
    from thresher.data.pool import load_pool
    from thresher.signals.dedup import dedup_text
    from thresher.tasks.gsm8k import gsm8k_pool, shared_data_dir

    alpaca, _ = load_pool(shared_data_dir() / "alpaca" / "alpaca_5000.json", on_error="skip")
    texts = [dedup_text(r, "all") for r in alpaca] + [dedup_text(r, "all") for r in gsm8k_pool()]
    sharegpt = json.loads((shared_data_dir() / "sharegpt" / "dummy_conversation.json").read_text())
    texts += [" ".join(turn["value"] for turn in conv["conversations"]) for conv in sharegpt]
    return [t for t in texts if t.strip()]


def edit(words: list[str], kind: str, rate: float, rng: random.Random) -> list[str]:
    out = list(words)
    k = max(1, round(rate * len(out)))
    for _ in range(k):
        if len(out) < 3:
            break
        p = rng.randrange(len(out) - 1)
        if kind == "delete":
            del out[p]
        elif kind == "swap":
            out[p], out[p + 1] = out[p + 1], out[p]
        else:
            out.insert(p, rng.choice(("very", "also", "the", "new", "really", "indeed")))
    return out


def corpus(size: int, dup_share: float, seed: int = 0) -> tuple[list[str], list[tuple[int, int, str]]]:
    """(texts, planted (position, source position, kind)); kind = 'exact' or 'delete@0.03' etc."""
    rng = random.Random(seed)
    base = base_texts()
    texts = base[:size]
    while len(texts) < size:
        a, b = rng.choice(base).split(), rng.choice(base).split()
        texts.append(" ".join(a[:len(a) // 2] + b[len(b) // 2:]))
    kinds = ["exact"] + [f"{e}@{r}" for e in EDITS for r in RATES]
    planted = []
    for pos in sorted(rng.sample(range(1, size), int(dup_share * size))):
        src = rng.randrange(pos)
        kind = kinds[len(planted) % len(kinds)]
        if kind == "exact":
            texts[pos] = "  " + texts[src].upper().replace(" ", "\n ")
        else:
            e, r = kind.split("@")
            texts[pos] = " ".join(edit(texts[src].split(), e, float(r), rng))
        planted.append((pos, src, kind))
    return texts, planted


def co_pairs(ids: np.ndarray) -> int:
    sizes = np.bincount(ids)
    return int((sizes * (sizes - 1) // 2).sum())


def agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """Pairs of texts in one cluster under ref / got / both (contingency of the two partitions)."""
    _, cell = np.unique(np.stack([ref, got], axis=1), axis=0, return_inverse=True)
    both = co_pairs(cell.ravel())
    r, g = co_pairs(ref), co_pairs(got)
    return {"identical": bool(np.array_equal(ref, got)), "ref_pairs": r, "found": both, "missed": r - both,
            "extra": g - both, "texts_with_other_id": int(np.count_nonzero(ref != got))}


def recall(ids: np.ndarray, planted: list[tuple[int, int, str]]) -> dict:
    out: dict[str, list[int]] = {}
    for pos, src, kind in planted:
        out.setdefault(kind, [0, 0])
        out[kind][0] += int(ids[pos] == ids[src])
        out[kind][1] += 1
    return {k: round(h / n, 3) for k, (h, n) in sorted(out.items())}


def timed(f, *a, **kw):
    w, c = time.perf_counter(), time.process_time()
    out = f(*a, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def run_numpy_stages(texts: list[str], threshold: float, num_perm: int) -> dict:
    from thresher.signals.dedup import groups_from_pairs
    from thresher.signals.minhash import (
        permutations,
        shingle_hashes,
        signatures_from_hashes,
    )
    from thresher.signals.minhash_lsh import lsh_bands, near_duplicate_edges

    a, b = permutations(num_perm, 1)
    stages = {"shingle_hash": [0.0, 0.0], "signature": [0.0, 0.0]}
    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    for lo in range(0, len(texts), 4096):
        (hv, off), w, c = timed(shingle_hashes, texts[lo:lo + 4096], 5)
        stages["shingle_hash"][0] += w
        stages["shingle_hash"][1] += c
        s, w, c = timed(signatures_from_hashes, hv, off, a, b)
        stages["signature"][0] += w
        stages["signature"][1] += c
        sig[lo:lo + len(s)] = s
        has[lo:lo + len(s)] = np.diff(off) > 0
    (left, right), w, c = timed(near_duplicate_edges, sig, has, threshold, lsh_bands(threshold, num_perm))
    stages["banding"] = [w, c]
    (_, _), w2, c2 = timed(groups_from_pairs, len(texts), left, right)
    stages["components"] = [w2, c2]
    return {k: {"wall_s": round(v[0], 2), "cpu_s": round(v[1], 2)} for k, v in stages.items()}


def rensa_clusters(texts: list[str], threshold: float, num_perm: int, flat: bool):
    import rensa

    from thresher.signals.dedup import groups_from_pairs, word_shingles
    from thresher.signals.minhash import shingle_hashes
    from thresher.signals.minhash_lsh import lsh_bands, near_duplicate_edges

    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    for lo in range(0, len(texts), 4096):
        part = texts[lo:lo + 4096]
        if flat:
            hv, off = shingle_hashes(part, 5)
            m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hv.astype(np.uint64), off.astype(np.uint64),
                                                                    num_perm, 1)
            has[lo:lo + len(part)] = np.diff(off) > 0
        else:
            sh = [word_shingles(t, 5) for t in part]
            m = rensa.RMinHash.digest_matrix_from_token_byte_sets(sh, num_perm, 1)
            has[lo:lo + len(part)] = [bool(s) for s in sh]
        sig[lo:lo + len(part)] = np.array(m.to_rows(), dtype=np.uint32)
    left, right = near_duplicate_edges(sig, has, threshold, lsh_bands(threshold, num_perm))
    ids, _ = groups_from_pairs(len(texts), left, right)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--methods", default="datasketch,numpy,rensa,rensa_flat")
    ap.add_argument("--datasketch-max", type=int, default=20000, help="skip datasketch above this size (slow)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--dup-share", type=float, default=0.1)
    ap.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                    help="also time word_shingles and the numpy path's stages on their own")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from thresher.signals.dedup import minhash_clusters, word_shingles

    methods = args.methods.split(",")
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        texts, planted = corpus(size, args.dup_share)
        row: dict = {"size": size, "planted": len(planted), "methods": {}}
        row["shingles_per_text"] = round(sum(len(word_shingles(t, 5)) for t in texts[:10000]) / min(size, 10000), 1)
        if args.stages:
            _, w, c = timed(lambda ts: [word_shingles(t, 5) for t in ts], texts)
            row["word_shingles"] = {"wall_s": round(w, 2), "cpu_s": round(c, 2), "texts_per_s": round(size / c)}
            row["numpy_stages"] = run_numpy_stages(texts, args.threshold, args.num_perm)
        ids = {}
        for m in methods:
            if m == "datasketch" and size > args.datasketch_max:
                continue
            if m in ("datasketch", "numpy"):
                (i, _, _), w, c = timed(minhash_clusters, texts, threshold=args.threshold, num_perm=args.num_perm,
                                        backend=m)
            else:
                i, w, c = timed(rensa_clusters, texts, args.threshold, args.num_perm, m == "rensa_flat")
            ids[m] = i
            row["methods"][m] = {"wall_s": round(w, 2), "cpu_s": round(c, 2), "texts_per_s": round(size / c),
                                 "clusters": len(np.unique(i)), "planted_recall": recall(i, planted)}
        ref = "datasketch" if "datasketch" in ids else "numpy"
        for m, i in ids.items():
            if m != ref and ref in ids:
                row["methods"][m]["vs_" + ref] = agreement(ids[ref], i)
        row["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results.append(row)
        print(json.dumps(row, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
