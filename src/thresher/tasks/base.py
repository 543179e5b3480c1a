"""Tasks: what the selected data should make the model good at.

A task bundles a dev split (the only split selection may look at), a test split
(scored once, at the end), a prompt format, answer extraction and a metric.

Selectors and searches receive a :class:`DevTask` (dev split, prompt format,
extraction, metric; no test items). The test split is reachable only through
:func:`thresher.oracle.core.Oracle.score_test`, which scores each final selection once and
records that it did. Decontamination (:mod:`thresher.decontam`) also reads the test
text, only to find the pool examples that overlap it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from thresher.data.pool import read_jsonl

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


@dataclass(frozen=True)
class TaskItem:
    """One evaluation item: a question, its gold answer and a gold worked response."""

    id: str
    question: str
    answer: str
    target: str = ""
    domain: str = "all"

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_number(text: str | None) -> str | None:
    """'1,234.00' -> '1234', '$5' -> '5', '-3.50' -> '-3.5'; None stays None."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        return t
    if v == int(v):
        return str(int(v))
    return repr(v).rstrip("0").rstrip(".")


def extract_answer_is(text: str) -> str | None:
    """Extract N from '... The answer is N.' (the last such phrase)."""
    hits = re.findall(r"[Tt]he answer is\s*(" + _NUM + ")", text)
    return normalise_number(hits[-1]) if hits else None


def extract_gsm8k(text: str) -> str | None:
    """GSM8K: strict '#### N' first, then 'The answer is N', then the last number (lm-eval's flexible match)."""
    hits = re.findall(r"####\s*(" + _NUM + ")", text)
    if hits:
        return normalise_number(hits[-1])
    got = extract_answer_is(text)
    if got is not None:
        return got
    nums = re.findall(_NUM, text)
    return normalise_number(nums[-1]) if nums else None


def extract_last_number(text: str) -> str | None:
    nums = re.findall(_NUM, text)
    return normalise_number(nums[-1]) if nums else None


def extract_exact(text: str) -> str | None:
    t = text.strip()
    return t or None


#: the oracle metrics a task may choose (its ``metric``): ``accuracy`` (greedy generation,
#: extracted answer vs gold) or ``loglik`` (gold-answer log-likelihood: the mean
#: log-probability per answer content token of the reference solution, ``TaskItem.target``
#: else ``answer``, under the chat template; one batched forward pass, no generation)
METRICS = ("accuracy", "loglik")
#: the range of each metric's value (an envelope of predicted scores is clipped to it)
METRIC_RANGE = {"accuracy": (0.0, 1.0), "loglik": (float("-inf"), 0.0)}

EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "answer_is": extract_answer_is,
    "gsm8k": extract_gsm8k,
    "last_number": extract_last_number,
    "exact": extract_exact,
}


@dataclass
class PromptFormat:
    """How a task item becomes chat messages for the model."""

    system: str | None = None
    user_template: str = "{question}"

    def messages(self, item: TaskItem) -> list[dict[str, str]]:
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        msgs.append({"role": "user", "content": self.user_template.format(question=item.question)})
        return msgs


@dataclass
class DevTask:
    """What selection may see of a task: the dev split, the prompt format, extraction and metric."""

    name: str
    dev: list[TaskItem]
    prompt: PromptFormat = field(default_factory=PromptFormat)
    extractor: str = "answer_is"
    max_new_tokens: int = 48
    #: the oracle's score (:data:`METRICS`): ``accuracy`` or ``loglik``
    metric: str = "accuracy"
    #: also compute the other metric (for ``loglik``: accuracy needs generation, so only on request;
    #: both land in the oracle's result and :class:`~thresher.oracle.core.Score`)
    both_metrics: bool = False

    def __post_init__(self):
        check_metric(self.metric, self.both_metrics)

    @property
    def domains(self) -> list[str]:
        return sorted({it.domain for it in self.dev})

    def messages(self, item: TaskItem) -> list[dict[str, str]]:
        return self.prompt.messages(item)

    def extract(self, text: str) -> str | None:
        return EXTRACTORS[self.extractor](text)

    def is_correct(self, generated: str, item: TaskItem) -> bool:
        """Exact match of the extracted answer against the gold answer (numbers normalised)."""
        pred = self.extract(generated)
        if pred is None:
            return False
        gold = normalise_number(item.answer) if self.extractor != "exact" else item.answer.strip()
        return pred == gold

    def demo_messages(self, item: TaskItem) -> list[dict[str, str]]:
        """The item as a solved example (question + gold worked response)."""
        return self.messages(item) + [{"role": "assistant", "content": item.target or item.answer}]

    def metric_tag(self) -> str | None:
        """What the oracle's cache key adds for the metric (None for plain accuracy: old keys stay valid)."""
        if self.metric == "accuracy" and not self.both_metrics:
            return None
        return f"{self.metric}{'+both' if self.both_metrics else ''}"

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.extractor, self.prompt.system, self.prompt.user_template, self.max_new_tokens]).encode())
        for it in self.dev:
            h.update(json.dumps(it.to_dict(), sort_keys=True).encode())
        return h.hexdigest()


