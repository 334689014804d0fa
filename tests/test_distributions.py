"""Distributions and simple flows against scipy.stats."""

import numpy as np
import pytest
from scipy import stats

from nflow_np import bijectors as nb
from nflow_np.distributions import (
    GaussianMixture, MultivariateNormalDiag, Normal, StudentT, TransformedDistribution, Uniform,
)

RNG = np.random.default_rng(12345)


def test_normal_matches_scipy():
    loc, scale = np.array([0.0, 1.5, -2.0]), np.array([1.0, 0.3, 4.0])
    d = Normal(loc, scale)
    x = RNG.normal(size=(50, 3)) * 3
    ref = stats.norm(loc, scale)
    np.testing.assert_allclose(d.log_prob(x), ref.logpdf(x), rtol=1e-13)
    np.testing.assert_allclose(d.prob(x), ref.pdf(x), rtol=1e-13)
    np.testing.assert_allclose(d.cdf(x), ref.cdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.log_cdf(x), ref.logcdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.survival_function(x), ref.sf(x), rtol=1e-12)
    np.testing.assert_allclose(d.entropy(), ref.entropy(), rtol=1e-13)


def test_normal_log_cdf_far_tail_is_finite():
    d = Normal(0.0, 1.0)
    assert np.isfinite(d.log_cdf(-30.0))
    np.testing.assert_allclose(d.log_cdf(-30.0), stats.norm.logcdf(-30.0), rtol=1e-12)


def test_normal_samples_follow_the_distribution():
    d = Normal(1.0, 2.0)
    x = d.sample(20000, rng=0)
    assert x.shape == (20000,)
    assert stats.kstest(x, stats.norm(1.0, 2.0).cdf).pvalue > 1e-3


def test_multivariate_normal_diag_matches_scipy():
    loc, scale = np.array([0.5, -1.0, 2.0]), np.array([0.5, 1.0, 2.5])
    d = MultivariateNormalDiag(loc, scale)
    x = RNG.normal(size=(40, 3))
    ref = stats.multivariate_normal(loc, np.diag(scale ** 2))
    np.testing.assert_allclose(d.log_prob(x), ref.logpdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.entropy(), ref.entropy(), rtol=1e-12)
    assert d.event_shape == (3,) and d.batch_shape == ()
    s = d.sample((7, 2), rng=1)
    assert s.shape == (7, 2, 3)


def test_uniform_matches_scipy():
    d = Uniform(-1.0, 3.0)
    x = np.linspace(-2, 4, 61)
    ref = stats.uniform(-1.0, 4.0)
    np.testing.assert_allclose(d.prob(x), ref.pdf(x), rtol=1e-14)
    np.testing.assert_allclose(d.cdf(x), ref.cdf(x), rtol=1e-14)
    lp = d.log_prob(x)
    assert np.all(lp[(x < -1) | (x > 3)] == -np.inf)   # -inf outside the support, never NaN
    assert not np.any(np.isnan(lp))
    u = d.sample(5000, rng=3)
    assert u.min() >= -1.0 and u.max() <= 3.0
    assert stats.kstest(u, ref.cdf).pvalue > 1e-3


def test_exp_of_normal_is_lognormal():
    flow = TransformedDistribution(Normal(0.3, 0.8), nb.Exp())
    x = np.exp(RNG.normal(size=100) * 2)
    ref = stats.lognorm(s=0.8, scale=np.exp(0.3))
    np.testing.assert_allclose(flow.log_prob(x), ref.logpdf(x), rtol=1e-12)
    np.testing.assert_allclose(flow.cdf(x), ref.cdf(x), rtol=1e-12)
    samples = flow.sample(20000, rng=5)
    assert stats.kstest(samples, ref.cdf).pvalue > 1e-3


