"""A large synthetic-but-realistic SFT pool built from the shared data (for bench_million.py).

Bases: the GSM8K train problems outside the ``gsm8k`` task's dev split (worked solutions),
the Alpaca slice and the ShareGPT sample (multi-turn), read from ``$THRESHER_SHARED_DATA``.
Row ``i`` of an ``n``-row pool is, by a seeded draw per row:

- **a planted exact duplicate** (rate ``exact_rate``): a copy of an earlier row, messages
  equal;
- **a planted near duplicate** (rate ``near_rate``): an earlier row with 1-3 word edits
  (a deletion, a swap of neighbours, a doubled word);
- otherwise **a variant of a base example**: every number replaced consistently (one
  mapping per row, in question and answer alike), ``swap_rate`` of the other words of
  four letters or more replaced by words drawn from the bases' vocabulary (by frequency),
  and a length change: the answer cut at a sentence boundary (``cut_rate``), a second
  base's answer appended (``long_rate``), or a second exchange appended (``multi_rate``).

So most rows are distinct texts on the bases' topics and lengths (mixed sources: about
60% GSM8K, 38% Alpaca, 2% ShareGPT by base count), and the planted duplicates are known.
The labels (``{"id", "kind", "of"}``, ``of`` = the id copied) go to ``labels.jsonl``, which
the chain never reads. The pool is written as JSONL shards of 100,000 rows (``pool/``),
the raw form a user brings; ``bench_million.py`` loads and converts it to Parquet.

The build is deterministic for (n, seed, rates) and cached under ``--cache`` (default
``$THRESHER_CACHE/million``) by those settings.

    python benchmarks/million_pool.py --n 100000          # build (or reuse) and print its folder
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

VERSION = 1
SHARD = 100_000
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]{4,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def shared_data() -> Path:
    env = os.environ.get("THRESHER_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def base_examples(data: Path | None = None) -> list[tuple[str, list[dict]]]:
    """(source, messages) of every usable base: GSM8K train minus the gsm8k task's dev split,
    Alpaca rows with an output, ShareGPT conversations that pass the pool's turn rules."""
    from thresher.data.records import normalise_row
    from thresher.errors import DataFormatError
    from thresher.tasks.gsm8k import gsm8k_pool

    data = data or shared_data()
    out = [("gsm8k", r["messages"]) for r in gsm8k_pool(data / "gsm8k")]
    for name, path in (("alpaca", data / "alpaca" / "alpaca_5000.json"), ("sharegpt", data / "sharegpt" / "dummy_conversation.json")):
        for i, row in enumerate(json.loads(path.read_text())):
            try:
                rec = normalise_row(row, path=path, line=i, default_source=name)
            except DataFormatError:
                continue  # counted by the caller as bases - usable
            out.append((name, rec["messages"]))
    return out


def vocabulary(bases: list[tuple[str, list[dict]]], size: int = 20_000) -> tuple[list[str], list[int]]:
    """The bases' most frequent lower-case words of 4+ letters, with their counts (for weighted draws)."""
    counts: Counter = Counter()
    for _, msgs in bases:
        for m in msgs:
            counts.update(w.lower() for w in _WORD.findall(m["content"]))
    words, freq = zip(*counts.most_common(size))
    return list(words), list(freq)


class Variator:
    """Seeded per-row text variation (numbers, word swaps, length)."""

    def __init__(self, words: list[str], freq: list[int], swap_rate: float):
        self.words = words
        total = float(sum(freq))
        acc, self.cum = 0.0, []
        for f in freq:
            acc += f / total
            self.cum.append(acc)
        self.swap_rate = swap_rate

    def _draw(self, rng: random.Random) -> str:
        import bisect

        return self.words[min(len(self.words) - 1, bisect.bisect_left(self.cum, rng.random()))]

    def vary(self, text: str, rng: random.Random, numbers: dict[str, str]) -> str:
        def num(m: re.Match) -> str:
            s = m.group(0)
            if s not in numbers:
                v = float(s) * rng.uniform(0.5, 2.0) + rng.randint(0, 9)
                numbers[s] = f"{v:.2f}" if "." in s else str(max(1, int(v)))
            return numbers[s]

        def word(m: re.Match) -> str:
            if rng.random() >= self.swap_rate:
                return m.group(0)
            w = self._draw(rng)
            return w.capitalize() if m.group(0)[0].isupper() else w

        return _WORD.sub(word, _NUMBER.sub(num, text))


