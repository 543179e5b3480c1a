"""TMAP: learned multi-indicator weights with in-context-learning proxies (seed 001,
arXiv 2605.09665), and ``weighted``: the same score with a fixed weight vector.

Score ``s_w(x) = sum_k w_k f_k(x)`` over K indicators ``f_k``, each oriented (higher =
better) and normalised over the pool; the selection is the top-k of ``s_w``. TMAP learns
``w`` on the simplex by Bayesian optimisation of an ICL proxy ``J(w)`` (how well the
target model answers a tiny validation set with demonstrations drawn from the top-k
subset under ``w``; :mod:`thresher.select.tmap.proxy`), with no fine-tuning during the search.

**Indicators** (param ``indicators``; each a name below or any stored signal column,
optionally suffixed ``:high`` / ``:low`` to set its orientation):

============== ============================================ =========== =====================================
name           stored signal / column                       orientation why
============== ============================================ =========== =====================================
quality        ``quality`` source: judge, reward:MODEL,     high        better responses
               COLUMN[:low] (see select/quality.py)
ifd            lm / ``ifd`` under ``scorer``                high        Cherry: the instruction helps less
perplexity     lm / ``ppl`` under ``scorer``                low         fluent, consistent with the model
reasoning_steps reasoning_steps / ``reasoning_steps``       high        more worked steps
bloom          bloom_heuristic / ``bloom_level`` (or        high        higher cognitive level
               judge_bloom / ``bloom_score``)
diversity      knn_diversity / ``knn_distance``             high        far from its neighbours: less redundant
length         text / ``tokens_answer`` (scorer tokenizer)  high        longer, more detailed answers
relevance      task_relevance / ``task_relevance``          high        close to the target task's dev items
============== ============================================ =========== =====================================

The orientation is fixed per indicator (the simplex keeps every weight >= 0, so the
search cannot flip a sign); to let the search consider both, list both
(``perplexity`` and ``perplexity:high``). The default set is ``quality, ifd,
perplexity, reasoning_steps, bloom, diversity, length``. **Target model (decision):**
``scorer`` (default ``small``, the same model the proxy runs on) computes IFD,
perplexity and the token lengths: TMAP adapts to the model whose in-context behaviour
it measures.

**Normalisation** (``normalise``): ``rank`` (default; average ranks scaled to [0, 1]) or
``minmax``, over the pool, after orientation. A missing value (NaN: a failed judge
reply, an answer cut away) counts as the worst (0) with ``missing="worst"`` (default) or
removes the example with ``missing="exclude"``; either way the diagnostics count them.

**Search.** Bayesian optimisation on the simplex (:mod:`thresher.select.bayesopt`: GP with a
Matern 5/2 kernel, expected improvement). The initial design is the centre (equal
weights) and the K vertices (each indicator alone) when ``init_corners`` is on, then
``n_init`` Dirichlet-random points; then ``n_iter`` acquisition steps. So a search costs
``(K + 1 if init_corners) + n_init + n_iter`` proxy evaluations; a candidate whose
top-k subset was already scored is answered from memory (logged as cached). The
equal-weights and best-single-indicator subsets come out of the same trace
(``diagnostics["equal_weights"]``, ``diagnostics["best_single_indicator"]``), so the
baselines are chosen by the same proxy, not by the oracle.

**Proxy fidelity** (``check_fidelity=N``): after the search, the real oracle fine-tunes
on N of the evaluated subsets spread over the range of proxy scores (the best one
included) and the report gives the Spearman correlation between proxy and oracle dev
scores -- the paper's load-bearing assumption, measured -- and how well the tiny set's
weighted accuracy tracks the full dev accuracy on those runs. The oracle passed by the
caller is used; without one, TMAP builds a dev-only oracle from ``oracle_model``,
``oracle_steps`` and ``oracle_cache``.

Artifacts (when the caller gives an artifacts folder): ``tmap_weights.png`` (learned
weights, as in the paper's Figure 2), ``tmap_trace.png`` and ``tmap_trace.json`` (every
proxy evaluation), ``tmap_fidelity.png`` (proxy vs oracle) when measured.
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from thresher.data.io import atomic_write_json
from thresher.data.ledger import CostLedger
from thresher.models.load import tier_of
from thresher.models.train import TrainConfig
from thresher.oracle.core import Oracle, ids_digest
from thresher.progress import progress
from thresher.select.base import (
    Selector,
    register_selector,
    unique_signals,
)
from thresher.select.bayesopt import Simplex, maximise
from thresher.select.tmap.anchors import make_anchors, tiny_vs_full
from thresher.select.tmap.indicators import (
    IndicatorParams,
    check_indicator_spec,
    indicator_matrix,
    weighted_top,
)
from thresher.select.tmap.plots import plot_fidelity, plot_trace, plot_weights
from thresher.select.tmap.proxy import ICLProxy

# --------------------------------------------------------------------------- fixed weights


class WeightedParams(IndicatorParams):
    weights: dict[str, float] | None = Field(None, description="indicator -> weight (>= 0; normalised to sum 1); None = equal weights over 'indicators'")

    @model_validator(mode="after")
    def _check_weights(self):
        if self.weights is not None:
            if not self.weights:
                raise ValueError("weights: give at least one indicator (or None for equal weights)")
            bad = {k: v for k, v in self.weights.items() if not (v >= 0 and np.isfinite(v))}
            if bad:
                raise ValueError(f"weights must be finite and >= 0: {bad}")
            if sum(self.weights.values()) <= 0:
                raise ValueError("weights must not all be zero")
            for spec in self.weights:
                check_indicator_spec(spec, where="weights: indicator")
        return self

    def labels_and_weights(self) -> tuple[list[str], np.ndarray]:
        if self.weights is None:
            return list(self.indicators), np.full(len(self.indicators), 1.0 / len(self.indicators))
        labels = list(self.weights)
        w = np.array([self.weights[k] for k in labels], dtype=np.float64)
        return labels, w / w.sum()


@register_selector
class WeightedSelector(Selector):
    name = "weighted"
    description = "top-k by a fixed weighted sum of normalised, oriented indicators (equal weights by default; one indicator = a single-indicator baseline)"
    Params = WeightedParams

    def required_signals(self):
        labels, _ = self.params.labels_and_weights()
        return unique_signals(ind.signal for ind in self.params.resolved(labels))

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        labels, w = self.params.labels_and_weights()
        F, info = indicator_matrix(signals, self.params.resolved(labels), self.params.normalise, self.params.missing)
        ids, n_nan = weighted_top(F, w, pool.ids, k)
        return ids, {"weights": {lab: round(float(x), 6) for lab, x in zip(labels, w)}, "indicators": info,
                     "excluded_nan": n_nan, "shortfall": k - len(ids)}


# --------------------------------------------------------------------------- TMAP


class TMAPParams(IndicatorParams):
    proxy_model: str = Field("small", description="the target model whose in-context behaviour the proxy measures")
    proxy_metric: Literal["loglik", "accuracy"] = Field("loglik", description="gold-answer mean log-likelihood (one forward pass) or generation accuracy")
    anchors: int = Field(50, ge=1, description="tiny validation set size (clusters of dev items; medoids)")
    anchor_by: Literal["embedding", "correctness"] = Field("embedding", description="cluster dev items by embedding or by correctness across anchor_models")
    anchor_models: list[str] = Field(default_factory=list, description="reference models for anchor_by=correctness (>= 2)")
    anchor_text: Literal["all", "question"] = Field("all", description="what the anchor embedding reads: question + gold response, or the question")
    demos: int = Field(4, ge=0, description="demonstrations per prompt (m)")
    draws: int = Field(2, ge=1, description="seeded demonstration draws averaged per proxy call")
    demo_sharing: Literal["per_question", "shared"] = Field("per_question", description="fresh demos for each anchor question, or one set per draw")
    gold: Literal["target", "answer"] = Field("target", description="what the log-likelihood scores: the gold worked response or the bare answer")
    proxy_max_length: int = Field(2048, ge=32, description="longest prompt; earlier demos are dropped (and counted) beyond it")
    proxy_token_budget: int = Field(4096, ge=256, description="padded tokens per forward batch (speed only; 4096 measured ~1.8x faster than 16384 on 2 CPU cores)")
    n_init: int = Field(6, ge=0, description="random Dirichlet points in the initial design")
    init_corners: bool = Field(True, description="also evaluate equal weights and every single indicator first")
    n_iter: int = Field(20, ge=0, description="Bayesian-optimisation steps after the initial design")
    acquisition: Literal["ei", "ucb"] = Field("ei", description="expected improvement or upper confidence bound")
    xi: float = Field(0.01, ge=0, description="EI exploration margin (in the GP's normalised units)")
    beta: float = Field(1.5, ge=0, description="UCB width")
    check_fidelity: int = Field(0, ge=0, description="fine-tune the oracle on N evaluated subsets and report Spearman(proxy, oracle)")
    oracle_model: str = Field("micro", description="oracle model when TMAP builds its own oracle for check_fidelity")
    oracle_steps: int | None = Field(None, ge=1, description="oracle training steps (default: the tier's)")
    oracle_cache: str | None = Field(None, description="oracle cache folder (default: THRESHER_CACHE/oracle)")

    @model_validator(mode="after")
    def _check_budget(self):
        if (len(self.indicators) + 1 if self.init_corners else 0) + self.n_init + self.n_iter < 1:
            raise ValueError("the search needs at least one evaluation (n_init + n_iter, or init_corners)")
        if self.anchor_by == "correctness" and len(self.anchor_models) < 2:
            raise ValueError("anchor_by=correctness needs at least two anchor_models")
        return self

    def budget(self) -> int:
        return (len(self.indicators) + 1 if self.init_corners else 0) + self.n_init + self.n_iter


def spread_trials(trials: list[dict], n: int) -> list[dict]:
    """``n`` trials with distinct subsets spread over the range of proxy values (quantiles
    of the sorted unique subsets; the best one always included)."""
    uniq: dict[str, dict] = {}
    for t in trials:
        uniq.setdefault(t["subset"], t)
    ranked = sorted(uniq.values(), key=lambda t: (t["value"], -t["index"]))
    if n >= len(ranked):
        return ranked
    picks = sorted({round(q) for q in np.linspace(0, len(ranked) - 1, n)})
    j = 0
    while len(picks) < n:  # rounding merged two quantiles: fill from the top down
        cand = len(ranked) - 1 - j
        if cand not in picks:
            picks.append(cand)
        j += 1
    return [ranked[i] for i in sorted(picks)]


@register_selector
class TMAPSelector(Selector):
    name = "tmap"
    description = "TMAP: learn multi-indicator weights by Bayesian optimisation of an in-context-learning proxy on a tiny dev set (no training during the search)"
    Params = TMAPParams
    uses_task = True

    def required_signals(self):
        return unique_signals(ind.signal for ind in self.params.resolved())

    def run(self, pool, signals, k, *, task=None, seed=0, oracle=None):
        p = self.params
        t_start = time.perf_counter()
        inds = p.resolved()
        labels = [i.label for i in inds]
        K = len(inds)
        F, info = indicator_matrix(signals, inds, p.normalise, p.missing)
        ledger = oracle.ledger if oracle is not None else CostLedger()
        mark = ledger.mark()
        show = True

        anchors = make_anchors(task, p.anchors, by=p.anchor_by, seed=seed, encoder=p.embed_model, text=p.anchor_text,
                               reference_models=p.anchor_models, ledger=ledger, show_progress=show)
        proxy = ICLProxy(task, anchors, model=p.proxy_model, metric=p.proxy_metric, demos=p.demos, draws=p.draws,
                         sharing=p.demo_sharing, gold=p.gold, seed=seed, token_budget=p.proxy_token_budget,
                         max_length=p.proxy_max_length, ledger=ledger, show_progress=False)
        ids_all = pool.ids
        subsets: dict[str, list[str]] = {}
        trace: list[dict] = []

        def objective(w):
            chosen, n_excl = weighted_top(F, w, ids_all, k)
            digest = ids_digest(chosen)
            subsets.setdefault(digest, chosen)
            sc = proxy.score_ids(pool, chosen, label=f"tmap trial {len(trace)}")
            return sc.value, {"subset": digest, "cached": sc.cached, "proxy_seconds": round(sc.seconds, 2),
                              "subset_size": len(chosen), "excluded_nan": n_excl}

        initial = []
        if p.init_corners:
            initial = [np.full(K, 1.0 / K)] + [np.eye(K)[i] for i in range(K)]
        budget = p.budget()
        with progress(total=budget, desc="tmap search", disable=not show) as bar:
            def on_trial(t):
                d = t.to_dict()
                d["weights"] = {lab: float(x) for lab, x in zip(labels, t.x)}  # full precision: a subset is rebuildable
                trace.append(d)
                bar.update(1)
                bar.set_postfix(best=f"{max(tt['value'] for tt in trace):.4f}")

            opt = maximise(objective, Simplex(K), budget, seed=seed, n_init=p.n_init, initial_points=initial,
                           acquisition=p.acquisition, xi=p.xi, beta=p.beta, callback=on_trial)
        best = opt.best
        w_best = np.asarray(best.x)
        ids, n_nan = weighted_top(F, w_best, ids_all, k)
        search_seconds = time.perf_counter() - t_start

        fresh = [t for t in trace if not t["cached"]]
        diag: dict = {
            "indicators": info,
            "weights": {lab: round(float(x), 6) for lab, x in zip(labels, w_best)},
            "best_proxy": best.value,
            "best_trial": best.index,
            "proxy": {"model": p.proxy_model, "metric": p.proxy_metric, "anchors": len(anchors), "demos": p.demos,
                      "draws": p.draws, "sharing": p.demo_sharing, "calls": len(trace), "fresh_calls": len(fresh),
                      "cached_calls": len(trace) - len(fresh),
                      "seconds_per_fresh_call": round(float(np.mean([t["proxy_seconds"] for t in fresh])), 2) if fresh else 0.0,
                      "tokens": sum(e.tokens for e in ledger.entries[mark:] if e.kind == "proxy")},
            "anchors": anchors.to_dict(task.dev),
            "search": {"budget": budget, "init_corners": p.init_corners, "n_init": p.n_init, "n_iter": p.n_iter,
                       "acquisition": p.acquisition, "seconds": round(search_seconds, 1), "distinct_subsets": len(subsets)},
            "trace": [{"index": t["index"], "phase": t["phase"], "value": round(t["value"], 6), "cached": t["cached"],
                       "weights": t["weights"]} for t in trace],
            "excluded_nan": n_nan, "shortfall": k - len(ids),
        }
        if p.init_corners:
            diag["equal_weights"] = {"proxy": trace[0]["value"], "subset": trace[0]["subset"]}
            singles = {labels[i]: trace[1 + i]["value"] for i in range(K)}
            top = max(singles, key=lambda lab: (singles[lab], -labels.index(lab)))
            diag["single_indicator_proxy"] = {lab: round(v, 6) for lab, v in singles.items()}
            diag["best_single_indicator"] = {"indicator": top, "proxy": singles[top]}

        fid = None
        if p.check_fidelity:
            fid = self._fidelity(pool, task, oracle, ledger, trace, subsets, anchors, p.check_fidelity, tiny_vs_full)
            diag["fidelity"] = fid
        diag["ledger"] = ledger.summary(mark)
        diag["artifacts"] = self._write_artifacts(labels, w_best, trace, fid, diag)
        return ids, diag

    # --- fidelity
    def _fidelity(self, pool, task, oracle, ledger, trace, subsets, anchors, n, tiny_vs_full) -> dict:
        from scipy.stats import spearmanr

        p = self.params
        if oracle is None:
            oracle = Oracle(task, pool, model=p.oracle_model, train=TrainConfig.for_tier(tier_of(p.oracle_model), steps=p.oracle_steps),
                            cache_dir=p.oracle_cache, ledger=ledger).dev_view()
        chosen = spread_trials(trace, n)
        mark = ledger.mark()
        rows = []
        for t in chosen:
            sc = oracle.score(subsets[t["subset"]], label=f"tmap fidelity trial {t['index']}")
            rows.append({"trial": t["index"], "phase": t["phase"], "proxy": t["value"], "oracle_dev": sc.value,
                         "per_domain": sc.per_domain, "cached": sc.cached, "weights": t["weights"], "correct": sc.correct})
        out: dict = {"n": len(rows), "oracle_model": oracle.model, "metric": sc.metric if rows else None,
                     "oracle_runs": ledger.count("oracle", since=mark, include_cached=False),
                     "rows": [{k: v for k, v in r.items() if k != "correct"} for r in rows]}
        px, orc = [r["proxy"] for r in rows], [r["oracle_dev"] for r in rows]
        if len(rows) >= 3 and len(set(px)) > 1 and len(set(orc)) > 1:
            rho, pval = spearmanr(px, orc)
            out["spearman"] = round(float(rho), 4)
            out["spearman_p"] = round(float(pval), 4)
        else:
            out["spearman"] = None
            out["note"] = "fewer than 3 distinct subsets or constant scores: no rank correlation"
        out["tiny_vs_full"] = tiny_vs_full(anchors, [r["correct"] for r in rows], orc)
        return out

    # --- artifacts
    def _write_artifacts(self, labels, w, trace, fid, diag) -> list[str]:
        d = self.artifacts_dir
        if d is None:
            return []
        names = ["tmap_trace.json"]
        atomic_write_json(d / "tmap_trace.json", {"weights": diag["weights"], "trace": trace, "fidelity": fid,
                                                  "equal_weights": diag.get("equal_weights"),
                                                  "best_single_indicator": diag.get("best_single_indicator")})
        plot_weights(labels, w, d / "tmap_weights.png", title=f"TMAP learned weights (proxy {diag['best_proxy']:.4f})")
        names.append("tmap_weights.png")
        plot_trace(trace, d / "tmap_trace.png")
        names.append("tmap_trace.png")
        if fid and fid.get("rows"):
            plot_fidelity(fid, d / "tmap_fidelity.png")
            names.append("tmap_fidelity.png")
        return names
