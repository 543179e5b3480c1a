"""Decontamination: which pool examples overlap a task's evaluation items.

Every pool example's user text and assistant text (each on its own: contamination can sit
in either, e.g. an answer that contains a test question's worked solution) is compared
with the task's dev and test items under three rules:

``exact``
    the normalised pool text equals the normalised eval question. Normalised = lower-cased,
    punctuation stripped, whitespace collapsed: the ``\\w+`` words joined by one space (the
    same words :func:`thresher.signals.dedup.word_shingles` uses).
``ngram``
    the pool text shares a word n-gram (``n=13`` by default: the GPT-3 and Llama reports'
    rule) with an eval text. The eval texts are the question and, when it has at least
    ``n`` words, the gold worked solution (``TaskItem.target``: item-specific for GSM8K; a
    short templated one such as arith's ``3+4=7. The answer is 7.`` is shared by many
    problems and would flag innocent examples). Grams never span question and solution.
    A question shorter than ``n`` words is one gram itself, all its words (GPT-3's rule
    for short items): a pool text that contains it word for word is contaminated. Below
    ``min_words`` words (default 5) a question is checked by the ``exact`` rule only.
``minhash``
    near duplicates: MinHash over word ``shingle``-grams (5, 128 permutations, the
    ``minhash`` signal's hashing and banding: :mod:`thresher.signals.minhash`, the values and
    bands of datasketch's ``MinHash`` and ``MinHashLSH``), a pool text is contaminated when
    its estimated Jaccard similarity with an eval question (or long solution) reaches
    ``threshold`` (0.8). Texts shorter than ``shingle`` words are left to ``exact``.

Speed: nothing is compared pairwise. The eval texts' n-grams are hashed (64 bits, from
the ids of an eval-only vocabulary: a pool n-gram with a word the eval texts never use
cannot match, so pool words outside it are never hashed) into sorted arrays; the pool's
n-gram hashes of a batch of examples are computed in a few vectorised passes and looked up
with one ``searchsorted``. MinHash signatures are only computed for pool texts of which at
least ``threshold / 2`` of the distinct shingles occur somewhere in the eval texts (a text
below that cannot reach Jaccard ``threshold / 2`` with any eval text, and 128 permutations
never estimate such a pair at ``threshold``). ``benchmarks/bench_decontam.py`` measures it.

Reading the test split: selection never sees the test items (:meth:`Task.dev_view`);
decontamination is the one other reader of ``Task._sealed_test()`` besides the oracle's final
scoring, and it reads the test *text* only to find overlapping pool examples. The report
holds eval item ids and pool text, never test text (the ``examples`` quote the pool side).

``select`` and ``bench`` run this by default when a task is given: pool examples that
overlap the test split are excluded before selection (:func:`exclude_test_overlap`), dev
overlap is reported but kept.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from thresher.data.pool import Pool, assistant_text, user_text
from thresher.progress import progress
from thresher.signals.minhash import minhash_signatures
from thresher.signals.minhash_lsh import BandIndex, lsh_bands
from thresher.tasks.base import DevTask, Task, TaskItem

RULES = ("exact", "ngram", "minhash")
SPLITS = ("test", "dev")
SIDES = ("user", "assistant")
_WORDS = re.compile(r"\w+")  # the words of signals.dedup (lower-cased first)
_SEP = "\x00"  # between texts in a batch: never a \w+ word; id 0
_SEP_ID, _OOV_ID = 0, 1
_P = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial base of the n-gram hash
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))


class DecontaminationOffWarning(UserWarning):
    """Selection or a bench ran with decontamination turned off while a task was given."""


def text_words(text: str) -> list[str]:
    """The lower-cased ``\\w+`` words of ``text`` (punctuation and whitespace dropped)."""
    return _WORDS.findall(text.lower())


def normalise_text(text: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace: the words joined by one space."""
    return " ".join(text_words(text))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread 64-bit values from small integers."""
    x = np.asarray(x, dtype=np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


class _Hasher:
    """Polynomial hashes of word windows, any length, in O(1) vectorised operations each.

    The hash of the window ``v[a:a+m]`` is ``sum_j v[a+j] * P**(m-1-j)`` mod 2**64. With the
    prefix sums ``S[k] = sum_{i<k} v[i] * P**-i`` (P is odd, so invertible mod 2**64) it is
    ``P**(a+m-1) * (S[a+m] - S[a])``: one cumulative sum per batch, then a gather per length.
    The hash does not depend on where the window sits.
    """

    def __init__(self):
        self.pw = np.ones(1, dtype=np.uint64)
        self.ipw = np.ones(1, dtype=np.uint64)

    def _grow(self, n: int) -> None:
        if len(self.pw) >= n:
            return
        n = max(n, 2 * len(self.pw))
        self.pw = np.cumprod(np.concatenate([np.ones(1, np.uint64), np.full(n - 1, _P, dtype=np.uint64)]), dtype=np.uint64)
        self.ipw = np.cumprod(np.concatenate([np.ones(1, np.uint64), np.full(n - 1, _P_INV, dtype=np.uint64)]),
                              dtype=np.uint64)

    def prefix(self, values: np.ndarray) -> np.ndarray:
        n = len(values)
        self._grow(n + 1)
        s = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(values * self.ipw[:n], out=s[1:])
        return s

    def windows(self, s: np.ndarray, starts: np.ndarray, m) -> np.ndarray:
        """Hashes of the windows ``[starts, starts + m)`` (``m`` a length or an array of lengths) of the prefix ``s``."""
        ends = starts + m
        return self.pw[ends - 1] * (s[ends] - s[starts])


def gram_hashes(values: np.ndarray, m: int, hasher: _Hasher | None = None) -> np.ndarray:
    """The 64-bit hash of every window of ``m`` consecutive word values (``len - m + 1`` of them)."""
    n = len(values) - m + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = hasher or _Hasher()
    return h.windows(h.prefix(values), np.arange(n), m)


def _window_clear(bad: np.ndarray, m: int) -> np.ndarray:
    """For every window of ``m`` positions: True when no position in it is ``bad``."""
    n = len(bad) - m + 1
    if n <= 0:
        return np.zeros(0, dtype=bool)
    c = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    return (c[m:m + n] - c[:n]) == 0


class _Table:
    """A set of 64-bit hashes, each with the eval items it came from: a bitmap of the top bits
    rejects most lookups, one searchsorted settles the rest."""

    BITS = 22

    def __init__(self, hashes: np.ndarray, items: np.ndarray):
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.items = items[order]
        self.unique = np.unique(self.hashes)
        self.bitmap = np.zeros(1 << self.BITS, dtype=bool)
        self.bitmap[self.unique >> np.uint64(64 - self.BITS)] = True

    def __len__(self) -> int:
        return len(self.unique)

    def member(self, values: np.ndarray) -> np.ndarray:
        out = self.bitmap[values >> np.uint64(64 - self.BITS)]
        cand = np.flatnonzero(out)
        if len(cand):
            v = values[cand]
            idx = np.searchsorted(self.unique, v)
            idx[idx == len(self.unique)] = 0
            out[cand] = self.unique[idx] == v
        return out

    def items_of(self, value: int) -> list[int]:
        v = np.uint64(value)
        lo, hi = np.searchsorted(self.hashes, v, "left"), np.searchsorted(self.hashes, v, "right")
        return sorted(set(self.items[lo:hi].tolist()))


# --------------------------------------------------------------------------- the eval index


class EvalIndex:
    """Hashed n-grams, whole questions and MinHash-LSH of a set of eval items (dev and/or test)."""

    def __init__(self, items: Sequence[tuple[str, TaskItem]], *, n: int = 13, min_words: int = 5, shingle: int = 5,
                 num_perm: int = 128, threshold: float = 0.8, seed: int = 1, rules: Sequence[str] = RULES):
        if n < 1 or shingle < 1 or min_words < 1:
            raise ValueError(f"decontaminate: n, shingle and min_words must be >= 1 (got {n}, {shingle}, {min_words})")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"decontaminate: threshold must be in (0, 1], got {threshold}")
        unknown = sorted(set(rules) - set(RULES))
        if unknown or not rules:
            raise ValueError(f"decontaminate: unknown rule(s) {unknown}; known: {list(RULES)}")
        self.items = list(items)  # (split, item)
        self.n, self.min_words, self.shingle = n, min_words, shingle
        self.num_perm, self.threshold, self.seed = num_perm, threshold, seed
        self.rules = tuple(r for r in RULES if r in rules)
        self.hasher = _Hasher()
        # the eval texts: (item index, words); a question always, a worked solution when it has >= n words
        texts: list[tuple[int, list[str]]] = []
        is_question: list[bool] = []
        for k, (_split, it) in enumerate(self.items):
            texts.append((k, text_words(it.question)))
            is_question.append(True)
            t = text_words(it.target) if it.target else []
            if len(t) >= n:
                texts.append((k, t))
                is_question.append(False)
        self.vocab: dict[str, int] = {_SEP: _SEP_ID}
        for _, ws in texts:
            for w in ws:
                if w not in self.vocab:
                    self.vocab[w] = len(self.vocab) + 1  # ids from 2: 0 separates texts, 1 is a word no eval text has
        self.values = _mix64(np.arange(len(self.vocab) + 2, dtype=np.uint64) + np.uint64(0x5EED))
        self.text_item = [k for k, _ in texts]
        whole_h, whole_k = [], []  # whole questions (exact rule)
        gram_h: dict[int, list[np.ndarray]] = {}
        gram_k: dict[int, list[np.ndarray]] = {}
        shingle_h = []
        for (k, ws), question in zip(texts, is_question):
            if not ws:
                continue
            v = self.values[self.ids(ws)]
            s = self.hasher.prefix(v)
            if question:
                whole_h.append(self.hasher.windows(s, np.zeros(1, dtype=np.int64), len(ws)))
                whole_k.append(k)
            m = n if len(ws) >= n else (len(ws) if question and len(ws) >= min_words else 0)
            if m:
                h = self.hasher.windows(s, np.arange(len(ws) - m + 1), m)
                gram_h.setdefault(m, []).append(h)
                gram_k.setdefault(m, []).append(np.full(len(h), k, dtype=np.int64))
            if len(ws) >= shingle:
                shingle_h.append(self.hasher.windows(s, np.arange(len(ws) - shingle + 1), shingle))
        empty = np.zeros(0, dtype=np.uint64)
        self.whole = _Table(np.concatenate(whole_h) if whole_h else empty, np.array(whole_k, dtype=np.int64))
        self.grams = {m: _Table(np.concatenate(gram_h[m]), np.concatenate(gram_k[m])) for m in sorted(gram_h)}
        sh = np.unique(np.concatenate(shingle_h)) if shingle_h else empty
        self.shingles = _Table(sh, np.zeros(len(sh), dtype=np.int64))
        self._lsh = None
        if "minhash" in self.rules:
            self._build_lsh([(i, " ".join(ws)) for i, (_, ws) in enumerate(texts) if len(ws) >= shingle])

    def _build_lsh(self, texts: list[tuple[int, str]]) -> None:
        """MinHash signatures of the eval texts (``(text index, text)``), banded for lookups."""
        sig, has = minhash_signatures([t for _, t in texts], num_perm=self.num_perm, ngram=self.shingle, seed=self.seed)
        self._lsh_text = np.array([i for i, _ in texts], dtype=np.int64)  # band-index row -> eval text
        self._lsh = BandIndex(sig, has, lsh_bands(self.threshold, self.num_perm))

    def ids(self, words: list[str]) -> np.ndarray:
        """Vocabulary ids of ``words`` (1 for a word no eval text has)."""
        return np.fromiter(map(self.vocab.get, words, repeat(_OOV_ID)), dtype=np.int64, count=len(words))

    def near_duplicates(self, texts: Iterable[str]) -> list[list[tuple[int, float]]]:
        """Per text: the (eval item, estimated Jaccard) pairs at or above the threshold, by item.

        A pair is a candidate when the two MinHash signatures share one LSH band
        (:func:`thresher.signals.minhash_lsh.lsh_bands`), kept when its share of equal values is
        ``>= threshold``; an item's value is the largest over its texts (question, solution)."""
        texts = list(texts)
        sig, has = minhash_signatures(texts, num_perm=self.num_perm, ngram=self.shingle, seed=self.seed)
        q, j, same = self._lsh.query(sig, has)
        keep = same >= self.threshold * self.num_perm
        hits: list[dict[int, float]] = [{} for _ in texts]
        for t, row, n_same in zip(q[keep].tolist(), j[keep].tolist(), same[keep].tolist()):
            k = self.text_item[int(self._lsh_text[row])]
            hits[t][k] = max(hits[t].get(k, 0.0), n_same / self.num_perm)
        return [sorted(h.items()) for h in hits]


