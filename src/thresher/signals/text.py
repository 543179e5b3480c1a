"""Text statistics: characters and model tokens per role, turns; word entropy, reasoning
steps, and THTB's instruction-response expansion index (IREI).

None of these needs a model except ``text`` (a tokenizer counts tokens).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field

from thresher.models.load import load_tokenizer, model_identity, quiet_length_warning
from thresher.signals.base import Signal, SignalParams, register_signal
from thresher.signals.bpe_count import ByteLevelCounter, backend_counts
from thresher.threads import tokenizer_threads


class TextParams(SignalParams):
    model: str = Field("micro", description="whose tokenizer counts tokens: micro, small, hub id or path, or auto (micro on the arith testbed, small on any other pool: what a selector's default scorer passes)")


@register_signal
class TextStats(Signal):
    name = "text"
    version = 1
    family = "text"
    columns = ("chars_user", "chars_answer", "chars_total", "tokens_user", "tokens_answer", "tokens_total", "turns")
    Params = TextParams
    description = "characters and tokenizer tokens of the user and assistant sides, and the number of assistant turns"
    default_shard_size = 4096
    process_shards = True  # the tokenizer's counting is Python (bpe_count) or one Rust thread a process
    scorer_model = True  # model="auto" resolves on the pool, like the lm signal's scorer
    scorer_role = "tokenizer"

    def model_id(self) -> str | None:
        return model_identity(self.params.model)

    def setup(self) -> None:
        # counting tokens of any length is the point: no "longer than the maximum" warning
        self.tokenizer = quiet_length_warning(load_tokenizer(self.params.model))
        self.counter = ByteLevelCounter.for_tokenizer(self.tokenizer)  # GPT-2-style BPE: counted without tokenizing

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        users = ["\n\n".join(m["content"] for m in r["messages"] if m["role"] != "assistant") for r in records]
        answers = ["\n\n".join(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in records]
        ku, ka = token_counts(self.tokenizer, users, self.counter), token_counts(self.tokenizer, answers, self.counter)
        cu = np.array([len(u) for u in users], dtype=np.int64)
        ca = np.array([len(a) for a in answers], dtype=np.int64)
        turns = np.array([sum(m["role"] == "assistant" for m in r["messages"]) for r in records], dtype=np.int64)
        return {"chars_user": cu, "chars_answer": ca, "chars_total": cu + ca, "tokens_user": ku, "tokens_answer": ka,
                "tokens_total": ku + ka, "turns": turns}


def token_counts(tokenizer, texts: list[str], counter: ByteLevelCounter | None = None) -> np.ndarray:
    """Tokens of each text without special tokens, over the process's thread budget: by
    ``counter`` when given (a GPT-2-style byte-level BPE, :mod:`thresher.signals.bpe_count`);
    else a fast tokenizer whose Rust backend neither truncates nor pads is asked for the counts
    alone (``encode_batch_fast``: no offsets, no Python lists of ids); any other tokenizer goes
    through its ``__call__``. The same counts every way."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    with tokenizer_threads():
        if counter is not None:
            return counter.counts(texts)
        if backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None \
                and backend.padding is None:
            return backend_counts(backend, texts)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.array([len(t) for t in ids], dtype=np.int64)


# --------------------------------------------------------------------------- sides of a record

Side = Literal["answer", "user", "all"]


def side_text(record: dict, side: str) -> str:
    """``answer``: assistant turns; ``user``: user turns; ``all``: every turn (system included), joined by blank lines."""
    if side == "answer":
        roles = ("assistant",)
    elif side == "user":
        roles = ("user",)
    elif side == "all":
        roles = ("system", "user", "assistant")
    else:
        raise ValueError(f"side must be 'answer', 'user' or 'all', got {side!r}")
    return "\n\n".join(m["content"] for m in record["messages"] if m["role"] in roles)


# --------------------------------------------------------------------------- unigram entropy

_WORD_TOKEN = re.compile(r"\b\w+\b")


def unigram_entropy(text: str) -> float:
    """Shannon entropy in nats (natural log) of the lower-cased ``\\b\\w+\\b`` word distribution.

    ``H = -sum_w p_w ln p_w`` with ``p_w`` = count of word w / number of words. A text of
    k distinct words each used once has ``ln k``; one with no word at all has 0.
    """
    counts = Counter(_WORD_TOKEN.findall(text.lower()))
    total = sum(counts.values())
    if total == 0:
        return 0.0
    h = -sum((c / total) * math.log(c / total) for c in counts.values())
    return h if h > 0 else 0.0  # one distinct word: 0, not -0.0


class UnigramEntropyParams(SignalParams):
    side: Side = Field("answer", description="which text: answer (assistant turns), user (user turns) or all (every turn)")


@register_signal
class UnigramEntropy(Signal):
    name = "unigram_entropy"
    version = 1
    family = "text"
    columns = ("unigram_entropy",)
    Params = UnigramEntropyParams
    description = "Shannon entropy (nats) of the lower-cased \\b\\w+\\b word distribution of one side (default: the answer)"
    default_shard_size = 16384
    process_shards = True

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        side = self.params.side
        return {"unigram_entropy": np.array([unigram_entropy(side_text(r, side)) for r in records], dtype=np.float64)}


# --------------------------------------------------------------------------- reasoning steps

