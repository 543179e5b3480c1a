"""Byte-level BPE token counts without tokenizing: equal to the Rust tokenizer's, text by text."""
from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.models.load import load_tokenizer
from thresher.signals.bpe_count import (
    ByteLevelCounter,
    byte_level_alphabet,
    is_gpt2_byte_level,
)

EDGE = ["", " ", "  ", "\n", "\n\n\n", "a  b", "a   b  ", "  leading", "trailing   ", "tab\tand\r\nCRLF\r\n",
        "it's they're I've we'll he'd I'm don't", "IT'S 'S 's' ''s", "x'sy", "!!! ??? ... ---", " 42 3.14 1,000,000",
        "$12.50/hour, 30% off (or more)!", "snake_case and camelCase and ALLCAPS", "a\n b\n  c", "end with space ",
        "<|im_start|>user\nhello<|im_end|>", "  <|endoftext|>", "café naïve 東京 🙂", "em—dash “quotes”", "\x0bvt\x0cff"]


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("small")


def rust_counts(tokenizer, texts):
    return [len(e) for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def real_texts(shared_data, n: int = 600) -> list[str]:
    gsm = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").open()][:n]
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:n]
    share = json.loads((shared_data / "sharegpt" / "dummy_conversation.json").read_text())[:n]
    texts = [g["question"] for g in gsm] + [g["answer"] for g in gsm]
    texts += [a["instruction"] + "\n\n" + a["input"] for a in alpaca] + [a["output"] for a in alpaca]
    texts += [turn["value"] for conv in share for turn in conv.get("conversations", [])]
    return texts


def test_the_alphabet_is_gpt2s():
    m = byte_level_alphabet()
    assert len(set(m.values())) == 256 and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("a")] == "a"


def test_only_plain_byte_level_bpe_is_counted_here(smollm2):
    assert is_gpt2_byte_level(smollm2.backend_tokenizer)
    assert ByteLevelCounter.for_tokenizer(load_tokenizer("micro")) is None  # the character tokenizer
    backend = load_tokenizer("small").backend_tokenizer
    backend.enable_truncation(max_length=4)
    assert ByteLevelCounter.for_tokenizer(backend) is None
    with pytest.raises(ValueError, match="byte-level"):
        ByteLevelCounter(backend)


def test_counts_equal_the_tokenizer_on_edge_cases(smollm2):
    counter = ByteLevelCounter.for_tokenizer(smollm2)
    got = counter.counts(EDGE)
    assert got.dtype == np.int64 and got.tolist() == rust_counts(smollm2, EDGE)
    fast = [t for t in EDGE if counter.fast(t)]
    assert "<|im_start|>user\nhello<|im_end|>" not in fast and "café naïve 東京 🙂" not in fast and "\x0bvt\x0cff" not in fast
    assert len(fast) >= 18  # the rest really went through the pre-token path


def test_counts_equal_the_tokenizer_on_real_texts_across_memory_resets(smollm2, shared_data):
    texts = real_texts(shared_data)
    want = rust_counts(smollm2, texts)
    counter = ByteLevelCounter(smollm2.backend_tokenizer, limit=500)  # the memory starts over many times
    got = np.concatenate([counter.counts(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    assert got.tolist() == want and sum(want) > 100_000
    assert np.mean([counter.fast(t) for t in texts]) > 0.8  # most real text takes the fast path