# --------------------------------------------------------------------------- the report


@dataclass
class SplitReport:
    """What one eval split found in the pool.

    ``contaminated`` counts pool examples hit by any rule; ``by_rule`` counts them per rule
    (an example can count under several), ``by_side`` per text (user / assistant);
    ``items_hit`` is how many eval items some pool example overlaps. ``matches`` maps each
    contaminated pool id to ``{rule: [eval item ids]}``.
    """

    split: str
    items: int
    contaminated: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    by_side: dict[str, int] = field(default_factory=dict)
    items_hit: int = 0
    matches: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """The contaminated pool ids, in pool order."""
        return list(self.matches)

    def to_dict(self) -> dict:
        return {"split": self.split, "items": self.items, "contaminated": self.contaminated, "by_rule": self.by_rule,
                "by_side": self.by_side, "items_hit": self.items_hit, "examples": self.examples, "matches": self.matches}


@dataclass
class DecontamReport:
    """Per split (``test``, ``dev``): the overlap of a pool with a task's eval items."""

    pool: dict
    task: str
    params: dict
    splits: dict[str, SplitReport]
    seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.pool["size"] / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"pool": self.pool, "task": self.task, "params": self.params, "seconds": round(self.seconds, 3),
                "examples_per_s": round(self.examples_per_s, 1) if self.seconds > 0 else None,
                "splits": {s: r.to_dict() for s, r in self.splits.items()}}

    def summary(self) -> str:
        parts = []
        for s, r in self.splits.items():
            rules = ", ".join(f"{k} {v}" for k, v in r.by_rule.items())
            parts.append(f"{s}: {r.contaminated} of {self.pool['size']} pool examples overlap {r.items_hit} of {r.items} "
                         f"items ({rules})")
        return "; ".join(parts)


