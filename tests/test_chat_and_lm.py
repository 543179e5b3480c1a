"""Answer masks from chat templates, and model signals against a straightforward per-example computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thresher.chat import encode_answer_alone, encode_conversation
from thresher.models.micro import build_char_tokenizer, build_micro_model
from thresher.signals.lm import LM_COLUMNS, batched_answer_stats, lm_columns

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Ann has 3 pens, gets 4. How many now?"},
    {"role": "assistant", "content": "3+4=7. The answer is 7."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "Still 7."},
]


@pytest.fixture(scope="module")
def micro():
    tok = build_char_tokenizer()
    model = build_micro_model(tok, seed=3).eval()
    return tok, model


def test_micro_tokenizer_roundtrip_and_template():
    tok = build_char_tokenizer()
    text = "Ann has 3 pens.\nHow many?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    rendered = tok.apply_chat_template(CONV[1:3], tokenize=False)
    assert rendered == "<bos><|user|>Ann has 3 pens, gets 4. How many now?<|assistant|>3+4=7. The answer is 7.<eos>"


def test_answer_mask_marks_every_assistant_turn_only(micro):
    tok, _ = micro
    enc = encode_conversation(tok, CONV)
    answer = tok.decode([i for i, m in zip(enc.input_ids, enc.answer_mask) if m])
    # both assistant turns and their end-of-turn tokens; nothing from system or user
    assert answer == "3+4=7. The answer is 7.<eos>Still 7.<eos>"
    not_answer = tok.decode([i for i, m in zip(enc.input_ids, enc.answer_mask) if not m], skip_special_tokens=True)
    assert "Be brief." in not_answer and "How many now?" in not_answer and "And then?" in not_answer
    assert "answer is" not in not_answer


def test_answer_alone_is_bos_plus_answer_text(micro):
    tok, _ = micro
    enc = encode_answer_alone(tok, CONV)
    assert enc.input_ids[0] == tok.bos_token_id
    assert tok.decode(enc.input_ids[1:]) == "3+4=7. The answer is 7.\n\nStill 7."
    assert enc.answer_mask == [False] + [True] * (len(enc.input_ids) - 1)


def _reference_stats(model, ids, mask):
    """One example, one forward pass, per-token loops: (mean CE, mean entropy, mean varentropy)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].double()
    ce, ent, var = [], [], []
    for t in range(len(ids) - 1):
        if not mask[t + 1]:
            continue
        p = torch.softmax(logits[t], -1)
        logp = torch.log(p)
        ce.append(-float(logp[ids[t + 1]]))
        h = -float((p * logp).sum())
        ent.append(h)
        var.append(float((p * (logp + h) ** 2).sum()))
    return np.mean(ce), np.mean(ent), np.mean(var)


def _hf_loss(model, ids, mask):
    """The answer loss the way a fine-tuning script computes it (HF labels with -100)."""
    x = torch.tensor([ids])
    labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask)]])
    with torch.no_grad():
        return float(model(input_ids=x, labels=labels).loss)


@pytest.mark.parametrize("blocks", [None, (5, 2), (4, 8), "full-logits"])
def test_batched_signals_equal_per_example_computation(micro, monkeypatch, blocks):
    tok, model = micro
    if blocks == "full-logits":  # a model whose head cannot be split off: statistics from the whole logits
        monkeypatch.setattr("thresher.signals.lm._head_parts", lambda m: None)
    elif blocks:  # LM-head GEMM blocks of 5 (or 4) answer positions, statistics blocks of 2 (or 8)
        monkeypatch.setattr("thresher.signals.lm.HEAD_CHUNK", blocks[0])
        monkeypatch.setattr("thresher.signals.lm.STATS_CHUNK", blocks[1])
    records = [
        {"messages": CONV},
        {"messages": CONV[1:3]},
        {"messages": [{"role": "user", "content": "Spell cat backwards."}, {"role": "assistant", "content": "tac"}]},
        {"messages": [{"role": "user", "content": "Bob has 9 cups, loses 2, then gets 5. How many now?"},
                      {"role": "assistant", "content": "9-2=7. 7+5=12. The answer is 12."}]},
    ]
    cond = [encode_conversation(tok, r["messages"]) for r in records]
    alone = [encode_answer_alone(tok, r["messages"]) for r in records]
    seqs = [(e.input_ids, e.answer_mask) for e in cond + alone]
    # a tight token budget forces several length-sorted batches with padding
    # entropy and varentropy for the conditioned sequences only, as the signal asks
    sums, counts = batched_answer_stats(model, seqs, tok.pad_token_id, token_budget=120, full=[True] * 4 + [False] * 4)
    assert np.isnan(sums[4:, 1:]).all() and np.isfinite(sums[:4]).all()
    every, every_counts = batched_answer_stats(model, seqs, tok.pad_token_id, token_budget=120)
    np.testing.assert_array_equal(every_counts, counts)
    np.testing.assert_allclose(every[:, 0], sums[:, 0], rtol=1e-6)  # CE does not depend on the flag (block sizes may differ)
    np.testing.assert_allclose(every[:4], sums[:4], rtol=1e-6)
    cols = lm_columns(sums[:4], counts[:4], sums[4:], counts[4:])
    assert set(cols) == set(LM_COLUMNS)
    for i, (c, a) in enumerate(zip(cond, alone)):
        ce_c, ent_c, var_c = _reference_stats(model, c.input_ids, c.answer_mask)
        ce_a, _, _ = _reference_stats(model, a.input_ids, a.answer_mask)
        assert cols["loss"][i] == pytest.approx(ce_c, abs=1e-5)
        assert cols["loss"][i] == pytest.approx(_hf_loss(model, c.input_ids, c.answer_mask), abs=1e-5)
        assert cols["loss_alone"][i] == pytest.approx(ce_a, abs=1e-5)
        assert cols["ifd"][i] == pytest.approx(ce_c / ce_a, abs=1e-5)
        assert cols["ifd_ppl_ratio"][i] == pytest.approx(math.exp(ce_c - ce_a), rel=1e-5)
        assert cols["ppl"][i] == pytest.approx(math.exp(ce_c), rel=1e-5)
        assert cols["entropy"][i] == pytest.approx(ent_c, abs=1e-5)
        assert cols["varentropy"][i] == pytest.approx(var_c, abs=1e-5)
        assert cols["answer_tokens"][i] == sum(c.answer_mask[1:])
        _, ent_a, var_a = _reference_stats(model, a.input_ids, a.answer_mask)
        assert every[4 + i, 1] / every_counts[4 + i] == pytest.approx(ent_a, abs=1e-5)
        assert every[4 + i, 2] / every_counts[4 + i] == pytest.approx(var_a, abs=1e-5)


