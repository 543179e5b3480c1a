"""``gsm8k-mix``: the built-in real-data testbed (GSM8K with realistic defects).

The real-data counterpart of :mod:`thresher.tasks.arith`. The target task is the
existing ``gsm8k`` task (:func:`~thresher.tasks.gsm8k.gsm8k_task`: dev drawn, seeded,
from the GSM8K train split; test = the official test split). The pool mixes GSM8K train
problems from OUTSIDE that dev split (via :func:`~thresher.tasks.gsm8k.gsm8k_pool`, so no
dev problem leaks into the pool) with off-task Alpaca and ShareGPT examples, and injects
the defects real SFT pools have. Each example's ground-truth label goes to a side file,
``defects.jsonl``, that no selector reads; diagnostics count how many of each label a
selection kept (:func:`defect_counts`, :func:`read_defect_labels`, the same functions the
arith testbed uses).

Labels and default rates (fractions of ``pool_size``; the rest is ``clean``)::

    clean         0.60  a GSM8K train problem with its worked solution ending in "#### N"
    wrong_answer  0.12  the final "#### N" and the last N in the working changed to a plausible
                        wrong number (N +- 1/2/3/5/10, doubled, halved, x10, /10, two adjacent
                        digits swapped); the text stays fluent, the last step becomes a slip
    truncated     0.05  the solution cut off at a line or sentence boundary before "#### N"
    no_reasoning  0.02  the answer alone, "#### N", with no working
    off_format    0.02  correct working and answer, but the "#### N" line drifts to
                        "The answer is N." / "So the answer is N." / "Answer: N" /
                        "The final answer is N." (format drift; the arith testbed's label name)
    exact_dup     0.04  a verbatim copy of another (clean) GSM8K example of the pool
    near_dup      0.04  a lightly reworded copy of another clean GSM8K example, same answer:
                        person names swapped (question and solution), small numbers written as
                        words or thousands separators added (question), synonym swaps
                        (bought -> purchased, How many -> What number of, ...), extra spaces
    off_task      0.11  Alpaca instructions and ShareGPT conversations (``sharegpt_share`` of
                        them from ShareGPT, the rest from Alpaca), multi-turn kept as is

So the default 4000-example pool has 2400 clean examples, 480 wrong answers, 200
truncated, 80 + 80 off-format / answer-only, 160 + 160 duplicates and 440 off-task
examples (352 Alpaca, 88 ShareGPT). Counts are ``round(rate * pool_size)``.

Pool records follow the normalised schema ``{id, messages, source, meta}``: ids are
``gsm8k-mix-<seed>-<position>`` after a seeded shuffle (they reveal neither the label
nor the origin), ``source`` is ``gsm8k``, ``alpaca`` or ``sharegpt`` and ``meta`` is
empty. ``defects.jsonl`` holds, per id, the ``defect`` label, the ``source``, the
``origin`` (``gsm8k-train-00012``, ``alpaca-01234``, ``sharegpt-identity_7``), ``dup_of``
(the pool id a duplicate copies), ``gold`` (the GSM8K final answer) and a ``detail``
(the wrong number, the near-dup edits, ...).

Data (read in place, never copied; found under ``data_dir``, else
``$THRESHER_SHARED_DATA``, else ``shared/data`` beside the checkout):
``gsm8k/{train,test}.jsonl`` (MIT), ``alpaca/alpaca_5000.json`` (CC BY-NC 4.0: research,
tests and benchmarks only, never commercial training) and
``sharegpt/dummy_conversation.json`` (Apache-2.0). With ``off_task=0`` the Alpaca and
ShareGPT files are not read.

Everything is a deterministic function of the config (``seed`` also seeds the dev
split, exactly as ``gsm8k_task(seed=...)`` does)::

    >>> pool, task, labels = GSM8KMixTestbed(pool_size=4000, seed=0).build()
    >>> GSM8KMixTestbed(seed=0).write("data/gsm8k-mix")   # pool.jsonl + defects.jsonl
    $ thresher make-pool gsm8k-mix --out data/gsm8k-mix --seed 0 --pool-size 4000
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path

from thresher.data.pool import Pool, write_jsonl
from thresher.data.records import PoolFormatError, normalise_row
from thresher.errors import ConfigError, ThresherError
from thresher.tasks.base import Task, normalise_number, read_defect_labels
from thresher.tasks.base import defect_counts as _defect_counts
from thresher.tasks.gsm8k import gsm8k_pool, gsm8k_task, shared_data_dir

__all__ = [
    "DEFECTS",
    "GSM8KMixConfig",
    "GSM8KMixTestbed",
    "defect_counts",
    "format_drift",
    "make_wrong_answer",
    "near_duplicate",
    "read_defect_labels",
    "truncate_solution",
]

#: the labels besides ``clean``, in the order :func:`defect_counts` reports them
DEFECTS = ("wrong_answer", "truncated", "no_reasoning", "off_format", "exact_dup", "near_dup", "off_task")
#: defects that rewrite a GSM8K problem's solution (each uses its own problem)
_REWRITES = ("wrong_answer", "truncated", "no_reasoning", "off_format")
ALPACA_FILE = ("alpaca", "alpaca_5000.json")
SHAREGPT_FILE = ("sharegpt", "dummy_conversation.json")

FORMAT_DRIFT = ("The answer is {n}.", "So the answer is {n}.", "Answer: {n}", "The final answer is {n}.")


@dataclass(frozen=True)
class GSM8KMixConfig:
    """Testbed settings. Rates are fractions of the pool (they must sum below 1); the rest is clean."""

    pool_size: int = 4000
    dev_size: int = 200
    test_size: int | None = None
    seed: int = 0
    #: the shared data folder holding gsm8k/, alpaca/ and sharegpt/ (default: shared_data_dir())
    data_dir: str | None = None
    # defect rates (fractions of the pool)
    wrong_answer: float = 0.12
    truncated: float = 0.05
    no_reasoning: float = 0.02
    off_format: float = 0.02
    exact_dup: float = 0.04
    near_dup: float = 0.04
    off_task: float = 0.11
    #: the share of the off-task examples taken from ShareGPT (the rest from Alpaca)
    sharegpt_share: float = 0.2

    def __post_init__(self):
        for name in ("pool_size", "dev_size", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"gsm8k-mix {name} must be an integer, got {v!r}")
        if self.pool_size < 1:
            raise ConfigError(f"gsm8k-mix pool_size must be at least 1, got {self.pool_size}")
        if self.dev_size < 1:
            raise ConfigError(f"gsm8k-mix dev_size must be at least 1, got {self.dev_size}")
        if self.test_size is not None and (not isinstance(self.test_size, int) or isinstance(self.test_size, bool)
                                           or self.test_size < 1):
            raise ConfigError(f"gsm8k-mix test_size must be a positive integer or None, got {self.test_size!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            object.__setattr__(self, "data_dir", str(self.data_dir))  # accept a Path
        for name in DEFECTS + ("sharegpt_share",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"gsm8k-mix rate {name} must be a number, got {v!r}")
            hi_ok = v <= 1 if name == "sharegpt_share" else v < 1
            if not (0 <= v and hi_ok):
                raise ConfigError(f"gsm8k-mix rate {name}={v} must be in [0, 1{']' if name == 'sharegpt_share' else ')'}")
        total = sum(getattr(self, d) for d in DEFECTS)
        if total >= 1:
            parts = " + ".join(f"{d} {getattr(self, d):g}" for d in DEFECTS if getattr(self, d))
            raise ConfigError(f"gsm8k-mix defect rates sum to {total:.3g} ({parts}); they must sum to less than 1 "
                              "to leave room for clean examples")

    def counts(self) -> dict[str, int]:
        """How many examples of each label the pool holds: ``round(rate * pool_size)``, clean the rest."""
        n = self.pool_size
        counts = {d: round(getattr(self, d) * n) for d in DEFECTS}
        n_clean = n - sum(counts.values())
        if n_clean < 0 or (n_clean == 0 and (counts["exact_dup"] or counts["near_dup"])):
            raise ConfigError(f"gsm8k-mix: at pool_size {n} the rounded defect counts {counts} leave {max(n_clean, 0)} clean "
                              "examples; duplicates need clean examples to copy (raise pool_size or lower the rates)")
        return {"clean": n_clean, **counts}

    def task_params(self) -> dict:
        """The keyword arguments of :func:`gsm8k_task` that give this testbed's task."""
        p: dict = {"dev_size": self.dev_size, "seed": self.seed}
        if self.test_size is not None:
            p["test_size"] = self.test_size
        if self.data_dir is not None:
            p["path"] = self.data_dir
        return p


