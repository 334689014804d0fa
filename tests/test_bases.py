"""Trainable base distributions: GaussianMixture and StudentT against scipy.stats, their gradients, flows on them."""

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import nflow_np
from nflow_np import flows, io
from nflow_np.distributions import (
    GaussianMixture, MultivariateNormalDiag, Normal, StudentT, TransformedDistribution, Uniform,
)
from nflow_np.kernels.plan import supports
from nflow_np.testing import check_gradients
from nflow_np.train import fit, fit_to_target, nll_and_grad, reverse_kl_and_grad, value_and_grad

WEIGHTS = np.array([0.2, 0.5, 0.3])
LOCS = np.array([[-2.0, 0.5], [1.0, 1.0], [0.5, -3.0]])
SCALES = np.array([[0.5, 1.0], [1.5, 0.7], [0.8, 0.8]])
DF, LOC, SCALE = np.array([2.5, 5.0, 30.0]), np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.3, 2.0])


@pytest.fixture(autouse=True)
def numpy_backend():
    # flows on these bases never take the compiled path; skip Numba's JIT for the fixed-base comparisons too
    with nflow_np.backend("numpy"):
        yield


def mixture(dtype=np.float64):
    return GaussianMixture(WEIGHTS.astype(dtype), LOCS.astype(dtype), SCALES.astype(dtype))


def student(dtype=np.float64):
    return StudentT(DF.astype(dtype), LOC.astype(dtype), SCALE.astype(dtype))


BASES = {"GaussianMixture": mixture, "StudentT": student}


def _mixture_reference_logpdf(x, weights=WEIGHTS, locs=LOCS, scales=SCALES):
    """Stable reference: scipy's logsumexp of scipy's component log-densities plus log-weights."""
    comps = np.stack([stats.multivariate_normal(locs[j], np.diag(scales[j] ** 2)).logpdf(x)
                      for j in range(len(weights))], axis=-1)
    return logsumexp(np.log(weights) + comps, axis=-1)


# ---------------------------------------------------------------------------- GaussianMixture

def test_mixture_log_prob_matches_scipy_in_the_bulk_and_far_tails():
    d = mixture()
    bulk = np.random.default_rng(0).normal(size=(40, 2)) * 2
    tail = np.array([[60.0, -80.0], [-1e3, 500.0], [0.0, 45.0]])
    x = np.concatenate([bulk, tail])
    np.testing.assert_allclose(d.log_prob(x), _mixture_reference_logpdf(x), rtol=1e-12)
    # in the bulk, the plain weighted sum of scipy densities agrees too
    naive = sum(w * stats.multivariate_normal(m, np.diag(s ** 2)).pdf(bulk) for w, m, s in zip(WEIGHTS, LOCS, SCALES))
    np.testing.assert_allclose(d.prob(bulk), naive, rtol=1e-12)
    # ... but in the tails it underflows to 0, where log_prob stays finite and exact
    with np.errstate(divide="ignore"):
        naive_tail = np.log(sum(w * stats.multivariate_normal(m, np.diag(s ** 2)).pdf(tail)
                                for w, m, s in zip(WEIGHTS, LOCS, SCALES)))
    assert np.all(np.isneginf(naive_tail)) and np.all(np.isfinite(d.log_prob(tail)))
    assert d.event_shape == (2,) and d.batch_shape == () and d.log_prob(x[:42].reshape(6, 7, 2)).shape == (6, 7)


def test_mixture_parameters_are_unconstrained_views():
    d = mixture()
    assert sorted(dict(d.parameters())) == ["locs", "log_scales", "logits"]
    np.testing.assert_allclose(d.weights, WEIGHTS, rtol=1e-15)
    np.testing.assert_allclose(d.scales, SCALES, rtol=1e-15)
    np.testing.assert_allclose(logsumexp(d.params["logits"]), 0.0, atol=1e-15)   # stored normalized
    d.params["logits"] += 3.0    # an optimizer may leave them unnormalized: the weights do not change
    np.testing.assert_allclose(d.weights, WEIGHTS, rtol=1e-14)


