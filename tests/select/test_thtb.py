"""THTB: every formula on hand-computed cases, the three-stage selector end to end on real
signals in a real store, the stage report, the judge path against real OpenAI-compatible
servers, the reward path with a real (tiny, local) sequence-classification model, and the
annotation guide.

Servers used: a rule-based judge (a real HTTP server in a thread that answers the
judge's OpenAI-format requests from a table keyed by the query it was sent, so the
values that flow through client -> parser -> store -> selector are known);
``thresher serve`` over a tiny random micro model (every reply is a counted failure:
its character vocabulary has no ``{``); and, marked slow, ``thresher serve`` over
SmolLM2-135M-Instruct.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fake_openai import ChatEndpoint

from thresher.data.pool import Pool
from thresher.data.store import SignalStore
from thresher.engine.local import read_signal, run_signal
from thresher.select.base import SignalView, make_selector
from thresher.select.thtb.guide import render_guide, thtb_guide
from thresher.select.thtb.hardness import (
    bloom_paper,
    bloom_reference,
    canonical_subject,
    ehs_scores,
    ic_scores,
    ihs_scores,
    interdisciplinary_complexity,
    irei_paper,
    irei_reference,
    mean_pairwise_cosine_distance,
    minmax_with,
    sc_norm,
    silhouette_k,
)
from thresher.select.thtb.stages import fractions_for_budget, rank_stage, stage_sizes
from thresher.signals.base import make_signal


def rec(rid: str, instruction: str, response: str, inp: str = "") -> dict:
    user = instruction if not inp else f"{instruction}\n\n{inp}"
    return {"id": rid, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}],
            "source": "test", "meta": {}}


def select(pool, store, budget, artifacts=None, **params):
    sel = make_selector("thtb", **params)
    for s in sel.required_signals():
        run_signal(s, pool, store, show_progress=False)
    return sel.select(pool, SignalView(pool, store), budget, artifacts_dir=artifacts)


# =========================================================================== budget rule


def test_fractions_scale_by_one_common_factor_with_caps():
    assert fractions_for_budget((0.2, 0.5, 0.5), 0.05) == pytest.approx((0.2, 0.5, 0.5))
    c = 2 ** (1 / 3)  # 10% = 2 x 5%: every fraction times the cube root of 2
    assert fractions_for_budget((0.2, 0.5, 0.5), 0.10) == pytest.approx((0.2 * c, 0.5 * c, 0.5 * c))
    c = 6 ** (1 / 3)
    assert fractions_for_budget((0.2, 0.5, 0.5), 0.30) == pytest.approx((0.2 * c, 0.5 * c, 0.5 * c))
    # 50%: c = 10^(1/3) would push 0.5 over 1; both 0.5s cap at 1 and 0.2 x 2.5 = 0.5
    assert fractions_for_budget((0.2, 0.5, 0.5), 0.50) == pytest.approx((0.5, 1.0, 1.0))
    assert fractions_for_budget((0.2, 0.5, 0.5), 1.0) == pytest.approx((1.0, 1.0, 1.0))
    c = 0.2 ** (1 / 3)  # 1% = 5% / 5
    assert fractions_for_budget((0.2, 0.5, 0.5), 0.01) == pytest.approx((0.2 * c, 0.5 * c, 0.5 * c))
    # one cap: (0.9, 0.2, 0.5) to 0.5 -> 0.9 caps, c = sqrt(0.5 / 0.1) = 2.236 -> (1, 0.447, 1.118)? no:
    # 0.5 x 2.236 > 1 so 0.5 caps too and c = 0.5 / 0.2 = 2.5 -> (1, 0.5, 1)
    assert fractions_for_budget((0.9, 0.2, 0.5), 0.5) == pytest.approx((1.0, 0.5, 1.0))
    for target in (0.003, 0.05, 0.17, 0.42, 0.8):
        assert math.prod(fractions_for_budget((0.3, 0.6, 0.2), target)) == pytest.approx(target)
    with pytest.raises(ValueError, match="fractions"):
        fractions_for_budget((0.2, 0.0, 0.5), 0.05)
    with pytest.raises(ValueError, match="target"):
        fractions_for_budget((0.2, 0.5, 0.5), 1.5)


def test_stage_sizes():
    assert stage_sizes(2000, 100, (0.2, 0.5, 0.5)) == ((400, 200, 100), pytest.approx((0.2, 0.5, 0.5)))
    # 10%: f1 = 0.2 * 2^(1/3) = 0.25198 -> round(503.97) = 504; f2 = 0.62996 -> round(504 * 0.62996 = 317.50) = 318
    (n1, n2, n3), _ = stage_sizes(2000, 200, (0.2, 0.5, 0.5))
    assert (n1, n2, n3) == (504, 318, 200)
    # fixed: stages 1-2 as given, stage 3 keeps k
    assert stage_sizes(100, 3, (0.2, 0.5, 0.5), rule="fixed")[0] == (20, 10, 3)
    # a budget larger than the fixed stages leave: stages never drop below k
    assert stage_sizes(100, 30, (0.2, 0.5, 0.5), rule="fixed")[0] == (30, 30, 30)
    with pytest.raises(ValueError, match="budget_rule"):
        stage_sizes(100, 3, (0.2, 0.5, 0.5), rule="other")
    with pytest.raises(ValueError, match="between 1 and the pool size"):
        stage_sizes(10, 11, (0.2, 0.5, 0.5))


# =========================================================================== formulas


def test_minmax_conventions():
    np.testing.assert_allclose(minmax_with([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax_with([3.0, 3.0], 0.5), [0.5, 0.5])
    np.testing.assert_allclose(minmax_with([3.0, 3.0]), [0.0, 0.0])
    out = minmax_with([1.0, np.nan, 5.0])
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 1.0


def test_bloom_terms():
    np.testing.assert_allclose(bloom_reference([1, 11, 21, 7]), [0.0, 0.5, 1.0, 0.3])
    np.testing.assert_allclose(bloom_paper([1, 3, 6]), [0.0, 0.4, 1.0])
    np.testing.assert_allclose(bloom_paper([2, 4, 3]), [0.0, 1.0, 0.5])  # min-max within the set, not /5
    np.testing.assert_allclose(bloom_paper([4, 4]), [0.0, 0.0])


def test_mean_pairwise_cosine_distance():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    diag = [1.0, 1.0]  # cos 1/sqrt(2) with both (its length does not matter)
    expected = (1.0 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert mean_pairwise_cosine_distance([e1, e2, diag]) == pytest.approx(expected)
    assert mean_pairwise_cosine_distance([e1, [-1.0, 0.0]]) == pytest.approx(2.0)
    assert mean_pairwise_cosine_distance([e1]) == 0.0
    assert mean_pairwise_cosine_distance(np.zeros((0, 2))) == 0.0


def test_ic_reference_and_paper():
    counts, dists = [1, 2, 3, np.nan], [0.0, 0.3, 0.456, np.nan]
    ref = ic_scores(counts, dists, "reference")
    # normalised counts 0, .5, 1; 2+ disciplines: round(count_norm + dist, 2)
    np.testing.assert_allclose(ref[:3], [0.0, 0.8, 1.46])
    assert np.isnan(ref[3])
    np.testing.assert_allclose(ic_scores(counts, dists, "paper")[:3], [0.0, 0.8, 1.456])
    # a constant count column: reference 0.5, paper 0
    np.testing.assert_allclose(ic_scores([2, 2], [0.1234, 0.5], "reference"), [0.62, 1.0])
    np.testing.assert_allclose(ic_scores([2, 2], [0.1234, 0.5], "paper"), [0.1234, 0.5])
    np.testing.assert_allclose(ic_scores([1, 1], [0.0, 0.0], "reference"), [0.5, 0.5])
    with pytest.raises(ValueError, match="formula"):
        ic_scores([1], [0.0], "other")


def test_ihs():
    np.testing.assert_allclose(ihs_scores([0.2, 1.0], [1.46, 0.0]), [0.83, 0.5])
    np.testing.assert_allclose(ihs_scores([0.2, 1.0]), [0.2, 1.0])  # IC unavailable: Bloom alone


def test_irei_reference_and_paper():
    li, lr = [10, 20, 0], [30, 20, 5]
    # sums 40, 40, 5 -> 1, 1, 0; ratios 3, 1, 0 (empty instruction) -> 1, 1/3, 0
    np.testing.assert_allclose(irei_reference(li, lr), [1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(irei_paper(li, lr), [1.0 + 3.0, 1.0 + 1.0, 0.0 + 0.0])
    np.testing.assert_allclose(irei_reference([10, 10], [10, 10]), [0.5, 0.5])  # constant columns -> 0.5
    np.testing.assert_allclose(irei_paper([10, 10], [10, 10]), [1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        irei_reference([-1], [2])
    with pytest.raises(ValueError, match="one length"):
        irei_paper([1, 2], [2])


def test_sc_norm_and_ehs():
    np.testing.assert_allclose(sc_norm([-1.0, 0.0, 1.0, 0.3]), [0.0, 0.5, 1.0, 0.65])
    np.testing.assert_allclose(ehs_scores([1.0, 2 / 3, 0.0], sc_norm([0.0, 1.0, -1.0])), [0.75, 5 / 6, 0.0])


def test_silhouette_k():
    assert silhouette_k(400) == 14  # round(sqrt(200)) = 14
    assert silhouette_k(5200, basis_n=52002) == 161  # the reference README's Alpaca-52k setting
    assert silhouette_k(4) == 2 and silhouette_k(3) == 2  # round(sqrt(1.5)) = 1 -> clamped to 2
    assert silhouette_k(10, k=50) == 9  # clamped to m - 1
    with pytest.raises(ValueError, match="at least 3"):
        silhouette_k(2)


def test_rank_stage_ties_by_prior_and_missing():
    scores, prior = [0.5, np.nan, 0.9, 0.5], [3, 0, 1, 2]
    ranked, kept, missing = rank_stage(scores, prior, 2)
    assert ranked.tolist() == [2, 3, 0, 1] and kept.tolist() == [2, 3] and missing == 1
    ranked, kept, _ = rank_stage(scores, prior, 4, on_missing="exclude")
    assert ranked.tolist() == [2, 3, 0] and kept.tolist() == [2, 3, 0]
    # NaN ranked last still fills a stage when too few are scored, in prior order
    ranked, kept, missing = rank_stage([np.nan, 0.1, np.nan], [2, 0, 1], 3)
    assert kept.tolist() == [1, 2, 0] and missing == 2


# =========================================================================== IC with the real sentence encoder


def _judge_columns(lists):
    """``judge_disciplines`` columns holding ``lists`` (None = a failed reply)."""
    return {"disciplines_judge_failed": np.array([items is None for items in lists]),
            "disciplines_json": np.array(["" if items is None else json.dumps(items) for items in lists], dtype=object),
            "n_disciplines": np.array([np.nan if items is None else len(items) for items in lists])}


def test_interdisciplinary_complexity_with_minilm():
    from thresher.signals.embed import (
        DisciplineEmbeddings,
        discipline_vectors,
        encode_texts,
        load_encoder,
    )

    enc = load_encoder("minilm")
    d_num, d_force, d_cells = "Counting and arithmetic with numbers.", "Forces, motion and energy.", "How living cells divide."
    lists = [
        [{"name": "Mathematics", "description": d_num}, {"name": "Physics", "description": d_force}],
        [{"name": "mathematics", "description": d_cells}],  # same subject, another description
        None,  # a failed judge reply
        [{"name": "Computer Science", "description": d_cells}, {"name": "Biology", "description": d_force},
         {"name": "Physics", "description": d_num}],
    ]
    v, _ = encode_texts(enc, [d_num, d_force, d_cells], normalize=True)
    dist = lambda a, b: 1.0 - float(np.dot(v[a], v[b]))
    # the stored signal: one unit vector per listed discipline, in the judge's order; none for a failure
    stored = DisciplineEmbeddings().compute_pool(None, {"judge_disciplines": _judge_columns(lists)})["discipline_vectors"]
    vecs = discipline_vectors(stored)
    assert [len(x) for x in vecs] == [2, 1, 0, 3]
    np.testing.assert_allclose(vecs[3], v[[2, 1, 0]], atol=1e-6)
    assert np.array_equal(vecs[0][0], vecs[3][2]) and np.array_equal(vecs[1][0], vecs[3][0])  # one vector per distinct text

    ic, counts, dists, info = interdisciplinary_complexity(lists, vecs, "paper")
    assert counts[[0, 1, 3]].tolist() == [2, 1, 3] and np.isnan(counts[2])
    assert dists[0] == pytest.approx(dist(0, 1), abs=1e-6) and dists[1] == 0.0
    assert dists[3] == pytest.approx((dist(2, 1) + dist(2, 0) + dist(1, 0)) / 3, abs=1e-6)
    # counts 2, 1, 3 -> 0.5, 0, 1 over the stage
    np.testing.assert_allclose(ic[[0, 1, 3]], [0.5 + dists[0], 0.0, 1.0 + dists[3]])
    assert np.isnan(ic[2]) and info["descriptions_embedded"] == 3

    # reference: one description per canonical subject, its first in order (mathematics -> d_num,
    # physics -> d_force, so example 3's Physics is embedded with d_force, not d_num)
    ic_r, _counts_r, dists_r, info_r = interdisciplinary_complexity(lists, vecs, "reference")
    assert info_r["subjects"] == 4  # mathematics, physics, computer_science, biology
    assert dists_r[3] == pytest.approx((dist(2, 1) + dist(2, 1) + dist(1, 1)) / 3, abs=1e-6)
    np.testing.assert_allclose(ic_r[[0, 1, 3]], [round(0.5 + dists_r[0], 2), 0.0, round(1.0 + dists_r[3], 2)])
    assert canonical_subject(" Computer Science ") == "computer_science"
    with pytest.raises(ValueError, match="lists 2 disciplines but has 1 description vectors"):
        interdisciplinary_complexity(lists, [vecs[0][:1], vecs[1], vecs[2], vecs[3]], "paper")


# =========================================================================== the selector on real signals


# quality = chars_answer (rank-normalised answer length); Bloom from the heuristic's verbs;
# stage 3 queries differ only in digits, which THTB's TF-IDF preprocessing removes, so
# their silhouette is 0 (one distinct vector) and SC_norm = 0.5 for all of them.
HAND_POOL = [
    rec("design-a", "Design a plan.", "x" * 90, "1"),
    rec("design-b", "Design a plan.", "x" * 80, "22"),
    rec("design-c", "Design a plan.", "x" * 70, "333"),
    rec("design-short", "Design a plan.", "x" * 5, "4"),  # too short for stage 1
    rec("evaluate", "Evaluate the claim.", "x" * 60),
    rec("compare", "Compare the two options.", "x" * 50),
    rec("explain", "Explain the rule.", "x" * 40),
    rec("list", "List three colours.", "x" * 10),
    rec("what", "What is the capital of France?", "x" * 8),
    rec("name", "Name a planet.", "x" * 6),
]


@pytest.fixture
def hand_pool():
    return Pool(HAND_POOL, name="thtb-hand")


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_three_stages_hand_computed(hand_pool, tmp_path):
    store = SignalStore(tmp_path / "store")
    sel = select(hand_pool, store, 2, artifacts=tmp_path / "art", quality="chars_answer", fractions=(0.6, 0.5, 0.5),
                 budget_rule="fixed")
    d = sel.diagnostics
    assert d["stage_targets"] == [6, 3, 2] and d["stage_kept"] == [6, 3, 2] and d["shortfall"] == 0
    _s1, s2, s3 = d["stages"]
    stage_ids = json.loads((tmp_path / "art" / "thtb_stage_ids.json").read_text())
    # stage 1: the 6 longest answers, longest first
    assert stage_ids["quality"] == ["design-a", "design-b", "design-c", "evaluate", "compare", "explain"]
    # stage 2: IHS = Bloom alone (no judge): Design 6 -> 1.0, Evaluate 5 -> 0.8, Compare 4 -> 0.6, Explain 2 -> 0.2;
    # the three Design examples tie and keep their stage-1 order
    assert stage_ids["ihs"] == ["design-a", "design-b", "design-c"]
    assert s2["ic_available"] is False and "IHS = Bloom term alone" in s2["ic_reason"]
    assert s2["scores_in"]["max"] == 1.0 and s2["scores_in"]["min"] == pytest.approx(0.2)
    assert s2["bloom_level_counts"] == {"Remember": 0, "Understand": 1, "Apply": 0, "Analyze": 1, "Evaluate": 1, "Create": 3}
    # stage 3: L_inst = len("Design a plan.\n\n" + input) = 17, 18, 19; L_resp = 90, 80, 70
    # sums 107, 98, 89 -> 1, .5, 0; ratios 90/17, 80/18, 70/19 -> 1, (80/18 - 70/19) / (90/17 - 70/19), 0
    r_mid = (80 / 18 - 70 / 19) / (90 / 17 - 70 / 19)
    irei = [1.0, (0.5 + r_mid) / 2, 0.0]
    assert s3["sc_k"] == 2
    assert s3["components_in"]["silhouette"]["max"] == 0.0 and s3["components_in"]["silhouette"]["min"] == 0.0
    ehs = [(x + 0.5) / 2 for x in irei]
    assert sel.ids == ["design-a", "design-b"]
    assert [ex["score"] for ex in s3["top"]] == pytest.approx(ehs[:2] + [ehs[2]])
    assert [ex["id"] for ex in s3["bottom"]] == ["design-c", "design-b", "design-a"]
    assert s3["top"][1]["components"]["irei"] == pytest.approx(irei[1])
    assert s3["cutoff"] == pytest.approx(ehs[1])
    # report artifacts, listed in the diagnostics
    art = tmp_path / "art"
    assert d["artifacts"] == ["thtb_stage1_quality.png", "thtb_stage2_ihs.png", "thtb_stage3_ehs.png",
                              "thtb_report.md", "thtb_report.json", "thtb_stage_ids.json"]
    for name in d["artifacts"][:3]:
        assert (art / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (art / "thtb_report.md").read_text()
    assert "kept **2** of 3 (target 2)" in md and "`design-a`" in md and "IC: unavailable (no judge)" in md
    report = json.loads((art / "thtb_report.json").read_text())
    assert report["stages"][0]["top"][0]["id"] == "design-a" and report["params"]["quality"] == "chars_answer"


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_paper_formula_normalises_bloom_within_the_stage(hand_pool, tmp_path):
    store = SignalStore(tmp_path / "store")
    sel = select(hand_pool, store, 2, quality="chars_answer", fractions=(0.6, 0.5, 0.5), budget_rule="fixed",
                 formula="paper")
    s2, s3 = sel.diagnostics["stages"][1:]
    # levels in stage 2: 6, 6, 6, 5, 4, 2 -> min-max over the stage: 1, 1, 1, .75, .5, 0
    assert s2["bloom_formula"] == "minmax(heuristic level) within the stage"
    assert s2["scores_in"]["min"] == 0.0 and s2["scores_in"]["max"] == 1.0
    assert s2["scores_in"]["mean"] == pytest.approx((3 + 0.75 + 0.5 + 0.0) / 6)
    # paper IREI: minmax(sum) + raw ratio: 1 + 90/17, .5 + 80/18, 0 + 70/19
    expected = [(1 + 90 / 17 + 0.5) / 2, (0.5 + 80 / 18 + 0.5) / 2]
    assert [ex["score"] for ex in s3["top"][:2]] == pytest.approx(expected)


def test_budget_scale_rule_and_determinism(arith_small, tmp_path):
    pool, _, _ = arith_small
    store = SignalStore(tmp_path / "store")
    a = select(pool, store, 0.10, quality="chars_answer")
    b = select(pool, store, 0.10, quality="chars_answer")
    # n = 400, k = 40: f = (0.2, 0.5, 0.5) x 2^(1/3) -> n1 = round(100.79) = 101, n2 = round(101 x 0.63) = 64
    assert a.diagnostics["stage_targets"] == [101, 64, 40] and len(a) == 40
    assert a.diagnostics["fractions_used"] == pytest.approx([0.2 * 2 ** (1 / 3), 0.5 * 2 ** (1 / 3), 0.5 * 2 ** (1 / 3)], abs=1e-6)
    assert a.ids == b.ids and a.diagnostics == b.diagnostics
    assert a.params["quality"] == "chars_answer"  # the quality source is recorded with the selection
    c = select(pool, store, 0.05, quality="chars_answer")
    assert c.diagnostics["stage_targets"] == [80, 40, 20] and c.diagnostics["fractions_used"] == [0.2, 0.5, 0.5]


def test_pool_scope_silhouette_reads_the_stored_signal(arith_small, tmp_path):
    pool, _, _ = arith_small
    store = SignalStore(tmp_path / "store")
    sel = select(pool, store, 0.05, quality="chars_answer", sc_scope="pool")
    stored = read_signal(make_selector("thtb", sc_scope="pool").pool_silhouette_signal(), pool, store)["silhouette"]
    ids = pool.ids
    for ex in sel.diagnostics["stages"][2]["top"]:
        assert ex["components"]["silhouette"] == pytest.approx(float(stored[ids.index(ex["id"])]))


def test_invalid_params_name_the_field():
    with pytest.raises(ValueError, match="fractions"):
        make_selector("thtb", fractions=(0.2, 0.0, 0.5))
    with pytest.raises(ValueError, match="judge_params: unknown keys \\['max_tokes'\\]"):
        make_selector("thtb", judge_params={"max_tokes": 10})
    with pytest.raises(ValueError, match="unknown parameter .fractionz. \\(did you mean .fractions.\\?\\)"):
        make_selector("thtb", fractionz=(0.2, 0.5, 0.5))


def test_default_quality_is_the_scorer_loss(tmp_path, monkeypatch):
    """quality='loss:low' (the default) reads the lm signal of the configured scorer (a briefly warmed micro model)."""
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    pool, _, _ = ArithTestbed(ArithConfig(pool_size=60, dev_size=6, test_size=6)).build()
    sel = make_selector("thtb", scorer="micro", scorer_warmup=30, scorer_warmup_steps=5)
    lm = make_signal("lm", model="micro", warmup_examples=30, warmup_steps=5)
    assert sel.quality_source().signal.key(pool).digest == lm.key(pool).digest
    store = SignalStore(tmp_path / "store")
    for s in sel.required_signals():
        run_signal(s, pool, store, show_progress=False)
    res = sel.select(pool, SignalView(pool, store), 0.05, artifacts_dir=tmp_path / "art")
    loss = np.asarray(read_signal(lm, pool, store)["loss"], dtype=np.float64)
    kept1 = res.diagnostics["stages"][0]
    assert kept1["missing_scores"] == int(np.isnan(loss).sum()) and kept1["n_kept"] == 12
    # stage 1 keeps the 12 lowest losses (ties in pool order)
    ok = np.nonzero(~np.isnan(loss))[0]
    lowest = ok[np.lexsort((ok, loss[ok]))][:12]
    stage_ids = json.loads((tmp_path / "art" / "thtb_stage_ids.json").read_text())
    assert stage_ids["quality"] == [pool.ids[i] for i in lowest]
    assert len(res) == 3 and res.diagnostics["quality"] == "loss:low"


# =========================================================================== reward-model quality


def test_reward_model_quality(hand_pool, tmp_path):
    """quality='reward:PATH' with a real (tiny, random) sequence-classification model on disk."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from thresher.models.micro import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=512, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(20.0)  # spread the random rewards over several units
    path = tmp_path / "rm"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    store = SignalStore(tmp_path / "store")
    sel = select(hand_pool, store, 2, quality=f"reward:{path}", fractions=(0.6, 0.5, 0.5), budget_rule="fixed")
    reward = read_signal(make_selector("thtb", quality=f"reward:{path}").quality_source().signal, hand_pool, store)
    r, rn = reward["reward"], reward["reward_norm"]
    np.testing.assert_allclose(rn, np.clip((r + 5) / 10, 0, 1))
    assert len(np.unique(rn)) > 3
    top6 = [hand_pool.ids[i] for i in np.lexsort((np.arange(len(rn)), -rn))[:6]]
    assert json.loads(json.dumps(sel.diagnostics["stages"][0]["top"][0]))["id"] == top6[0]
    assert [ex["score"] for ex in sel.diagnostics["stages"][0]["top"]] == pytest.approx(sorted(rn, reverse=True)[:3])
    assert sel.diagnostics["stages"][0]["source"] == f"reward:{path}"


