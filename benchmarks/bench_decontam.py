"""Benchmark: decontamination of a synthetic pool against the GSM8K dev + test items.

The pool (200K examples by default) mixes Alpaca-5000 and GSM8K train records (half each,
the hard case: GSM8K train shares the eval items' vocabulary and phrasing, so most of its
n-grams are hashed and looked up), every copy perturbed (two adjacent words of the user
turn swapped, a seeded choice, and " (variant r)" appended) so no two examples are equal.
``--plant`` test questions are planted: an exact copy in upper case, a copy inside a
longer instruction, and a near duplicate with its last word changed (a third each).

It prints the examples/s of the whole scan (index build included) and of each rule on its
own, checks that every planted example was found, and extrapolates to 1M examples
(linear: the scan is batch by batch, with constant memory).

    THRESHER_SHARED_DATA=../shared/data python benchmarks/bench_decontam.py            # 200K
    python benchmarks/bench_decontam.py --size 50000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time
from pathlib import Path


def synthetic_pool(size: int, plant: int, seed: int = 0):
    from thresher.data.pool import Pool, load_pool
    from thresher.tasks import get_task
    from thresher.tasks.gsm8k import gsm8k_pool, shared_data_dir

    alpaca, _ = load_pool(shared_data_dir() / "alpaca" / "alpaca_5000.json", on_error="skip")
    gsm = gsm8k_pool()
    task = get_task("gsm8k")
    bases = [list(r["messages"]) for r in alpaca] + [list(r["messages"]) for r in gsm]
    rng = random.Random(seed)
    records = []
    for i in range(size - plant):
        msgs = [dict(m) for m in bases[i % len(bases)]]
        u = next(m for m in msgs if m["role"] == "user")
        words = u["content"].split(" ")
        if len(words) > 2:
            j = rng.randrange(len(words) - 1)
            words[j], words[j + 1] = words[j + 1], words[j]
        u["content"] = " ".join(words) + f" (variant {i // len(bases)})"
        records.append({"id": f"syn-{i:07d}", "messages": msgs, "source": "synthetic", "meta": {}})
    test = task._sealed_test()  # the benchmark plants test text on purpose
    planted = []
    for k in range(plant):
        it = test[(k * 7919) % len(test)]
        kind = ("exact", "ngram", "minhash")[k % 3]
        if kind == "exact":
            q = "  " + it.question.upper().replace(" ", "   ") + " "
        elif kind == "ngram":
            q = "Here is a word problem from a worksheet. " + it.question + " Explain each step in detail please."
        else:
            w = it.question.split(" ")
            w[-1] = "banana?"  # one word changed at the end: Jaccard (S-1)/(S+1) over S shingles
            q = " ".join(w)
        pid = f"planted-{kind}-{k:04d}"
        planted.append(pid)
        records.append({"id": pid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Sure."}],
                        "source": "planted", "meta": {}})
    rng.shuffle(records)
    return Pool(records, name=f"synthetic-{size}"), task, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=200_000)
    ap.add_argument("--plant", type=int, default=60)
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--batch-size", type=int, default=10000)
    ap.add_argument("--per-rule", action=argparse.BooleanOptionalAction, default=True, help="also time each rule alone")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from thresher.decontam import RULES, decontaminate

    t0 = time.perf_counter()
    pool, task, planted = synthetic_pool(args.size, args.plant)
    print(f"pool {len(pool)} examples built in {time.perf_counter() - t0:.1f}s; eval items: dev {len(task.dev)} + "
          f"test {task.test_size}", flush=True)
    results = {"size": len(pool), "eval_items": len(task.dev) + task.test_size, "cpus": os.cpu_count(), "runs": {}}
    runs = [("all", RULES)] + ([(r, (r,)) for r in RULES] if args.per_rule else [])
    for label, rules in runs:
        rep = decontaminate(pool, task, n=args.n, rules=rules, batch_size=args.batch_size)
        test = rep.splits["test"]
        eps = len(pool) / rep.seconds
        results["runs"][label] = {"seconds": round(rep.seconds, 2), "examples_per_s": round(eps),
                                  "test_contaminated": test.contaminated, "test_by_rule": test.by_rule,
                                  "dev_contaminated": rep.splits["dev"].contaminated}
        print(f"rules={label:8s} {rep.seconds:7.1f}s  {eps:9.0f} examples/s  test: {test.contaminated} contaminated "
              f"{test.by_rule}; dev: {rep.splits['dev'].contaminated}", flush=True)
        if label == "all":
            missed = sorted(set(planted) - set(test.ids))
            results["planted_missed"] = missed
            print(f"planted {len(planted)}: {len(planted) - len(missed)} found" + (f", missed {missed[:5]}" if missed else ""))
            print(f"extrapolated to 1M examples: {1_000_000 / eps / 60:.1f} min (linear; not measured)")
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"peak RSS {results['peak_rss_mb']} MB (the pool itself included)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
