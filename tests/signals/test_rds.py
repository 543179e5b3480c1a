"""RDS+: the hidden_embedding / rds_similarity signals and the rds selector (micro model, tiny pools)."""
from __future__ import annotations

import numpy as np
import pytest

# one intra-op thread: the micro model's tiny matmuls only lose to thread hand-offs on a busy box
pytestmark = pytest.mark.usefixtures("torch_one_thread")

ARITH_SMALL = {"pool_size": 400, "dev_size": 60, "test_size": 90}  # the arith_small fixture's task


@pytest.fixture(scope="module")
def micro():
    from thresher.signals.hidden import load_target

    return load_target("micro")


def _reference(lm, messages, pooling="position_weighted", max_tokens=512):
    """One example, batch 1: the chat-templated text, a plain forward with output_hidden_states, pooled by hand."""
    import torch

    tok, model = lm.tokenizer, lm.model
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
    T = len(ids)
    if pooling == "position_weighted":
        w = torch.arange(1, T + 1, dtype=torch.float64)
    elif pooling == "mean":
        w = torch.ones(T, dtype=torch.float64)
    else:
        w = torch.zeros(T, dtype=torch.float64)
        w[-1] = 1.0
    v = (w[:, None] * h).sum(0) / w.sum()
    return ids, (v / v.norm()).numpy(), float(v.norm())