# --------------------------------------------------------------------------- the scan


def _eval_items(task: Task | DevTask, splits: Sequence[str]) -> list[tuple[str, TaskItem]]:
    items = []
    for s in splits:
        if s == "dev":
            items += [("dev", it) for it in task.dev]
        elif s == "test":
            if not isinstance(task, Task):
                raise ValueError(f"decontaminate: task {task.name!r} has no test split here (a dev-only view was given)")
            # the one reader of the sealed test split besides the oracle's final scoring: test text is
            # only compared with the pool here, never returned or shown
            items += [("test", it) for it in task._sealed_test()]
        else:
            raise ValueError(f"decontaminate: unknown split {s!r}; known: {list(SPLITS)}")
    return items


def decontaminate(pool: Pool, task: Task | DevTask, *, splits: Sequence[str] = SPLITS, n: int = 13, min_words: int = 5,
                  shingle: int = 5, num_perm: int = 128, threshold: float = 0.8, seed: int = 1,
                  rules: Sequence[str] = RULES, examples: int = 5, batch_size: int = 10000,
                  show_progress: bool = False) -> DecontamReport:
    """Find the pool examples that overlap the task's ``splits`` (see the module docstring for the rules).

    Returns a :class:`DecontamReport`; its ``splits[s].ids`` are the contaminated pool ids.
    """

    if not 1 <= batch_size <= 1 << 22:
        raise ValueError(f"decontaminate: batch_size must be in 1..{1 << 22}, got {batch_size}")
    t0 = time.perf_counter()
    splits = tuple(dict.fromkeys(splits))
    items = _eval_items(task, splits)
    ix = EvalIndex(items, n=n, min_words=min_words, shingle=shingle, num_perm=num_perm, threshold=threshold, seed=seed,
                   rules=rules)
    item_split = [s for s, _ in items]
    # pool position -> split -> rule -> set(item index); pool position -> split -> sides; first evidence per split
    found: dict[int, dict[str, dict[str, set[int]]]] = {}
    sides: dict[int, dict[str, set[str]]] = {}
    evidence: dict[int, dict[str, dict]] = {}

    def hit(pos: int, side: str, rule: str, k: int, **ev) -> None:
        s = item_split[k]
        found.setdefault(pos, {}).setdefault(s, {}).setdefault(rule, set()).add(k)
        sides.setdefault(pos, {}).setdefault(s, set()).add(side)
        evidence.setdefault(pos, {}).setdefault(s, {"rule": rule, "side": side, "item": k, **ev})

    with progress(total=len(pool), desc="decontaminate", disable=not show_progress, unit="ex") as bar:
        for start in range(0, len(pool), batch_size):
            recs = pool.slice(start, start + batch_size)
            _scan_batch(ix, recs, start, hit)
            bar.update(len(recs))

    reports = {}
    for s in splits:
        n_items = sum(1 for x in item_split if x == s)
        rep = SplitReport(split=s, items=n_items, by_rule={r: 0 for r in ix.rules}, by_side={side: 0 for side in SIDES})
        hit_items: set[int] = set()
        for pos in sorted(found):
            per = found[pos].get(s)
            if not per:
                continue
            rec = pool[pos]
            rep.matches[rec["id"]] = {r: [items[k][1].id for k in sorted(per[r])] for r in ix.rules if r in per}
            for r in per:
                rep.by_rule[r] += 1
                hit_items |= per[r]
            for side in sides[pos][s]:
                rep.by_side[side] += 1
            if len(rep.examples) < examples:
                rep.examples.append(_example(rec, evidence[pos][s], items))
        rep.contaminated = len(rep.matches)
        rep.items_hit = len(hit_items)
        reports[s] = rep
    params = {"splits": list(splits), "rules": list(ix.rules), "n": n, "min_words": min_words, "shingle": shingle,
              "num_perm": num_perm, "threshold": threshold, "seed": seed,
              "eval_text": "question; plus the worked solution (target) when it has >= n words",
              "pool_text": "user turns and assistant turns, each compared on its own"}
    return DecontamReport(pool={"name": pool.name, "size": len(pool), "fingerprint": pool.fingerprint}, task=task.name,
                          params=params, splits=reports, seconds=time.perf_counter() - t0)


