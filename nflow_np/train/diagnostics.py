"""How good is a fitted flow as an importance sampler for its target: the evidence and its diagnostics.

With samples ``x_i ~ q`` and log-weights ``log w_i = log p~(x_i) - log q(x_i)``
(``p~`` the unnormalized target), ``Z = E_q[p~(x) / q(x)]`` is the target's
normalizer (the evidence). :func:`diagnose_log_weights` estimates ``log Z``
with its standard error, the effective sample size, and the Pareto ``k̂`` of
the weights' upper tail, which says whether those estimates can be trusted;
:func:`importance_diagnostics` draws the samples from a flow first.
"""

import math
from dataclasses import dataclass

import numpy as np

from .._validation import as_float_array, as_generator

# The weakly informative prior on k of PSIS: the estimate is shrunk towards 0.5 as if by this many extra
# observations (Vehtari et al., appendix on the stabilized estimate).
_PRIOR_WEIGHT = 10.0
_PRIOR_K = 0.5
# the fewest tail weights a generalized Pareto fit is made to
_MIN_TAIL = 5
# the relative spread of the largest weights below which they count as equal, by the dtype of the log-densities:
# a tail at rounding level has no shape to fit (and the estimates are exact to that level)
_FLAT_TAIL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """Importance-sampling estimate of ``log Z`` and the diagnostics of its weights.

    Attributes
    ----------
    log_z : float
        ``log((1/n) sum_i w_i)``, by log-sum-exp.
    log_z_se : float
        Its standard error by the delta method (see :func:`diagnose_log_weights`).
    ess : float
        Kish's effective sample size ``(sum w)^2 / sum w^2``, in ``[1, n]`` (0 when every weight is 0).
    ess_fraction : float
        ``ess / n``.
    pareto_k : float
        The shape ``k̂`` of the generalized Pareto distribution fitted to the
        largest weights (PSIS). Below 0.5 the weights have a finite variance
        and the estimates above are reliable; from 0.5 to 0.7 the variance is
        infinite (the standard error understates the error, estimates converge
        slowly); above 0.7 the estimates are unreliable: q misses part of the
        target's mass. ``-inf`` when the largest weights are equal up to
        rounding (no tail: see ``flat`` of :func:`diagnose_log_weights`), NaN
        when ``n`` is too small for a fit (fewer than 5 tail weights).
    n : int
        The number of samples.
    """

    log_z: float
    log_z_se: float
    ess: float
    ess_fraction: float
    pareto_k: float
    n: int

    @property
    def k_threshold(self):
        """The sample-size-dependent threshold ``min(1 - 1/log10(n), 0.7)`` of Vehtari et al. (2024)."""
        return min(1.0 - 1.0 / math.log10(self.n), 0.7) if self.n > 10 else 0.0

    @property
    def reliable(self):
        """Whether ``pareto_k`` is below :attr:`k_threshold`."""
        return bool(self.pareto_k < self.k_threshold)

    def verdict(self):
        """The usual reading of ``pareto_k``, in words."""
        k = self.pareto_k
        if math.isnan(k):
            return "not estimated (too few samples for a tail fit)"
        if k < 0.5:
            return "good (< 0.5): finite variance, the estimates are reliable"
        if k < 0.7:
            return "ok (0.5 to 0.7): infinite variance, the standard error understates the error"
        if k < 1.0:
            return "bad (> 0.7): q misses part of the target's mass, the estimates are unreliable"
        return "very bad (> 1): the weights have no finite mean, the estimates are meaningless"

    def summary(self):
        """A few lines: the estimate, the ESS and ``k̂`` with its reading."""
        return (f"importance sampling with n = {self.n}\n"
                f"  log Z     {self.log_z:.4f} +/- {self.log_z_se:.4f} (standard error)\n"
                f"  ESS       {self.ess:.1f} ({100 * self.ess_fraction:.1f}% of n)\n"
                f"  Pareto k  {self.pareto_k:.3f}: {self.verdict()}")

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return (f"ImportanceDiagnostics(log_z={self.log_z:.6g}, log_z_se={self.log_z_se:.3g}, ess={self.ess:.1f}, "
                f"ess_fraction={self.ess_fraction:.3f}, pareto_k={self.pareto_k:.3f}, n={self.n})")