@pytest.mark.parametrize("scales, expected", [(np.array([0.5, 2.0, 1.0]), [[0.5] * 2, [2.0] * 2, [1.0] * 2]),
                                              (0.7, [[0.7] * 2] * 3)], ids=["per-component", "scalar"])
def test_mixture_scales_broadcast(scales, expected):
    d = GaussianMixture(WEIGHTS, LOCS, scales)
    np.testing.assert_allclose(d.scales, expected, rtol=1e-15)
    x = np.random.default_rng(1).normal(size=(5, 2))
    np.testing.assert_allclose(d.log_prob(x), _mixture_reference_logpdf(x, scales=np.array(expected)), rtol=1e-12)


def test_mixture_samples_follow_the_distribution():
    d = mixture()
    x = d.sample(20000, rng=0)
    assert x.shape == (20000, 2) and x.dtype == np.float64
    # each coordinate's marginal is a 1-D mixture of normals
    for i in range(2):
        def cdf(t, i=i):
            return sum(w * stats.norm(m[i], s[i]).cdf(t) for w, m, s in zip(WEIGHTS, LOCS, SCALES))
        assert stats.kstest(x[:, i], cdf).pvalue > 1e-3
    # moments against the closed forms, and the closed forms against each other
    mean = WEIGHTS @ LOCS
    second = sum(w * (np.diag(s ** 2) + np.outer(m, m)) for w, m, s in zip(WEIGHTS, LOCS, SCALES))
    np.testing.assert_allclose(d.mean(), mean, rtol=1e-14)
    np.testing.assert_allclose(d.covariance(), second - np.outer(mean, mean), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d.stddev(), np.sqrt(np.diag(d.covariance())), rtol=1e-15)
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), d.covariance(), atol=0.1)


def test_mixture_sampling_shapes_and_seeds():
    d = mixture()
    assert d.sample((3, 4), rng=0).shape == (3, 4, 2) and d.sample(rng=0).shape == (2,)
    assert np.array_equal(d.sample(7, rng=5), d.sample(7, rng=np.random.default_rng(5)))
    assert not np.array_equal(d.sample(7, rng=5), d.sample(7, rng=6))


# ---------------------------------------------------------------------------- StudentT

