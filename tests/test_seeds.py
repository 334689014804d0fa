"""Every bijector example of the articles the project grew from, in nflow_np, with their bugs fixed.

Seed 000: a TFP post building a five-stage 2-D flow (shift, scale, shift-and-cube, rotation, sigmoid).
Seed 002: a TFP (R) post on bijectors: normal CDF, affine scalar, a flow for exponential samples.
Seed 004: a zuko post: log-normal, affine and composed transforms.
(Seeds 001 and 003 train flows; their tests live with the trainable flows.)
"""

import numpy as np
import pytest
from scipy import stats

from nflow_np import bijectors as nb
from nflow_np.distributions import MultivariateNormalDiag, Normal, TransformedDistribution, Uniform
from nflow_np.testing import check_bijector

needs_linear = pytest.mark.skipif(not hasattr(nb, "Rotation"), reason="linear bijectors not built")


# ---------------------------------------------------------------- seed 002
def test_seed002_normal_log_prob_two_routes():
    x = 2.01
    direct = Normal(0.0, 1.0).log_prob(x)
    b = nb.NormalCDF()
    via_uniform = Uniform().log_prob(b.forward(x)) + b.forward_log_det_jacobian(x, event_ndims=0)
    np.testing.assert_allclose(direct, -2.938989, atol=5e-7)
    np.testing.assert_allclose(via_uniform, direct, rtol=1e-14)


def test_seed002_affine_scalar_log_densities_and_cdf():
    x = np.array([0.0, 0.5, 1.0])
    b = nb.Chain([nb.Shift(0.0), nb.Scale(2.0)])        # tfb_affine_scalar(shift = 0, scale = 2)
    d_n = Normal(0.0, 1.0)
    np.testing.assert_allclose(d_n.log_prob(x), [-0.9189385, -1.0439385, -1.4189385], atol=5e-8)
    z = b.forward(x)
    manual = d_n.log_prob(b.inverse(z)) + b.inverse_log_det_jacobian(z, event_ndims=0)
    np.testing.assert_allclose(manual, [-1.6120857, -1.7370857, -2.1120858], atol=5e-8)
    d_t = TransformedDistribution(d_n, b)
    np.testing.assert_allclose(d_t.log_prob(z), manual, rtol=1e-14)
    # The post writes `d_t %>% tfd_cdf(y)` with y undefined; it means the transformed points z.
    np.testing.assert_allclose(d_n.cdf(x), [0.5, 0.6914625, 0.8413447], atol=5e-8)
    np.testing.assert_allclose(d_t.cdf(z), d_n.cdf(x), rtol=1e-14)


def test_seed002_inverse_normal_cdf_of_uniforms_is_normal():
    u = np.random.default_rng(0).uniform(size=5000)
    x = nb.NormalCDF().inverse(u)
    assert stats.kstest(x, stats.norm.cdf).pvalue > 1e-3


def _exponential_inverse_cdf(rate):
    """u -> -log(1 - u) / rate, the exponential's inverse CDF, as an Inline bijector on (0, 1)."""
    return nb.Inline(
        forward_fn=lambda u: -np.log1p(-u) / rate,
        inverse_fn=lambda x: -np.expm1(-rate * x),
        forward_log_det_jacobian_fn=lambda u: -np.log(rate) - np.log1p(-u),
        # exact gradients: d/du of the map is 1 / (rate (1 - u)), of the log-det 1 / (1 - u)
        forward_vjp_fn=lambda u, gy, gld: (gy / rate + gld) / (1.0 - u),
        # inverse: du/dx = rate exp(-rate x), and the inverse log-det is log(rate) - rate x
        inverse_vjp_fn=lambda x, gu, gld: gu * rate * np.exp(-rate * x) - gld * rate,
        is_increasing=True,
        name="ExponentialInverseCDF",
    )


