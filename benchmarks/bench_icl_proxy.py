"""TMAP's ICL proxy on SmolLM2-135M with real GSM8K items: shared-prefix path vs per-prompt path.

Issue 16. With ``sharing="shared"`` every anchor question of a draw is prefixed by the same
demonstrations. The per-prompt path (``share_prefix=False``, the old one) runs every whole
prompt (demonstrations + anchor question + gold answer) through the model; the shared-prefix
path (``share_prefix=True``) runs the demonstrations once with ``use_cache=True`` and only
each anchor's own tokens on the expanded KV cache. Both score the same gold-answer tokens;
the values must agree to 1e-4.

Inputs: the gsm8k task's dev split (anchors: its first ``--anchors`` items, equal weights)
and a subset of the gsm8k pool (train problems outside dev; ``--subset`` of them) from
which ``--demos`` demonstrations are drawn (one draw). Both paths score the same subset
with the same proxy settings, ``--reps`` times each (best time kept), alternating.

Printed (and written as JSON with ``--json``): seconds of each path, the speed-up, tokens
through the model, the max |difference| of the per-anchor values and of J.

    python benchmarks/bench_icl_proxy.py [--demos 8] [--anchors 20] [--reps 1] [--threads 2]

Needs the shared data ($THRESHER_SHARED_DATA/gsm8k) and the `small` model (SmolLM2-135M-Instruct).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demos", type=int, default=8)
    ap.add_argument("--anchors", type=int, default=20)
    ap.add_argument("--subset", type=int, default=200, help="pool problems the demonstrations are drawn from")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--token-budget", type=int, default=4096, help="the proxy's token_budget (its default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from thresher.models.load import load_model
    from thresher.select.tmap.anchors import Anchors
    from thresher.select.tmap.proxy import ICLProxy
    from thresher.tasks.gsm8k import gsm8k_pool, gsm8k_task

    task = gsm8k_task().dev_view()
    pool = gsm8k_pool()
    k = args.anchors
    anchors = Anchors(positions=list(range(k)), weights=[1.0 / k] * k, labels=list(range(k)), by="first", requested=k)
    records = [pool[p] for p in range(args.subset)]
    lm = load_model("small")
    kw = {"model": "small", "demos": args.demos, "draws": 1, "sharing": "shared", "seed": 0, "token_budget": args.token_budget,
              "loaded": lm, "show_progress": False}

    times = {"old": [], "new": []}
    scores = {}
    for r in range(args.reps):
        for name, share in (("old", False), ("new", True)):
            proxy = ICLProxy(task, anchors, share_prefix=share, **kw)  # fresh: nothing memoised
            t0 = time.perf_counter()
            sc = proxy.score(records, key=f"bench-{r}")
            times[name].append(time.perf_counter() - t0)
            scores[name] = sc
            print(f"rep {r} {name}: {times[name][-1]:.1f}s  J={sc.value:.6f}  extra={sc.extra}", flush=True)
    old, new = scores["old"], scores["new"]
    diff_anchor = float(np.max(np.abs(np.asarray(old.per_anchor) - np.asarray(new.per_anchor))))
    diff_j = abs(old.value - new.value)
    t_old, t_new = min(times["old"]), min(times["new"])
    out = {
        "model": "small (SmolLM2-135M-Instruct)", "task": "gsm8k", "demos": args.demos, "anchors": k, "draws": 1,
        "sharing": "shared", "subset": args.subset, "reps": args.reps, "threads": args.threads,
        "token_budget": args.token_budget, "prompt_tokens": old.tokens,
        "forward_tokens_old": old.extra.get("forward_tokens"), "forward_tokens_new": new.extra.get("forward_tokens"),
        "prefix": {key: v for key, v in new.extra.items() if key.startswith("prefix")},
        "seconds_old": round(t_old, 2), "seconds_new": round(t_new, 2), "speedup": round(t_old / t_new, 2),
        "max_abs_diff_per_anchor": diff_anchor, "abs_diff_J": diff_j, "J_old": old.value, "J_new": new.value,
        "demos_dropped_for_length": new.demos_dropped_for_length,
    }
    print(json.dumps(out, indent=1))
    assert diff_anchor <= 1e-4, f"values differ by {diff_anchor}"
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
