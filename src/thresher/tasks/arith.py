"""``arith``: the built-in synthetic testbed.

Short word problems with a fixed answer format ("3+4=7. The answer is 7."), three
skills (``add``, ``sub``, ``mix``) and two difficulty levels (one and two steps). The
dev and test splits lean harder (mostly two-step) than the clean part of the pool.

The pool mixes clean on-task examples with the defects real pools have, at
configurable rates: wrong answers, truncated and off-format responses, exact and near
duplicates, off-task instructions and trivially easy items. The ground-truth defect
label of every pool example goes to a side file (``defects.jsonl``) that no selector
reads; diagnostics may count how many of each defect a selection kept.

Everything is a deterministic function of the seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from thresher.data.pool import Pool, write_jsonl
from thresher.tasks.base import (
    PromptFormat,
    Task,
    TaskItem,
    read_defect_labels,  # noqa: F401  (re-exported: bench and tests import it from here)
)
from thresher.tasks.base import defect_counts as _defect_counts

NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lu"]
ITEMS = ["pens", "cups", "apples", "books", "coins", "cards", "eggs", "hats", "rocks", "toys"]
SKILLS = ("add", "sub", "mix")
DEFECTS = ("wrong_answer", "truncated", "off_format", "exact_dup", "near_dup", "off_task", "trivial")
OFF_TASK = [
    ("Spell {w} backwards.", lambda w: w[::-1]),
    ("Write {w} in capitals.", lambda w: w.upper()),
    ("What is the first letter of {w}?", lambda w: w[0]),
    ("Repeat the word {w} twice.", lambda w: f"{w} {w}"),
    ("How do you say hello to {w}?", lambda w: f"Hello, {w}!"),
]
OFF_TASK_WORDS = ["cat", "tree", "house", "river", "stone", "cloud", "apple", "music", "green", "table"]


@dataclass(frozen=True)
class ArithConfig:
    """Generator settings. Rates are fractions of the pool; the rest is clean."""

    pool_size: int = 2000
    dev_size: int = 200
    test_size: int = 400
    seed: int = 0
    max_operand: int = 9
    # difficulty mix: fraction of two-step problems
    pool_two_step: float = 0.3
    eval_two_step: float = 0.6
    # defect rates (fractions of the pool)
    wrong_answer: float = 0.20
    truncated: float = 0.05
    off_format: float = 0.05
    exact_dup: float = 0.05
    near_dup: float = 0.05
    off_task: float = 0.05
    trivial: float = 0.10
    # skill mix of the pool (add, sub, mix); dev/test are balanced
    pool_skill_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)

    def __post_init__(self):
        total = sum(getattr(self, d) for d in DEFECTS)
        if total >= 0.95:
            raise ValueError(f"arith defect rates sum to {total:.2f}; they must leave room for clean examples")
        for d in DEFECTS:
            v = getattr(self, d)
            if not 0 <= v < 1:
                raise ValueError(f"arith rate {d}={v} must be in [0, 1)")


@dataclass(frozen=True)
class Problem:
    skill: str
    steps: int
    question: str
    work: list[str]
    answer: int

    def response(self) -> str:
        return " ".join(self.work) + f" The answer is {self.answer}."


def _make_problem(rng: random.Random, skill: str, steps: int, mx: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    while True:
        a = rng.randint(1, mx)
        if steps == 1:
            ops = ["+"] if skill == "add" else ["-"]
        elif skill == "add":
            ops = ["+", "+"]
        elif skill == "sub":
            ops = ["-", "-"]
        else:
            ops = rng.choice([["+", "-"], ["-", "+"]])
        vals = [rng.randint(1, mx) for _ in ops]
        cur, work, ok = a, [], True
        for op, v in zip(ops, vals):
            nxt = cur + v if op == "+" else cur - v
            if nxt < 0 or nxt > 2 * mx + 2:
                ok = False
                break
            work.append(f"{cur}{op}{v}={nxt}.")
            cur = nxt
        if ok:
            break
    phrases = [f"gets {v}" if op == "+" else f"loses {v}" for op, v in zip(ops, vals)]
    action = phrases[0] if len(phrases) == 1 else f"{phrases[0]}, then {phrases[1]}"
    q = f"{name} has {a} {item}, {action}. How many now?"
    return Problem(skill, steps, q, work, cur)


def _rephrase(q: str, rng: random.Random) -> str:
    """A near-duplicate: same problem, a trivially different surface form (never identical)."""
    options = [
        q.replace(" now?", " are there now?"),
        q.replace(", ", ",  ", 1),
        q.replace("How many", "So how many"),
        q + " ",
    ]
    start = rng.randrange(3)
    for k in range(len(options)):
        cand = options[(start + k) % len(options)]
        if cand != q:
            return cand
    raise AssertionError("unreachable: the last option always differs")


def _item(prob: Problem, pid: str) -> TaskItem:
    return TaskItem(id=pid, question=prob.question, answer=str(prob.answer), target=prob.response(), domain=prob.skill)


def _eval_split(rng: random.Random, n: int, cfg: ArithConfig, prefix: str, exclude: set[str]) -> list[TaskItem]:
    items, seen = [], set(exclude)
    i = 0
    while len(items) < n:
        skill = SKILLS[i % len(SKILLS)]
        steps = 2 if (skill == "mix" or rng.random() < cfg.eval_two_step) else 1
        p = _make_problem(rng, skill, steps, cfg.max_operand)
        if p.question in seen:
            continue
        seen.add(p.question)
        items.append(_item(p, f"{prefix}-{len(items):05d}"))
        i += 1
    return items


class ArithTestbed:
    """Generates the ``arith`` task and its defect-laden pool from one config."""

    def __init__(self, config: ArithConfig | None = None, **overrides):
        self.config = config or ArithConfig(**overrides)
        if config is not None and overrides:
            raise ValueError("pass either an ArithConfig or keyword overrides, not both")

    # --- task
    def task(self) -> Task:
        cfg = self.config
        rng = random.Random(f"arith-eval-{cfg.seed}")
        dev = _eval_split(rng, cfg.dev_size, cfg, "dev", set())
        test = _eval_split(rng, cfg.test_size, cfg, "test", {it.question for it in dev})
        return Task(
            "arith", dev, test, prompt=PromptFormat(), extractor="answer_is", max_new_tokens=40,
            description="Synthetic one- and two-step add/sub word problems (thresher testbed).",
        )

    # --- pool
    def pool_rows(self) -> list[dict]:
        """Pool rows as Alpaca-style dicts, each with a hidden ``defect`` label (popped before use)."""
        cfg = self.config
        rng = random.Random(f"arith-pool-{cfg.seed}")
        eval_q = {it.question for it in self.task().dev} | {it.question for it in self.task()._sealed_test()}
        n = cfg.pool_size
        counts = {d: int(round(getattr(cfg, d) * n)) for d in DEFECTS}
        n_clean = n - sum(counts.values())
        base_n = n_clean + counts["wrong_answer"] + counts["truncated"] + counts["off_format"]

        problems: list[Problem] = []
        seen: set[str] = set(eval_q)
        while len(problems) < base_n:
            skill = rng.choices(SKILLS, weights=cfg.pool_skill_weights)[0]
            steps = 2 if (skill == "mix" or rng.random() < cfg.pool_two_step) else 1
            p = _make_problem(rng, skill, steps, cfg.max_operand)
            if p.question in seen:
                continue
            seen.add(p.question)
            problems.append(p)

        labels = ["clean"] * n_clean + ["wrong_answer"] * counts["wrong_answer"] + ["truncated"] * counts["truncated"] + ["off_format"] * counts["off_format"]
        rng.shuffle(labels)
        rows = []
        for p, label in zip(problems, labels):
            resp = p.response()
            if label == "wrong_answer":
                wrong = p.answer + rng.choice([-3, -2, -1, 1, 2, 3])
                if wrong < 0:
                    wrong = p.answer + rng.randint(1, 3)
                work = list(p.work)
                last = work[-1]
                work[-1] = last[: last.rindex("=") + 1] + f"{wrong}."
                resp = " ".join(work) + f" The answer is {wrong}."
            elif label == "truncated":
                cut = rng.randint(3, max(4, resp.index("The answer is")))
                resp = resp[:cut]
            elif label == "off_format":
                resp = rng.choice([f"{p.answer}", f"It is {p.answer}", f"Result: {p.answer}!", f"{p.answer} {p.question.split()[3].rstrip(',')}"])
            rows.append({"instruction": p.question, "output": resp, "defect": label, "skill": p.skill, "steps": p.steps})

        for _ in range(counts["trivial"]):
            name, item, a = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(1, cfg.max_operand)
            kind = rng.randrange(2)
            if kind == 0:
                q, r = f"{name} has {a} {item}. How many now?", f"The answer is {a}."
            else:
                q, r = f"{name} has {a} {item}, gets 0. How many now?", f"{a}+0={a}. The answer is {a}."
            rows.append({"instruction": q, "output": r, "defect": "trivial", "skill": "add", "steps": 0})
        for _ in range(counts["off_task"]):
            tmpl, fn = rng.choice(OFF_TASK)
            w = rng.choice(OFF_TASK_WORDS)
            rows.append({"instruction": tmpl.format(w=w), "output": fn(w), "defect": "off_task", "skill": "none", "steps": 0})

        originals = list(rows)
        for _ in range(counts["exact_dup"]):
            src = rng.choice(originals)
            rows.append(dict(src, defect="exact_dup"))
        for _ in range(counts["near_dup"]):
            src = rng.choice([r for r in originals if r["skill"] in SKILLS])
            rows.append(dict(src, instruction=_rephrase(src["instruction"], rng), defect="near_dup"))

        rng.shuffle(rows)
        for i, r in enumerate(rows):
            r["id"] = f"arith-{cfg.seed}-{i:06d}"
        return rows

    def build(self, out_dir: str | Path | None = None) -> tuple[Pool, Task, dict[str, str]]:
        """The pool (no labels in it), the task, and the hidden labels {id: defect}.

        With ``out_dir`` it also writes ``pool.jsonl`` and the side file ``defects.jsonl``.
        """
        rows = self.pool_rows()
        labels = {r["id"]: r["defect"] for r in rows}
        clean_rows = [{k: v for k, v in r.items() if k not in ("defect", "skill", "steps")} for r in rows]
        for r in clean_rows:
            r["source"] = "arith"
        pool = Pool.from_records(clean_rows, name="arith")
        task = self.task()
        if out_dir is not None:
            out = Path(out_dir)
            write_jsonl(out / "pool.jsonl", clean_rows)
            write_jsonl(out / "defects.jsonl", [{"id": r["id"], "defect": r["defect"], "skill": r["skill"], "steps": r["steps"]} for r in rows])
        return pool, task, labels


def defect_counts(ids, labels: dict[str, str]) -> dict[str, int]:
    """How many of each hidden label a selection kept (the arith labels, then any other label in ``labels``,
    e.g. the gsm8k-mix testbed's ``no_reasoning``)."""
    return _defect_counts(ids, labels, DEFECTS)