def _example(rec: dict, ev: dict, items) -> dict:
    text = user_text(rec) if ev["side"] == "user" else assistant_text(rec)
    out = {"pool_id": rec["id"], "item_id": items[ev["item"]][1].id, "rule": ev["rule"], "side": ev["side"]}
    if "gram" in ev:
        out["gram"] = ev["gram"]  # words of the pool text (they equal the eval text's)
    if "jaccard" in ev:
        out["jaccard"] = ev["jaccard"]
    out["pool_text"] = text if len(text) <= 240 else text[:237] + "..."
    return out


def _scan_batch(ix: EvalIndex, recs: list[dict], start: int, hit) -> None:
    """One batch of pool records: every rule, both sides; reports each hit with ``hit(pos, side, rule, item, ...)``."""
    words: list[list[str]] = []
    owner: list[tuple[int, str]] = []
    flat: list[str] = []
    for j, r in enumerate(recs):
        for side, text in (("user", user_text(r)), ("assistant", assistant_text(r))):
            ws = text_words(text)
            words.append(ws)
            owner.append((start + j, side))
            flat.extend(ws)
            flat.append(_SEP)
    ids = ix.ids(flat)
    lens = np.fromiter((len(ws) for ws in words), dtype=np.int64, count=len(words))
    text_start = np.concatenate([[0], np.cumsum(lens + 1)[:-1]]).astype(np.int64)
    s = ix.hasher.prefix(ix.values[ids])
    oov = np.concatenate([[0], np.cumsum(ids <= _OOV_ID, dtype=np.int64)])  # separators and unknown words so far

    def report(rule: str, table: _Table, texts: np.ndarray, at: np.ndarray, m, h: np.ndarray, **ev) -> None:
        found = np.flatnonzero(table.member(h))
        for f in found.tolist():
            t, p = int(texts[f]), int(at[f])
            mm = int(m if np.isscalar(m) else m[f])
            rec_pos, side = owner[t]
            extra = {"gram": " ".join(words[t][p - text_start[t]:p - text_start[t] + mm])} if rule == "ngram" else {}
            for k in table.items_of(int(h[f])):
                hit(rec_pos, side, rule, k, **extra)

    if "exact" in ix.rules and len(ix.whole):
        # a whole text without an unknown word, hashed as one window
        t = np.flatnonzero((lens > 0) & (oov[text_start + lens] - oov[text_start] == 0))
        if len(t):
            report("exact", ix.whole, t, text_start[t], lens[t], ix.hasher.windows(s, text_start[t], lens[t]))

    if "ngram" in ix.rules:
        total = len(ids)
        for m, table in ix.grams.items():
            if total < m:
                continue
            starts = np.arange(total - m + 1)
            pos = starts[(oov[m:] - oov[:-m]) == 0]  # windows of known words inside one text
            if len(pos):
                texts = np.searchsorted(text_start, pos, side="right") - 1
                report("ngram", table, texts, pos, m, ix.hasher.windows(s, pos, m))

    if "minhash" in ix.rules and len(ix.shingles):
        _minhash_candidates(ix, ids, s, words, lens, text_start, owner, hit)