def test_sigmoid_of_normal_is_logit_normal():
    mu, sigma = 0.4, 1.3
    flow = TransformedDistribution(Normal(mu, sigma), nb.Sigmoid())
    x = RNG.uniform(1e-6, 1 - 1e-6, size=200)
    logit = np.log(x) - np.log1p(-x)
    closed_form = (-np.log(sigma * np.sqrt(2 * np.pi)) - (logit - mu) ** 2 / (2 * sigma ** 2)
                   - np.log(x) - np.log1p(-x))
    np.testing.assert_allclose(flow.log_prob(x), closed_form, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(flow.cdf(x), stats.norm(mu, sigma).cdf(logit), rtol=1e-11)


def test_sigmoid_with_bounds_gives_scaled_logit_normal():
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Sigmoid(low=-2.0, high=3.0))
    x = RNG.uniform(-2 + 1e-6, 3 - 1e-6, size=100)
    u = (x + 2.0) / 5.0
    logit = np.log(u) - np.log1p(-u)
    closed_form = stats.norm.logpdf(logit) - np.log(u) - np.log1p(-u) - np.log(5.0)
    np.testing.assert_allclose(flow.log_prob(x), closed_form, rtol=1e-10, atol=1e-10)


def test_affine_of_mvn_diag_is_multivariate_normal():
    if not hasattr(nb, "Affine"):
        pytest.skip("linear bijectors not built")
    d = 3
    tril = np.array([[1.5, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 2.0]])
    V = np.array([[0.3, -0.1], [0.2, 0.5], [0.0, 0.4]])
    diag_update = np.array([0.7, 1.2])
    shift = np.array([1.0, -2.0, 0.5])
    affine = nb.Affine(shift=shift, scale_tril=tril, scale_perturb_factor=V, scale_perturb_diag=diag_update)
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(d)), affine)
    S = tril + V @ np.diag(diag_update) @ V.T
    ref = stats.multivariate_normal(shift, S @ S.T)
    x = RNG.normal(size=(50, d)) * 2
    np.testing.assert_allclose(flow.log_prob(x), ref.logpdf(x), rtol=1e-11)
    samples = flow.sample(40000, rng=11)
    np.testing.assert_allclose(samples.mean(0), shift, atol=0.05)
    np.testing.assert_allclose(np.cov(samples.T), S @ S.T, rtol=0.05, atol=0.05)


def test_scalar_normal_batch_under_vector_bijector_becomes_one_event():
    if not hasattr(nb, "Rotation"):
        pytest.skip("linear bijectors not built")
    flow = TransformedDistribution(Normal(np.zeros(2), 1.0), nb.Rotation(0.7))
    assert flow.event_shape == (2,) and flow.batch_shape == ()
    x = RNG.normal(size=(10, 2))
    # a rotation keeps the standard normal
    np.testing.assert_allclose(flow.log_prob(x), stats.multivariate_normal(np.zeros(2)).logpdf(x), rtol=1e-12)


@pytest.mark.parametrize("bijector", [nb.Scale(2.5), nb.Scale(-0.7), nb.Chain([nb.Shift(1.0), nb.Scale(-2.0)]),
                                      nb.Invert(nb.Scale(-3.0)), nb.Power(-1.5), nb.Exp()],
                         ids=["scale", "negative-scale", "chain", "invert", "negative-power", "exp"])
def test_cdf_of_monotone_flows(bijector):
    """cdf is P(X <= x) whether the map increases or decreases; checked by Monte Carlo and by exact formulas."""
    base = Normal(0.0, 1.0) if not isinstance(bijector, nb.Power) else Uniform(0.5, 2.0)
    flow = TransformedDistribution(base, bijector)
    samples = flow.sample(200000, rng=2)
    points = np.quantile(samples, [0.05, 0.3, 0.5, 0.8, 0.97])
    empirical = (samples[:, None] <= points).mean(axis=0)
    np.testing.assert_allclose(flow.cdf(points), empirical, atol=5e-3)
    assert np.all(np.diff(flow.cdf(np.sort(points))) > 0)