def test_seed002_exponential_samples_through_normal_cdf():
    rate = 0.5
    # z ~ N(0, 1) -> u = Phi(z) ~ U(0, 1) -> x = -log(1 - u) / rate ~ Exp(rate)
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Chain([_exponential_inverse_cdf(rate), nb.NormalCDF()]))
    samples = flow.sample(10000, rng=2019)
    assert stats.kstest(samples, stats.expon(scale=1 / rate).cdf).pvalue > 1e-3
    x = np.array([0.01, 0.5, 2.0, 7.0, 20.0])
    np.testing.assert_allclose(flow.log_prob(x), stats.expon(scale=1 / rate).logpdf(x), rtol=1e-10)
    np.testing.assert_allclose(flow.cdf(x), stats.expon(scale=1 / rate).cdf(x), rtol=1e-10)
    check_bijector(flow.bijector, np.array([-3.0, -0.5, 0.0, 1.2, 4.0]))


# ---------------------------------------------------------------- seed 000
class ShiftAndCube(nb.Bijector):
    """seed 000's f3(z) = (z_a, z_b + a z_a^3) as a subclass, with the corrected log-det 0 (the post returns 1)."""

    event_ndims = 1

    def __init__(self, a):
        super().__init__()
        self.a = float(a)

    def _forward(self, x):
        y = x.copy()
        y[..., 1] += self.a * x[..., 0] ** 3
        return y

    def _inverse(self, y):
        x = y.copy()
        x[..., 1] -= self.a * y[..., 0] ** 3
        return x

    def _forward_log_det(self, x):
        # the Jacobian is triangular with a unit diagonal
        return np.zeros(x.shape[:-1], dtype=x.dtype)

    def _forward_backward(self, ctx, grad_y, grad_log_det):
        x, _ = ctx
        grad = grad_y.copy()
        grad[..., 0] += 3.0 * self.a * x[..., 0] ** 2 * grad_y[..., 1]
        return grad, {}

    def _inverse_backward(self, ctx, grad_x, grad_log_det):
        _, y = ctx
        grad = grad_x.copy()
        grad[..., 0] -= 3.0 * self.a * y[..., 0] ** 2 * grad_x[..., 1]
        return grad, {}


class SeedShiftAndCube(ShiftAndCube):
    """The post's version: log-det 1."""

    def _forward_log_det(self, x):
        return np.ones(x.shape[:-1], dtype=x.dtype)


def _seed_rotation(theta):
    """The post's Rotation2D: its forward writes y1 = sin x0 - cos x1 (should be + cos x1)."""
    c, s = np.cos(theta), np.sin(theta)

    def forward(x):
        return np.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] - c * x[..., 1]], axis=-1)

    def inverse(y):
        return np.stack([c * y[..., 0] + s * y[..., 1], -s * y[..., 0] + c * y[..., 1]], axis=-1)

    return nb.Inline(forward, inverse, forward_log_det_jacobian_fn=lambda x: 0.0, event_ndims=1, name="Rotation2D")


def _seed000_stages(rng):
    a = rng.normal(3.0, 1.0)
    theta = rng.uniform(0.0, 2 * np.pi)
    return [nb.Shift([0.0, -2.0]), nb.Scale([2.0, 1.5]), ShiftAndCube(a), nb.Rotation(theta), nb.Sigmoid()], a, theta


def _seed000_points(rng, n=12):
    return MultivariateNormalDiag(loc=[0.0, 0.0], scale_diag=[0.5, 0.5]).sample(n, rng=rng)


def test_seed000_bugs_are_caught_by_the_checker():
    rng = np.random.default_rng(0)
    x = _seed000_points(rng)
    with pytest.raises(AssertionError, match="log_det_vs_jacobian"):
        check_bijector(SeedShiftAndCube(3.0), x)
    with pytest.raises(AssertionError, match="log_det_vs_jacobian"):   # its |det| is |cos 2 theta|, not 1
        check_bijector(_seed_rotation(1.0), x)


@needs_linear
def test_seed000_corrected_stages_pass_the_checker():
    rng = np.random.default_rng(1)
    stages, a, theta = _seed000_stages(rng)
    x = _seed000_points(rng)
    check_bijector(ShiftAndCube(a), x)
    check_bijector(nb.Rotation(theta), x)
    # the corrected rotation is the one the post's inverse undoes
    np.testing.assert_allclose(_seed_rotation(theta).inverse(nb.Rotation(theta).forward(x)), x, atol=1e-14)