def _minhash_candidates(ix: EvalIndex, ids, s, words, lens, text_start, owner, hit) -> None:
    """MinHash the texts of which at least ``threshold / 2`` of the distinct shingles occur in the eval texts."""
    m = ix.shingle
    if len(ids) < m:
        return
    sep = np.concatenate([[0], np.cumsum(ids == _SEP_ID, dtype=np.int64)])
    pos = np.flatnonzero((sep[m:] - sep[:-m]) == 0)  # windows inside one text (unknown words included)
    if not len(pos):
        return
    h = ix.hasher.windows(s, pos, m)
    known = ix.shingles.member(h)
    t_of = np.searchsorted(text_start, pos, side="right") - 1
    some = np.zeros(len(words), dtype=bool)
    some[t_of[known]] = True
    keep = some[t_of]
    if not keep.any():
        return
    h, t_of, known = h[keep], t_of[keep], known[keep]
    # distinct shingles per text (text index in the top 24 bits, hash in the rest): a text's shingles with an
    # unknown word share values, so the distinct total is undercounted and the containment is an upper bound
    # on the true one (no candidate is lost)
    key = (t_of.astype(np.uint64) << np.uint64(40)) | (h >> np.uint64(24))
    _, first = np.unique(key, return_index=True)
    total = np.bincount(t_of[first], minlength=len(words))
    inside = np.bincount(t_of[first], weights=known[first], minlength=len(words))
    contain = inside / np.maximum(total, 1)
    cand = np.flatnonzero((contain >= ix.threshold / 2) & (lens >= m)).tolist()
    if not cand:
        return
    for t, pairs in zip(cand, ix.near_duplicates(" ".join(words[t]) for t in cand)):
        rec_pos, side = owner[t]
        for k, jac in pairs:
            hit(rec_pos, side, "minhash", k, jaccard=round(jac, 3))