def test_cdf_of_decreasing_scale_is_exact():
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Scale(-2.0))
    x = np.array([-3.0, 0.0, 1.0, 4.0])
    np.testing.assert_allclose(flow.cdf(x), stats.norm(0.0, 2.0).cdf(x), rtol=1e-12)
    np.testing.assert_allclose(flow.survival_function(x), stats.norm(0.0, 2.0).sf(x), rtol=1e-12)


def test_sample_and_log_prob_matches_log_prob():
    flow = TransformedDistribution(Normal(np.zeros(3), 1.0), nb.Chain([nb.Shift(1.0), nb.Softplus(), nb.Scale(2.0)]))
    x, lp = flow.sample_and_log_prob(100, rng=4)
    np.testing.assert_allclose(flow.log_prob(x), lp, rtol=1e-10, atol=1e-10)


def test_float32_flow_stays_float32():
    f32 = np.float32
    flow = TransformedDistribution(Normal(np.float32(0.0), np.float32(1.0)),
                                   nb.Chain([nb.Shift(np.float32(1.0)), nb.Exp()]))
    x, lp = flow.sample_and_log_prob(10, rng=0)
    assert x.dtype == f32 and lp.dtype == f32
    assert flow.log_prob(x).dtype == f32
    ref = TransformedDistribution(Normal(0.0, 1.0), nb.Chain([nb.Shift(1.0), nb.Exp()]))
    np.testing.assert_allclose(flow.log_prob(x), ref.log_prob(x.astype(np.float64)), rtol=1e-5)


def test_log_density_integrates_to_one():
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Chain([nb.Scale(0.5), nb.Tanh(), nb.Shift(0.3)]))
    grid = np.linspace(-0.5 + 1e-9, 0.5 - 1e-9, 200001)
    dens = flow.prob(grid)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    assert abs(trapezoid(dens, grid) - 1.0) < 1e-4



_EXTREME = [1e160, -1e160, 1e300, -1.7e308, 1.7e308, 5e-324, 0.0]


@pytest.mark.parametrize("make", [
    lambda dt: Normal(0.0, 1.0, dtype=dt), lambda dt: Normal(1e30, 1e-30, dtype=dt),
    lambda dt: Uniform(-1.0, 1.0, dtype=dt), lambda dt: Uniform(-1e308, 1e308, dtype=dt),
    lambda dt: Uniform(-3e38, 3e38, dtype=dt), lambda dt: MultivariateNormalDiag(np.zeros(2, dtype=dt)),
    lambda dt: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], dtype=dt),
    lambda dt: GaussianMixture([0.3, 0.7], [[0.0, 1.0], [1.0, -1.0]], [[1.0, 2.0], [0.5, 1e-3]], dtype=dt),
    lambda dt: StudentT(3.0, np.zeros(2, dtype=dt)),
], ids=["Normal", "Normal(narrow)", "Uniform", "Uniform(wide)", "Uniform(wide-f32)", "MVNDiag", "GaussianMixture",
        "GaussianMixture(2-D)", "StudentT"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_log_prob_is_never_nan_for_finite_input(make, dtype):
    """Far out, the log-density is a very negative number or -inf; never NaN."""
    info = np.finfo(dtype)
    try:
        with np.errstate(over="ignore"):
            dist = make(dtype)
    except (ValueError, TypeError, OverflowError):
        pytest.skip("parameters outside the dtype's range")
    x = np.array(_EXTREME + [info.max, -info.max, info.tiny * info.eps], dtype=np.float64)
    x = x[np.abs(x) <= info.max].astype(dtype)
    if dist.event_shape:
        x = np.repeat(x[:, None], dist.event_shape[0], axis=1)
    with np.errstate(invalid="raise", over="ignore", divide="ignore", under="ignore"):
        lp = dist.log_prob(x)
    assert not np.any(np.isnan(lp)), lp
    assert np.all(lp < np.inf)
    assert np.all(np.isfinite(dist.log_prob(dist.sample(5, rng=0))))   # and finite where the mass is


def test_wide_uniform_is_exact():
    """A width beyond the float range (high - low overflows) changes nothing: density, CDF and samples."""
    dist = Uniform(-1e308, 1e308)
    np.testing.assert_allclose(dist.log_prob([0.0, 1e308, -5e307]), -np.log(2.0) - np.log(1e308), rtol=1e-15)
    np.testing.assert_allclose(dist.cdf([-1e308, -5e307, 0.0, 1.7e308]), [0.0, 0.25, 0.5, 1.0], rtol=1e-15)
    with np.errstate(all="raise"):
        x = dist.sample(1000, rng=0)
    assert np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1e308)
    assert 0.4 < np.mean(x > 0) < 0.6
    np.testing.assert_allclose(dist.entropy(), np.log(2.0) + np.log(1e308), rtol=1e-15)


