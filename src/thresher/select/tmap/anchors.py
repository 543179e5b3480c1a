"""TMAP's anchor points: the tiny validation set the ICL proxy scores on.

The dev items are clustered, by sentence embedding of question + gold response (default) or
by their per-item correctness across reference models (the anchor-points / tinyBenchmarks
idea), and each cluster contributes its medoid (ties: the earlier dev item), weighted by the
cluster's share of the dev items. :func:`tiny_vs_full` checks the weighted anchors against
the whole dev split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from thresher.data.ledger import CostLedger, LedgerEntry
from thresher.models.evaluate import evaluate
from thresher.models.load import load_model
from thresher.signals.cluster import kmeans
from thresher.signals.embed import encode_texts, load_encoder
from thresher.tasks.base import DevTask, TaskItem


@dataclass
class Anchors:
    """A tiny validation set: dev positions of the cluster medoids and their weights."""

    positions: list[int]  # into the dev list, one per cluster, in cluster order
    weights: list[float]  # cluster size / number of dev items (sums to 1)
    labels: list[int]  # cluster of every dev item (0.. by first appearance in dev order)
    by: str  # "embedding" or "correctness"
    requested: int  # clusters asked for (the effective number can be smaller: identical points)

    def __len__(self) -> int:
        return len(self.positions)

    def items(self, dev: list[TaskItem]) -> list[TaskItem]:
        return [dev[p] for p in self.positions]

    def weighted(self, per_item: np.ndarray) -> float:
        """Weighted mean over anchors of a per-anchor value."""
        return float(np.dot(np.asarray(self.weights, dtype=np.float64), np.asarray(per_item, dtype=np.float64)))

    def tiny_accuracy(self, correct_on_dev) -> float:
        """The anchors' weighted accuracy from a per-dev-item correctness list."""
        c = np.asarray(correct_on_dev, dtype=np.float64)
        return self.weighted(c[self.positions])

    def to_dict(self, dev: list[TaskItem] | None = None) -> dict:
        d = {"by": self.by, "requested": self.requested, "n": len(self), "positions": self.positions,
             "weights": [round(w, 6) for w in self.weights]}
        if dev is not None:
            d["ids"] = [dev[p].id for p in self.positions]
        return d