def test_answer_truncated_away_gives_nan_not_a_guess(micro):
    tok, model = micro
    msgs = [{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "yes"}]
    c = encode_conversation(tok, msgs, max_length=20)
    a = encode_answer_alone(tok, msgs, max_length=20)
    sums, counts = batched_answer_stats(model, [(c.input_ids, c.answer_mask), (a.input_ids, a.answer_mask)], tok.pad_token_id, 256)
    cols = lm_columns(sums[:1], counts[:1], sums[1:], counts[1:])
    assert counts[0] == 0 and np.isnan(cols["loss"][0]) and np.isnan(cols["ifd"][0])
    assert not np.isnan(cols["loss_alone"][0])


def test_lm_signal_in_store_matches_direct_computation(micro_scored):
    from thresher.engine import read_signal
    from thresher.signals.lm import prepare_scorer

    pool, _, labels, store, lm, _ = micro_scored
    got = read_signal(lm, pool, store)
    scorer = prepare_scorer(lm.params, pool)  # cached warm-up: the same model the signal used
    for i in (0, 7, 123):
        rec = pool[i]
        c = encode_conversation(scorer.tokenizer, rec["messages"])
        a = encode_answer_alone(scorer.tokenizer, rec["messages"])
        ce_c, _, _ = _reference_stats(scorer.model, c.input_ids, c.answer_mask)
        ce_a, _, _ = _reference_stats(scorer.model, a.input_ids, a.answer_mask)
        assert got["loss"][i] == pytest.approx(ce_c, abs=1e-5)
        assert got["ifd"][i] == pytest.approx(ce_c / ce_a, abs=1e-5)
    # the warmed-up scorer has learned the answer format: off-task answers cost more than clean ones
    loss = got["loss"]
    clean = np.nanmean([loss[i] for i, r in enumerate(pool) if labels[r["id"]] == "clean"])
    off = np.nanmean([loss[i] for i, r in enumerate(pool) if labels[r["id"]] in ("off_task", "off_format")])
    assert off > clean + 0.5


def test_vllm_backend_keys_apart_and_truncated_entropy_by_hand():
    from thresher.signals.lm import LMSignal
    from thresher.signals.vllm_backend import truncated_entropy_stats, vllm_available

    hf = LMSignal(model="small", backend="hf").key_params()
    auto = LMSignal(model="small", backend="auto").key_params()
    vl = LMSignal(model="small", backend="vllm").key_params()
    assert "backend" not in hf and vl["backend"] == "vllm"
    assert (auto == vl) if vllm_available() else (auto == hf)  # auto keys as what it resolves to
    with pytest.raises(ValueError, match="micro"):
        LMSignal(model="micro", backend="vllm").key_params()
    # two equally likely tokens: entropy ln 2, varentropy 0; renormalised from unnormalised logprobs
    h, v = truncated_entropy_stats([math.log(0.2), math.log(0.2)])
    assert h == pytest.approx(math.log(2)) and v == pytest.approx(0.0, abs=1e-12)
    # p = (0.5, 0.25, 0.25): H = 1.5 ln 2; Var[-log p] = 0.5*(ln2 - H)^2 + 0.5*(2ln2 - H)^2 = 0.25 (ln 2)^2
    h, v = truncated_entropy_stats([math.log(0.5), math.log(0.25), math.log(0.25)])
    assert h == pytest.approx(1.5 * math.log(2)) and v == pytest.approx(0.25 * math.log(2) ** 2)