# =========================================================================== judge path


class RuleJudge(ChatEndpoint):
    """A real OpenAI-compatible endpoint that answers each judge prompt from a table keyed
    by the query text inside ``<query>``/``<instruction>``; unknown queries get prose
    (a counted ``no_json`` failure)."""

    def __init__(self, table: dict[str, dict[str, str]]):
        self.table = table
        self.requests = 0
        super().__init__(self._respond, usage=(10, 5))

    def _respond(self, headers: dict, body: dict):
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        kind = "quality" if system.startswith("You grade") else "bloom" if "Bloom" in system else "disciplines"
        m = re.search(r"<(?:query|instruction)>\n(.*?)\n</(?:query|instruction)>", user, re.DOTALL)
        self.requests += 1
        return 200, self.table.get(m.group(1) if m else "", {}).get(kind, "I cannot rate this."), {}


def _disc(*pairs):
    return json.dumps({"disciplines": [{"name": n, "description": d} for n, d in pairs]})


D_MATH, D_BIO, D_HIST = "Numbers, equations and proofs.", "Living organisms and their cells.", "Past events and societies."
JUDGE_TABLE = {
    "Design a plan.\n\n1": {"quality": '{"score": 5, "reason": "good"}', "bloom": '{"level": "Create", "score": 21, "reasoning": "r"}',
                            "disciplines": _disc(("Mathematics", D_MATH), ("Biology", D_BIO), ("History", D_HIST))},
    "Design a plan.\n\n22": {"quality": '{"score": 4, "reason": "ok"}', "bloom": '{"level": "Create", "score": 16, "reasoning": "r"}',
                             "disciplines": _disc(("Mathematics", D_MATH))},
    "Design a plan.\n\n333": {"quality": '{"score": 4.5, "reason": "ok"}', "bloom": '{"level": "Apply", "score": 8, "reasoning": "r"}',
                              "disciplines": _disc(("Biology", D_BIO), ("History", D_HIST))},
    "Evaluate the claim.": {"quality": '{"score": 3, "reason": "ok"}', "bloom": '{"level": "Evaluate", "score": 13, "reasoning": "r"}',
                            "disciplines": "no list today"},  # a failed disciplines reply
    "Compare the two options.": {"quality": '{"score": 1, "reason": "bad"}'},
    "Explain the rule.": {"quality": '{"score": 2, "reason": "meh"}', "bloom": '{"level": "Understand", "score": 5, "reasoning": "r"}',
                          "disciplines": _disc(("Law", "Rules and courts."))},
}