def _as_log_weights(log_weights, where):
    try:
        lw = np.asarray(log_weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: log_weights must be an array of numbers") from None
    if lw.ndim != 1 or len(lw) < 2:
        raise ValueError(f"{where}: log_weights must be a 1-D array of at least 2 values; got shape {lw.shape}")
    for bad, what in ((np.isnan(lw), "NaN"), (np.isposinf(lw), "+inf")):
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: log_weights must be finite or -inf (a zero weight); got {what} at index {i}")
    return lw


def diagnose_log_weights(log_weights, flat=1e-12):
    """Evidence, effective sample size and Pareto ``k̂`` from importance log-weights.

    Parameters
    ----------
    log_weights : array, shape (n,)
        ``log p~(x_i) - log q(x_i)`` for independent ``x_i ~ q``; ``-inf``
        (a zero weight: a sample outside the target's support) is allowed,
        NaN and ``+inf`` are refused.
    flat : float
        When the ``M`` largest weights exceed the next largest by at most
        ``flat`` times the largest (weights equal up to rounding, as when q
        is the target itself), ``pareto_k`` is ``-inf``: such a tail has no
        shape to fit. 1e-12 suits log-densities computed in float64; use
        about 1e-5 for float32 (:func:`importance_diagnostics` does).

    Returns
    -------
    ImportanceDiagnostics

    Notes
    -----
    All is computed from ``u_i = exp(log w_i - max log w)``, so that no weight
    overflows. ``log Z = max log w + log(mean u)``. The standard error is the
    delta method's: ``Var(log Ẑ) ≈ Var(Ẑ) / Z^2``, estimated by
    ``s_u^2 / (n ū^2)`` with ``s_u^2`` the sample variance (``ddof=1``), which
    equals ``(n / ESS - 1) / (n - 1)``. Kish's ``ESS = (sum u)^2 / sum u^2``.

    ``k̂`` follows Pareto smoothed importance sampling: the ``M = ceil(min(n/5,
    3 sqrt(n)))`` largest weights' excesses over the next largest are fitted by
    a generalized Pareto distribution (:func:`fit_generalized_pareto`, with
    the weakly informative prior). The standard error and ESS assume a finite
    variance of the weights: trust them only when ``k̂ < 0.5``.

    References
    ----------
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25 (2024) (arXiv:1507.02646, 2015).
    L. Kish, "Survey Sampling", Wiley (1965).
    """
    where = "diagnose_log_weights"
    lw = _as_log_weights(log_weights, where)
    if isinstance(flat, bool) or not isinstance(flat, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(flat) < 1.0:
        raise ValueError(f"{where}: flat must be a number in [0, 1); got {flat!r}")
    n = len(lw)
    top = float(lw.max())
    if top == -np.inf:
        # q has no sample where the target has mass: Z is estimated as 0, with nothing to weigh it by
        return ImportanceDiagnostics(-np.inf, np.inf, 0.0, 0.0, np.inf, n)
    u = np.exp(lw - top)
    mean_u = float(u.mean())
    log_z = top + math.log(mean_u)
    ess = float(u.sum() ** 2 / np.square(u).sum())
    log_z_se = math.sqrt(max(float(u.var(ddof=1)), 0.0) / n) / mean_u
    return ImportanceDiagnostics(log_z, log_z_se, ess, ess / n, _pareto_k(lw, top, float(flat)), n)


def _pareto_k(lw, top, flat):
    n = len(lw)
    tail = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    if tail < _MIN_TAIL or tail >= n:
        return np.nan
    ordered = np.sort(lw)
    cutoff = math.exp(ordered[-tail - 1] - top)
    excess = np.exp(ordered[-tail:] - top) - cutoff
    if excess[-1] <= flat:
        return -np.inf
    k, _ = fit_generalized_pareto(excess)
    return k


def fit_generalized_pareto(x, regularize=True, min_grid_points=30):
    """Fit a generalized Pareto distribution (location 0) by Zhang and Stephens' estimator.

    The distribution of excesses ``x >= 0`` with shape ``k`` and scale
    ``sigma``: ``F(x) = 1 - (1 + k x / sigma)^(-1/k)`` (scipy's ``genpareto(c=k,
    scale=sigma)``). Write ``theta = -k / sigma``; for a given ``theta`` the
    likelihood is maximized by ``k(theta) = mean(log(1 - theta x))``, leaving
    the profile log-likelihood ``l(theta) = n (log(-theta / k(theta)) - k(theta) - 1)``.
    ``theta`` is estimated by its posterior mean over the grid
    ``theta_j = 1/x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x*)``, ``j = 1..m``,
    ``m = min_grid_points + floor(sqrt(n))``, ``x*`` the first quartile of
    ``x``, with weights ``exp(l(theta_j))`` normalized; then
    ``k = k(theta_hat)``, ``sigma = -k / theta_hat``. With ``regularize``, the
    weakly informative prior of PSIS shrinks ``k`` towards 0.5 as if by 10
    extra observations: ``k <- (n k + 10 * 0.5) / (n + 10)`` (``sigma`` is
    that of the unshrunk ``k``).

    Parameters
    ----------
    x : array, shape (n,)
        Non-negative excesses over a threshold, at least 5 of them, not all 0.

    Returns
    -------
    (k, sigma) : tuple of float

    References
    ----------
    J. Zhang, M. A. Stephens, "A new and efficient estimation method for the
    generalized Pareto distribution", Technometrics 51 (2009).
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25 (2024).
    """
    where = "fit_generalized_pareto"
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = len(x)
    if n < _MIN_TAIL:
        raise ValueError(f"{where}: x must hold at least {_MIN_TAIL} excesses; got {n}")
    if not np.isfinite(x).all() or x[0] < 0.0:
        raise ValueError(f"{where}: x must be finite and non-negative; got min {x[0]}, max {x[-1]}")
    if x[-1] <= 0.0:
        raise ValueError(f"{where}: x must not be all 0 (no tail to fit)")
    m = int(min_grid_points) + int(math.floor(math.sqrt(n)))
    quartile = x[int(math.floor(n / 4.0 + 0.5)) - 1]
    if quartile <= 0.0:
        # ties at 0 fill the lower quarter: scale the grid by the smallest positive excess instead
        quartile = x[x > 0.0][0]
    j = np.arange(1, m + 1, dtype=np.float64)
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    theta = theta[theta != 0.0]
    k_of_theta = np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)
    profile = n * (np.log(-theta / k_of_theta) - k_of_theta - 1.0)
    weights = np.exp(profile - profile.max())
    theta_hat = float((theta * weights).sum() / weights.sum())
    k = float(np.log1p(-theta_hat * x).mean())
    sigma = -k / theta_hat
    if regularize:
        k = (n * k + _PRIOR_WEIGHT * _PRIOR_K) / (n + _PRIOR_WEIGHT)
    return k, sigma


def importance_diagnostics(flow, target_log_prob, n=4000, rng=None, context=None, backend=None):
    """Draw ``n`` samples from ``flow`` and diagnose it as an importance sampler for ``target_log_prob``.

    ``log w = target_log_prob(x) - flow.log_prob(x)`` at ``x ~ flow``
    (both from one forward pass, :meth:`sample_and_log_prob`), then
    :func:`diagnose_log_weights`. ``log_z`` estimates the log-normalizer of
    the target, ``log_z - ELBO`` bounds the reverse KL, and ``pareto_k`` says
    whether the flow covers the target (``< 0.5``) or misses part of its mass
    (``> 0.7``). For a conditional flow pass one ``context`` row, shape
    ``(k,)``: the samples come from q(x | c) and the target is called as
    ``target_log_prob(x, c)`` with ``c`` one row per sample; diagnose each
    context of interest by its own call. ``target_log_prob`` may return
    ``-inf`` (outside its support: a zero weight), not NaN. ``backend``
    applies to the flow's sampling.

    References
    ----------
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25 (2024).
    """
    where = "importance_diagnostics"
    if not hasattr(flow, "sample_and_log_prob"):
        raise TypeError(f"{where}: flow must be an nflow_np distribution; got {type(flow).__name__}")
    if not callable(target_log_prob):
        raise TypeError(f"{where}: target_log_prob must be callable")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"{where}: n must be an int of at least 2; got {n!r}")
    k = getattr(flow, "context_size", 0)
    args, kwargs = (), {}
    if k:
        if context is None:
            raise ValueError(f"{where}: the flow is conditional (context size {k}); pass context= one row, shape "
                             f"({k},), and a target that takes it: target_log_prob(x, context)")
        row = as_float_array(context, getattr(flow, "dtype", None), where, "context")
        if row.size != k or row.ndim > 2:
            raise ValueError(f"{where}: context must be one row, shape ({k},); got shape {row.shape}")
        row = row.reshape(k)
        kwargs = {"context": row}
        args = (np.ascontiguousarray(np.broadcast_to(row, (int(n), k))),)
    elif context is not None:
        raise ValueError(f"{where}: the flow is unconditional, so it takes no context")
    if backend is not None:
        kwargs["backend"] = backend
    x, log_q = flow.sample_and_log_prob(int(n), rng=as_generator(rng), **kwargs)
    log_q = np.asarray(log_q, dtype=np.float64)
    if not np.isfinite(log_q).all():
        raise ValueError(f"{where}: the flow's log-density is not finite at {int((~np.isfinite(log_q)).sum())} of "
                         f"its samples (its forward map overflows): diagnose a flow that samples finitely")
    target = np.asarray(target_log_prob(x, *args), dtype=np.float64)
    if target.shape != log_q.shape:
        raise ValueError(f"{where}: target_log_prob returned shape {target.shape}; expected one value per sample, "
                         f"shape {log_q.shape}")
    if np.isnan(target).any() or np.isposinf(target).any():
        i = int(np.argmax(np.isnan(target) | np.isposinf(target)))
        raise ValueError(f"{where}: target_log_prob(x) must be finite or -inf; got {target[i]} at sample {i}")
    return diagnose_log_weights(target - log_q, flat=_FLAT_TAIL.get(np.dtype(flow.dtype), 1e-12))