class _Neg(nb.ElementwiseBijector):
    """A user's y = -x, written without declaring its direction."""

    def _fwd(self, x):
        return -x

    def _inv(self, y):
        return -y

    def _fldj(self, x):
        return np.zeros_like(x)

    def _derivatives(self, x, y):
        return -1.0, 0, {}


class _Reflect(nb.ElementwiseBijector):
    """y = c - a x: decreasing where a > 0, increasing where a < 0 (detected per parameter element)."""

    def __init__(self, a, c):
        super().__init__(dtype=np.float64)
        self.params["a"] = np.asarray(a, dtype=np.float64)
        self.params["c"] = np.asarray(c, dtype=np.float64)

    def _fwd(self, x):
        return self.params["c"] - self.params["a"] * x

    def _inv(self, y):
        return (self.params["c"] - y) / self.params["a"]

    def _fldj(self, x):
        return np.log(np.abs(self.params["a"])) + 0 * x

    def _derivatives(self, x, y):
        return -self.params["a"], 0, {"a": (-x, 1.0 / self.params["a"]), "c": (1.0, 0)}


def test_cdf_of_a_user_decreasing_elementwise_map():
    """The direction of a user's ElementwiseBijector is detected, not assumed increasing."""
    flow = TransformedDistribution(Normal(1.0, 1.0), _Neg())
    np.testing.assert_allclose(flow.cdf(0.0), stats.norm(-1.0, 1.0).cdf(0.0), rtol=1e-14)   # 0.841, not 0.159
    np.testing.assert_allclose(flow.survival_function(0.0), stats.norm(-1.0, 1.0).sf(0.0), rtol=1e-14)
    mixed = TransformedDistribution(Normal(np.zeros(2), 1.0), _Reflect([2.0, -0.5], [1.0, 0.0]))
    x = np.array([[0.3, -0.4], [2.0, 1.0]])
    expected = np.stack([stats.norm(1.0, 2.0).cdf(x[:, 0]), stats.norm(0.0, 0.5).cdf(x[:, 1])], axis=-1)
    np.testing.assert_allclose(mixed.cdf(x), expected, rtol=1e-13)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_samples_that_overflow_are_reported(backend):
    """A sample the forward map carries past the float range is inf, never silently: one warning says how many."""
    import warnings

    flow = TransformedDistribution(Normal(0.0, 1000.0), nb.Exp())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = flow.sample(1000, rng=0, backend=backend)
    overflowed = int(np.sum(np.isinf(x)))
    assert overflowed > 100 and not np.any(np.isnan(x))
    assert [str(w.message) for w in caught] == [
        f"TransformedDistribution.sample: {overflowed} of 1000 sample values are not finite: the forward map of "
        f"Exp overflows the float64 range at their base points"]
    assert caught[0].category is RuntimeWarning and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TransformedDistribution(Normal(0.0, 1.0), nb.Exp()).sample_and_log_prob(1000, rng=0, backend=backend)
    with pytest.warns(RuntimeWarning, match=r"^Normal\.sample: \d+ of 100 sample values are not finite: they lie "
                                            r"beyond the float64 range"):
        Normal(0.0, 1e308).sample(100, rng=0)
