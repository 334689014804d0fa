"""Importance-sampling diagnostics: log Z, its standard error, the ESS and the PSIS Pareto k."""

import math

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.train import ImportanceDiagnostics, diagnose_log_weights, fit_generalized_pareto, importance_diagnostics


def normal_log_weights(n, scale_q, seed, dim=1, log_z=0.0):
    """log p~ - log q at x ~ q = N(0, scale_q^2 I) for p~ = exp(log_z) N(0, I)."""
    x = np.random.default_rng(seed).normal(0.0, scale_q, (n, dim))
    return (-0.5 * x ** 2 + 0.5 * (x / scale_q) ** 2 + np.log(scale_q)).sum(-1) + log_z


@pytest.mark.parametrize("k", [-0.3, 0.0, 0.2, 0.5, 0.8, 1.2])
def test_generalized_pareto_fit_agrees_with_scipy_on_known_tails(k):
    genpareto = pytest.importorskip("scipy.stats").genpareto
    x = genpareto.rvs(c=k, scale=2.0, size=3000, random_state=1)
    k_hat, sigma_hat = fit_generalized_pareto(x, regularize=False)
    c, _, scale = genpareto.fit(x, floc=0.0)              # scipy's maximum likelihood
    assert abs(k_hat - k) < 0.1 and abs(sigma_hat - 2.0) < 0.2
    assert abs(k_hat - c) < 0.02 and abs(sigma_hat - scale) < 0.02
    # Zhang and Stephens' estimate is nearly the maximum of the likelihood
    gap = genpareto.logpdf(x, c, scale=scale).sum() - genpareto.logpdf(x, k_hat, scale=sigma_hat).sum()
    assert -1e-6 < gap < 0.1
    # the weak prior shrinks k towards 0.5 as 10 more observations would
    k_reg, sigma_reg = fit_generalized_pareto(x)
    assert k_reg == pytest.approx((len(x) * k_hat + 5.0) / (len(x) + 10.0), rel=1e-12) and sigma_reg == sigma_hat


# ArviZ 0.23.4, az.psislw(lw, reff=1.0), on normal_log_weights(n, scale_q, seed=11): an independent implementation
ARVIZ_K = [(500, 1.5, -1.46814422136957), (1000, 0.6, 0.4718076988781169), (4000, 0.4, 0.6594948072669224),
           (20000, 0.3, 0.7052889406224622), (100, 0.8, 0.05709394463806681)]


@pytest.mark.parametrize("n, scale_q, k", ARVIZ_K)
def test_pareto_k_matches_arviz(n, scale_q, k):
    assert diagnose_log_weights(normal_log_weights(n, scale_q, 11)).pareto_k == pytest.approx(k, rel=1e-10)


def test_q_equal_to_p_is_exact():
    lw = np.full(1000, 2.5)
    d = diagnose_log_weights(lw)
    assert d.log_z == 2.5 and d.log_z_se == 0.0 and d.ess == 1000.0 and d.ess_fraction == 1.0
    assert d.pareto_k == -np.inf and d.reliable and d.n == 1000


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_a_flow_as_its_own_target_gives_the_normalizer(dtype, tol):
    flow = flows.RealNVP(3, n_layers=3, hidden=(8,), rng=0, dtype=dtype)
    d = importance_diagnostics(flow, lambda x: flow.log_prob(x, backend="numpy") + 1.5, n=2000, rng=1)
    assert d.log_z == pytest.approx(1.5, abs=tol) and d.log_z_se < tol
    # the log-weights differ by rounding alone: no tail to fit
    assert d.ess == pytest.approx(2000.0, rel=tol) and d.pareto_k == -np.inf
    # a rounding-level tail fitted anyway has a meaningless shape
    x, log_q = flow.sample_and_log_prob(2000, rng=1)
    lw = flow.log_prob(x, backend="numpy").astype(np.float64) - log_q
    assert np.ptp(lw) > 0 and np.isfinite(diagnose_log_weights(lw, flat=0.0).pareto_k)


def test_a_wider_q_has_a_light_tail_and_the_analytic_ess():
    d = diagnose_log_weights(normal_log_weights(20000, 1.5, 0, log_z=2.0))
    # E_q[w^2] / E_q[w]^2 = s / sqrt(2 - 1/s^2) for q = N(0, s^2), p = N(0, 1)
    assert d.ess_fraction == pytest.approx(math.sqrt(2.0 - 1.0 / 1.5 ** 2) / 1.5, abs=0.02)
    assert abs(d.log_z - 2.0) < 4 * d.log_z_se and d.pareto_k < 0.5 and d.reliable


def test_a_too_narrow_q_has_a_heavy_tail():
    d = diagnose_log_weights(normal_log_weights(4000, 0.3, 0, dim=4))     # k = 1 - 0.3^2 in the limit
    assert d.pareto_k > 0.7 and not d.reliable
    assert "bad (> 0.7)" in d.summary() or "very bad (> 1)" in d.summary()


def test_the_standard_error_is_calibrated():
    # finite-variance weights (q wider than p): the spread of log Z over replicates is the delta method's error
    estimates, errors = [], []
    for seed in range(300):
        d = diagnose_log_weights(normal_log_weights(400, 1.3, seed))
        estimates.append(d.log_z)
        errors.append(d.log_z_se)
    assert np.std(estimates) == pytest.approx(np.mean(errors), rel=0.15)
    assert abs(np.mean(estimates)) < 3 * np.std(estimates) / math.sqrt(300)
    # and equals (n / ESS - 1) / (n - 1) under the square root
    d = diagnose_log_weights(normal_log_weights(400, 1.3, 0))
    assert d.log_z_se == pytest.approx(math.sqrt((d.n / d.ess - 1.0) / (d.n - 1.0)), rel=1e-10)