def test_judge_path_end_to_end_hand_computed(hand_pool, tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    judge = RuleJudge(JUDGE_TABLE)
    try:
        store = SignalStore(tmp_path / "store")
        kw = {"quality": "judge", "bloom": "judge", "ic": "judge", "judge_url": judge.url, "judge_model": "rules",
                  "judge_params": {"cache_dir": str(tmp_path / "replies"), "backoff_base": 0.05, "max_failure_rate": 1.0},
                  "fractions": (0.5, 0.8, 0.5),
                  "budget_rule": "fixed"}
        sel = select(hand_pool, store, 2, artifacts=tmp_path / "art", **kw)
    finally:
        judge.close()
    d = sel.diagnostics
    s1, s2, _s3 = d["stages"]
    ids = json.loads((tmp_path / "art" / "thtb_stage_ids.json").read_text())
    assert not (tmp_path / "cache" / "thtb").exists()  # the selector keeps no embedding cache of its own
    # stage 1: judge quality /5; 4 of the 10 got prose (counted failures, excluded); keep 5 of 10
    assert s1["excluded_no_quality"] == 4 and s1["missing_scores"] == 4
    assert ids["quality"] == ["design-a", "design-c", "design-b", "evaluate", "explain"]
    assert [ex["score"] for ex in s1["top"]] == [1.0, 0.9, 0.8]
    # stage 2 (reference): Bloom (score-1)/20: 1.0, 0.35, 0.75, 0.6, 0.2; IC over the 4 with lists:
    # counts 3, 2, 1, 1 (evaluate failed) -> (c-1)/2 = 1, .5, 0, 0; + mean pairwise description distance
    assert s2["bloom_judge_failed"] == 0 and s2["ic_judge_failed"] == 1 and s2["missing_ihs"] == 1
    from thresher.signals.embed import encode_texts, load_encoder

    v, _ = encode_texts(load_encoder("minilm"), [D_MATH, D_BIO, D_HIST], normalize=True)
    dd = lambda a, b: 1 - float(v[a] @ v[b])
    ic_a = round(1.0 + (dd(0, 1) + dd(0, 2) + dd(1, 2)) / 3, 2)
    ic_c = round(0.5 + dd(1, 2), 2)
    ihs = {"design-a": (1.0 + ic_a) / 2, "design-c": (0.35 + ic_c) / 2, "design-b": (0.75 + 0.0) / 2, "explain": (0.2 + 0.0) / 2}
    expected = sorted(ihs, key=lambda i: -ihs[i])
    assert ids["ihs"] == expected  # keep 4 of 5: the failed IC (evaluate) is ranked last, so it is the one dropped
    assert [ex["score"] for ex in s2["top"]] == pytest.approx([ihs[i] for i in expected[:3]])
    assert s2["ic_formula"] == "reference" and s2["ic_available"] is True
    assert d["stage_kept"] == [5, 4, 2] and len(sel) == 2
    assert set(sel.ids) <= set(ids["ihs"])


def test_ic_reads_the_stored_discipline_embeddings(hand_pool, tmp_path, monkeypatch):
    """The description vectors are a pool-scope signal over judge_disciplines; the selector
    lists it among its required signals, only reads it (a missing one is an error naming it)
    and writes nothing under $THRESHER_CACHE/thtb."""
    from thresher.signals.embed import discipline_vectors, encode_texts, load_encoder

    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    judge = RuleJudge(JUDGE_TABLE)
    try:
        store = SignalStore(tmp_path / "store")
        kw = {"quality": "judge", "bloom": "judge", "ic": "judge", "judge_url": judge.url, "judge_model": "rules",
              "judge_params": {"cache_dir": str(tmp_path / "replies"), "backoff_base": 0.05, "max_failure_rate": 1.0},
              "fractions": (0.5, 0.8, 0.5), "budget_rule": "fixed"}
        sel = make_selector("thtb", **kw)
        required = sel.required_signals()
        names = [s.name for s in required]
        assert names.index("discipline_embeddings") == names.index("judge_disciplines") + 1
        emb = required[names.index("discipline_embeddings")]
        assert [d.key(hand_pool) for d in emb.requires()] == [sel.disciplines_signal().key(hand_pool)]
        for s in required:
            if s.name != "discipline_embeddings":
                run_signal(s, hand_pool, store, show_progress=False)
        with pytest.raises(KeyError, match="signal 'discipline_embeddings'.*compute it first"):
            sel.select(hand_pool, SignalView(hand_pool, store), 2)
        run_signal(emb, hand_pool, store, show_progress=False)
        res = sel.select(hand_pool, SignalView(hand_pool, store), 2)
    finally:
        judge.close()
    assert not (tmp_path / "cache" / "thtb").exists()
    assert len(res) == 2 and res.diagnostics["stages"][1]["ic_available"] is True
    stored = discipline_vectors(read_signal(emb, hand_pool, store)["discipline_vectors"])
    pos = hand_pool.positions(["design-a", "evaluate", "explain"])
    v, _ = encode_texts(load_encoder("minilm"), [D_MATH, D_BIO, D_HIST], normalize=True)
    np.testing.assert_allclose(stored[pos[0]], v, atol=1e-6)  # the judge's order
    assert stored[pos[1]].shape == (0, 0) and stored[pos[2]].shape == (1, 384)  # a failed reply has none
    # the key follows the encoder and the judge
    other = [make_signal("discipline_embeddings", url=judge.url, model="rules", embed_model="other-encoder"),
             make_signal("discipline_embeddings", url=judge.url, model="another-judge")]
    assert len({emb.key(hand_pool).digest, *(o.key(hand_pool).digest for o in other)}) == 3


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_judge_failures_from_a_real_model_server_are_counted(hand_pool, tmp_path, monkeypatch, tiny_chat_model_dir,
                                                              torch_one_thread):
    """``thresher serve`` over a tiny random model: every Bloom/disciplines reply fails to parse.

    THTB then has no IHS for anyone: with ``rank_last`` stage 2 keeps the stage-1 order
    (deterministically), with ``exclude`` nothing survives (shortfall = k)."""
    from thresher.judge.serve import start_server_in_thread

    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    url, stop = start_server_in_thread(tiny_chat_model_dir, served_name="tiny")
    try:
        kw = {"quality": "chars_answer", "bloom": "judge", "ic": "judge", "judge_url": url, "judge_model": "tiny",
                  "judge_params": {"max_tokens": 16, "concurrency": 2, "cache_dir": str(tmp_path / "replies"), "max_failure_rate": 1.0},
                  "fractions": (0.6, 0.5, 0.5), "budget_rule": "fixed"}
        store = SignalStore(tmp_path / "store")
        sel = make_selector("thtb", **kw)
        n = len(hand_pool)
        for s in sel.required_signals():
            run_signal(s, hand_pool, store, show_progress=False)
            if s.name in ("judge_bloom", "judge_disciplines"):
                assert s.stats.requests == n and s.stats.parse_failures == n and s.stats.transport_failures == 0
        res = sel.select(hand_pool, SignalView(hand_pool, store), 2, artifacts_dir=tmp_path / "art")
        again = sel.select(hand_pool, SignalView(hand_pool, store), 2)
        excl = make_selector("thtb", on_missing="exclude", **kw).select(hand_pool, SignalView(hand_pool, store), 2)
    finally:
        stop()
    _s1, s2, _s3 = res.diagnostics["stages"]
    assert s2["bloom_judge_failed"] == 6 and s2["ic_judge_failed"] == 6 and s2["missing_ihs"] == 6
    assert s2["scores_in"] == {"n": 0} and s2["top"] == [] and s2["cutoff"] is None
    stage_ids = json.loads((tmp_path / "art" / "thtb_stage_ids.json").read_text())
    assert stage_ids["ihs"] == stage_ids["quality"][:3]  # no IHS: the stage keeps the stage-1 order
    assert res.ids == again.ids and len(res) == 2
    assert excl.diagnostics["stage_kept"] == [6, 0, 0] and excl.diagnostics["shortfall"] == 2 and excl.ids == []
    md = (tmp_path / "art" / "thtb_report.md").read_text()
    assert "examples without a score: 6" in md


@pytest.mark.slow
def test_smollm2_judge_thtb_on_alpaca(shared_data, tmp_path, monkeypatch):
    """The whole judge path on SmolLM2-135M-Instruct behind ``thresher serve`` (6 Alpaca rows)."""
    from thresher.judge.serve import start_server_in_thread

    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    rows = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:6]
    pool = Pool.from_records(rows, name="alpaca6")
    url, stop = start_server_in_thread("small", port=0)
    try:
        kw = {"quality": "judge", "bloom": "judge", "ic": "judge", "judge_url": url, "judge_model": "small",
                  "judge_params": {"max_tokens": 120, "concurrency": 2, "cache_dir": str(tmp_path / "replies"), "max_failure_rate": 1.0},
                  "fractions": (1.0, 0.5, 0.5), "budget_rule": "fixed", "on_missing": "rank_last"}
        store = SignalStore(tmp_path / "store")
        sel = make_selector("thtb", **kw)
        stats = {}
        for s in sel.required_signals():
            run_signal(s, pool, store, show_progress=False)
            if hasattr(s, "stats"):
                s.stats.check()
                stats[s.name] = s.stats
        res = sel.select(pool, SignalView(pool, store), 1)
        again = sel.select(pool, SignalView(pool, store), 1)
    finally:
        stop()
    d = res.diagnostics
    q_failed = stats["judge_quality"].failures
    assert d["stages"][0]["excluded_no_quality"] == q_failed
    s2 = d["stages"][1]
    n2 = d["stage_kept"][0]
    assert s2["n_in"] == n2
    assert s2["missing_ihs"] <= n2
    assert res.ids == again.ids
    assert json.loads(json.dumps(res.diagnostics)) == json.loads(json.dumps(again.diagnostics))
    assert not (tmp_path / "cache" / "thtb").exists()
    assert len(res) == (1 if n2 else 0)


