"""Chat encoding with answer-token masks taken from the model's own chat template.

Every assistant turn is answer. The turns are found by rendering the conversation with
the tokenizer's chat template: for assistant turn ``i`` the text the template adds
between "prefix with generation prompt" and "prefix plus this turn" is the turn's
content followed by the template's end-of-turn marker (``<|im_end|>\\n`` for SmolLM2,
``<eos>`` for the micro tier), and the text the generation prompt adds to the prefix
is the turn's *assistant header* (``<|im_start|>assistant\\n``, ``<|assistant|>``,
``### Response:\\n`` without a template). Tokens are assigned to these character
regions by their offsets. Two masks come from that:

- the *training* mask (``encode_conversation(..., turn_end=True)``, the default): the
  content and the end-of-turn tokens of every assistant turn, so a fine-tuned model
  learns to stop;
- the *scoring* mask (``turn_end=False``, used by the ``lm`` signal and the TMAP ICL
  proxy): the content tokens only. Every model statistic (loss, entropy, varentropy,
  IFD, the proxy's log-likelihood) averages over exactly these tokens.

The answer-alone sequence of IFD (:func:`encode_pair`) is, for every assistant turn,
its header followed by its content, in order, the turns separated by their end-of-turn
text, behind the template's BOS token when the conversation starts with one and the
header does not (Cherry's ``'### Response:' + output``). Its tokens are taken from the
conditioned sequence itself, so both passes score the very same answer tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from thresher.errors import ConfigError


class TemplateError(ConfigError):
    pass


@dataclass
class Encoded:
    """Token ids of one conversation and a boolean mask of its answer tokens."""

    input_ids: list[int]
    answer_mask: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class TurnSpan:
    """Character spans of one assistant turn in the rendered conversation.

    ``header``: the template text before the content (the generation prompt, e.g.
    ``<|im_start|>assistant\\n``; empty when it cannot be found); ``content``: the turn's
    content; ``end``: where the turn ends (``content[1]:end`` is the end-of-turn text);
    ``answer_start``: where the old/training answer span starts (the end of the prefix with
    generation prompt; equal to ``content[0]`` for ordinary templates).
    """

    header: tuple[int, int]
    content: tuple[int, int]
    end: int
    answer_start: int


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # Plain fallback for base models without a template (documented in the README).
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append("### Instruction:\n" + m["content"] + "\n\n")
        else:
            parts.append("### Response:\n" + m["content"] + (tokenizer.eos_token or "") + "\n\n")
    if add_generation_prompt:
        parts.append("### Response:\n")
    return "".join(parts)


def render_prompt(tokenizer, messages) -> str:
    """The text a model sees before it generates the next assistant turn."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def generation_header(tokenizer) -> str:
    """The assistant header the template's generation prompt adds (``""`` when it adds none)."""
    probe = [{"role": "user", "content": "x"}]
    try:
        without = _render(tokenizer, probe)
        with_ = _render(tokenizer, probe, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe has no usable header
        return ""
    return with_[len(without):] if with_.startswith(without) else ""


def assistant_turns(tokenizer, messages) -> tuple[str, list[TurnSpan]]:
    """The rendered conversation and the spans (:class:`TurnSpan`) of every assistant turn."""
    full = _render(tokenizer, messages)
    turns: list[TurnSpan] = []
    header_text = None
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        content = m["content"]
        prev_end = turns[-1].end if turns else 0
        header = None
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if i and upto.startswith(prefix) and full.startswith(upto):
            start, end = len(prefix), len(upto)
            body = full[start:end]
            if content.strip() not in body:
                raise TemplateError(f"assistant turn {i}: the template span does not contain the turn's content")
            text = content if content in body else content.strip()
            c0 = start + body.find(text)
            c1 = c0 + len(text)
            nogen = _render(tokenizer, messages[:i])
            if prefix.startswith(nogen) and len(nogen) >= prev_end:
                header = (len(nogen), start)
        else:
            # templates that are not prefix-stable: find the content itself, in order
            text = content
            c0 = full.find(text, prev_end)
            if c0 < 0:
                text = content.strip()
                c0 = full.find(text, prev_end)
            if c0 < 0:
                raise TemplateError(
                    f"cannot locate assistant turn {i} in the rendered chat template; "
                    "the template rewrites assistant content"
                )
            start, c1 = c0, c0 + len(text)
            end = c1
        if header is None:
            if header_text is None:
                header_text = generation_header(tokenizer)
            h0 = start - len(header_text)
            header = (h0, start) if header_text and h0 >= prev_end and full[h0:start] == header_text else (start, start)
        turns.append(TurnSpan(header=header, content=(c0, c1), end=end, answer_start=start))
    return full, turns


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn (content
    plus end-of-turn text: the training span)."""
    full, turns = assistant_turns(tokenizer, messages)
    return full, [(t.answer_start, t.end) for t in turns]


def _offsets_tokenize(tokenizer, text: str):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


#: with ``max_length`` set, only the first ``max_length * CHARS_PER_TOKEN`` characters of a
#: rendered conversation are tokenised (a 5 MB example costs what a capped one does)
CHARS_PER_TOKEN = 8


def truncation_note(truncated: int, capped: int, rows: int, max_length: int) -> str | None:
    """A run's line about long examples: how many were cut to ``max_length`` tokens and how many
    of those were tokenised only up to the character cap (None when nothing was cut)."""
    if not truncated:
        return None
    note = f"{truncated} of {rows} examples truncated to {max_length} tokens"
    if capped:
        note += f" ({capped} longer than {max_length * CHARS_PER_TOKEN} characters, tokenised only that far)"
    return note
#: tokens ending this close to the character cut may differ from the whole text's: not kept
CUT_MARGIN = 64


def _capped_tokenize(tokenizer, text: str, need: int, bos: int):
    """Tokenise a prefix of ``text`` that still yields the whole text's first ``need`` tokens.

    Starts at ``need * CHARS_PER_TOKEN`` characters and keeps the tokens that end at least
    ``CUT_MARGIN`` characters before the cut (the cut cannot have changed them); while
    fewer than ``need`` are left (``bos``: tokens the caller prepends), the prefix doubles,
    up to the whole text. Returns (ids, offsets, capped)."""
    limit = need * CHARS_PER_TOKEN
    while limit < len(text):
        ids, offsets = _offsets_tokenize(tokenizer, text[:limit])
        safe = 0
        for s, e in offsets:
            if e > limit - CUT_MARGIN:
                break
            safe += 1
        if safe + bos >= need:
            return list(ids[:safe]), [tuple(o) for o in offsets[:safe]], True
        limit *= 2
    ids, offsets = _offsets_tokenize(tokenizer, text)
    return list(ids), [tuple(o) for o in offsets], False


# token regions
_OTHER, _HEADER, _PRE, _CONTENT, _END = 0, 1, 2, 3, 4


@dataclass
class _Tokens:
    text: str
    turns: list[TurnSpan]
    ids: list[int]
    offsets: list[tuple[int, int]]
    region: np.ndarray  # per token: _OTHER, _HEADER, _PRE (template text between header and content), _CONTENT, _END
    turn: np.ndarray  # per token: index of its assistant turn, -1 outside
    capped: bool = False  # only a prefix of the text was tokenised (max_length tokens of it are exact)


def _tokenize_turns(tokenizer, messages, max_length: int | None = None) -> _Tokens:
    text, turns = assistant_turns(tokenizer, messages)
    add_bos = not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None
    if max_length is not None and len(text) > max_length * CHARS_PER_TOKEN:
        ids, offsets, capped = _capped_tokenize(tokenizer, text, max_length, int(add_bos))
    else:
        ids, offsets = _offsets_tokenize(tokenizer, text)
        ids, offsets, capped = list(ids), [tuple(o) for o in offsets], False
    if add_bos:
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    region = np.zeros(len(ids), dtype=np.int8)
    turn = np.full(len(ids), -1, dtype=np.int64)
    j = 0
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        while j < len(turns) and turns[j].end <= s:
            j += 1
        if j >= len(turns):
            break
        ts = turns[j]
        if ts.header[0] <= s < ts.header[1]:
            region[t] = _HEADER
        elif ts.header[1] <= s < ts.content[0]:
            region[t] = _PRE
        elif ts.content[0] <= s < ts.content[1]:
            region[t] = _CONTENT
        elif ts.content[1] <= s < ts.end:
            region[t] = _END
        else:
            continue
        turn[t] = j
    return _Tokens(text, turns, ids, offsets, region, turn, capped)


def _conversation_mask(tk: _Tokens, turn_end: bool) -> list[bool]:
    if turn_end:  # training span: from the end of the generation prompt to the end of the turn
        return np.isin(tk.region, (_PRE, _CONTENT, _END)).tolist()
    return (tk.region == _CONTENT).tolist()


def encode_conversation(tokenizer, messages, max_length: int | None = None, turn_end: bool = True,
                        last_turn: bool = False) -> Encoded:
    """Token ids of the whole rendered conversation with the answer-token mask.

    ``turn_end=True`` (training): the mask covers every assistant turn's content and its
    end-of-turn tokens. ``turn_end=False`` (scoring): the content tokens only.
    ``last_turn=True``: only the last assistant turn is marked (the others are context).
    With ``max_length``, a very long conversation is tokenised only as far as needed
    (:data:`CHARS_PER_TOKEN`); the ids are the same.
    """
    tk = _tokenize_turns(tokenizer, messages, max_length)
    ids, mask = tk.ids, _conversation_mask(tk, turn_end)
    if last_turn:
        mask = (np.asarray(mask, dtype=bool) & (tk.turn == len(tk.turns) - 1)).tolist()
    if max_length is not None and len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(list(ids), mask)


@dataclass
class ScoredPair:
    """The two sequences of IFD, scoring the same answer tokens.

    ``cond``: the conversation with the content-only answer mask; ``alone``: the
    answer-alone sequence; ``final_mask``: over ``cond``'s tokens, the final-answer
    segment of the last assistant turn (all False when it was cut away)."""

    cond: Encoded
    alone: Encoded
    final_mask: list[bool]
    #: the conversation had more than ``max_length`` tokens (it was cut to ``max_length``)
    truncated: bool = False
    #: it was so long that only a prefix of its characters was tokenised (implies ``truncated``)
    capped: bool = False


DEFAULT_FINAL_MARKERS = ("####", "The answer is")


def final_answer_span(content: str, markers=DEFAULT_FINAL_MARKERS) -> tuple[int, int]:
    """Character span of the final-answer segment of an answer.

    The text after the last occurrence of the first marker (in ``markers`` order, matched
    case-insensitively) that has non-blank text after it; otherwise the last non-blank
    line. Leading whitespace is skipped; the segment runs to the end of the answer.
    ``(len, len)`` for a blank answer.
    """
    n = len(content)
    for mk in markers:
        if not mk:
            continue
        hits = [h.end() for h in re.finditer(re.escape(mk), content, flags=re.IGNORECASE)]
        if hits:
            rest = content[hits[-1]:]
            if rest.strip():
                return hits[-1] + (len(rest) - len(rest.lstrip())), n
    body = content.rstrip()
    if not body:
        return n, n
    line0 = body.rfind("\n") + 1
    line = body[line0:]
    return line0 + (len(line) - len(line.lstrip())), n


def encode_pair(tokenizer, messages, max_length: int | None = None,
                final_markers=DEFAULT_FINAL_MARKERS) -> ScoredPair:
    """The conditioned sequence (content-only mask) and the answer-alone sequence of IFD.

    Answer alone: ``[BOS] + header_1 + content_1 + end_1 + header_2 + content_2 ...``, with
    the loss on the content tokens only (the end-of-turn tokens between turns are context).
    BOS is the conditioned sequence's first token when that is the tokenizer's BOS and the
    first header does not start with it (SmolLM2's header opens with ``<|im_start|>``, its
    BOS: no extra token there). Every token is taken from the conditioned sequence after
    ``max_length`` truncation, so the two masks select the same answer tokens, in order,
    and an answer cut away by truncation is cut from both. A conversation longer than
    ``max_length * CHARS_PER_TOKEN`` characters is tokenised only as far as the first
    ``max_length`` tokens need (same ids, bounded cost; ``capped`` says so).
    """
    tk = _tokenize_turns(tokenizer, messages, max_length)
    n = len(tk.ids) if max_length is None else min(len(tk.ids), max_length)
    region, turn = tk.region[:n], tk.turn[:n]
    content = region == _CONTENT
    cond = Encoded(list(tk.ids[:n]), content.tolist())
    # answer alone: the turn tokens except template text between the header and the content
    keep = (turn >= 0) & (region != _PRE)
    if keep.any():
        last = int(np.flatnonzero(content)[-1]) if content.any() else -1
        keep[last + 1:] = False  # nothing after the last scored token matters
    idx = np.flatnonzero(keep)
    bos = tokenizer.bos_token_id
    if n and bos is not None and tk.ids[0] == bos and not (len(idx) and idx[0] == 0) \
            and not (len(idx) and region[idx[0]] == _HEADER and tk.ids[idx[0]] == bos):
        idx = np.concatenate([[0], idx])
    alone = Encoded([tk.ids[i] for i in idx], [bool(content[i]) for i in idx])
    final = np.zeros(n, dtype=bool)
    if tk.turns:
        k = len(tk.turns) - 1
        c0, c1 = tk.turns[k].content
        f0, f1 = final_answer_span(tk.text[c0:c1], final_markers)
        f0, f1 = c0 + f0, c0 + f1
        for t in np.flatnonzero(content & (turn == k)):
            s, e = tk.offsets[t]
            if e > f0 and s < f1:
                final[t] = True
    return ScoredPair(cond, alone, final.tolist(), truncated=tk.capped or n < len(tk.ids), capped=tk.capped)


def encode_answer_alone(tokenizer, messages, max_length: int | None = None) -> Encoded:
    """The answer-alone sequence of :func:`encode_pair` (Cherry's unconditioned pass)."""
    return encode_pair(tokenizer, messages, max_length).alone


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids of the generation prompt (user side + assistant header)."""
    text = render_prompt(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + list(ids)
    return list(ids)


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right", masks: list[list[bool]] | None = None):
    """Pad to the longest sequence; returns ids, attention mask (and the padded answer masks)."""
    n = max(len(s) for s in seqs)
    ids = np.full((len(seqs), n), pad_id, dtype=np.int64)
    att = np.zeros((len(seqs), n), dtype=np.int64)
    ans = np.zeros((len(seqs), n), dtype=bool) if masks is not None else None
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(n - len(s), n)
        ids[i, sl] = s
        att[i, sl] = 1
        if ans is not None:
            ans[i, sl] = masks[i]
    return ids, att, ans


def batches_by_length(lengths, token_budget: int, max_rows: int | None = None, min_length: int = 0) -> list[list[int]]:
    """Indices ``0..n-1`` sorted by length (ties in index order), cut into consecutive batches.

    A batch closes before the sequence that would take its padded size (rows x the longest
    length in it, each length counted as at least ``min_length``) above ``token_budget``,
    or its rows above ``max_rows``; a sequence longer than the budget is a batch of its own.
    With ``min_length=0`` an empty sequence adds no padded tokens; ``min_length=1`` counts it
    as one token, so empty sequences cannot pile up into one unbounded batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, cur, cur_max = [], [], 0
    for i in order:
        L = max(min_length, lengths[i])
        if cur and (max(cur_max, L) * (len(cur) + 1) > token_budget or (max_rows and len(cur) >= max_rows)):
            out.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, L)
    if cur:
        out.append(cur)
    return out