def test_the_estimates_do_not_overflow():
    lw = normal_log_weights(1000, 1.2, 0) + 5000.0
    d = diagnose_log_weights(lw)
    ref = diagnose_log_weights(lw - 5000.0)
    assert d.log_z == pytest.approx(ref.log_z + 5000.0, rel=1e-14)
    assert d.ess == pytest.approx(ref.ess, rel=1e-12) and d.pareto_k == pytest.approx(ref.pareto_k, rel=1e-9)


def test_minus_infinity_is_a_zero_weight():
    lw = normal_log_weights(1000, 1.2, 0)
    cut = lw.copy()
    cut[::4] = -np.inf
    d = diagnose_log_weights(cut)
    finite = lw[1::4], lw[2::4], lw[3::4]
    kept = np.concatenate(finite)
    assert d.log_z == pytest.approx(np.log(np.exp(kept).sum() / 1000), rel=1e-12)
    assert d.ess == pytest.approx(np.exp(kept).sum() ** 2 / np.exp(2 * kept).sum(), rel=1e-12)
    assert np.isfinite(d.pareto_k)
    none = diagnose_log_weights(np.full(10, -np.inf))
    assert none.log_z == -np.inf and none.ess == 0.0 and none.pareto_k == np.inf


def test_bad_log_weights_are_refused():
    with pytest.raises(ValueError, match="got NaN at index 2"):
        diagnose_log_weights([0.0, 1.0, np.nan, 0.5])
    with pytest.raises(ValueError, match=r"got \+inf at index 1"):
        diagnose_log_weights([0.0, np.inf, 0.5])
    with pytest.raises(ValueError, match="1-D array of at least 2"):
        diagnose_log_weights(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="1-D array of at least 2"):
        diagnose_log_weights([1.0])
    with pytest.raises(TypeError, match="array of numbers"):
        diagnose_log_weights(["a", "b"])
    with pytest.raises(ValueError, match=r"flat must be a number in \[0, 1\)"):
        diagnose_log_weights([0.0, 1.0], flat=-1.0)
    with pytest.raises(ValueError, match="at least 5"):
        fit_generalized_pareto([1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        fit_generalized_pareto([1.0, -2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="all 0"):
        fit_generalized_pareto(np.zeros(10))


def test_too_few_weights_leave_k_unestimated():
    d = diagnose_log_weights(normal_log_weights(15, 1.2, 0))     # ceil(15 / 5) = 3 tail weights
    assert math.isnan(d.pareto_k) and "not estimated" in d.summary() and np.isfinite(d.log_z)


def test_importance_diagnostics_of_a_conditional_flow():
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), context=1, rng=0)
    seen = []

    def target(x, c):
        seen.append(c)
        return flow.log_prob(x, context=c, backend="numpy") - 0.25

    d = importance_diagnostics(flow, target, n=500, rng=0, context=[0.7])
    assert seen[0].shape == (500, 1) and np.all(seen[0] == 0.7)
    assert d.log_z == pytest.approx(-0.25, abs=1e-10)
    with pytest.raises(ValueError, match=r"conditional \(context size 1\); pass context="):
        importance_diagnostics(flow, target, n=100, rng=0)
    with pytest.raises(ValueError, match="one row"):
        importance_diagnostics(flow, target, n=100, rng=0, context=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="context must be finite"):
        importance_diagnostics(flow, target, n=100, rng=0, context=[np.nan])
    with pytest.raises(TypeError, match="context has dtype float32"):
        importance_diagnostics(flow, target, n=100, rng=0, context=np.zeros(1, np.float32))


def test_importance_diagnostics_refuses_a_nan_target():
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)

    def target(x):
        out = -0.5 * (x * x).sum(-1)
        out[3] = np.nan
        return out

    with pytest.raises(ValueError, match="finite or -inf; got nan at sample 3"):
        importance_diagnostics(flow, target, n=100, rng=0)
    with pytest.raises(ValueError, match="one value per sample"):
        importance_diagnostics(flow, lambda x: np.zeros(3), n=100, rng=0)
    with pytest.raises(ValueError, match="n must be an int"):
        importance_diagnostics(flow, target, n=1)
    with pytest.raises(ValueError, match="unconditional"):
        importance_diagnostics(flow, target, n=10, context=[0.0])


def test_result_reads_well():
    d = ImportanceDiagnostics(log_z=-1.25, log_z_se=0.01, ess=812.5, ess_fraction=0.8125, pareto_k=0.61, n=1000)
    text = d.summary()
    assert "log Z     -1.2500 +/- 0.0100" in text and "ESS       812.5 (81.2% of n)" in text
    assert "ok (0.5 to 0.7)" in text and str(d) == text
    assert repr(d) == ("ImportanceDiagnostics(log_z=-1.25, log_z_se=0.01, ess=812.5, ess_fraction=0.812, "
                       "pareto_k=0.610, n=1000)")
    assert d.k_threshold == pytest.approx(2.0 / 3.0) and d.reliable