# --------------------------------------------------------------------------- selection's view


def exclude_test_overlap(pool: Pool, task: Task | DevTask, **kw) -> tuple[Pool, DecontamReport, dict]:
    """The pool without the examples that overlap the task's test split, the report, and the
    selection meta ``{"test": {"excluded": N, "ids": [...]}, "dev": {"overlap": M, "ids": [...]}, ...}``.

    The returned pool is ``pool`` itself when nothing overlaps the test split (the same
    fingerprint, so stored signals and caches apply unchanged), else ``pool.subset`` of the
    rest, in pool order. Dev overlap is reported, not excluded (selection reads dev: a
    dev-contaminated pool inflates dev scores, the user should know). A dev-only task
    (no test split) is checked against dev only; the meta says so.
    """
    has_test = isinstance(task, Task)
    report = decontaminate(pool, task, splits=SPLITS if has_test else ("dev",), **kw)
    test = report.splits.get("test")
    dev = report.splits["dev"]
    excluded = test.ids if test else []
    meta: dict = {
        "test": {"excluded": len(excluded), "ids": excluded, "by_rule": test.by_rule if test else {}},
        "dev": {"overlap": dev.contaminated, "ids": dev.ids, "by_rule": dev.by_rule},
        "pool_size": len(pool), "selected_from": len(pool) - len(excluded),
        "params": {k: report.params[k] for k in ("rules", "n", "min_words", "shingle", "num_perm", "threshold")},
        "seconds": round(report.seconds, 3),
    }
    if not has_test:
        meta["test"]["note"] = "no test split (a dev-only task was given): nothing excluded"
    if not excluded:
        return pool, report, meta
    drop = set(excluded)
    clean = pool.subset([i for i in pool.ids if i not in drop], name=f"{pool.name}-decontaminated")
    meta["view_fingerprint"] = clean.fingerprint
    return clean, report, meta


def off_meta(reason: str = "--no-decontaminate") -> dict:
    """The selection meta when decontamination was turned off."""
    return {"off": True, "reason": reason}