def near_edit(messages: list[dict], rng: random.Random) -> list[dict]:
    """1-3 word edits (delete, swap neighbours, double) in one user or assistant turn."""
    msgs = [dict(m) for m in messages]
    turns = [m for m in msgs if m["role"] in ("user", "assistant") and len(m["content"].split()) >= 4]
    if not turns:
        return msgs
    t = rng.choice(turns)
    ws = t["content"].split(" ")
    for _ in range(rng.randint(1, 3)):
        if len(ws) < 3:
            break
        j = rng.randrange(len(ws) - 1)
        op = rng.random()
        if op < 0.4:
            del ws[j]
        elif op < 0.8:
            ws[j], ws[j + 1] = ws[j + 1], ws[j]
        else:
            ws.insert(j, ws[j])
    t["content"] = " ".join(ws)
    return msgs


def make_row(i: int, bases, var: Variator, rng: random.Random, cfg: dict) -> list[dict]:
    src, msgs = bases[rng.randrange(len(bases))]
    numbers: dict[str, str] = {}
    out = [{"role": m["role"], "content": var.vary(m["content"], rng, numbers)} for m in msgs]
    r = rng.random()
    last = out[-1]
    if r < cfg["cut_rate"]:
        parts = _SENTENCE_END.split(last["content"])
        if len(parts) > 1:
            last["content"] = " ".join(parts[: rng.randint(1, len(parts) - 1)])
    elif r < cfg["cut_rate"] + cfg["long_rate"]:
        _, other = bases[rng.randrange(len(bases))]
        last["content"] += "\n\n" + var.vary(other[-1]["content"], rng, numbers)
    elif r < cfg["cut_rate"] + cfg["long_rate"] + cfg["multi_rate"]:
        _, other = bases[rng.randrange(len(bases))]
        turns = [m for m in other if m["role"] != "system"][:2]
        out += [{"role": m["role"], "content": var.vary(m["content"], rng, numbers)} for m in turns]
    return out, src


def build(n: int, seed: int = 0, cache: Path | None = None, *, exact_rate: float = 0.02, near_rate: float = 0.04,
          swap_rate: float = 0.3, cut_rate: float = 0.1, long_rate: float = 0.1, multi_rate: float = 0.05,
          quiet: bool = False) -> Path:
    """Build (or reuse) the pool; returns its folder holding ``pool/*.jsonl``, ``labels.jsonl``, ``info.json``."""
    cfg = {"n": n, "seed": seed, "exact_rate": exact_rate, "near_rate": near_rate, "swap_rate": swap_rate,
           "cut_rate": cut_rate, "long_rate": long_rate, "multi_rate": multi_rate, "version": VERSION}
    tag = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    if cache is None:
        from thresher.data.paths import cache_root

        cache = cache_root() / "million"
    root = Path(cache) / f"pool-{n}-{tag}"
    if (root / "info.json").exists():
        return root
    from thresher.data.io import atomic_write_text
    from thresher.progress import progress

    t0 = time.perf_counter()
    bases = base_examples()
    words, freq = vocabulary(bases)
    var = Variator(words, freq, swap_rate)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    (tmp / "pool").mkdir(parents=True, exist_ok=True)
    rows: list[list[dict]] = []
    sources: list[str] = []
    kinds = Counter()
    with open(tmp / "labels.jsonl", "w") as labels, progress(total=n, desc="million pool", disable=quiet, unit="ex") as bar:
        shard = None
        for i in range(n):
            if i % SHARD == 0:
                if shard:
                    shard.close()
                shard = open(tmp / "pool" / f"part-{i // SHARD:03d}.jsonl", "w")
            rng = random.Random(f"{seed}-{i}")
            r = rng.random()
            if i and r < exact_rate:
                j = rng.randrange(i)
                msgs, kind, of, src = rows[j], "exact_dup", j, sources[j]
            elif i and r < exact_rate + near_rate:
                j = rng.randrange(i)
                msgs, kind, of, src = near_edit(rows[j], rng), "near_dup", j, sources[j]
            else:
                (msgs, src), kind, of = make_row(i, bases, var, rng, cfg), "base", None
            rows.append(msgs)
            sources.append(src)
            kinds[kind] += 1
            rid = f"m{i:07d}"
            shard.write(json.dumps({"id": rid, "messages": msgs, "source": src}) + "\n")
            labels.write(json.dumps({"id": rid, "kind": kind, "of": None if of is None else f"m{of:07d}"}) + "\n")
            bar.update(1)
        shard.close()
    info = {**cfg, "bases": len(bases), "kinds": dict(kinds), "build_seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(tmp / "info.json", json.dumps(info, indent=1))
    try:
        os.replace(tmp, root)
    except OSError:  # built meanwhile by another process: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None)
    a = ap.parse_args()
    root = build(a.n, a.seed, a.cache)
    print(root)
    print(json.dumps(json.loads((root / "info.json").read_text())), file=sys.stderr)


if __name__ == "__main__":
    main()
