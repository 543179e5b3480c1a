"""Bayesian optimisation helpers: a Gaussian-process surrogate (scikit-learn
``GaussianProcessRegressor`` with a Matern 5/2 kernel), expected improvement and an
upper confidence bound, over the probability simplex or a box.

The pieces are small and separate so that every search method can reuse them:

- :class:`Simplex` and :class:`Box`: the domain, which knows how to draw random points
  and points near a given one (acquisitions are maximised over such candidate sets).
- :func:`fit_gp` / :func:`gp_predict`: the package's one GP builder: a GP on (X, y) with a
  constant x Matern(nu=2.5, one length scale per coordinate by default, or one shared) +
  white-noise kernel (:func:`gp_kernel`), ``normalize_y=True``, seeded restarts; TMAP's
  search and AutoSelection's surrogate both fit through it.
- :func:`expected_improvement`, :func:`upper_confidence_bound`: acquisitions (maximisation).
- :class:`BayesianOptimiser`: ``ask()`` / ``tell()`` loop with an initial design
  (given points, then random points) followed by acquisition steps;
  :func:`maximise` runs it on a callable.

**The simplex (decision).** Weights ``w`` (``w_k >= 0``, ``sum w = 1``) are searched in
their own coordinates: the GP sees the K weights directly (they live on a K-1
dimensional face; a stationary kernel is fine there), and the acquisition is maximised
over a candidate set made of Dirichlet samples -- uniform ``Dirichlet(1)`` for coverage,
sparse ``Dirichlet(0.3)`` to reach faces and corners, the vertices and the centre --
plus Dirichlet samples concentrated around the best points so far (local refinement).
No softmax reparameterisation, so no direction of the simplex is favoured and a
weight can be exactly zero only at a sampled face (recorded as is).

Everything is deterministic given the seed: the same objective values give the same
proposals.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Acquisition = Literal["ei", "ucb"]


# --------------------------------------------------------------------------- domains


@dataclass(frozen=True)
class Simplex:
    """The probability simplex in ``dim`` coordinates: ``x >= 0``, ``sum(x) = 1``."""

    dim: int

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"Simplex: dim must be >= 1, got {self.dim}")

    def centre(self) -> np.ndarray:
        return np.full(self.dim, 1.0 / self.dim)

    def vertices(self) -> np.ndarray:
        return np.eye(self.dim)

    def sample(self, n: int, rng: np.random.Generator, alpha: float = 1.0) -> np.ndarray:
        """``n`` points from a symmetric Dirichlet(alpha): alpha = 1 is uniform on the simplex."""
        if self.dim == 1:
            return np.ones((n, 1))
        return rng.dirichlet(np.full(self.dim, alpha), size=n)

    def around(self, x: np.ndarray, n: int, rng: np.random.Generator, concentration: float = 50.0) -> np.ndarray:
        """``n`` points near ``x``: Dirichlet(concentration * x + 0.05) (mean close to x)."""
        if self.dim == 1:
            return np.ones((n, 1))
        return rng.dirichlet(concentration * np.asarray(x, dtype=np.float64) + 0.05, size=n)

    def candidates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A global candidate set: uniform and sparse Dirichlet samples, the vertices and the centre."""
        half = max(1, n // 2)
        return np.vstack([self.sample(half, rng, 1.0), self.sample(n - half, rng, 0.3), self.vertices(), self.centre()[None]])

    def project(self, x: np.ndarray) -> np.ndarray:
        """Clip negatives and renormalise (removes float drift; not a Euclidean projection)."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
        s = x.sum()
        if s <= 0:
            raise ValueError("a simplex point needs a positive coordinate")
        return x / s

    def validate(self, x: np.ndarray, what: str = "point") -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"{what}: expected {self.dim} coordinates, got shape {x.shape}")
        if (x < -1e-9).any() or abs(x.sum() - 1.0) > 1e-6:
            raise ValueError(f"{what}: {x.tolist()} is not on the simplex (non-negative, summing to 1)")
        return self.project(x)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``lower <= x <= upper``."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]

    def __post_init__(self):
        if len(self.lower) != len(self.upper) or not self.lower:
            raise ValueError("Box: lower and upper need the same, non-zero length")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper)):
            raise ValueError(f"Box: every lower bound must be below its upper bound: {self.lower} vs {self.upper}")

    @property
    def dim(self) -> int:
        return len(self.lower)

    def _lo_hi(self):
        return np.asarray(self.lower, dtype=np.float64), np.asarray(self.upper, dtype=np.float64)

    def centre(self) -> np.ndarray:
        lo, hi = self._lo_hi()
        return (lo + hi) / 2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self._lo_hi()
        return lo + (hi - lo) * rng.random((n, self.dim))

    def around(self, x: np.ndarray, n: int, rng: np.random.Generator, scale: float = 0.1) -> np.ndarray:
        lo, hi = self._lo_hi()
        return np.clip(np.asarray(x) + rng.normal(0.0, scale, (n, self.dim)) * (hi - lo), lo, hi)

    def candidates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.vstack([self.sample(n, rng), self.centre()[None]])

    def validate(self, x: np.ndarray, what: str = "point") -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        lo, hi = self._lo_hi()
        if x.shape != (self.dim,) or (x < lo - 1e-12).any() or (x > hi + 1e-12).any():
            raise ValueError(f"{what}: {np.asarray(x).tolist()} is outside the box {self.lower}..{self.upper}")
        return x


Domain = Simplex | Box


# --------------------------------------------------------------------------- surrogate and acquisitions


def gp_kernel(dim: int, *, nu: float = 2.5, length_scale: float = 0.5, ard: bool = True,
              length_scale_bounds: tuple[float, float] = (1e-2, 1e2), noise: float = 1e-3):
    """The surrogate's kernel: ``Constant(1, (1e-3, 1e3)) x Matern(nu) + White(noise, (1e-6, 1))``.

    ``ard``: one Matern length scale per coordinate (``dim`` of them, all starting at
    ``length_scale``); otherwise one shared (isotropic) length scale."""
    try:
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    except ImportError as e:  # pragma: no cover - scikit-learn is a core dependency
        raise ImportError("thresher.select.bayesopt needs scikit-learn (pip install scikit-learn)") from e
    scale = np.full(dim, length_scale) if ard else length_scale
    return (ConstantKernel(1.0, (1e-3, 1e3))
            * Matern(length_scale=scale, length_scale_bounds=length_scale_bounds, nu=nu)
            + WhiteKernel(noise, (1e-6, 1.0)))


def fit_gp(X: np.ndarray, y: np.ndarray, seed: int = 0, *, nu: float = 2.5, length_scale: float = 0.5, ard: bool = True,
           length_scale_bounds: tuple[float, float] = (1e-2, 1e2), noise: float = 1e-3, restarts: int = 3,
           one_blas_thread: bool = True):
    """A scikit-learn GP on (X, y) with :func:`gp_kernel` (hyper-parameters learned by maximum
    likelihood, ``restarts`` extra seeded optimiser starts, ``random_state=seed``); targets
    normalised. Fit warnings (bounds reached, convergence) are silenced. ``one_blas_thread``
    fits under :func:`single_blas_thread` (the matrices are tiny). Predict with :func:`gp_predict`.

    The one GP builder of the package: TMAP's Bayesian optimisation uses the defaults
    (per-coordinate length scales 0.5, bounds 1e-2..1e2, noise 1e-3); AutoSelection's
    surrogate one shared length scale sqrt(d) / 2, bounds 1e-2..1e3, noise 1e-2."""
    try:
        from sklearn.gaussian_process import GaussianProcessRegressor
    except ImportError as e:  # pragma: no cover - scikit-learn is a core dependency
        raise ImportError("thresher.select.bayesopt needs scikit-learn (pip install scikit-learn)") from e
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"fit_gp: X must be [n, d] and y [n] with n >= 1, got {X.shape} and {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("fit_gp: y has NaN or infinite values")
    kernel = gp_kernel(X.shape[1], nu=nu, length_scale=length_scale, ard=ard, length_scale_bounds=length_scale_bounds,
                       noise=noise)
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=restarts, random_state=seed)
    with _quiet_fit(), single_blas_thread() if one_blas_thread else contextlib.nullcontext():
        gp.fit(X, y)
    return gp


def gp_predict(gp, X: np.ndarray, *, one_blas_thread: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a fitted GP at the rows of ``X`` (float64), warnings silenced."""
    with _quiet_fit(), single_blas_thread() if one_blas_thread else contextlib.nullcontext():
        mu, sd = gp.predict(np.asarray(X, dtype=np.float64), return_std=True)
    return np.asarray(mu, dtype=np.float64), np.asarray(sd, dtype=np.float64)


@contextlib.contextmanager
def _quiet_fit():
    """Silence what a GP fit or predict warns about on tiny data (bounds reached, convergence,
    negative predicted variances clipped to 0)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def single_blas_thread():
    """A context that limits BLAS to one thread: the GP's matrices are tiny, and a
    multi-threaded BLAS on them spends its time synchronising (measured ~6x slower fits on
    2 busy cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI for maximisation: ``E[max(f - best - xi, 0)]`` under N(mu, sigma^2); 0 where sigma = 0
    and mu <= best + xi."""
    from scipy.stats import norm

    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    gain = mu - best - xi
    out = np.maximum(gain, 0.0)
    pos = sigma > 1e-12
    z = gain[pos] / sigma[pos]
    out[pos] = gain[pos] * norm.cdf(z) + sigma[pos] * norm.pdf(z)
    return out


def upper_confidence_bound(mu: np.ndarray, sigma: np.ndarray, beta: float = 1.5) -> np.ndarray:
    """UCB ``mu + beta * sigma`` (AutoSelection ranks its proposals with beta = 1.5)."""
    return np.asarray(mu, dtype=np.float64) + beta * np.asarray(sigma, dtype=np.float64)


# --------------------------------------------------------------------------- the loop


@dataclass
class Trial:
    """One evaluated point of a search."""

    index: int
    x: list[float]
    value: float
    phase: str  # "init" or "bo"
    acquisition: float | None = None
    predicted_mean: float | None = None
    predicted_std: float | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "x": [round(v, 6) for v in self.x], "value": self.value, "phase": self.phase,
                "acquisition": self.acquisition, "predicted_mean": self.predicted_mean,
                "predicted_std": self.predicted_std, "seconds": round(self.seconds, 3), **self.info}


class BayesianOptimiser:
    """Ask/tell Bayesian optimisation (maximisation) of a black-box function over a domain.

    The first ``len(initial_points) + n_init`` asks return the given points, then random
    ones; after that each ask fits the GP on everything told so far and returns the
    candidate with the largest acquisition. A candidate equal to an already evaluated
    point is skipped (the GP already knows it).
    """

    def __init__(self, domain: Domain, *, seed: int = 0, n_init: int = 6, initial_points: Sequence[Sequence[float]] = (),
                 acquisition: Acquisition = "ei", xi: float = 0.01, beta: float = 1.5, n_candidates: int = 2048,
                 n_local: int = 256, local_from: int = 3, gp_restarts: int = 3):
        if acquisition not in ("ei", "ucb"):
            raise ValueError(f"acquisition must be 'ei' or 'ucb', got {acquisition!r}")
        if n_init < 0:
            raise ValueError("n_init must be >= 0")
        self.domain = domain
        self.seed = seed
        self.acquisition = acquisition
        self.xi, self.beta = xi, beta
        self.n_candidates, self.n_local, self.local_from = n_candidates, n_local, local_from
        self.gp_restarts = gp_restarts
        self.rng = np.random.default_rng([seed, 7919])
        pts = [domain.validate(np.asarray(p, dtype=np.float64), f"initial point {i}") for i, p in enumerate(initial_points)]
        rand = [domain.sample(1, self.rng)[0] for _ in range(n_init)]
        self._queue: list[tuple[np.ndarray, str]] = [(p, "init") for p in pts] + [(r, "init") for r in rand]
        self.X: list[np.ndarray] = []
        self.y: list[float] = []
        self.trials: list[Trial] = []
        self._pending: dict | None = None

    def ask(self) -> tuple[np.ndarray, dict]:
        """The next point to evaluate and what the surrogate said about it."""
        if self._pending is not None:
            raise RuntimeError("ask() called twice without tell()")
        if self._queue:
            x, phase = self._queue.pop(0)
            meta = {"phase": phase}
        elif len(self.y) < 2:
            x, meta = self.domain.sample(1, self.rng)[0], {"phase": "init"}
        else:
            x, meta = self._propose()
        self._pending = {"x": x, **meta}
        return x.copy(), dict(meta)

    def _propose(self) -> tuple[np.ndarray, dict]:
        X, y = np.asarray(self.X), np.asarray(self.y)
        gp = fit_gp(X, y, seed=self.seed + len(y), restarts=self.gp_restarts)
        cand = [self.domain.candidates(self.n_candidates, self.rng)]
        for i in np.argsort(-y, kind="stable")[: self.local_from]:
            cand.append(self.domain.around(X[i], self.n_local, self.rng))
        C = np.vstack(cand)
        mu, sd = gp_predict(gp, C)
        if self.acquisition == "ei":
            acq = expected_improvement(mu, sd, float(y.max()), self.xi)
        else:
            acq = upper_confidence_bound(mu, sd, self.beta)
        for j in np.argsort(-acq, kind="stable"):
            if not np.any(np.all(np.abs(X - C[j]) < 1e-9, axis=1)):
                return C[j], {"phase": "bo", "acquisition": float(acq[j]), "predicted_mean": float(mu[j]),
                              "predicted_std": float(sd[j])}
        # every candidate was already evaluated: fall back to a fresh random point
        return self.domain.sample(1, self.rng)[0], {"phase": "bo"}

    def tell(self, x: np.ndarray, value: float, seconds: float = 0.0, info: dict | None = None) -> Trial:
        if self._pending is None:
            raise RuntimeError("tell() without a matching ask()")
        if not np.allclose(np.asarray(x), self._pending["x"]):
            raise ValueError("tell(): x is not the point the last ask() returned")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"tell(): the objective returned {value} at {np.asarray(x).tolist()}")
        meta = self._pending
        self._pending = None
        self.X.append(np.asarray(x, dtype=np.float64))
        self.y.append(value)
        t = Trial(index=len(self.trials), x=[float(v) for v in x], value=value, phase=meta["phase"],
                  acquisition=meta.get("acquisition"), predicted_mean=meta.get("predicted_mean"),
                  predicted_std=meta.get("predicted_std"), seconds=seconds, info=dict(info or {}))
        self.trials.append(t)
        return t

    @property
    def best(self) -> Trial:
        if not self.trials:
            raise RuntimeError("no trial yet")
        return max(self.trials, key=lambda t: (t.value, -t.index))


def maximise(objective: Callable[[np.ndarray], float | tuple[float, dict[str, Any]]], domain: Domain, budget: int, *,
             seed: int = 0, n_init: int = 6, initial_points: Sequence[Sequence[float]] = (), acquisition: Acquisition = "ei",
             xi: float = 0.01, beta: float = 1.5, callback: Callable[[Trial], None] | None = None,
             **optimiser_kw) -> BayesianOptimiser:
    """Evaluate ``objective`` ``budget`` times under Bayesian optimisation; return the optimiser
    (``.trials`` is the trace, ``.best`` the best trial). The objective may return a value or
    ``(value, info)``; ``info`` is kept with the trial."""
    if budget < 1:
        raise ValueError("budget must be >= 1")
    opt = BayesianOptimiser(domain, seed=seed, n_init=n_init, initial_points=initial_points, acquisition=acquisition,
                            xi=xi, beta=beta, **optimiser_kw)
    for _ in range(budget):
        x, _meta = opt.ask()
        t0 = time.perf_counter()
        out = objective(x)
        value, info = out if isinstance(out, tuple) else (out, {})
        trial = opt.tell(x, value, seconds=time.perf_counter() - t0, info=info)
        if callback is not None:
            callback(trial)
    return opt
