"""Offline heuristics standing in for an LLM judge: Bloom's taxonomy level from action verbs.

THTB rates each instruction's cognitive level in Bloom's (revised) taxonomy with an LLM.
Without a judge, :func:`bloom_level` classifies an instruction with the action-verb lists
that teaching guides publish for each level (1 Remember, 2 Understand, 3 Apply,
4 Analyze, 5 Evaluate, 6 Create). It is a heuristic, and the signal says so in its name:
``bloom_heuristic``.

Rules (deterministic, hand-checkable):

- The text is lower-cased and split into words (``[a-z]+``); a level matches when one of
  its verbs appears as a whole word, in its base form only ("explain", not "explained":
  instructions are imperatives).
- Words that are mostly nouns in instructions ("order", "change", "rate", "grade", "sort",
  "report", "attribute") are left out of the lists.
- Every verb belongs to exactly one level (published lists overlap; we put a shared verb
  where most lists put it, and an import-time check keeps the lists disjoint), so there
  are no ties between levels for a single verb.
- With several matching verbs the **highest** level wins ("List three causes and
  evaluate them" is 5): a task is as demanding as its hardest part.
- No matching verb gives level 1 (a plain question such as "What is the capital of
  France?" asks to remember a fact).
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import Field

from thresher.signals.base import Signal, SignalParams, register_signal

BLOOM_LEVEL_NAMES = ("Remember", "Understand", "Apply", "Analyze", "Evaluate", "Create")

#: level -> action verbs (base forms, lower case; British spellings included)
BLOOM_VERBS: dict[int, frozenset[str]] = {
    1: frozenset({
        "define", "list", "recall", "name", "identify", "memorize", "memorise", "repeat", "label", "recognize",
        "recognise", "locate", "quote", "recite", "tell", "find", "select", "state", "retrieve", "enumerate",
    }),
    2: frozenset({
        "explain", "describe", "summarize", "summarise", "classify", "paraphrase", "interpret", "discuss",
        "translate", "outline", "restate", "rewrite", "clarify", "exemplify", "infer", "review",
        "rephrase", "categorize", "categorise", "express", "extend",
    }),
    3: frozenset({
        "apply", "calculate", "compute", "solve", "use", "demonstrate", "implement", "execute", "convert",
        "illustrate", "operate", "complete", "employ", "sketch", "modify", "edit", "arrange", "show",
        "simulate", "predict",
    }),
    4: frozenset({
        "analyze", "analyse", "compare", "contrast", "differentiate", "distinguish", "examine", "organize",
        "organise", "deconstruct", "investigate", "diagnose", "dissect", "inspect", "debug", "detect",
        "correlate", "discriminate", "relate",
    }),
    5: frozenset({
        "evaluate", "assess", "judge", "critique", "criticize", "criticise", "justify", "argue", "defend",
        "rank", "recommend", "prioritize", "prioritise", "appraise", "conclude", "decide",
        "determine", "verify", "validate", "weigh", "choose", "convince", "persuade",
    }),
    6: frozenset({
        "create", "design", "compose", "write", "generate", "invent", "develop", "construct", "formulate",
        "devise", "produce", "plan", "propose", "build", "imagine", "brainstorm", "draft", "hypothesize",
        "hypothesise", "suggest", "craft", "compile", "synthesize", "synthesise", "originate",
    }),
}


def _check_disjoint() -> dict[str, int]:
    owner: dict[str, int] = {}
    for level, verbs in BLOOM_VERBS.items():
        for v in verbs:
            if v in owner:
                raise ValueError(f"Bloom verb {v!r} is listed at levels {owner[v]} and {level}; each verb needs one level")
            owner[v] = level
    return owner


#: verb -> its Bloom level
VERB_LEVEL: dict[str, int] = _check_disjoint()

_WORD = re.compile(r"[a-z]+")


def bloom_verbs_found(text: str) -> dict[str, int]:
    """The Bloom verbs that occur as whole words in ``text``, with their levels (first-seen order)."""
    found: dict[str, int] = {}
    for w in _WORD.findall(text.lower()):
        level = VERB_LEVEL.get(w)
        if level is not None and w not in found:
            found[w] = level
    return found


def bloom_level(text: str) -> int:
    """Bloom level 1..6 of an instruction: the highest level among its action verbs, 1 if none."""
    found = bloom_verbs_found(text)
    return max(found.values(), default=1)


def bloom_norm(level: int | np.ndarray) -> float | np.ndarray:
    """Level 1..6 min-max normalised to [0, 1]: (level - 1) / 5 (THTB's paper form)."""
    return (np.asarray(level, dtype=np.float64) - 1.0) / 5.0


def instruction_text(record: dict, text: str = "instruction") -> str:
    """What the Bloom classifier reads.

    ``"instruction"``: the first paragraph (up to the first blank line) of the first user
    turn: for Alpaca-format pools exactly the ``instruction`` field, without its
    ``input`` data, whose words are material rather than the task. ``"user"``: every
    user turn.
    """
    users = [m["content"] for m in record["messages"] if m["role"] == "user"]
    if text == "user":
        return "\n\n".join(users)
    if text != "instruction":
        raise ValueError(f"bloom_heuristic: text must be 'instruction' or 'user', got {text!r}")
    if not users:
        return ""
    first = users[0].strip()
    return re.split(r"\n\s*\n", first, maxsplit=1)[0]


class BloomHeuristicParams(SignalParams):
    text: Literal["instruction", "user"] = Field(
        "instruction", description="instruction: first paragraph of the first user turn (Alpaca instruction); user: all user turns"
    )


@register_signal
class BloomHeuristic(Signal):
    name = "bloom_heuristic"
    version = 1
    family = "judge"
    columns = ("bloom_level", "bloom_norm")
    Params = BloomHeuristicParams
    description = ("HEURISTIC Bloom's taxonomy level of the instruction (1 Remember .. 6 Create) from action-verb "
                   "lists: the highest level whose verb appears, 1 if none; bloom_norm = (level - 1) / 5")
    default_shard_size = 16384
    process_shards = True

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        levels = np.array([bloom_level(instruction_text(r, self.params.text)) for r in records], dtype=np.int64)
        return {"bloom_level": levels, "bloom_norm": bloom_norm(levels)}
