"""The base model's score (no fine-tune) on a bench config's task, dev and test: the line every
fine-tuned row of that bench is read against (does training on any subset help at all?).

    python benchmarks/base_score.py examples/bench-gsm8k-pilot.yaml [--json out.json]

Uses the config's model, task and metric (``loglik``: mean log-probability per gold answer
token, the oracle's own evaluation; ``accuracy``: generation). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from thresher.bench.run import BenchConfig, build_pool_and_task
from thresher.models.evaluate import evaluate_task
from thresher.models.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    cfg = BenchConfig.load(a.config)
    _, task, _ = build_pool_and_task(cfg)
    lm = load_model(cfg.model)
    out = {"config": str(a.config), "model": cfg.model, "metric": getattr(task, "metric", "accuracy")}
    # the sealed test split is read here as the oracle reads it: to score a model, never to select
    for split, items in (("dev", task.dev), ("test", task._sealed_test())):
        res = evaluate_task(lm.model, lm.tokenizer, task, items, desc=f"base {split}")
        out[split], out[f"{split}_items"] = res["value"], res["items"]
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_items")}))
    if a.json:
        a.json.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