def test_student_t_matches_scipy():
    d = student()
    x = np.random.default_rng(2).standard_t(3.0, size=(50, 3)) * 4
    x[0] = [1e4, -1e5, 3e3]   # far tails: log1p keeps them exact
    ref = stats.t(DF, LOC, SCALE)
    np.testing.assert_allclose(d.log_prob(x), ref.logpdf(x).sum(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(d.mean(), ref.mean(), rtol=1e-15)
    np.testing.assert_allclose(d.stddev(), ref.std(), rtol=1e-13)
    np.testing.assert_allclose(d.variance(), ref.var(), rtol=1e-13)
    np.testing.assert_allclose(d.entropy(), ref.entropy().sum(), rtol=1e-12)
    assert d.event_shape == (3,) and d.batch_shape == ()
    np.testing.assert_allclose(d.df, DF, rtol=1e-15)
    np.testing.assert_allclose(d.scale, SCALE, rtol=1e-15)


def test_student_t_broadcasts_scalars_to_the_event_shape():
    d = StudentT(4.0, np.zeros(3))
    assert sorted(dict(d.parameters())) == ["loc", "log_df", "log_scale"]
    assert all(a.shape == (3,) for _, a in d.parameters())
    x = np.random.default_rng(3).normal(size=(6, 3))
    np.testing.assert_allclose(d.log_prob(x), stats.t(4.0).logpdf(x).sum(axis=-1), rtol=1e-13)


def test_student_t_undefined_moments():
    d = StudentT(np.array([0.5, 1.5, 3.0]), np.array([1.0, 2.0, 3.0]))
    mean, var = d.mean(), d.variance()
    assert np.isnan(mean[0]) and mean[1] == 2.0 and mean[2] == 3.0
    assert np.isnan(var[0]) and np.isinf(var[1]) and np.isclose(var[2], 3.0)


def test_student_t_samples_follow_the_distribution():
    d = student()
    x = d.sample(20000, rng=0)
    assert x.shape == (20000, 3) and x.dtype == np.float64
    for i in range(3):
        assert stats.kstest(x[:, i], stats.t(DF[i], LOC[i], SCALE[i]).cdf).pvalue > 1e-3
    draws = d.sample((2, 5), rng=1)
    assert draws.shape == (2, 5, 3) and np.array_equal(draws, d.sample((2, 5), rng=1))


# ---------------------------------------------------------------------------- gradients

def _points(name, n=7):
    rng = np.random.default_rng(4)
    if name == "GaussianMixture":
        return rng.normal(size=(n, 2)) * 2
    return rng.standard_t(3.0, size=(n, 3)) * 2 + LOC


@pytest.mark.parametrize("name", sorted(BASES))
def test_score_matches_finite_differences(name):
    d = BASES[name]()
    x = _points(name)
    score = d._log_prob_grad(x)
    h = 1e-6
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (d.log_prob(up)[idx[:-1]] - d.log_prob(down)[idx[:-1]]) / (2 * h)
    np.testing.assert_allclose(score, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(BASES))
def test_parameter_gradients_match_finite_differences(name):
    d = BASES[name]()
    rng = np.random.default_rng(5)
    for _, array in d.parameters():       # away from the constructor's round values
        array += 0.1 * rng.normal(size=array.shape)
    x = _points(name, n=9).reshape(3, 3, -1)    # two batch axes
    g = rng.normal(size=x.shape[:-1])
    grads = d._log_prob_param_grads(x, g)
    assert sorted(grads) == sorted(dict(d.parameters()))
    h = 1e-6
    for key, array in d.parameters():
        assert grads[key].shape == array.shape and grads[key].dtype == np.float64
        fd = np.empty_like(array)
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + h
            up = np.sum(g * d.log_prob(x))
            array[idx] = saved - h
            down = np.sum(g * d.log_prob(x))
            array[idx] = saved
            fd[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[key], fd, rtol=1e-6, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("name", sorted(BASES))
def test_float32(name):
    d32, d64 = BASES[name](np.float32), BASES[name]()
    assert d32.dtype == np.float32 and all(a.dtype == np.float32 for _, a in d32.parameters())
    x = _points(name)
    lp = d32.log_prob(x.astype(np.float32))
    assert lp.dtype == np.float32
    np.testing.assert_allclose(lp, d64.log_prob(x), rtol=1e-5)
    assert d32._log_prob_grad(x.astype(np.float32)).dtype == np.float32
    grads = d32._log_prob_param_grads(x.astype(np.float32), np.ones(len(x), np.float32))
    assert all(g.dtype == np.float32 for g in grads.values())
    assert d32.sample(5, rng=0).dtype == np.float32
    with pytest.raises(TypeError, match="float64"):
        d32.log_prob(x)   # never mixed silently


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize("build, error, match", [
    (lambda: GaussianMixture([0.5, 0.6], LOCS[:2], 1.0), ValueError, "weights must sum to 1; got sum 1.1"),
    (lambda: GaussianMixture([1.2, -0.2], LOCS[:2], 1.0), ValueError,
     r"weights must be positive \(drop a component of weight 0\); got -0.2 at index 1"),
    (lambda: GaussianMixture([1.0, 0.0], LOCS[:2], 1.0), ValueError, "weights must be positive"),
    (lambda: GaussianMixture([[0.5, 0.5]], LOCS[:2], 1.0), ValueError, r"weights must be a non-empty vector"),
    (lambda: GaussianMixture(WEIGHTS, LOCS, -SCALES), ValueError,
     r"scales must be positive; got -0.5 at index \(0, 0\)"),
    (lambda: GaussianMixture(WEIGHTS, LOCS[:2], 1.0), ValueError, r"locs must have shape \(k, d\) = \(3, d\)"),
    (lambda: GaussianMixture(WEIGHTS, LOCS[0], 1.0), ValueError, r"locs must have shape \(k, d\)"),
    (lambda: GaussianMixture(WEIGHTS, LOCS, np.ones((3, 4))), ValueError, r"scales must have shape \(3, 2\)"),
    (lambda: GaussianMixture(WEIGHTS, LOCS, np.ones(4)), ValueError, r"scales must have shape \(3, 2\)"),
    (lambda: GaussianMixture([0.5, np.nan], LOCS[:2], 1.0), ValueError, "weights must be finite"),
    (lambda: GaussianMixture(WEIGHTS, np.where(LOCS > 0, np.inf, LOCS), 1.0), ValueError, "locs must be finite"),
    (lambda: GaussianMixture(WEIGHTS, LOCS.astype(np.float32), SCALES), TypeError, "mix dtypes"),
    (lambda: StudentT(np.array([2.0, 0.0]), np.zeros(2)), ValueError, "df must be positive; got 0.0 at index 1"),
    (lambda: StudentT(-1.0, np.zeros(2)), ValueError, "df must be positive; got -1.0"),
    (lambda: StudentT(3.0, np.zeros(2), np.array([1.0, -2.0])), ValueError, "scale must be positive; got -2.0"),
    (lambda: StudentT(np.inf, np.zeros(2)), ValueError, "df must be finite"),
    (lambda: StudentT(3.0, [0.0, np.nan]), ValueError, "loc must be finite"),
    (lambda: StudentT(np.ones(3), np.zeros(2)), ValueError, "must broadcast together"),
    (lambda: StudentT(3.0), ValueError, r"must broadcast to a vector \(d,\)"),
    (lambda: StudentT(3.0, np.zeros((2, 2))), ValueError, r"must broadcast to a vector \(d,\)"),
    (lambda: StudentT(3.0, np.zeros(2), dtype=np.int32), TypeError, "float32 or float64"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_arguments_are_refused(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("name", sorted(BASES))
def test_bad_inputs_are_refused(name):
    d = BASES[name]()
    with pytest.raises(ValueError, match=rf"{name}.log_prob: x must have shape \(\.\.\., {d.event_shape[0]}\)"):
        d.log_prob(np.zeros((4, d.event_shape[0] + 1)))
    with pytest.raises(ValueError, match="x must be finite"):
        d.log_prob(np.full(d.event_shape, np.nan))


# ---------------------------------------------------------------------------- flows on trainable bases

def _flow(base, seed=0):
    bijector = flows.RealNVP(base.event_shape[0], n_layers=2, hidden=(8,), activation="tanh", rng=seed,
                             dtype=base.dtype).bijector
    return TransformedDistribution(base, bijector)


def test_the_compiled_program_declines_trainable_bases():
    for build in BASES.values():
        ok, reason = supports(_flow(build()))
        assert not ok and "base distribution" in reason


@pytest.mark.parametrize("name", sorted(BASES))
def test_flow_gradients_cover_the_base(name):
    flow = _flow(BASES[name](), seed=1)
    rng = np.random.default_rng(6)
    for _, array in flow.parameters():
        array += 0.2 * rng.normal(size=array.shape)
    x = _points(name, n=12)
    _, grads = value_and_grad(flow, x)
    names = [key for key, _ in flow.parameters()]
    assert sorted(grads) == sorted(names) and any(key.startswith("distribution.") for key in names)
    report = check_gradients(flow, x)
    assert report["nll"] < 1e-5 and "reverse_kl" not in report   # no reparameterized samples to check


def test_check_gradients_catches_a_wrong_base_gradient():
    flow = _flow(mixture(), seed=2)
    base = flow.distribution
    original = base._log_prob_param_grads

    def broken(x, grad_lp):
        grads = original(x, grad_lp)
        grads["logits"] = grads["logits"] * 1.01
        return grads

    base._log_prob_param_grads = broken
    with pytest.raises(AssertionError, match=r"distribution.logits"):
        check_gradients(flow, _points("GaussianMixture", n=8))


@pytest.mark.parametrize("name", sorted(BASES))
def test_flow_on_a_trainable_base_trains(name):
    base = BASES[name]()
    flow = _flow(base, seed=3)
    data = (flow.distribution.sample(300, rng=7) * 1.5 + 0.5)
    before = {key: value.copy() for key, value in base.parameters()}
    nll_before = -float(np.mean(flow.log_prob(data)))
    history = fit(flow, data, epochs=8, batch_size=50, lr=2e-2, rng=0, backend="numba")   # falls back to NumPy
    nll_after = -float(np.mean(flow.log_prob(data)))
    assert nll_after < nll_before - 0.1 and history.rejected_steps == 0
    assert all(not np.array_equal(value, before[key]) for key, value in base.parameters())


def test_fixed_bases_keep_working():
    for base in (Normal(np.zeros(2), np.array([1.0, 2.0])), MultivariateNormalDiag(np.zeros(2)),
                 Uniform(np.full(2, -3.0), np.full(2, 3.0))):
        flow = _flow(base) if base.event_ndims else TransformedDistribution(base, _flow(mixture()).bijector)
        x = np.random.default_rng(8).uniform(-1, 1, size=(10, 2))
        loss, grads = nll_and_grad(flow, x)
        assert np.isfinite(loss) and all(key.startswith("bijector.") for key in grads)
        assert sorted(grads) == sorted(key for key, _ in flow.parameters())
    flow = _flow(MultivariateNormalDiag(np.zeros(2)))
    loss, grads = reverse_kl_and_grad(flow, lambda p: -0.5 * (p * p).sum(-1), 16, rng=0)
    assert np.isfinite(loss) and grads


@pytest.mark.parametrize("name", sorted(BASES))
def test_reverse_kl_refuses_a_trainable_base(name):
    flow = _flow(BASES[name]())
    target = lambda p: -0.5 * (p * p).sum(-1)   # noqa: E731
    message = rf"{name} has trainable parameters .* fixed base"
    with pytest.raises(ValueError, match="fit_to_target: the base distribution " + message):
        fit_to_target(flow, target, steps=2, n_samples=8, rng=0)
    with pytest.raises(ValueError, match="reverse_kl: the base distribution " + message):
        reverse_kl_and_grad(flow, target, 8, rng=0)
    with pytest.raises(ValueError, match="reverse_kl: the base distribution " + message):
        value_and_grad(flow, loss="reverse_kl", target_log_prob=target, n_samples=8, rng=0)


# ---------------------------------------------------------------------------- model files

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(BASES))
def test_save_load_round_trip_is_bit_exact(name, dtype, tmp_path):
    flow = _flow(BASES[name](dtype), seed=4)
    rng = np.random.default_rng(9)
    for _, array in flow.parameters():
        array += (0.3 * rng.normal(size=array.shape)).astype(dtype)
    for obj in (flow.distribution, flow):
        io.save(obj, tmp_path / "model.npz")
        loaded = io.load(tmp_path / "model.npz")
        assert type(loaded) is type(obj) and loaded.dtype == dtype
        saved, restored = dict(obj.parameters()), dict(loaded.parameters())
        assert sorted(saved) == sorted(restored)
        assert all(np.array_equal(saved[k], restored[k]) and restored[k].dtype == dtype for k in saved)
        x = obj.sample(20, rng=1)
        assert np.array_equal(loaded.log_prob(x), obj.log_prob(x))
        assert np.array_equal(loaded.sample(20, rng=1), x)