def _resolvable(x):
    # The cube stage reaches |x| ~ 100 before the sigmoid, which then rounds to exactly 0 or 1 in
    # float64: such samples carry their log-density from sample_and_log_prob, but cannot be inverted.
    return np.all((x > 1e-6) & (x < 1 - 1e-6), axis=-1)


@needs_linear
def test_seed000_chain_each_stage_and_shuffled_orders():
    rng = np.random.default_rng(2)
    base = MultivariateNormalDiag(loc=[0.0, 0.0], scale_diag=[0.5, 0.5])
    stages, _, _ = _seed000_stages(rng)
    for i in range(1, 6):
        flow = TransformedDistribution(base, nb.Chain(list(reversed(stages[:i]))))
        x, lp = flow.sample_and_log_prob(500, rng=rng)
        assert x.shape == (500, 2) and np.all(np.isfinite(lp))
        ok = _resolvable(x) if i == 5 else np.ones(500, bool)
        assert ok.mean() > 0.5
        np.testing.assert_allclose(flow.log_prob(x[ok]), lp[ok], rtol=1e-8, atol=1e-8)
    assert np.all((x >= 0) & (x <= 1))   # the sigmoid puts the last stage in the unit square
    check_bijector(flow.bijector, 0.3 * base.sample(16, rng=rng))
    # the post shuffles the stages and rebuilds the flow: every order is a valid flow
    for _ in range(3):
        order = rng.permutation(5)
        chain = nb.Chain([stages[k] for k in reversed(order)])
        check_bijector(chain, 0.3 * base.sample(16, rng=rng))
        flow = TransformedDistribution(base, chain)
        z = base.sample(200, rng=rng)
        x = flow.bijector.forward(z)
        lp = base.log_prob(z) - flow.bijector.forward_log_det_jacobian(z)
        # keep the samples whose sigmoid stage did not saturate, wherever it sits in the order
        h = z
        for k in order[:list(order).index(4) + 1]:
            h = stages[k].forward(h)
        ok = _resolvable(h)
        np.testing.assert_allclose(flow.log_prob(x[ok]), lp[ok], rtol=1e-6, atol=1e-6)


@needs_linear
def test_seed000_log_prob_matches_a_stage_by_stage_computation():
    rng = np.random.default_rng(3)
    stages, a, theta = _seed000_stages(rng)
    base = MultivariateNormalDiag(loc=[0.0, 0.0], scale_diag=[0.5, 0.5])
    flow = TransformedDistribution(base, nb.Chain(list(reversed(stages))))
    x = rng.uniform(0.05, 0.95, size=(50, 2))
    # undo each stage by hand: logit, rotate back, un-shear, unscale, unshift
    logit = np.log(x) - np.log1p(-x)
    c, s = np.cos(theta), np.sin(theta)
    r = np.stack([c * logit[:, 0] + s * logit[:, 1], -s * logit[:, 0] + c * logit[:, 1]], axis=-1)
    u = r.copy()
    u[:, 1] -= a * r[:, 0] ** 3
    z = (u / [2.0, 1.5]) - [0.0, -2.0]
    log_det_sigmoid = np.sum(-np.log(x) - np.log1p(-x), axis=-1)
    expected = stats.multivariate_normal([0.0, 0.0], 0.25 * np.eye(2)).logpdf(z) + log_det_sigmoid - np.log(2.0 * 1.5)
    np.testing.assert_allclose(flow.log_prob(x), expected, rtol=1e-10)


# ---------------------------------------------------------------- seed 004
def test_seed004_log_normal():
    # zuko's NormalizingFlow(ExpTransform(), Normal(0, 1)) reads the transform as data -> base, which
    # makes samples log(z) of normal z (NaN for z < 0); the log-normal pushes the normal forward through exp.
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Exp())
    samples = flow.sample(1000, rng=0)
    assert samples.shape == (1000,) and np.all(samples > 0)
    x = np.array([1.5, 2.0, 0.5])
    np.testing.assert_allclose(flow.log_prob(x), stats.lognorm(s=1.0).logpdf(x), rtol=1e-13)


