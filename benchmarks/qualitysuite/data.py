"""The suite's data sets: each a train / validation / test split and, where known, the exact log-density.

Every generator takes a seed and returns a :class:`Split`. ``log_p`` (when not
None) is the data's exact log-density in the data's own units, so on the test
points ``mean(log_p(x) - log q(x))`` estimates KL(data || model) without the
Monte Carlo noise of the entropy itself, and ``-mean(log_p(test))`` is the
entropy estimate printed beside the NLL.

- 2-D toys: two-moons, two-spirals, rings, 8 Gaussians, checkerboard and the
  bimodal mixture, with the exact densities of ``nflow_np.datasets.LOG_PROBS``;
- teachers: a fixed random spline flow in 4, 8, 16 and 32 dimensions, its
  weights drawn off the identity; its samples are the data and its own
  ``log_prob`` the exact density;
- heavy tails and many modes: a Student-t (3 degrees of freedom, a random
  correlation) and a 20-component Gaussian mixture, both in 8-D;
- digits: scikit-learn's 8x8 digits, dequantized and logit-mapped as in
  ``benchmarks/digits.py`` (no exact density).
"""

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nflow_np import datasets  # noqa: E402


@dataclass
class Split:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    log_p: Optional[Callable] = None     # exact log-density, data units, float64
    offset: float = 0.0                  # added to an NLL measured on ``test`` to report it in the data's units


def _logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


# ---------------------------------------------------------------------------
# 2-D toys with exact densities (nflow_np.datasets.LOG_PROBS: closed forms, or quadrature along the curves)

TOYS = ["two-moons", "8gaussians", "checkerboard", "two-spirals", "rings", "bimodal"]


def toy(name, n_train, n_val, n_test, seed=0):
    draw = lambda n, s: datasets.load(name, n, rng=s)
    return Split(name, draw(n_train, seed), draw(n_val, seed + 1000), draw(n_test, seed + 2000),
                 lambda x: datasets.LOG_PROBS[name](np.asarray(x, np.float64)))


# ---------------------------------------------------------------------------
# teachers: random deep spline flows with an exact density

def teacher_flow(dim, seed=0, layers=4, scale=0.07):
    """A spline coupling flow with random (non-identity) conditioners and random permutations between layers.

    Everything random is drawn here, from its own seed, and the spline's parameterization is named, so the
    teacher does not change when the library's initialization or defaults do."""
    from nflow_np.bijectors import Chain, Permute, SplineCoupling
    from nflow_np.bijectors.coupling import alternating_mask
    from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
    rng = np.random.default_rng(10_000 + seed)
    stages = []
    for i in range(layers):
        if i:
            stages.append(Permute(rng.permutation(dim)))
        stages.append(SplineCoupling(alternating_mask(dim, i % 2), (32, 32), "relu", bins=8, bound=5.0, rng=0,
                                     parameterization="softplus"))
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(dim), np.ones(dim)), Chain(stages[::-1]))
    for name, value in flow.parameters():
        # every array drawn afresh, the output layers at ``scale``: 0.07 gives densities 0.2-0.6 nats per
        # dimension away from the best Gaussian (checked in 4 to 32 dimensions)
        fan_in = value.shape[0] if value.ndim == 2 else 1
        std = np.sqrt(1.0 / fan_in) if value.ndim == 2 else 0.1
        value[...] = rng.standard_normal(value.shape) * (scale if _is_last(flow, name) else 1.0) * std * 2
    return flow


def _is_last(flow, name):
    # parameter names end in w{i}/b{i}; the last layer has the largest index in its network
    stem, leaf = name.rsplit(".", 1)
    index = int(leaf[1:]) if leaf[1:].isdigit() else -1
    siblings = [n.rsplit(".", 1)[1] for n, _ in flow.parameters() if n.rsplit(".", 1)[0] == stem]
    top = max(int(s[1:]) for s in siblings if s[1:].isdigit())
    return index == top


def teacher(dim, n_train, n_val, n_test, seed=0):
    flow = teacher_flow(dim, seed)
    draw = lambda n, s: flow.sample(n, rng=s, backend="numpy")
    return Split(f"teacher-{dim}", draw(n_train, seed + 1), draw(n_val, seed + 2), draw(n_test, seed + 3),
                 lambda x: flow.log_prob(np.asarray(x, np.float64), backend="numpy"))


# ---------------------------------------------------------------------------
# heavy tails and many modes (8-D)

def _random_cov(rng, dim, spread=1.0):
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.exp(rng.uniform(-spread, spread, dim))
    return (q * scales ** 2) @ q.T


def student_t(n_train, n_val, n_test, seed=0, dim=8, df=3.0):
    from scipy import stats
    rng = np.random.default_rng(seed)
    law = stats.multivariate_t(loc=rng.normal(0, 1, dim), shape=_random_cov(rng, dim, 0.7), df=df)
    draw = lambda n, s: law.rvs(size=n, random_state=np.random.default_rng(s))
    return Split("student-t-8", draw(n_train, seed + 1), draw(n_val, seed + 2), draw(n_test, seed + 3),
                 lambda x: law.logpdf(np.asarray(x, np.float64)))


def mixture(n_train, n_val, n_test, seed=0, dim=8, k=20):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (k, dim))
    chols = [np.linalg.cholesky(_random_cov(rng, dim, 0.5) * 0.3) for _ in range(k)]
    weights = rng.dirichlet(np.full(k, 5.0))

    def draw(n, s):
        g = np.random.default_rng(s)
        comp = g.choice(k, size=n, p=weights)
        z = g.standard_normal((n, dim))
        return means[comp] + np.einsum("nij,nj->ni", np.asarray(chols)[comp], z)

    def log_p(x):
        x = np.asarray(x, np.float64)
        terms = []
        for j in range(k):
            sol = np.linalg.solve(chols[j], (x - means[j]).T).T
            logdet = np.log(np.diag(chols[j])).sum()
            terms.append(np.log(weights[j]) - 0.5 * (sol ** 2).sum(1) - logdet - 0.5 * dim * np.log(2 * np.pi))
        return _logsumexp(np.stack(terms, 1), axis=1)

    return Split("mixture-8", draw(n_train, seed + 1), draw(n_val, seed + 2), draw(n_test, seed + 3), log_p)


# ---------------------------------------------------------------------------
# digits (64-D), no exact density

def digits(seed=0):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import digits as dg
    train, test, correction = dg.load(seed)
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = len(train) // 10
    # the NLL of the dequantized pixels u: the logit's and the standardization's log-dets added back
    return Split("digits", train[order[n_val:]], train[order[:n_val]], test, offset=-float(np.mean(correction)))


# ---------------------------------------------------------------------------

SIZES = {"full": (20_000, 2_000, 20_000), "quick": (3_000, 500, 3_000)}
ALL = TOYS + ["teacher-4", "teacher-8", "teacher-16", "teacher-32", "student-t-8", "mixture-8", "digits"]


def load(name, size="full", seed=0):
    n_train, n_val, n_test = SIZES[size]
    if name in TOYS:
        return toy(name, n_train, n_val, n_test, seed)
    if name.startswith("teacher-"):
        return teacher(int(name.split("-")[1]), n_train, n_val, n_test, seed)
    if name == "student-t-8":
        return student_t(n_train, n_val, n_test, seed)
    if name == "mixture-8":
        return mixture(n_train, n_val, n_test, seed)
    if name == "digits":
        return digits(seed)
    raise ValueError(f"unknown data set {name!r}; expected one of {ALL}")
