"""THTB, "The Harder The Better" (Shang et al. 2025, arXiv 2510.13892): a three-stage filter.

Each stage ranks what the previous stage kept and keeps a fraction of it; the defaults
(20% x 50% x 50%) keep 5% of the pool, as in the paper.

1. **Quality.** Any quality source of :mod:`thresher.select.quality`: ``judge`` (LLM judge
   0-5, /5), ``reward:MODEL`` (a sequence-classification reward model, ``clip((r+5)/10,
   0, 1)``), or a stored signal column for offline use (``loss:low`` by default: the
   answer's mean cross-entropy under the scorer, lower is better, rank-normalised). An
   example without a quality value (failed judge reply, answer cut by the scorer) has not
   passed the filter: it is excluded and counted.
2. **Intrinsic hardness** ``IHS = (Bloom + IC) / 2``.
   - Bloom from the judge (``judge_bloom``) or, offline, the verb-list heuristic
     (``bloom_heuristic``, a heuristic and named so). Reference code:
     ``(score - 1) / 20`` on the judge's 1..21 score (the heuristic has only levels:
     ``(level - 1) / 5``); paper: the level 1..6 min-max normalised within the stage.
   - IC (interdisciplinary complexity) from the judge's discipline list
     (``judge_disciplines``): ``minmax(#disciplines) + mean pairwise cosine distance`` of
     the disciplines' description embeddings (0 with fewer than 2), read from the stored
     ``discipline_embeddings`` signal (the selector never runs the encoder). Paper form: the
     example's own descriptions, a constant count column min-maxes to 0. Reference form:
     subject names canonicalised (lower case, spaces -> ``_``), one description per
     subject (its first in the stage's input order), a constant count min-maxes to
     0.5 and ``IC`` is rounded to 2 decimals when there are 2+ subjects.
   - Without a judge (``ic="none"``) IC is **unavailable**: IHS is the Bloom term alone
     and the diagnostics say so. Nothing stands in for it.
3. **Extrinsic hardness** ``EHS = (IREI + SC_norm) / 2`` over the stage's input.
   - IREI on character lengths of the user (``L_inst``) and assistant (``L_resp``) turns.
     Reference code: ``(minmax(L_inst + L_resp) + minmax(L_resp / L_inst)) / 2``
     (a constant column -> 0.5); paper: ``minmax(L_inst + L_resp) + L_resp / L_inst``.
     The ratio is 0 for an empty instruction.
   - ``SC_norm = (s + 1) / 2``, ``s`` the cosine silhouette of the query in a k-means
     clustering of TF-IDF query vectors (lower case, no punctuation or digits, 100
     features; :func:`thresher.signals.geometry.tfidf_silhouette`). As in the reference
     code the clustering is of the stage's own queries (``sc_scope="stage"``, in pool
     order, ``k = round(sqrt(m / 2))`` for m queries; ``sc_k_basis="pool"`` takes n = the
     pool size instead, which is what the reference README's 161 clusters for Alpaca-52k
     correspond to); ``sc_scope="pool"`` reads the stored pool-wide ``tfidf_silhouette``.

**Normalisation within the stage** (as in the reference): every min-max above is over the
stage's input, not the pool.

**Budget rule** (decision). ``budget_rule="scale"`` (default): the three fractions are
multiplied by one common factor ``c`` (capped at 1 each) chosen so that their product
is ``k / n``; for the default 5% budget ``c = 1``. Scaling all three by the same factor
keeps the stages' relative strictness (their ratios) wherever no cap binds; e.g. 10% ->
25.2% x 63% x 63%, 30% -> 36.3% x 90.9% x 90.9%, 50% -> 50% x 100% x 100%. Stage sizes
are ``n1 = round(f1 n)``, ``n2 = round(f2 n1)`` (each at least k) and the last stage
keeps exactly k. ``budget_rule="fixed"``: stages 1 and 2 use the fractions as given and
stage 3 keeps k (a shortfall if fewer are left).

**Ties** (decision) are broken by the previous stage's order (stage 1: pool order), so
an example that ties on hardness keeps its better quality rank. Examples whose hardness
cannot be computed (a failed judge reply) are ranked after all scored ones in that
order (``on_missing="rank_last"``) or dropped (``"exclude"``); both are counted.

**Determinism.** THTB has no random choice of its own: the selection's ``seed`` is not
used (the only random step, the silhouette's k-means, takes ``sc_seed``, fixed like the
reference code's ``random_state``), so every seed gives the same subset.

**Report.** With an artifacts folder the selector writes one histogram per stage
(``thtb_stage{1,2,3}_*.png``: the stage input's scores, kept vs dropped, the cut-off),
``thtb_report.md`` / ``thtb_report.json`` (kept counts, score quantiles, top and bottom
examples of every stage with their score components) and ``thtb_stage_ids.json`` (the
ids each stage kept, in rank order).

**Modules.** :mod:`.params` (``THTBParams``), :mod:`.hardness` (the score formulas as pure
functions), :mod:`.stages` (stage sizes for a budget, ranking, ``StageResult``),
:mod:`.report` (summaries, histograms, report files), :mod:`.guide` (annotation guidance);
this module reads the signals, runs the three stages and decides.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from thresher.data.pool import user_text
from thresher.select.base import Selector, register_selector
from thresher.select.quality import quality_source
from thresher.select.thtb.hardness import (
    bloom_paper,
    ehs_scores,
    ihs_scores,
    interdisciplinary_complexity,
    irei_paper,
    irei_reference,
    sc_norm,
    silhouette_k,
)
from thresher.select.thtb.params import THTBParams
from thresher.select.thtb.report import stage_summary, write_report
from thresher.select.thtb.stages import StageResult, rank_stage, stage_sizes
from thresher.signals.base import Signal, make_signal
from thresher.signals.embed import discipline_lists, discipline_vectors
from thresher.signals.geometry import tfidf_silhouette
from thresher.signals.heuristics import BLOOM_LEVEL_NAMES


@register_selector
class THTBSelector(Selector):
    name = "thtb"
    description = ("THTB (The Harder The Better): quality filter, then intrinsic hardness (Bloom level + "
                   "interdisciplinary complexity), then extrinsic hardness (IREI + TF-IDF silhouette); 20% x 50% x 50%")
    Params = THTBParams

    # --- the signals it reads
    def _judge_kw(self) -> dict:
        return {"url": self.params.judge_url, "model": self.params.judge_model, **self.params.judge_params}

    def quality_source(self):

        return quality_source(self.params.quality, signal_params=self.params.lm_params(), judge_params=self._judge_kw())

    def bloom_signal(self) -> Signal:
        if self.params.bloom == "judge":
            return make_signal("judge_bloom", **self._judge_kw())
        return make_signal("bloom_heuristic", text=self.params.bloom_text)

    def disciplines_signal(self) -> Signal:
        return make_signal("judge_disciplines", **self._judge_kw())

    def discipline_embeddings_signal(self) -> Signal:
        """The stored description vectors (of the same judge's disciplines) that IC compares."""
        return make_signal("discipline_embeddings", embed_model=self.params.embed_model, **self._judge_kw())

    def discipline_inputs(self, pool, signals, positions) -> tuple[list, list, np.ndarray]:
        """(discipline lists, description vectors, judge-failed flags) of the examples at pool ``positions``."""
        cols = signals.signal(self.disciplines_signal())
        failed = np.asarray(cols["disciplines_judge_failed"], dtype=bool)[positions]
        ids = pool.ids
        lists = discipline_lists({"disciplines_judge_failed": failed,
                                  "disciplines_json": np.asarray(cols["disciplines_json"], dtype=object)[positions]},
                                 [ids[int(p)] for p in positions])
        stored = np.asarray(signals.signal(self.discipline_embeddings_signal())["discipline_vectors"], dtype=object)
        return lists, discipline_vectors(stored[positions]), failed

    def irei_signal(self) -> Signal:
        return make_signal("irei")

    def pool_silhouette_signal(self) -> Signal:
        return make_signal("tfidf_silhouette", k=self.params.sc_k, seed=self.params.sc_seed, max_features=self.params.sc_max_features)

    def required_signals(self) -> list[Signal]:
        sigs = [self.quality_source().signal, self.bloom_signal(), self.irei_signal()]
        if self.params.ic == "judge":
            sigs += [self.disciplines_signal(), self.discipline_embeddings_signal()]
        if self.params.sc_scope == "pool":
            sigs.append(self.pool_silhouette_signal())
        return sigs

    # --- stages
    def _stage_quality(self, pool, signals, n1: int) -> StageResult:
        src = self.quality_source()
        q = src.values(signals)
        n = len(pool)
        positions = np.arange(n)
        ranked, kept, missing = rank_stage(q, positions, n1, on_missing="exclude")
        return StageResult("quality", f"Stage 1: quality ({src.spec})", positions, q, {"quality": q}, ranked, kept, missing,
                           {"source": src.spec, "signal": src.signal.name, "column": src.column, "direction": src.direction,
                            "normalise": src.normalise, "excluded_no_quality": missing})

    def bloom_values(self, signals, positions) -> tuple[np.ndarray, np.ndarray, dict]:
        """(Bloom term, level, notes) for the examples at pool ``positions`` (min-max over them for the paper form)."""
        cols = signals.signal(self.bloom_signal())
        notes: dict[str, Any] = {"bloom_source": self.params.bloom}
        if self.params.bloom == "judge":
            levels = np.asarray(cols["bloom_level_judge"], dtype=np.float64)[positions]
            failed = np.asarray(cols["bloom_judge_failed"], dtype=bool)[positions]
            notes["bloom_judge_failed"] = int(failed.sum())
            if self.params.formula == "reference":
                term = np.asarray(cols["bloom_norm_ref"], dtype=np.float64)[positions]
                notes["bloom_formula"] = "(judge score - 1) / 20"
            else:
                term = bloom_paper(levels)
                notes["bloom_formula"] = "minmax(judge level) within the stage"
        else:
            levels = np.asarray(cols["bloom_level"], dtype=np.float64)[positions]
            if self.params.formula == "reference":
                term = (levels - 1.0) / 5.0
                notes["bloom_formula"] = "(heuristic level - 1) / 5 (the heuristic has no 1..21 score)"
            else:
                term = bloom_paper(levels)
                notes["bloom_formula"] = "minmax(heuristic level) within the stage"
        notes["bloom_level_counts"] = {BLOOM_LEVEL_NAMES[int(lv) - 1]: int((levels == lv).sum()) for lv in range(1, 7)}
        return term, levels, notes

    def _ic_values(self, pool, signals, positions) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict]:
        if self.params.ic == "none":
            return None, {}, {"ic_available": False,
                              "ic_reason": "no judge configured (ic='none'): IC is unavailable, IHS = Bloom term alone"}
        lists, vectors, failed = self.discipline_inputs(pool, signals, positions)
        ic, counts, dists, info = interdisciplinary_complexity(lists, vectors, self.params.formula)
        notes = {"ic_available": True, "ic_judge_failed": int(failed.sum()), "ic_formula": self.params.formula, **info}
        return ic, {"n_disciplines": counts, "discipline_distance": dists, "ic": ic}, notes

    def _stage_ihs(self, pool, signals, prev: StageResult, n2: int) -> StageResult:
        positions = prev.kept_positions()
        bloom, levels, notes = self.bloom_values(signals, positions)
        ic, ic_parts, ic_notes = self._ic_values(pool, signals, positions)
        notes.update(ic_notes)
        score = ihs_scores(bloom, ic)
        notes["ihs_formula"] = "(Bloom + IC) / 2" if ic is not None else "Bloom term alone (IC unavailable)"
        ranked, kept, missing = rank_stage(score, np.arange(len(positions)), n2, self.params.on_missing)
        notes["missing_ihs"] = missing
        comps = {"bloom_level": levels, "bloom": bloom, **ic_parts}
        return StageResult("ihs", "Stage 2: intrinsic hardness (IHS)", positions, score, comps, ranked, kept, missing, notes)

    def _stage_ehs(self, pool, signals, prev: StageResult, k: int) -> StageResult:

        positions = prev.kept_positions()
        m = len(positions)
        cols = signals.signal(self.irei_signal())
        li = np.asarray(cols["irei_len_inst"], dtype=np.float64)[positions]
        lr = np.asarray(cols["irei_len_resp"], dtype=np.float64)[positions]
        irei = irei_reference(li, lr) if self.params.formula == "reference" else irei_paper(li, lr)
        notes: dict[str, Any] = {"irei_formula": self.params.formula, "sc_scope": self.params.sc_scope}
        if self.params.sc_scope == "pool":
            s = np.asarray(signals.signal(self.pool_silhouette_signal())["silhouette"], dtype=np.float64)[positions]
            notes["sc_k"] = self.params.sc_k or "round(sqrt(pool/2)) (stored signal)"
        elif m < 3:
            s = np.zeros(m)
            notes["sc_degenerate"] = f"{m} queries: the silhouette needs 3; s = 0 for all"
        else:
            basis = len(pool) if self.params.sc_k_basis == "pool" else m
            kk = silhouette_k(m, self.params.sc_k, basis)
            in_pool_order = np.argsort(positions, kind="stable")  # the clustering does not depend on earlier ranks
            texts = [user_text(pool[int(positions[i])]) for i in in_pool_order]
            s_sorted = tfidf_silhouette(texts, k=kk, seed=self.params.sc_seed, max_features=self.params.sc_max_features)
            s = np.empty(m)
            s[in_pool_order] = s_sorted
            notes["sc_k"] = kk
        scn = sc_norm(s)
        score = ehs_scores(irei, scn)
        ranked, kept, missing = rank_stage(score, np.arange(m), k, self.params.on_missing)
        comps = {"len_inst": li, "len_resp": lr, "irei": irei, "silhouette": s, "sc_norm": scn}
        return StageResult("ehs", "Stage 3: extrinsic hardness (EHS)", positions, score, comps, ranked, kept, missing, notes)

    # --- run
    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        n = len(pool)
        (n1, n2, n3), used = stage_sizes(n, k, self.params.fractions, self.params.budget_rule)
        s1 = self._stage_quality(pool, signals, n1)
        s2 = self._stage_ihs(pool, signals, s1, n2)
        s3 = self._stage_ehs(pool, signals, s2, n3)
        stages = [s1, s2, s3]
        ids = pool.ids
        chosen = [ids[int(p)] for p in s3.kept_positions()]
        summaries = [stage_summary(pool, st, targets, self.params.report_examples)
                     for st, targets in zip(stages, (n1, n2, n3))]
        diag: dict[str, Any] = {
            "quality": self.params.quality,
            "bloom_source": "judge_bloom" if self.params.bloom == "judge" else "bloom_heuristic (HEURISTIC)",
            "ic_available": self.params.ic == "judge",
            "formula": self.params.formula,
            "budget_rule": self.params.budget_rule,
            "fractions_requested": list(self.params.fractions),
            "fractions_used": [round(f, 6) for f in used],
            "stage_targets": [n1, n2, n3],
            "stage_kept": [len(s1.kept), len(s2.kept), len(s3.kept)],
            "shortfall": k - len(chosen),
            "stages": summaries,
        }
        if self.artifacts_dir is not None:
            diag["artifacts"] = write_report(self.artifacts_dir, pool, stages, summaries, diag,
                                             self.params.model_dump(mode="json"))
        return chosen, diag