def medoids(features: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> list[int]:
    """For each cluster (labels 0..C-1), the member whose summed distance to the other
    members is smallest (ties: the earliest position). ``metric`` is any
    ``scipy.spatial.distance.cdist`` metric (euclidean, cosine, hamming, ...)."""
    from scipy.spatial.distance import cdist

    X = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.nonzero(labels == c)[0]
        if len(members) == 0:
            raise ValueError(f"medoids: cluster {c} is empty; labels must run 0..C-1 without gaps")
        D = cdist(X[members], X[members], metric=metric)
        out.append(int(members[int(np.argmin(D.sum(axis=1)))]))
    return out


def anchor_points(features: np.ndarray, k: int, *, seed: int = 0, metric: str = "euclidean", by: str = "embedding") -> Anchors:
    """Cluster the rows of ``features`` into ``k`` groups (scikit-learn k-means through
    :func:`thresher.signals.cluster.kmeans`, 10 seeded restarts, cluster ids by first
    appearance) and return each cluster's medoid weighted by the cluster's size / n.

    With ``k >= n`` every item is its own anchor. Identical rows can make some of the ``k``
    clusters coincide; the effective number of anchors is then smaller (``len(anchors)``
    vs ``anchors.requested``).
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"anchor_points: features must be a non-empty [n, d] matrix, got shape {X.shape}")
    if k < 1:
        raise ValueError(f"anchor_points: k must be >= 1, got {k}")
    n = len(X)
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
    if k >= n:
        labels = np.arange(n)
    else:  # scikit-learn's defaults: k-means++, at most 300 iterations; float64 kept
        labels = kmeans(X, k, seed=seed, backend="sklearn", n_iter=300, n_init=10, relabel="first_seen", quiet=True).labels
    pos = medoids(X, labels, metric=metric)
    sizes = np.bincount(labels, minlength=len(pos))
    return Anchors(positions=pos, weights=[float(s) / n for s in sizes], labels=[int(v) for v in labels], by=by, requested=k)


def dev_item_texts(items: list[TaskItem], text: str = "all") -> list[str]:
    """What the anchor embedding reads: the question, or question + gold response."""
    if text == "question":
        return [it.question for it in items]
    if text == "all":
        return [f"{it.question}\n\n{it.target or it.answer}" for it in items]
    raise ValueError(f"anchor text must be 'question' or 'all', got {text!r}")


def reference_correctness(task: DevTask, models: list[str], *, batch_size: int = 32, ledger: CostLedger | None = None,
                          show_progress: bool = True) -> np.ndarray:
    """A [n_dev, n_models] 0/1 matrix: which dev items each reference model gets right
    (greedy generation + the task's answer check). Each model's evaluation is a ledger
    entry of kind ``proxy``."""

    cols = []
    for spec in models:
        t0 = time.perf_counter()
        lm = load_model(spec)
        ev = evaluate(lm.model, lm.tokenizer, task, task.dev, batch_size=batch_size, desc=f"anchor reference {spec}",
                      show_progress=show_progress)
        cols.append(np.asarray(ev.correct, dtype=np.float64))
        if ledger is not None:
            ledger.record(LedgerEntry(kind="proxy", label=f"anchor reference {spec}", examples=ev.n, tokens=ev.generated_tokens,
                                      seconds=time.perf_counter() - t0, extra={"accuracy": ev.accuracy}))
    return np.stack(cols, axis=1)


def make_anchors(task: DevTask, k: int, *, by: Literal["embedding", "correctness"] = "embedding", seed: int = 0,
                 encoder: str = "minilm", text: str = "all", reference_models: list[str] | None = None,
                 ledger: CostLedger | None = None, show_progress: bool = True) -> Anchors:
    """The tiny validation set of ``task``'s dev split (see the module docs)."""
    if not task.dev:
        raise ValueError(f"task {task.name!r} has an empty dev split: no anchors to draw")
    if by == "embedding":
        vecs, _ = encode_texts(load_encoder(encoder), dev_item_texts(task.dev, text))
        return anchor_points(vecs, k, seed=seed, metric="cosine", by="embedding")
    if by == "correctness":
        models = list(reference_models or [])
        if len(models) < 2:
            raise ValueError("anchors by correctness need at least two reference models (param anchor_models)")
        mat = reference_correctness(task, models, ledger=ledger, show_progress=show_progress)
        return anchor_points(mat, k, seed=seed, metric="hamming", by="correctness")
    raise ValueError(f"anchors: 'by' must be 'embedding' or 'correctness', got {by!r}")


def tiny_vs_full(anchors: Anchors, correct_lists: list, full_values: list[float]) -> dict:
    """How well the tiny set's weighted accuracy tracks the full dev accuracy, over scored
    candidates (e.g. oracle runs: their per-dev-item ``correct`` lists and dev accuracies)."""
    from scipy.stats import pearsonr, spearmanr

    pairs = [(anchors.tiny_accuracy(c), float(f)) for c, f in zip(correct_lists, full_values) if len(c)]
    out: dict = {"n": len(pairs), "tiny": [round(a, 4) for a, _ in pairs], "full": [round(b, 4) for _, b in pairs]}
    if pairs:
        out["mean_abs_error"] = round(float(np.mean([abs(a - b) for a, b in pairs])), 4)
    if len(pairs) >= 3 and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
        a, b = zip(*pairs)
        out["pearson"] = round(float(pearsonr(a, b)[0]), 4)
        out["spearman"] = round(float(spearmanr(a, b)[0]), 4)
    return out