@needs_linear
def test_seed004_affine_with_a_matrix_scale():
    # torch's AffineTransform multiplies elementwise, so a 2x2 "scale" broadcasts samples to shape
    # (1000, 2, 2); the intended map is x = shift + S z.
    scale = np.array([[2.0, 0.0], [0.5, 1.5]])
    shift = np.array([1.0, -0.5])
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2), np.ones(2)),
                                   nb.Affine(shift=shift, scale_tril=scale))
    samples = flow.sample(1000, rng=1)
    assert samples.shape == (1000, 2)
    log_density = flow.log_prob(samples)
    ref = stats.multivariate_normal(shift, scale @ scale.T)
    np.testing.assert_allclose(log_density, ref.logpdf(samples), rtol=1e-12)
    print(f"Mean log density: {log_density.mean():.4f}")


def test_seed004_composed_transform():
    # ComposedTransform(Affine(0, 2), Tanh, Affine(0.5, 0.5)) sends the reals into (0, 1); used as zuko's
    # data -> base map under a Normal base, its image misses most of the base's support. The intended
    # distribution is y = 0.5 + 0.5 tanh(2 z), z ~ N(0, 1): Chain lists the stages last-applied first.
    chain = nb.Chain([nb.Shift(0.5), nb.Scale(0.5), nb.Tanh(), nb.Scale(2.0)])
    flow = TransformedDistribution(Normal(0.0, 1.0), chain)
    y = flow.sample(5000, rng=4)
    assert np.all((y > 0) & (y < 1))
    grid = np.linspace(1e-6, 1 - 1e-6, 9)
    t = 2 * grid - 1
    z = np.arctanh(t) / 2
    closed_form = stats.norm.logpdf(z) - np.log1p(-t * t)
    np.testing.assert_allclose(flow.log_prob(grid), closed_form, rtol=1e-10)
    np.testing.assert_allclose(flow.cdf(grid), stats.norm.cdf(z), rtol=1e-10)


# ---------------------------------------------------------------- training seeds
def _bimodal(n, rng):
    """Seed 001's target: an equal mixture of N((1.5, 1.5), I) and N((-1.5, -1.5), I)."""
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return rng.normal(size=(n, 2)) + 1.5 * sign[:, None]


def _bimodal_log_prob(x):
    a = -0.5 * ((x - 1.5) ** 2).sum(-1)
    b = -0.5 * ((x + 1.5) ** 2).sum(-1)
    return np.logaddexp(a, b) - np.log(2.0) - np.log(2 * np.pi)


@pytest.mark.slow
def test_seed001_realnvp_finds_both_modes():
    """RealNVP, 4 couplings with 8 hidden units, Adam lr 1e-3, 100 epochs, batch 64, 2000 samples.

    The post's code has two bugs, fixed here: its conditioner MLP (three Linear layers) has no
    activations, so every coupling is affine in x_a; and its base log-density multiplies the squared
    norm by D, -D/2 (log 2 pi + |u|^2), where the standard normal's is -D/2 log 2 pi - |u|^2 / 2.
    nflow_np's coupling MLPs use ReLU, and its base is MultivariateNormalDiag.
    """
    from nflow_np import flows
    from nflow_np.train import fit

    rng = np.random.default_rng(0)
    data = _bimodal(2000, rng)
    flow = flows.RealNVP(2, n_layers=4, hidden=(8, 8), activation="relu", rng=1)
    history = fit(flow, data, epochs=100, batch_size=64, lr=1e-3, rng=2)
    assert history.rejected_steps == 0 and all(np.isfinite(v).all() for _, v in flow.parameters())
    held_out = _bimodal(20000, np.random.default_rng(3))
    entropy = -_bimodal_log_prob(_bimodal(400000, np.random.default_rng(4))).mean()
    nll = -flow.log_prob(held_out).mean()
    assert nll - entropy < 0.06, (nll, entropy)
    # both modes: samples split evenly between the two half-planes, centred on the modes
    samples = flow.sample(20000, rng=5)
    upper = samples.sum(-1) > 0
    assert 0.4 < upper.mean() < 0.6
    np.testing.assert_allclose(samples[upper].mean(0), [1.5, 1.5], atol=0.25)
    np.testing.assert_allclose(samples[~upper].mean(0), [-1.5, -1.5], atol=0.25)


