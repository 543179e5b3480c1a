"""Text signals: unigram entropy, reasoning steps, IREI and the Bloom heuristic, on hand-checked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.signals.base import make_signal, resolve
from thresher.signals.heuristics import (
    BLOOM_VERBS,
    bloom_level,
    bloom_verbs_found,
    instruction_text,
)
from thresher.signals.text import (
    irei_scores,
    minmax,
    reasoning_steps,
    side_text,
    token_counts,
    unigram_entropy,
)


def chat(i: int, user: str, answer: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"id": f"ex{i}", "messages": msgs, "source": "hand", "meta": {}}


@pytest.fixture()
def store(tmp_path) -> SignalStore:
    return SignalStore(tmp_path / "store")


def computed(name: str, pool: Pool, store: SignalStore, **params) -> dict:
    sig = make_signal(name, **params)
    run_signal(sig, pool, store, show_progress=False)
    return read_signal(sig, pool, store)


# --------------------------------------------------------------------------- token counts

TEXTS = ["", "Natalia sold clips to 48 of her friends in April.", "  spaces\tand\nnew lines  ",
         "unicode: café, naïve, 東京, emoji 🙂, <|im_start|> a special token", "x" * 3000]


@pytest.mark.parametrize("model", ["micro", "small"])
def test_token_counts_equal_the_tokenizers_own_ids(model):
    from thresher.models.load import load_tokenizer

    tok = load_tokenizer(model)
    want = [len(ids) for ids in tok(TEXTS, add_special_tokens=False)["input_ids"]]
    got = token_counts(tok, TEXTS)
    assert got.dtype == np.int64 and got.tolist() == want and want[0] == 0 and want[4] > 0


def test_token_counts_of_a_truncating_backend_go_through_the_call():
    from thresher.models.load import load_tokenizer

    tok = load_tokenizer("small")
    tok.backend_tokenizer.enable_truncation(max_length=5)  # the fast path would count 5: the call does not truncate
    try:
        got = token_counts(tok, TEXTS)
    finally:
        tok.backend_tokenizer.no_truncation()
    assert got.tolist() == [len(ids) for ids in tok(TEXTS, add_special_tokens=False)["input_ids"]] and got.max() > 5


# --------------------------------------------------------------------------- unigram entropy


def test_unigram_entropy_of_known_word_lists():
    # the cat the dog: p = 1/2, 1/4, 1/4 -> H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2 (nats)
    assert unigram_entropy("the cat the dog") == pytest.approx(1.5 * math.log(2))
    # four distinct words once each: ln 4
    assert unigram_entropy("one two three four") == pytest.approx(math.log(4))
    # lower-casing and punctuation: Hello, hello, world -> p = 2/3, 1/3
    assert unigram_entropy("Hello, HELLO! world?") == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    # one distinct word, or none: 0 (and not -0.0)
    assert unigram_entropy("A a A") == 0.0 and math.copysign(1, unigram_entropy("A a A")) == 1.0
    assert unigram_entropy("?! ...") == 0.0


def test_unigram_entropy_signal_sides_and_store_round_trip(store):
    pool = Pool.from_records([
        chat(0, "alpha beta", "the cat the dog", system="sys word"),
        chat(1, "alpha alpha", "one two three four"),
    ])
    ans = computed("unigram_entropy", pool, store)["unigram_entropy"]
    np.testing.assert_allclose(ans, [1.5 * math.log(2), math.log(4)])
    usr = computed("unigram_entropy", pool, store, side="user")["unigram_entropy"]
    np.testing.assert_allclose(usr, [math.log(2), 0.0])
    # all = system + user + answer: "sys word alpha beta the cat the dog": 6 once, "the" twice (n = 8)
    allside = computed("unigram_entropy", pool, store, side="all")["unigram_entropy"]
    assert allside[0] == pytest.approx(-(6 * (1 / 8) * math.log(1 / 8) + (2 / 8) * math.log(2 / 8)))
    assert side_text(pool[0], "all").startswith("sys word")
    with pytest.raises(ValueError, match="side"):
        make_signal("unigram_entropy", side="system")


# --------------------------------------------------------------------------- reasoning steps


@pytest.mark.parametrize("answer, steps", [
    ("3 + 4 = 7. The answer is 7.", 1),                                    # arithmetic sentence only
    ("First, add 2 and 3 to get 5.\nThen multiply by 4: 5*4=20.\nFinally, the answer is 20.", 3),
    ("1. Preheat the oven.\n2) Mix flour. Stir well.\n- Bake.\n\nEnjoy!", 3),  # 3 list items; 'Stir well.' and 'Enjoy!' are not
    ("Step 1: compute 12/4 = 3. Next we are done.", 2),                    # step word + arithmetic counts once
    ("Paris is the capital of France.", 0),
    ("From 1990 to 2000 sales grew. Then they fell.", 1),                  # 'to' is not an operator
    ("2x3 is 6, and 10 ÷ 2 gives 5.", 1),                                  # two operations, one sentence
    ("Secondly the thenar muscle. Nextdoor is not a marker.", 1),          # whole step words only
])
def test_reasoning_steps_on_hand_written_answers(answer, steps):
    assert reasoning_steps(answer) == steps


def test_reasoning_steps_signal_reads_the_answer_side(store):
    pool = Pool.from_records([chat(0, "What is 3 + 4? Then 5 - 1?", "3 + 4 = 7. The answer is 7."),
                              chat(1, "Step 1: think", "No numbers here.")])
    got = computed("reasoning_steps", pool, store)["reasoning_steps"]
    assert got.tolist() == [1, 0] and got.dtype == np.int64


# --------------------------------------------------------------------------- IREI


def test_irei_scores_by_hand():
    # (L_inst, L_resp) = (4, 8), (2, 1), (10, 20)
    # totals 12, 3, 30 -> minmax 1/3, 0, 1 ; ratios 2, 0.5, 2 -> minmax 1, 0, 1
    np.testing.assert_allclose(irei_scores([4, 2, 10], [8, 1, 20]), [(1 / 3 + 1) / 2, 0.0, 1.0])
    # an empty instruction has ratio 0: totals 3, 10, 15 -> 0, 7/12, 1 ; ratios 0, 1, 2 -> 0, 1/2, 1
    np.testing.assert_allclose(irei_scores([0, 5, 5], [3, 5, 10]), [0.0, (7 / 12 + 0.5) / 2, 1.0])
    # constant lengths: minmax of a constant is 0
    np.testing.assert_array_equal(irei_scores([2, 2], [4, 4]), [0.0, 0.0])
    np.testing.assert_array_equal(minmax(np.array([5.0])), [0.0])
    with pytest.raises(ValueError, match="one length"):
        irei_scores([1, 2], [3])
    with pytest.raises(ValueError, match="non-negative"):
        irei_scores([-1, 2], [3, 4])


def test_irei_signal_over_the_pool(store):
    pool = Pool.from_records([chat(0, "abcd", "abcdefgh"), chat(1, "ab", "a"), chat(2, "abcdefghij", "abcdefghijklmnopqrst", system="S" * 50)])
    cols = computed("irei", pool, store)
    assert cols["irei_len_inst"].tolist() == [4, 2, 10]  # user turns only: the system prompt is not the instruction
    assert cols["irei_len_resp"].tolist() == [8, 1, 20]
    np.testing.assert_allclose(cols["irei"], [2 / 3, 0.0, 1.0])
    # THTB renormalises within a stage from the raw columns: totals 12, 30 -> 0, 1; ratios 2, 2 -> constant -> 0, 0
    np.testing.assert_allclose(irei_scores(cols["irei_len_inst"][[0, 2]], cols["irei_len_resp"][[0, 2]]), [0.0, 0.5])


# --------------------------------------------------------------------------- Bloom heuristic


@pytest.mark.parametrize("instruction, level", [
    ("What is the capital of France?", 1),                    # no verb: default 1
    ("Name the largest planet.", 1),
    ("Explain why the sky is blue.", 2),
    ("Calculate the area of a circle with radius 3.", 3),
    ("Compare and contrast cats and dogs.", 4),
    ("List three causes of the war and evaluate them.", 5),   # highest level wins
    ("Write a poem about autumn.", 6),
    ("Summarize the text, then DESIGN a poster.", 6),          # case-insensitive
    ("He explained it yesterday.", 1),                         # base forms only
    ("Interest rates rose; describe the effect.", 2),          # 'rate' is left out (mostly a noun)
])
def test_bloom_levels_of_hand_instructions(instruction, level):
    assert bloom_level(instruction) == level


def test_bloom_verb_lists_are_disjoint_and_found_with_levels():
    seen: set[str] = set()
    for verbs in BLOOM_VERBS.values():
        assert not (seen & verbs)
        seen |= verbs
    assert bloom_verbs_found("List and evaluate, then list again") == {"list": 1, "evaluate": 5}


def test_bloom_heuristic_signal_reads_the_instruction_not_the_input(store):
    pool = Pool.from_records([
        {"id": "a", "instruction": "Classify the following animal.", "input": "Write about a whale: design, create.", "output": "Mammal."},
        {"id": "b", "instruction": "Write a haiku about rain.", "output": "Rain taps the window..."},
        {"id": "c", "instruction": "Who wrote Hamlet?", "output": "Shakespeare."},  # 'wrote' is not the base form
    ])
    assert instruction_text(pool[0]) == "Classify the following animal."
    cols = computed("bloom_heuristic", pool, store)
    assert cols["bloom_level"].tolist() == [2, 6, 1]
    np.testing.assert_allclose(cols["bloom_norm"], [0.2, 1.0, 0.0])
    # text="user" also reads the Alpaca input, which here holds Create verbs
    assert computed("bloom_heuristic", pool, store, text="user")["bloom_level"].tolist() == [6, 6, 1]
    assert resolve("bloom_norm")[0].name == "bloom_heuristic"