# --------------------------------------------------------------------------- defect makers

# a number token: 1,234.5 / 1234 / 0.25 (no sign: a minus is usually an operator in GSM8K working)
_NUM_TOKEN = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")


def _fmt_like(value: Decimal, token: str) -> str:
    """``value`` written in the style of ``token`` (thousands separators, decimal places)."""
    decimals = len(token.split(".", 1)[1]) if "." in token else 0
    if value != value.to_integral_value() and decimals == 0:
        text = normalise_number(str(value)) or str(value)
        return text
    q = value.quantize(Decimal(1).scaleb(-decimals)) if decimals else value.to_integral_value()
    text = f"{q:,}" if "," in token else f"{q}"
    return text


def _wrong_candidates(n: Decimal) -> list[Decimal]:
    integral = n == n.to_integral_value()
    cands: list[Decimal] = [n + d for d in (1, 2, 3, 5, 10)] + [n - d for d in (1, 2, 3, 5, 10)] + [n * 2, n * 10]
    if integral and n % 2 == 0:
        cands.append(n / 2)
    if integral and n % 10 == 0 and n != 0:
        cands.append(n / 10)
    digits = str(abs(int(n))) if integral else ""
    for i in range(len(digits) - 1):  # swap two adjacent (different) digits, no leading zero
        if digits[i] != digits[i + 1] and not (i == 0 and digits[i + 1] == "0"):
            sw = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:]
            cands.append(Decimal(sw) * (-1 if n < 0 else 1))
    out = []
    for c in cands:
        if c == n or (n >= 0 and c < 0) or (n > 0 and c == 0) or (n < 0 and c >= 0):
            continue
        if c not in out:
            out.append(c)
    return out