@pytest.mark.parametrize("pooling", ["position_weighted", "mean", "last"])
def test_hidden_embedding_matches_a_per_example_reference(arith_small, micro, pooling):
    from thresher.signals.base import VECTORS, make_signal
    from thresher.signals.hidden import conversation_ids

    pool, _, _ = arith_small
    recs = [pool[i] for i in range(12)]
    sig = make_signal("hidden_embedding", model="micro", pooling=pooling)
    out = sig.compute(recs)
    vecs = out[VECTORS]
    assert vecs.dtype == np.float32 and vecs.shape == (12, micro.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    for i, r in enumerate(recs):
        ids, ref, norm = _reference(micro, r["messages"], pooling)
        assert conversation_ids(micro.tokenizer, r["messages"], 512)[0] == ids  # the chat template, whole conversation
        np.testing.assert_allclose(vecs[i], ref, atol=1e-5)
        assert out["hidden_norm"][i] == pytest.approx(norm, rel=1e-5)
    assert not out["__truncated__"].any()


def test_batching_and_padding_do_not_change_the_vectors(arith_small, micro):
    from thresher.signals.hidden import conversation_ids, pooled_hidden

    pool, _, _ = arith_small
    seqs = [conversation_ids(micro.tokenizer, pool[i]["messages"], 512)[0] for i in range(24)]
    seqs[3] = seqs[3][:5]  # a very short one among long ones: lots of padding in its batch
    assert len({len(s) for s in seqs}) > 5
    pad = micro.tokenizer.pad_token_id
    one = pooled_hidden(micro.model, seqs, pad, token_budget=1)  # batch size 1
    eight = pooled_hidden(micro.model, seqs, pad, token_budget=10**9, max_rows=8)  # batches of 8
    np.testing.assert_allclose(one, eight, atol=1e-5)
    assert np.abs(one).max() > 0


def test_truncation_is_counted(arith_small):
    from thresher.signals.base import make_signal

    pool, _, _ = arith_small
    sig = make_signal("hidden_embedding", model="micro", max_tokens=16)
    out = sig.compute([pool[i] for i in range(4)])
    assert out["__truncated__"].all()
    assert sig.run_note({"__truncated__": 4}, 4) == "4 of 4 examples truncated to 16 tokens"


def test_round_robin_on_a_hand_made_matrix():
    from thresher.select.baselines import round_robin_select

    sim = np.array([  # 6 pool rows x 3 dev items
        [0.90, 0.10, 0.20],
        [0.80, 0.70, 0.10],
        [0.10, 0.95, 0.30],
        [0.20, 0.90, 0.80],
        [0.30, 0.20, 0.85],
        [0.85, 0.30, 0.90],
    ])
    # round 1: item 0 -> row 0, item 1 -> row 2, item 2 -> row 5; round 2: item 0 -> row 1 (row 5 is taken)
    assert round_robin_select(sim, 4) == ([0, 2, 5, 1], [0, 1, 2, 0])
    # (top-4 by the best cosine would be rows 2, 0, 3, 5)
    # groups (dev domains): {0, 2} and {1}; each group cycles through its own items
    assert round_robin_select(sim, 4, [[0, 2], [1]]) == ([0, 2, 5, 3], [0, 1, 2, 1])
    # ties go to the earlier pool row; NaN ranks last
    tied = np.array([[0.5], [np.nan], [0.7], [0.7], [0.5]])
    assert round_robin_select(tied, 5)[0] == [2, 3, 0, 4, 1]
    assert round_robin_select(sim, 10)[0] == [0, 2, 5, 1, 3, 4]  # a budget above the pool takes every row once


def test_round_robin_equals_the_naive_rule_on_a_larger_matrix():
    from thresher.select.baselines import round_robin_select

    rng = np.random.default_rng(0)
    sim = np.round(rng.random((300, 7)), 2)  # many ties
    k = 250
    taken, naive = np.zeros(300, dtype=bool), []
    j = 0
    while len(naive) < k:
        col = np.where(taken, -np.inf, sim[:, j % 7])
        i = int(np.argmax(col))  # first maximum: ties by pool order
        taken[i] = True
        naive.append(i)
        j += 1
    assert round_robin_select(sim, k)[0] == naive


def test_rds_selects_the_budget_deterministically(arith_small, tmp_path):
    from thresher.api import select
    from thresher.signals.base import make_signal

    pool, task, _ = arith_small
    params = {"model": "auto", "relevance_task": "arith", "relevance_task_params": ARITH_SMALL}
    a = select(pool, "rds", 40, store=tmp_path / "store", task=task, compute_missing=True, show_progress=False, **params)
    b = select(pool, "rds", 40, store=tmp_path / "store", task=task, show_progress=False, **params)
    assert len(a.ids) == 40 and len(set(a.ids)) == 40 and set(a.ids) <= set(pool.ids)
    assert a.ids == b.ids
    d = a.diagnostics
    assert d["round_robin"] == "domains" and d["dev_items"] == 60 and d["domains"] == len(task.domains)
    assert sum(v["selected"] for v in d["per_dev_item"].values()) == 40
    assert sum(v["selected"] for v in d["per_domain"].values()) == 40
    assert max(v["selected"] for v in d["per_domain"].values()) - min(v["selected"] for v in d["per_domain"].values()) <= 1
    assert -1.0 <= d["mean_similarity"] <= 1.0
    assert "micro" in d["scorer"] and "no warm-up" in d["scorer"]
    # auto is micro on the arith testbed: the similarity matrix is keyed by the real model
    sig = make_signal("rds_similarity", task="arith", task_params=ARITH_SMALL).for_pool(pool)
    assert sig.params.model == "micro" and sig.key(pool).model == "micro-init-seed0"
    # items mode takes a different route through the same matrix, still the budget's size
    c = select(pool, "rds", 40, store=tmp_path / "store", task=task, show_progress=False, round_robin="items", **params)
    assert len(set(c.ids)) == 40 and c.diagnostics["round_robin"] == "items"


def test_rds_refuses_another_tasks_dev_split(arith_small, tmp_path):
    from thresher.api import select

    pool, task, _ = arith_small
    with pytest.raises(ValueError, match="relevance_task"):
        select(pool, "rds", 10, store=tmp_path / "store", task=task, compute_missing=True, show_progress=False,
               model="micro", relevance_task="arith", relevance_task_params={**ARITH_SMALL, "dev_size": 30})