def test_seed001_base_log_density_is_the_standard_normal():
    u = np.random.default_rng(0).normal(size=(5, 2))
    post = -0.5 * 2 * (np.log(2 * np.pi) + (u ** 2).sum(1))          # the post's formula
    correct = -np.log(2 * np.pi) - 0.5 * (u ** 2).sum(1)
    np.testing.assert_allclose(MultivariateNormalDiag(np.zeros(2)).log_prob(u), correct, rtol=1e-14)
    assert not np.allclose(post, correct)


@pytest.mark.slow
def test_seed002_leaky_relu_affine_flow_fits_a_gaussian():
    """tfb_chain(list(lrelu, affine)) over a 2-D standard normal, trained on N((1, 1), scale 2 I).

    The post builds alpha as abs(variable) + 0.01; LeakyReLU keeps alpha > 0 by training log(alpha).
    """
    from nflow_np.train import fit

    rng = np.random.default_rng(0)
    target = MultivariateNormalDiag([1.0, 1.0], [2.0, 2.0])
    data = target.sample(10000, rng=rng)
    affine = nb.Affine(shift=0.1 * rng.normal(size=2), scale_tril=np.eye(2) + np.tril(0.1 * rng.normal(size=(2, 2))),
                       scale_perturb_factor=0.1 * rng.normal(size=(2, 2)))
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), nb.Chain([nb.LeakyReLU(0.5), affine]))
    fit(flow, data, epochs=40, batch_size=100, lr=1e-2, rng=1)
    samples = flow.sample(200000, rng=2)
    mean, cov = samples.mean(0), np.cov(samples.T)
    assert np.linalg.norm(mean - [1.0, 1.0]) / np.sqrt(2) < 0.05
    assert np.linalg.norm(cov - 4 * np.eye(2)) / np.linalg.norm(4 * np.eye(2)) < 0.05


@pytest.mark.slow
def test_seed003_text_picture_flow_with_batch_norm():
    """8 RealNVP couplings with a swap after each and 4 BatchNorm layers, on points from a picture of "flow".

    The post reports losses going to NaN; with the soft-clamped log-scale and the guarded steps no step
    is rejected at the default learning rate, and the flow beats the best Gaussian fit by a clear margin.
    """
    from nflow_np import datasets
    from nflow_np.train import fit

    rng = np.random.default_rng(0)
    data = datasets.text_points("flow", 5000, rng=1)
    held_out = datasets.text_points("flow", 5000, rng=2)
    stages = []
    for i in range(8):
        stages.append(nb.AffineCoupling([True, False], (64, 64), "relu", rng=rng))
        stages.append(nb.Permute([1, 0]))
        if i % 2 == 0:
            stages.append(nb.BatchNorm(2))
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), nb.Chain(list(reversed(stages))))
    history = fit(flow, data, epochs=40, batch_size=256, lr=1e-3, rng=3)
    assert history.rejected_steps == 0
    assert all(np.isfinite(v).all() for _, v in flow.parameters())
    nll = -flow.log_prob(held_out).mean()
    gaussian = -stats.multivariate_normal(data.mean(0), np.cov(data.T)).logpdf(held_out).mean()
    assert nll < gaussian - 0.25, (nll, gaussian)
    samples = flow.sample(2000, rng=4)
    assert np.isfinite(samples).all()
    # the samples cover the word: every letter's band along x gets a share
    bands = np.histogram(samples[:, 0], bins=[-4, -2, 0, 2, 4])[0] / len(samples)
    assert np.all(bands > 0.1), bands