def make_wrong_answer(solution: str, answer: str, rng: random.Random) -> tuple[str, str]:
    """``(solution with a plausible wrong final answer, the wrong number)``.

    The ``#### N`` line becomes ``#### W`` and the last occurrence of N in the working
    becomes W (written in the same style), so the text stays fluent and the last step
    turns into an arithmetic slip.
    """
    body, _, _ = solution.rpartition("####")
    try:
        n = Decimal(answer)
    except InvalidOperation:
        raise ValueError(f"GSM8K answer {answer!r} is not a number") from None
    w = rng.choice(_wrong_candidates(n))
    w_text = normalise_number(str(w)) or str(w)
    hits = [m for m in _NUM_TOKEN.finditer(body) if normalise_number(m.group()) == normalise_number(str(abs(n)))]
    if hits:
        m = hits[-1]
        body = body[: m.start()] + _fmt_like(abs(w), m.group()) + body[m.end():]
    return f"{body}#### {w_text}", w_text


def _boundaries(body: str) -> list[int]:
    """Cut points after a line break or a sentence end ('. ', '? ', '! ') strictly inside ``body``."""
    cuts = set()
    for m in re.finditer(r"\n|[.?!] ", body):
        b = m.end()
        if 0 < b < len(body) and body[:b].strip():
            cuts.add(b)
    return sorted(cuts)


