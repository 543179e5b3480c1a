"""Chat encoding with an answer-token mask taken from the model's own chat template.

Every assistant turn is answer. The mask is found by rendering the conversation with
the tokenizer's chat template and locating each assistant turn's character span (the
text the template adds between "prefix with generation prompt" and "prefix plus this
turn", i.e. the content and the template's end-of-turn marker), then marking the
tokens whose character offsets fall inside those spans. This is the same definition
for every model, so IFD and losses do not silently change meaning with the template.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TemplateError(ValueError):
    pass


@dataclass
class Encoded:
    """Token ids of one conversation and a boolean mask of its answer tokens."""

    input_ids: list[int]
    answer_mask: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)


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


def assistant_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if i and upto.startswith(prefix) and full.startswith(upto):
            start, end = len(prefix), len(upto)
        else:
            # templates that are not prefix-stable: find the content itself, in order
            start = full.find(m["content"], spans[-1][1] if spans else 0)
            if start < 0:
                raise TemplateError(
                    f"cannot locate assistant turn {i} in the rendered chat template; "
                    "the template rewrites assistant content"
                )
            end = start + len(m["content"])
        if m["content"].strip() not in full[start:end]:
            raise TemplateError(f"assistant turn {i}: the template span does not contain the turn's content")
        spans.append((start, end))
    return full, spans


def _offsets_tokenize(tokenizer, text: str):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def encode_conversation(tokenizer, messages, max_length: int | None = None) -> Encoded:
    """Token ids of the whole rendered conversation with the answer-token mask."""
    text, spans = assistant_spans(tokenizer, messages)
    ids, offsets = _offsets_tokenize(tokenizer, text)
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids, offsets = [tokenizer.bos_token_id] + list(ids), [(0, 0)] + list(offsets)
    mask = [False] * len(ids)
    j = 0
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and spans[j][0] <= s < spans[j][1]:
            mask[t] = True
    if max_length is not None and len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(list(ids), mask)


def encode_answer_alone(tokenizer, messages, max_length: int | None = None) -> Encoded:
    """The answer text by itself (Cherry's unconditioned pass): assistant turns joined by a
    blank line, preceded by the BOS token when the tokenizer has one; every token after
    the first position is an answer token."""
    answer = "\n\n".join(m["content"] for m in messages if m["role"] == "assistant")
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids = [bos] + list(ids)
        mask = [False] + [True] * (len(ids) - 1)
    else:
        mask = [False] + [True] * (len(ids) - 1)
    if max_length is not None and len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(list(ids), mask)


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