class Task(DevTask):
    """A full task: a :class:`DevTask` plus a sealed test split."""

    def __init__(self, name: str, dev: Sequence[TaskItem], test: Sequence[TaskItem], prompt: PromptFormat | None = None,
                 extractor: str = "answer_is", max_new_tokens: int = 48, description: str = "", metric: str = "accuracy",
                 both_metrics: bool = False):
        super().__init__(name=name, dev=list(dev), prompt=prompt or PromptFormat(), extractor=extractor, max_new_tokens=max_new_tokens,
                         metric=metric, both_metrics=both_metrics)
        if extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {extractor!r}; known: {sorted(EXTRACTORS)}")
        self._test = list(test)
        self.description = description
        dev_q = {it.question for it in self.dev}
        leaked = [it.id for it in self._test if it.question in dev_q]
        if leaked:
            raise ValueError(f"task {name!r}: {len(leaked)} test questions also appear in dev (e.g. {leaked[:3]})")

    def dev_view(self) -> DevTask:
        """The dev-only view handed to selectors and searches."""
        return DevTask(name=self.name, dev=self.dev, prompt=self.prompt, extractor=self.extractor, max_new_tokens=self.max_new_tokens,
                       metric=self.metric, both_metrics=self.both_metrics)

    def with_metric(self, metric: str | None = None, both_metrics: bool | None = None) -> Task:
        """This task scored with another metric (same items)."""
        return self.with_dev(self.dev, metric=metric, both_metrics=both_metrics)

    def with_dev(self, dev: Sequence[TaskItem], metric: str | None = None, both_metrics: bool | None = None) -> Task:
        """A copy with another dev split (e.g. a cheaper inner oracle's subset of it), same test split."""
        t = Task(self.name, dev, self._test, prompt=self.prompt, extractor=self.extractor, max_new_tokens=self.max_new_tokens,
                 description=self.description, metric=self.metric if metric is None else metric,
                 both_metrics=self.both_metrics if both_metrics is None else both_metrics)
        return t

    @property
    def test_size(self) -> int:
        return len(self._test)

    def _sealed_test(self) -> list[TaskItem]:
        # Only the oracle's final scoring calls this (see thresher.oracle.core.Oracle.score_test), and
        # thresher.decontam, which compares the test text with the pool and never returns it.
        return self._test

    def __repr__(self) -> str:
        return f"Task({self.name!r}, dev={len(self.dev)}, test={len(self._test)}, domains={self.domains})"


def check_metric(metric, both_metrics=False) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown task metric {metric!r}; known: {list(METRICS)}")
    if not isinstance(both_metrics, bool):
        raise ValueError(f"both_metrics must be true or false, got {both_metrics!r}")


# --------------------------------------------------------------------------- hidden defect labels (testbeds)


def read_defect_labels(path: str | os.PathLike) -> dict[str, str]:
    """Read a testbed's ``defects.jsonl`` side file (``{"id", "defect", ...}`` a line) as ``{id: defect}``.

    Diagnostics only: selectors never call this.
    """

    return {r["id"]: r["defect"] for r in read_jsonl(path)}


def defect_counts(ids: Iterable[str], labels: dict[str, str], kinds: Sequence[str] = ()) -> dict[str, int]:
    """How many of each hidden label a selection kept.

    Keys: ``clean``, then ``kinds`` (a testbed's defect names, always present), then any
    other label that occurs in ``labels`` (sorted). Ids without a label are not counted.
    """
    c = Counter(labels.get(i, "unknown") for i in ids)
    extra = sorted({v for v in labels.values()} - {"clean", *kinds})
    return {k: c.get(k, 0) for k in ("clean", *kinds, *extra)}