def truncate_solution(solution: str, rng: random.Random) -> str:
    """The working cut off at a line or sentence boundary, before the ``#### N`` line."""
    body = solution.rpartition("####")[0].rstrip()
    if not body:
        return ""
    cuts = _boundaries(body)
    if cuts:
        return body[: rng.choice(cuts)].rstrip()
    words = body.split(" ")  # one sentence only: cut it mid-way at a word boundary
    if len(words) < 2:
        return ""
    k = rng.randint(max(1, len(words) // 3), max(1, (2 * len(words)) // 3))
    return " ".join(words[:k]).rstrip()


def format_drift(solution: str, answer: str, rng: random.Random) -> str:
    """The same working and answer, with the ``#### N`` line replaced by a prose ending."""
    body = solution.rpartition("####")[0].rstrip()
    end = rng.choice(FORMAT_DRIFT).format(n=answer)
    return f"{body}\n{end}" if body else end


FEMALE = ("Mary", "Jane", "Sarah", "Emily", "Anna", "Julia", "Lisa", "Emma", "Olivia", "Sophia", "Linda", "Susan",
          "Karen", "Nancy", "Betty", "Helen", "Sandra", "Donna", "Carol", "Sharon", "Michelle", "Laura", "Jessica",
          "Amy", "Angela", "Melissa", "Rebecca", "Kelly", "Rachel", "Natalia", "Julie", "Janet", "Alice", "Lucy",
          "Hannah", "Chloe", "Mia", "Ella", "Zoe", "Kate", "Maria", "Tina", "Wendy", "Paula", "Diana", "Claire")
MALE = ("James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles", "Paul",
        "Steven", "Andrew", "Kevin", "Brian", "George", "Edward", "Jason", "Jeff", "Ryan", "Gary", "Eric", "Adam",
        "Tom", "Jack", "Sam", "Ben", "Tim", "Joe", "Mike", "Peter", "Henry", "Albert", "Carl", "Frank", "Greg",
        "Tony", "Randy", "Jasper", "Mark", "Luke", "Oliver", "Daniel", "Chris", "Matt", "Simon")
SYNONYMS = (
    (r"\bbought\b", "purchased"), (r"\bbuys\b", "purchases"), (r"\bbuy\b", "purchase"), (r"\bHow many\b", "What number of"),
    (r"\bHow much\b", "What amount"), (r"\baltogether\b", "in total"), (r"\bin total\b", "altogether"),
    (r"\bgets\b", "receives"), (r"\bgot\b", "received"), (r"\bwants to\b", "would like to"), (r"\bbig\b", "large"),
    (r"\bsmall\b", "little"), (r"\bstarts\b", "begins"), (r"\bstarted\b", "began"), (r"\beach day\b", "every day"),
    (r"\bIf\b", "Suppose"), (r"\bfinishes\b", "completes"), (r"\bstore\b", "shop"),
)
_SMALL = {"2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight", "9": "nine",
          "10": "ten"}
_SMALL_NUM = re.compile(r"(?<![\d.,$:/-])\b(10|[2-9])\b(?![\d.,:/%-])")
_BIG_NUM = re.compile(r"(?<![\d.,$])\b(\d{4,})\b(?![\d.,])")


def _swap_name(q: str, sol: str, rng: random.Random) -> tuple[str, str] | None:
    for names in (FEMALE, MALE):
        present = [nm for nm in names if re.search(rf"\b{nm}\b", q)]
        if present:
            old = present[0]
            used = set(re.findall(r"\b[A-Z][a-z]+\b", q + " " + sol))
            new = rng.choice([nm for nm in names if nm not in used])
            pat = re.compile(rf"\b{old}\b")
            return pat.sub(new, q), pat.sub(new, sol)
    return None


def _reformat_number(q: str, rng: random.Random) -> str | None:
    big = list(_BIG_NUM.finditer(q))
    small = list(_SMALL_NUM.finditer(q))
    opts = []
    big = [m for m in big if not (len(m.group()) == 4 and 1900 <= int(m.group()) <= 2099)]  # not years
    if big:
        m = rng.choice(big)
        opts.append(q[: m.start()] + f"{int(m.group()):,}" + q[m.end():])
    if small:
        m = rng.choice(small)
        word = _SMALL[m.group()]
        if not q[: m.start()].strip() or q[: m.start()].rstrip().endswith((".", "?", "!")):
            word = word.capitalize()
        opts.append(q[: m.start()] + word + q[m.end():])
    return rng.choice(opts) if opts else None


def _synonym(q: str, rng: random.Random) -> str | None:
    hits = [(pat, rep) for pat, rep in SYNONYMS if re.search(pat, q)]
    if not hits:
        return None
    pat, rep = rng.choice(hits)
    return re.sub(pat, rep, q, count=1)


def _whitespace(q: str, rng: random.Random) -> str:
    opts = [q + " ", "  ".join(q.split(" ", 1)) if " " in q else q + "  "]
    if ". " in q:
        opts.append(q.replace(". ", ".  ", 1))
    if ", " in q:
        opts.append(q.replace(", ", ",  ", 1))
    return rng.choice(opts)


def near_duplicate(question: str, solution: str, rng: random.Random) -> tuple[str, str, list[str]]:
    """A lightly reworded copy: ``(question, solution, the edits made)``; the final answer is unchanged.

    One or two of: swap a person's name (question and solution), rewrite a number's format
    in the question (``3`` -> ``three``, ``1500`` -> ``1,500``), swap a synonym, add spaces.
    The question always differs from the original.
    """
    q, sol = question, solution
    edits: list[str] = []
    kinds = ["name", "number", "synonym", "whitespace"]
    rng.shuffle(kinds)
    want = rng.choice((1, 2))
    for kind in kinds:
        if len(edits) >= want:
            break
        if kind == "name":
            got = _swap_name(q, sol, rng)
            if got is None:
                continue
            q, sol = got
        elif kind == "number":
            new = _reformat_number(q, rng)
            if new is None:
                continue
            q = new
        elif kind == "synonym":
            new = _synonym(q, rng)
            if new is None:
                continue
            q = new
        else:
            q = _whitespace(q, rng)
        edits.append(kind)
    if q == question:
        q = question + " "
        edits.append("whitespace")
    return q, sol, edits


# --------------------------------------------------------------------------- the testbed


def _qa(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


class GSM8KMixTestbed:
    """The ``gsm8k-mix`` pool (GSM8K + off-task data with labelled defects) and its ``gsm8k`` task."""

    def __init__(self, config: GSM8KMixConfig | None = None, **overrides):
        if config is not None and overrides:
            raise ConfigError("pass either a GSM8KMixConfig or keyword overrides, not both")
        if config is None:
            known = {f.name for f in fields(GSM8KMixConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ConfigError(f"unknown gsm8k-mix setting(s) {unknown}; known: {sorted(known)}")
            config = GSM8KMixConfig(**overrides)
        self.config = config

    def __repr__(self) -> str:
        return f"GSM8KMixTestbed({self.config!r})"

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir).expanduser() if self.config.data_dir else shared_data_dir()

    # --- task
    def task(self) -> Task:
        """The ``gsm8k`` task whose dev split the pool excludes."""
        try:
            return gsm8k_task(**self.config.task_params())
        except ThresherError:
            raise
        except ValueError as e:  # dev_size / test_size out of range for the splits
            raise ConfigError(f"gsm8k-mix: {e}") from None

    # --- pool
    def _gsm8k_records(self) -> list[dict]:
        cfg = self.config
        try:
            pool = gsm8k_pool(cfg.data_dir, dev_size=cfg.dev_size, seed=cfg.seed)
        except ThresherError:
            raise
        except ValueError as e:  # dev_size out of range for the train split
            raise ConfigError(f"gsm8k-mix: {e}") from None
        return list(pool)

    def _off_task_records(self, source: str) -> list[tuple[str, list[dict]]]:
        """(origin, messages) of every usable Alpaca or ShareGPT example, in file order."""
        folder, name = ALPACA_FILE if source == "alpaca" else SHAREGPT_FILE
        path = self.data_dir / folder / name
        if not path.is_file():
            raise FileNotFoundError(f"gsm8k-mix off-task data {path} not found; pass data_dir=DIR (the folder holding "
                                    f"{folder}/) or set THRESHER_SHARED_DATA, or set off_task=0")
        rows = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for i, row in enumerate(rows):
            try:
                rec = normalise_row(row, path=path, line=i + 1, fmt="alpaca" if source == "alpaca" else "sharegpt")
            except PoolFormatError:
                continue  # e.g. an Alpaca row with an empty output
            origin = f"alpaca-{i:05d}" if source == "alpaca" else f"sharegpt-{row.get('id', i)}"
            out.append((origin, rec["messages"]))
        return out

    def generate(self) -> tuple[list[dict], list[dict]]:
        """``(pool records, side rows)`` in pool order; side rows carry the labels and provenance."""
        cfg = self.config
        counts = cfg.counts()
        rng = random.Random(f"gsm8k-mix-{cfg.seed}")
        gsm = self._gsm8k_records()
        n_base = counts["clean"] + sum(counts[d] for d in _REWRITES)
        if n_base > len(gsm):
            raise ConfigError(f"gsm8k-mix needs {n_base} distinct GSM8K problems (clean + rewritten) but the train split "
                              f"has {len(gsm)} outside the dev split; lower pool_size or raise the off-task/duplicate rates")
        picked = [gsm[i] for i in sorted(rng.sample(range(len(gsm)), n_base))]
        labels = ["clean"] * counts["clean"] + [d for d in _REWRITES for _ in range(counts[d])]
        rng.shuffle(labels)

        items: list[tuple[dict, dict]] = []  # (record without id, side row without id)
        clean_items: list[int] = []  # indices into items
        for rec, label in zip(picked, labels):
            q = rec["messages"][0]["content"]
            sol = rec["messages"][1]["content"]
            gold = rec["meta"]["final_answer"]
            detail = None
            if label == "wrong_answer":
                sol, detail = make_wrong_answer(sol, gold, rng)
            elif label == "truncated":
                sol = truncate_solution(sol, rng) or "Let's work this out step by step."
            elif label == "no_reasoning":
                sol = f"#### {gold}"
            elif label == "off_format":
                sol = format_drift(sol, gold, rng)
                detail = sol.rsplit("\n", 1)[-1]
            item = ({"messages": _qa(q, sol), "source": "gsm8k", "meta": {}},
                    {"defect": label, "source": "gsm8k", "origin": rec["id"], "dup_of": None, "gold": gold, "detail": detail})
            if label == "clean":
                clean_items.append(len(items))
            items.append(item)

        if counts["off_task"]:
            n_share = round(counts["off_task"] * cfg.sharegpt_share)
            for source, k in (("alpaca", counts["off_task"] - n_share), ("sharegpt", n_share)):
                if not k:
                    continue
                avail = self._off_task_records(source)
                if k > len(avail):
                    raise ConfigError(f"gsm8k-mix wants {k} off-task {source} examples but {len(avail)} are available; "
                                      "lower off_task or change sharegpt_share")
                for j in sorted(rng.sample(range(len(avail)), k)):
                    origin, msgs = avail[j]
                    items.append(({"messages": msgs, "source": source, "meta": {}},
                                  {"defect": "off_task", "source": source, "origin": origin, "dup_of": None, "gold": None,
                                   "detail": None}))

        def sources(k: int) -> list[int]:
            if k <= len(clean_items):
                return rng.sample(clean_items, k)
            return rng.sample(clean_items, len(clean_items)) + rng.choices(clean_items, k=k - len(clean_items))

        dup_of: dict[int, int] = {}  # item index -> index of the item it copies
        for src in sources(counts["exact_dup"]):
            rec, side = items[src]
            dup_of[len(items)] = src
            items.append(({"messages": [dict(m) for m in rec["messages"]], "source": "gsm8k", "meta": {}},
                          dict(side, defect="exact_dup", detail=None)))
        for src in sources(counts["near_dup"]):
            rec, side = items[src]
            q, sol, edits = near_duplicate(rec["messages"][0]["content"], rec["messages"][1]["content"], rng)
            dup_of[len(items)] = src
            items.append(({"messages": _qa(q, sol), "source": "gsm8k", "meta": {}},
                          dict(side, defect="near_dup", detail="+".join(edits))))

        order = list(range(len(items)))
        rng.shuffle(order)
        ids = {k: f"gsm8k-mix-{cfg.seed}-{pos:06d}" for pos, k in enumerate(order)}
        for k, src in dup_of.items():
            items[k][1]["dup_of"] = ids[src]
        records, side_rows = [], []
        for k in order:
            rec, side = items[k]
            records.append({"id": ids[k], **rec})
            side_rows.append({"id": ids[k], **side})
        return records, side_rows

    def build(self, out_dir: str | Path | None = None) -> tuple[Pool, Task, dict[str, str]]:
        """The pool (no labels in it), the ``gsm8k`` task, and the hidden labels ``{id: defect}``.

        With ``out_dir`` it also writes ``pool.jsonl`` and the side file ``defects.jsonl``.
        """
        records, side_rows = self.generate()
        pool = Pool(records, name="gsm8k-mix")
        task = self.task()
        labels = {r["id"]: r["defect"] for r in side_rows}
        if out_dir is not None:
            out = Path(out_dir)
            write_jsonl(out / "pool.jsonl", records)
            write_jsonl(out / "defects.jsonl", side_rows)
        return pool, task, labels

    def write(self, out_dir: str | Path) -> tuple[Pool, Task, dict[str, str]]:
        """Write ``out_dir/pool.jsonl`` and ``out_dir/defects.jsonl``; returns what :meth:`build` does."""
        return self.build(out_dir)


def defect_counts(ids, labels: dict[str, str]) -> dict[str, int]:
    """How many of each hidden gsm8k-mix label a selection kept (``clean`` first, then :data:`DEFECTS`)."""
    return _defect_counts(ids, labels, DEFECTS)