# =========================================================================== annotation guide


def test_guide_profile_and_under_represented(hand_pool, tmp_path):
    store = SignalStore(tmp_path / "store")
    g = thtb_guide(hand_pool, store, compute_missing=True, show_progress=False)
    # levels: design x4 + "Compare"... -> Create 4, Evaluate 1, Analyze 1, Understand 1, Remember 3 (List, What, Name)
    lv = g["bloom"]["levels"]
    assert {k: v["count"] for k, v in lv.items()} == {"Remember": 3, "Understand": 1, "Apply": 0, "Analyze": 1,
                                                      "Evaluate": 1, "Create": 4}
    assert g["bloom"]["higher_order_share"] == pytest.approx(0.6)
    assert g["bloom"]["mean_norm"] == pytest.approx((0 * 3 + 0.2 + 0.6 + 0.8 + 1.0 * 4) / 10)
    assert g["under_represented"] == [{"category": "bloom:Apply", "share": 0.0, "target": round(1 / 12, 4)}]
    assert g["ic"] == {"available": False, "reason": "no judge configured (ic='none'): interdisciplinary complexity is not estimated"}
    assert g["ihs"]["quantiles"]["n"] == 10 and g["ehs"]["quantiles"]["n"] == 10
    text = render_guide(g)
    assert "| Create | 4 | 40.0% |" in text and "bloom:Apply: 0.0% (target >= 8.3%)" in text and "IC: unavailable" in text
    g2 = thtb_guide(hand_pool, store, min_share=0.15, higher_order_target=0.7)
    cats = [u["category"] for u in g2["under_represented"]]
    assert cats == ["bloom:Understand", "bloom:Apply", "bloom:Analyze", "bloom:Evaluate",
                    "bloom:higher-order (Analyze+Evaluate+Create)"]
    assert any("Analyze (10.0%), Evaluate (10.0%)" in r for r in g2["recommendations"])
    with pytest.raises(KeyError, match="compute it first"):
        thtb_guide(hand_pool, SignalStore(tmp_path / "empty"))


def test_guide_with_judge_disciplines(hand_pool, tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    judge = RuleJudge(JUDGE_TABLE)
    try:
        g = thtb_guide(hand_pool, SignalStore(tmp_path / "store"), ic="judge", bloom="judge", judge_url=judge.url,
                       judge_model="rules", judge_params={"cache_dir": str(tmp_path / "replies"), "max_failure_rate": 1.0},
                       compute_missing=True,
                       show_progress=False)
    finally:
        judge.close()
    ic = g["ic"]
    # lists for design-a (3), design-b (1), design-c (2), explain (1); the other 6 failed
    assert ic["available"] and ic["judge_failed"] == 6 and ic["disciplines_per_query"] == {1: 2, 2: 1, 3: 1}
    assert ic["multi_discipline_share"] == 0.5 and ic["distinct_disciplines"] == 4
    assert ic["top_disciplines"][:3] == [{"name": "mathematics", "count": 2}, {"name": "biology", "count": 2},
                                         {"name": "history", "count": 2}]
    assert g["bloom"]["judge_failed"] == 5 and g["bloom"]["scored"] == 5
    assert not any(u["category"].startswith("ic:") for u in g["under_represented"])  # 0.5 is not below 0.5
    assert "4 distinct disciplines" in render_guide(g)
