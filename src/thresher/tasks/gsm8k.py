"""``gsm8k``: grade-school math word problems (Cobbe et al., 2021).

Built from local files (``train.jsonl`` / ``test.jsonl``, one ``{"question", "answer"}``
object a line) or from the hub (``openai/gsm8k``, config ``main``).

- dev: ``dev_size`` problems drawn (seeded) from the TRAIN split; selection only sees these;
- test: the official test split, optionally subsampled (seeded) to ``test_size``;
- pool: :func:`gsm8k_pool` gives the train problems outside the dev split, so no dev
  problem can leak into the candidate training data.

Each answer is a worked solution ending in ``#### N``. ``TaskItem.answer`` is ``N``
normalised (``1,234`` -> ``1234``); ``TaskItem.target`` (and the pool's assistant turn) is
the solution with the ``<<48/2=24>>`` calculator annotations removed, ending in ``#### N``.

Local files are found, in order, at ``path=``, ``$THRESHER_SHARED_DATA/gsm8k`` and the
``shared/data/gsm8k`` folder beside the repository checkout.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from thresher.data.pool import Pool
from thresher.data.records import normalise_row
from thresher.tasks.base import PromptFormat, Task, TaskItem, normalise_number
from thresher.tasks.custom import TaskDataError, iter_jsonl_rows

__all__ = [
    "GSM8K_HUB",
    "GSM8KProblem",
    "gsm8k_dev_indices",
    "gsm8k_dir",
    "gsm8k_pool",
    "gsm8k_task",
    "load_gsm8k_split",
    "parse_gsm8k_answer",
    "shared_data_dir",
    "strip_calculator",
]

GSM8K_HUB = "openai/gsm8k"
SPLITS = ("train", "test")
_CALC = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class GSM8KProblem:
    """One GSM8K problem; ``index`` is its 0-based position in its split."""

    split: str
    index: int
    question: str
    answer: str  # the final number, normalised
    solution: str  # the worked solution without calculator annotations, ending in "#### N"

    @property
    def id(self) -> str:
        return f"gsm8k-{self.split}-{self.index:05d}"

    def item(self) -> TaskItem:
        return TaskItem(id=self.id, question=self.question, answer=self.answer, target=self.solution, domain="gsm8k")


# --------------------------------------------------------------------------- locating the files


def shared_data_dir() -> Path:
    """The shared data folder: ``$THRESHER_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    env = os.environ.get("THRESHER_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    # src/thresher/tasks/gsm8k.py -> parents[3] is the checkout, parents[4] holds ``shared``
    if len(here.parents) > 4 and here.parents[2].name == "src":
        return here.parents[4] / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def gsm8k_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``train.jsonl`` and ``test.jsonl`` (``path`` may also be its parent)."""
    tried = []
    candidates = [Path(path).expanduser()] if path is not None else [shared_data_dir() / "gsm8k"]
    if path is not None:
        candidates.append(Path(path).expanduser() / "gsm8k")
    for c in candidates:
        tried.append(str(c))
        if all((c / f"{s}.jsonl").is_file() for s in SPLITS):
            return c
    raise FileNotFoundError(
        f"GSM8K files train.jsonl and test.jsonl not found in {' or '.join(tried)}; "
        f"pass path=DIR, set THRESHER_SHARED_DATA, or use hub={GSM8K_HUB!r}"
    )


# --------------------------------------------------------------------------- parsing


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
    return _CALC.sub("", text)


def parse_gsm8k_answer(answer: str) -> tuple[str, str]:
    """Split a GSM8K answer into ``(final number, clean worked solution)``.

    The final number is the text after the last ``####``, normalised
    (``"1,234"`` -> ``"1234"``, ``"-3.50"`` -> ``"-3.5"``). The solution has the
    calculator annotations removed and ends in ``"#### N"`` with that normalised N.
    Raises ``ValueError`` when there is no ``####`` line or no number after it.
    """
    if "####" not in answer:
        raise ValueError("no '#### N' final answer line")
    body, final = answer.rsplit("####", 1)
    final = final.strip()
    num = normalise_number(final)
    if num is None or not re.fullmatch(r"-?\d+(?:\.\d+)?", num):
        raise ValueError(f"the text after '####' is not a number: {final!r}")
    body = strip_calculator(body).rstrip()
    solution = f"{body}\n#### {num}" if body else f"#### {num}"
    return num, solution


def _problem(row: dict, split: str, index: int, path: str, line: int | None) -> GSM8KProblem:
    for key in ("question", "answer"):
        if key not in row:
            raise TaskDataError(path, line, key, "missing required field")
        if not isinstance(row[key], str) or not row[key].strip():
            raise TaskDataError(path, line, key, f"expected a non-empty string, got {row[key]!r:.60}")
    try:
        num, solution = parse_gsm8k_answer(row["answer"])
    except ValueError as e:
        raise TaskDataError(path, line, "answer", str(e)) from None
    return GSM8KProblem(split=split, index=index, question=row["question"].strip(), answer=num, solution=solution)


def load_gsm8k_split(split: str, path: str | os.PathLike | None = None, hub: str | None = None,
                     hub_config: str = "main") -> list[GSM8KProblem]:
    """All problems of one split, in file order, from local files or (with ``hub``) the hub."""
    if split not in SPLITS:
        raise ValueError(f"GSM8K split must be one of {SPLITS}, got {split!r}")
    if hub is not None:
        import datasets

        ds = datasets.load_dataset(hub, hub_config, split=split)
        return [_problem(row, split, i, f"{hub}[{split}]", i + 1) for i, row in enumerate(ds)]
    file = gsm8k_dir(path) / f"{split}.jsonl"
    return [_problem(row, split, i, str(file), line) for i, (line, row) in enumerate(iter_jsonl_rows(file))]


def gsm8k_dev_indices(n_train: int, dev_size: int = 200, seed: int = 0) -> list[int]:
    """The (sorted) train indices carved out as the dev split: a seeded sample."""
    if not 0 < dev_size < n_train:
        raise ValueError(f"dev_size must be in 1..{n_train - 1} (the train split has {n_train} problems), got {dev_size}")
    rng = random.Random(f"gsm8k-dev-{seed}")
    return sorted(rng.sample(range(n_train), dev_size))


# --------------------------------------------------------------------------- task and pool


def gsm8k_task(path: str | os.PathLike | None = None, *, hub: str | None = None, hub_config: str = "main",
               dev_size: int = 200, test_size: int | None = None, seed: int = 0, system: str | None = None,
               user_template: str = "{question}", max_new_tokens: int = 256, metric: str = "accuracy",
               both_metrics: bool = False) -> Task:
    """The GSM8K task: dev carved (seeded) from train, test = the official test split.

    ``metric``: ``accuracy`` (generation, ``#### N`` extraction) or ``loglik`` (the mean
    log-probability per token of the gold worked solution; moves on a 135M model, where
    generation accuracy sits near 0); ``both_metrics`` also computes the other one.
    """
    train = load_gsm8k_split("train", path, hub, hub_config)
    test = load_gsm8k_split("test", path, hub, hub_config)
    dev = [train[i].item() for i in gsm8k_dev_indices(len(train), dev_size, seed)]
    test_items = [p.item() for p in test]
    if test_size is not None:
        if not 0 < test_size <= len(test_items):
            raise ValueError(f"test_size must be in 1..{len(test_items)}, got {test_size}")
        rng = random.Random(f"gsm8k-test-{seed}")
        test_items = [test_items[i] for i in sorted(rng.sample(range(len(test_items)), test_size))]
    return Task(
        "gsm8k", dev, test_items, prompt=PromptFormat(system=system, user_template=user_template),
        extractor="gsm8k", max_new_tokens=max_new_tokens, metric=metric, both_metrics=both_metrics,
        description="GSM8K grade-school math; dev carved from train, test is the official test split.",
    )


def gsm8k_pool(path: str | os.PathLike | None = None, exclude_dev: bool = True, *, hub: str | None = None,
               hub_config: str = "main", dev_size: int = 200, seed: int = 0, name: str = "gsm8k") -> Pool:
    """The GSM8K train problems as a pool (user = question, assistant = clean worked answer).

    With ``exclude_dev`` (the default) the problems of the dev split that
    :func:`gsm8k_task` builds with the same ``dev_size`` and ``seed`` are left out.
    """
    train = load_gsm8k_split("train", path, hub, hub_config)
    dev = set(gsm8k_dev_indices(len(train), dev_size, seed)) if exclude_dev else set()
    dev_questions = {train[i].question for i in dev}
    records = []
    for p in train:
        if p.index in dev or p.question in dev_questions:
            continue
        row = {"id": p.id, "question": p.question, "answer": p.solution, "source": "gsm8k",
               "final_answer": p.answer, "split": "train"}
        records.append(normalise_row(row, path=None, line=p.index + 1, fmt="qa"))
    return Pool(records, name=name)