#: a digit, an operator (- + * / x × ÷ =), a digit; spaces allowed around the operator
ARITHMETIC = re.compile(r"\d\s*[-+*/x×÷=]\s*\d")
#: a list marker at the start of a line: "1." / "2)" / "- " / "* " / "• "
LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
#: a step word at the start of a sentence: "Step 3", First(ly), Second(ly), Third(ly), Then, Next, Finally, Lastly
STEP_WORD = re.compile(r"^(?:step\s*\d+\b|(?:first|second|third)(?:ly)?\b|then\b|next\b|finally\b|lastly\b)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def step_units(answer: str) -> list[tuple[str, bool]]:
    """The answer split into (sentence, starts_a_list_item) units; see :func:`reasoning_steps`."""
    units: list[tuple[str, bool]] = []
    for line in answer.splitlines():
        if not line.strip():
            continue
        marker = LIST_MARKER.match(line)
        body = line[marker.end():] if marker else line.strip()
        for j, sentence in enumerate(s for s in _SENTENCE_END.split(body.strip()) if s):
            units.append((sentence, bool(marker) and j == 0))
    return units


def reasoning_steps(answer: str) -> int:
    """How many sentences of ``answer`` are reasoning steps.

    The answer is cut into lines (at newlines; blank lines are skipped); a list marker
    at the start of a line (``1.``, ``2)``, ``-``, ``*``, ``•`` followed by a space) is
    noted and removed; the rest of the line is cut into sentences after ``.``, ``!``
    or ``?`` followed by whitespace. A sentence counts as one step when

    - it contains an arithmetic operation: a digit, one of ``- + * / x × ÷ =``, a digit
      (spaces allowed around the operator: ``3 + 4``, ``12/4``, ``2x3``, ``=7``
      after a digit); or
    - it begins with a step word: ``Step <n>``, ``First``/``Firstly``, ``Second``/
      ``Secondly``, ``Third``/``Thirdly``, ``Then``, ``Next``, ``Finally``, ``Lastly``
      (any case, whole word); or
    - it is the first sentence of a list item (a line that began with a list marker).

    Each sentence counts at most once. A heuristic: dates and ranges ("2020-01", "3-5")
    also count as arithmetic.
    """
    return sum(
        1 for sentence, item in step_units(answer)
        if item or ARITHMETIC.search(sentence) or STEP_WORD.match(sentence)
    )


class ReasoningStepsParams(SignalParams):
    pass


@register_signal
class ReasoningSteps(Signal):
    name = "reasoning_steps"
    version = 1
    family = "text"
    columns = ("reasoning_steps",)
    Params = ReasoningStepsParams
    description = ("sentences of the answer that are reasoning steps: contain an arithmetic operation, start with a "
                   "step word (Step n, First, Then, Next, Finally...) or start a numbered/bulleted list item")
    default_shard_size = 16384
    process_shards = True

    def compute(self, records: list[dict]) -> dict[str, np.ndarray]:
        return {"reasoning_steps": np.array([reasoning_steps(side_text(r, "answer")) for r in records], dtype=np.int64)}


# --------------------------------------------------------------------------- IREI (THTB)


def minmax(values: np.ndarray) -> np.ndarray:
    """(v - min) / (max - min) over the array; an array with one value (or empty) maps to zeros."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


def irei_lengths(len_inst, len_resp) -> tuple[np.ndarray, np.ndarray]:
    """Instruction and response lengths as float arrays, checked: 1-d, one length, non-negative."""
    li = np.asarray(len_inst, dtype=np.float64)
    lr = np.asarray(len_resp, dtype=np.float64)
    if li.shape != lr.shape or li.ndim != 1:
        raise ValueError(f"irei: len_inst and len_resp must be 1-d and of one length, got {li.shape} and {lr.shape}")
    if (li < 0).any() or (lr < 0).any():
        raise ValueError("irei: lengths must be non-negative")
    return li, lr


def irei_scores(len_inst, len_resp) -> np.ndarray:
    """THTB's instruction-response expansion index (reference-code form).

    ``IREI = (minmax(L_inst + L_resp) + minmax(L_resp / L_inst)) / 2`` over the given set,
    with character lengths, the ratio 0 where the instruction is empty, and minmax of a
    constant equal to 0. Pass the lengths of the set you normalise over (the pool, or a
    THTB stage).
    """
    li, lr = irei_lengths(len_inst, len_resp)
    ratio = np.divide(lr, li, out=np.zeros_like(lr), where=li > 0)
    return (minmax(li + lr) + minmax(ratio)) / 2.0


class IREIParams(SignalParams):
    pass


@register_signal
class IREI(Signal):
    name = "irei"
    version = 1
    scope = "pool"
    family = "text"
    columns = ("irei", "irei_len_inst", "irei_len_resp")
    Params = IREIParams
    description = ("THTB instruction-response expansion index over the pool: (minmax(L_inst + L_resp) + "
                   "minmax(L_resp / L_inst)) / 2 on characters of the user and assistant turns; raw lengths kept "
                   "so THTB can renormalise within a stage (irei_scores)")

    def compute_pool(self, pool, inputs) -> dict[str, np.ndarray]:
        li = np.array([len(side_text(r, "user")) for r in pool], dtype=np.int64)
        lr = np.array([len(side_text(r, "answer")) for r in pool], dtype=np.int64)
        return {"irei": irei_scores(li, lr), "irei_len_inst": li, "irei_len_resp": lr}
