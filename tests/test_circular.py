"""Flows of angles: the circular spline layers in flows (compiled against NumPy), NCSF, its model file, its fit.

The layers themselves go through check_bijector from bijector_cases.py, and their
scalar math through test_transforms.py (CPU) and test_cuda.py (the GPU frames).
"""

import numpy as np
import pytest

import nflow_np
from nflow_np import bijectors as nb
from nflow_np import flows, io
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution, Uniform
from nflow_np.kernels import plan
from nflow_np.kernels import program as prog
from nflow_np.train import fit, nll_and_grad

DTYPES = [np.float64, np.float32]


def tol(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


def perturbed(flow, seed=1, scale=0.4):
    rng = np.random.default_rng(seed)
    for _, p in flow.parameters():
        fan_in = p.shape[0] if p.ndim == 2 else 1
        p += (scale / np.sqrt(fan_in) * rng.standard_normal(p.shape)).astype(p.dtype)
    return flow


def normal_base_flow(frame, dtype, d=3, bound=5.0):
    """Circular-spline layers of one frame over a standard normal (the base the compiled engine evaluates), on
    [-5, 5]^d so that its draws stay inside the splines' interval."""
    if frame == "coupling":
        mask = np.array([True, False, True])
        layers = [nb.CircularSplineCoupling(mask, (5,), "tanh", bins=4, bound=bound, rng=0, dtype=dtype),
                  nb.Permute([2, 0, 1]),
                  nb.CircularSplineCoupling(~mask, (4,), "relu", bins=3, bound=bound, rng=1, dtype=dtype)]
    else:
        layers = [nb.CircularSplineAutoregressive(d, (6,), "elu", bins=5, bound=bound, order=[2, 0, 1], rng=0,
                                                  dtype=dtype),
                  nb.Reverse(),
                  nb.CircularSplineAutoregressive(d, (4, 4), "tanh", bins=3, bound=bound, rng=1, dtype=dtype)]
    base = MultivariateNormalDiag(np.zeros(d, dtype), np.ones(d, dtype))
    return perturbed(TransformedDistribution(base, nb.Chain(layers)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frame", ["coupling", "autoregressive"])
def test_circular_frames_compiled_match_numpy(frame, dtype):
    """Both frames run the circular spline compiled (Numba CPU): log_prob, draws and the NLL gradient agree with the
    layers' NumPy passes, ends of the interval included."""
    pytest.importorskip("numba")
    flow = normal_base_flow(frame, dtype)
    assert plan.supports(flow) == (True, "")
    assert plan.program_for(flow).transforms.count("circular_spline") == 2
    rng = np.random.default_rng(3)
    x = rng.uniform(-5.0, 5.0, (40, 3)).astype(dtype)
    x[0] = [5.0, -5.0, 0.0]
    x[1] = [-5.0, 4.999, 5.0]
    ref = flow.log_prob(x, backend="numpy")
    np.testing.assert_allclose(flow.log_prob(x, backend="numba"), ref, **tol(dtype))
    s_ref, lp_ref = flow.sample_and_log_prob(50, rng=7, backend="numpy")
    s_got, lp_got = flow.sample_and_log_prob(50, rng=7, backend="numba")
    np.testing.assert_allclose(s_got, s_ref, **tol(dtype))
    np.testing.assert_allclose(lp_got, lp_ref, **tol(dtype))
    loss_ref, g_ref = nll_and_grad(flow, x, backend="numpy")
    loss_got, g_got = nll_and_grad(flow, x, backend="numba")
    np.testing.assert_allclose(loss_got, loss_ref, **tol(dtype))
    assert set(g_got) == set(g_ref)
    for key in g_ref:
        scale = max(1.0, float(np.abs(g_ref[key]).max()))
        np.testing.assert_allclose(g_got[key], g_ref[key], rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * scale,
                                   err_msg=key)


def test_compiled_log_prob_outside_the_interval_is_an_error_not_a_number():
    pytest.importorskip("numba")
    flow = normal_base_flow("coupling", np.float64)
    x = np.zeros((2, 3))
    x[1, 1] = 6.0
    for backend in ("numpy", "numba"):     # the compiled pass's NaN sends the point to the layer's own check
        with pytest.raises(ValueError, match="y must lie in the circular spline's interval"):
            flow.log_prob(x, backend=backend)


# ---------------------------------------------------------------- NCSF

NCSF_KINDS = {
    "autoregressive": lambda dt: flows.NCSF(3, n_layers=3, bins=5, hidden=(8,), rng=0, dtype=dt),
    "coupling(permute,rotate)": lambda dt: flows.NCSF(3, n_layers=3, bins=4, hidden=(6, 6), autoregressive=False,
                                                      permute="random", rotate=True, rng=1, dtype=dt),
    "1-D(rotate)": lambda dt: flows.NCSF(1, n_layers=2, bins=6, hidden=(4,), rotate=True, rng=2, dtype=dt),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(NCSF_KINDS))
def test_ncsf_lives_on_the_torus(kind, dtype):
    flow = perturbed(NCSF_KINDS[kind](dtype))
    d = flow.event_shape[0]
    assert isinstance(flow.distribution, Uniform) and flow.dtype == dtype
    np.testing.assert_array_equal(flow.distribution.low, np.full(d, -np.pi, dtype))
    x, lp = flow.sample_and_log_prob(200, rng=3)
    bound = dtype(np.pi)
    assert x.dtype == dtype and np.all((x >= -bound) & (x <= bound))
    np.testing.assert_allclose(flow.log_prob(x), lp, **tol(dtype) if dtype == np.float64 else dict(atol=1e-3))
    # the torus's corners and edges have a density too
    corners = np.array([[np.pi] * d, [-np.pi] * d, [np.pi, -np.pi, 0.0][:d]], dtype=dtype)
    assert np.all(np.isfinite(flow.log_prob(corners)))
    with pytest.raises(ValueError, match=r"must lie in the circular spline's interval \[-bound, bound\] = "
                                         r"\[-3.14159\d*, 3.14159\d*\].*got 3.5"):
        flow.log_prob(np.full((1, d), 3.5, dtype))


@pytest.mark.parametrize("kind", sorted(NCSF_KINDS))
def test_ncsf_density_integrates_to_one(kind):
    """Midpoint rule on the torus: the density is normalized (the layers' log-dets and the uniform base agree)."""
    flow = perturbed(NCSF_KINDS[kind](np.float64), scale=0.3)
    d = flow.event_shape[0]
    n = {1: 4000, 2: 300, 3: 40}[d]
    mids = -np.pi + (np.arange(n) + 0.5) * (2 * np.pi / n)
    grid = np.stack(np.meshgrid(*([mids] * d), indexing="ij"), axis=-1).reshape(-1, d)
    mass = np.exp(flow.log_prob(grid)).sum() * (2 * np.pi / n) ** d
    assert abs(mass - 1.0) < (1e-6 if d == 1 else 2e-2)


COMPILED_NCSF = {
    "autoregressive": lambda dt: flows.NCSF(3, n_layers=2, bins=5, hidden=(8,), rng=0, dtype=dt),
    "coupling": lambda dt: flows.NCSF(3, n_layers=3, bins=4, hidden=(6, 6), autoregressive=False,
                                      permute="random", rng=1, dtype=dt),
    "coupling(rotate)": lambda dt: flows.NCSF(3, n_layers=3, bins=4, hidden=(6,), autoregressive=False,
                                              permute="random", rotate=True, rng=1, dtype=dt),
    "autoregressive(rotate)": lambda dt: flows.NCSF(3, n_layers=2, bins=4, hidden=(6,), rotate=True, rng=0,
                                                    dtype=dt),
}


def torus_points(dtype, n=40, d=3, seed=3):
    """Angles on [-pi, pi]^d with the edges, the corners and points a hair inside them."""
    x = np.random.default_rng(seed).uniform(-np.pi, np.pi, (n, d)).astype(dtype)
    bound = dtype(np.pi)
    inside = np.nextafter(bound, dtype(0))
    x[0], x[1] = bound, -bound
    x[2] = [bound, -bound, 0.0]
    x[3] = [inside, -inside, bound]
    x[4] = [-inside, 0.5, inside]
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(COMPILED_NCSF))
def test_ncsf_runs_compiled_over_its_uniform_base(kind, dtype):
    """The engine evaluates the uniform base itself: NCSF's log_prob, draws and NLL gradient on backend="numba"
    agree with the NumPy passes, edges and corners of the torus included."""
    pytest.importorskip("numba")
    flow = perturbed(COMPILED_NCSF[kind](dtype))
    assert plan.supports(flow) == (True, "")
    program = plan.program_for(flow)
    assert program is not None and program.transforms.count("circular_spline") == \
        (2 if kind.startswith("autoregressive") else 3)
    assert program.entry_names.count("circular_shift") == (0 if "rotate" not in kind else
                                                            1 if kind.startswith("autoregressive") else 2)
    x = torus_points(dtype)
    ref = flow.log_prob(x, backend="numpy")
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(flow.log_prob(x, backend="numba"), ref, **tol(dtype))
    s_ref, lp_ref = flow.sample_and_log_prob(60, rng=7, backend="numpy")
    s_got, lp_got = flow.sample_and_log_prob(60, rng=7, backend="numba")
    np.testing.assert_allclose(s_got, s_ref, **tol(dtype))
    np.testing.assert_allclose(lp_got, lp_ref, **tol(dtype))
    np.testing.assert_array_equal(flow.sample(5, rng=2, backend="numba").shape, (5, 3))
    loss_ref, g_ref = nll_and_grad(flow, x, backend="numpy")
    loss_got, g_got = nll_and_grad(flow, x, backend="numba")
    np.testing.assert_allclose(loss_got, loss_ref, **tol(dtype))
    assert set(g_got) == set(g_ref)
    for key in g_ref:
        scale = max(1.0, float(np.abs(g_ref[key]).max()))
        np.testing.assert_allclose(g_got[key], g_ref[key], rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * scale,
                                   err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_the_compiled_uniform_base_matches_uniform_log_prob_at_its_edges(dtype):
    """Base points on the box's edges count as inside, a hair beyond them (and NaN) as outside: -inf, as
    Uniform.log_prob has it; the constant is -sum log(high - low), a box of unequal sides included."""
    pytest.importorskip("numba")
    from nflow_np.kernels import compiled
    low, high = np.array([-1.0, 0.0, 2.0], dtype), np.array([1.5, 3.0, 2.5], dtype)
    base = Uniform(low, high, dtype=dtype)
    spec = base.lower()
    assert spec.d == 3 and spec.low.dtype == dtype
    flow = TransformedDistribution(base, nb.Chain([nb.Permute([1, 2, 0]), nb.Permute([2, 0, 1])]))
    program = plan.program_for(flow)
    assert program is not None
    z = np.array([low, high, (low + high) / 2, [low[0], high[1], low[2]],
                  [np.nextafter(low[0], dtype(-9)), 1.0, 2.2], [0.0, np.nextafter(high[1], dtype(9)), 2.2],
                  [0.0, 1.0, np.nan]], dtype)
    ref = base._log_prob(z).sum(-1)      # the NumPy base itself (its public call refuses NaN)
    assert np.isneginf(ref[4:]).all() and np.isfinite(ref[:4]).all()
    got = np.zeros(len(z), dtype)
    theta = program.theta()
    compiled._uniform_log_prob(z, theta[int(program.layout[prog.W_BASEC]):], got)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(flow.log_prob(z[:4], backend="numba"), flow.log_prob(z[:4], backend="numpy"))
    np.testing.assert_array_equal(flow.log_prob(z[4:6], backend="numba"), [-np.inf, -np.inf])
    # the same points through the NLL: infinite, as the NumPy loss
    loss_ref, _ = nll_and_grad(flow, z[3:5], backend="numpy")
    loss_got, grads = nll_and_grad(flow, z[3:5], backend="numba")
    assert loss_ref == loss_got == np.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shift", [[0.5, -3.0, np.pi], [2.0]], ids=["per-coordinate", "one angle"])
def test_the_compiled_circular_shift_matches_its_bijector(shift, dtype):
    """Both directions and the density pass's VJP against CircularShift's NumPy passes, the interval's ends and
    points landing on the seam included; an input outside [-B, B] comes out NaN (the flow then asks the
    bijector, whose check names the point)."""
    pytest.importorskip("numba")
    from nflow_np.kernels import elementwise
    layer = nb.CircularShift(np.array(shift, dtype), bound=2.5, dtype=dtype)
    box = Uniform(np.full(3, -2.5, dtype), np.full(3, 2.5, dtype))
    assert plan.supports(TransformedDistribution(box, nb.Chain([layer, nb.Reverse()]))) == (True, "")
    bound, period = dtype(2.5), dtype(5.0)
    s = layer.params["shift"]
    x = np.random.default_rng(0).uniform(-2.5, 2.5, (30, 3)).astype(dtype)
    x[0], x[1] = bound, -bound
    x[2] = np.broadcast_to(-bound + s, (3,)) if s.size == 1 else -bound + s     # lands on the seam
    x[3] = np.nextafter(bound, dtype(0))
    x = np.clip(x, -bound, bound)
    for direction, ref in ((1, layer.forward(x)), (-1, layer.inverse(x))):
        got = np.empty_like(x)
        elementwise.circular_shift_numba(x, s.ravel(), bound, period, direction, got)
        np.testing.assert_allclose(got, ref, **tol(dtype), err_msg=f"direction {direction}")
    gout = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    ref_gin, ref_grads = layer.inverse_vjp(x, gout, event_ndims=1)
    gin, gshift = np.empty_like(x), np.empty(s.size, dtype)
    elementwise.circular_shift_backward_numba(gout, gin, gshift)
    np.testing.assert_allclose(gin, ref_gin, **tol(dtype))
    np.testing.assert_allclose(gshift, ref_grads["shift"].ravel(), **tol(dtype))
    outside = np.array([[2.6, 0.0, 0.0], [0.0, np.nan, 0.0]], dtype)
    got = np.zeros_like(outside)
    elementwise.circular_shift_numba(outside, s.ravel(), bound, period, -1, got)
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 1]) and not np.isnan(got[0, 1])


def test_a_uniform_that_is_not_a_box_over_the_coordinates_is_not_lowered():
    from nflow_np.kernels.specs import Unsupported
    with pytest.raises(Unsupported, match="Uniform box"):
        Uniform(0.0, 1.0).lower()
    with pytest.raises(Unsupported, match="Uniform box"):
        Uniform(np.zeros((2, 2)), np.ones((2, 2))).lower()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(COMPILED_NCSF))
def test_an_ncsf_fit_epoch_on_the_engine_matches_numpy(kind, dtype, monkeypatch):
    pytest.importorskip("numba")
    x = torus_points(dtype, n=96, seed=5)
    epochs = []
    compiled_epoch = plan.NumbaTrainer.epoch
    monkeypatch.setattr(plan.NumbaTrainer, "epoch", lambda self, *a, **k: epochs.append(1) or compiled_epoch(
        self, *a, **k))
    runs = {}
    for backend in ("numpy", "numba"):
        flow = perturbed(COMPILED_NCSF[kind](dtype))
        history = fit(flow, x, epochs=1, batch_size=32, lr=1e-2, rng=0, backend=backend)
        runs[backend] = (history, {k: v.copy() for k, v in flow.parameters()})
    (ref, ref_params), (got, got_params) = runs["numpy"], runs["numba"]
    assert epochs == [1], "the numba fit ran the compiled trainer once"
    assert got.steps == ref.steps == 3 and got.rejected_steps == ref.rejected_steps == 0
    np.testing.assert_allclose(got.train_loss, ref.train_loss, **tol(dtype))
    for k in ref_params:
        np.testing.assert_allclose(got_params[k], ref_params[k], rtol=1e-7 if dtype == np.float64 else 1e-3,
                                   atol=1e-9 if dtype == np.float64 else 1e-4, err_msg=k)


def test_ncsf_bad_arguments():
    with pytest.raises(ValueError, match=r"NCSF: autoregressive=False \(couplings\) needs dim >= 2"):
        flows.NCSF(1, autoregressive=False)
    with pytest.raises(TypeError, match="NCSF: rotate must be True or False"):
        flows.NCSF(2, rotate="yes")
    with pytest.raises(ValueError, match="NCSF: permute must be None or 'random'"):
        flows.NCSF(2, permute="reverse")
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        flows.NCSF(2, bins=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(NCSF_KINDS))
def test_ncsf_round_trip_is_bit_exact(kind, dtype, tmp_path):
    flow = perturbed(NCSF_KINDS[kind](dtype))
    x = flow.sample(20, rng=4)
    path = tmp_path / "ncsf.npz"
    io.save(flow, path)
    loaded = io.load(path)
    assert isinstance(loaded.distribution, Uniform) and loaded.dtype == dtype
    assert [type(b) for b in loaded.bijector.flatten()] == [type(b) for b in flow.bijector.flatten()]
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(7, rng=11), flow.sample(7, rng=11))
    for (ka, a), (kb, b) in zip(flow.parameters(), loaded.parameters()):
        assert ka == kb and a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("kwargs", [dict(conditioner="resnet", hidden=(8, 8), context=2),
                                    dict(autoregressive=False, conditioner="resnet", hidden=(8, 8), context=1),
                                    dict(embedding="mlp")], ids=["resnet-ar", "resnet-coupling", "embedding"])
def test_conditional_ncsf_with_residual_conditioners_or_an_embedding_round_trips(kwargs, tmp_path):
    from nflow_np import nn
    if kwargs.get("embedding") == "mlp":
        kwargs = dict(embedding=nn.MLP(3, 4, (6,), rng=1))
    flow = perturbed(flows.NCSF(2, n_layers=2, rng=0, **kwargs))
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 3.0, (9, 2))
    context = rng.normal(size=(9, flow.context_size))
    path = tmp_path / "ncsf.npz"
    io.save(flow, path)
    loaded = io.load(path)
    lp = flow.log_prob(x, context=context)
    assert np.all(np.isfinite(lp))
    assert np.array_equal(loaded.log_prob(x, context=context), lp)
    assert not np.allclose(flow.log_prob(x, context=context[::-1]), lp)     # the context matters

def von_mises_torus(n, rng):
    """Two correlated angles: a von Mises angle and a second one around it, both wrapped to [-pi, pi)."""
    a = rng.vonmises(2.0, 4.0, n)
    b = rng.vonmises(0.0, 6.0, n) + a + np.pi / 2
    return ((np.stack([a, b], axis=1) + np.pi) % (2 * np.pi)) - np.pi


@pytest.mark.slow
def test_ncsf_learns_angles_on_the_two_torus():
    """Held-out NLL well below the uniform base's 2 log(2 pi) = 3.68 after a short fit."""
    rng = np.random.default_rng(0)
    train, held_out = von_mises_torus(3000, rng), von_mises_torus(1000, rng)
    flow = flows.NCSF(2, n_layers=2, bins=8, hidden=(32, 32), rng=0)
    with nflow_np.backend("numpy"):
        fit(flow, train, epochs=15, batch_size=128, lr=5e-3, rng=0)
        nll = -float(np.mean(flow.log_prob(held_out)))
    assert nll < 2 * np.log(2 * np.pi) - 1.5, nll


@pytest.mark.slow
def test_ncsf_fits_an_unnormalized_density_on_the_torus_by_reverse_kl():
    """fit_to_target through the sampling direction (rotations included): the reverse KL ends near 0, its loss near
    -log Z (computed by quadrature)."""
    from nflow_np.train import fit_to_target

    def log_p(x):
        return 3.0 * np.cos(x[..., 0] - 1.0) + 2.0 * np.cos(x[..., 1] - x[..., 0])

    def grad(x):
        g = np.empty_like(x)
        g[..., 0] = -3.0 * np.sin(x[..., 0] - 1.0) + 2.0 * np.sin(x[..., 1] - x[..., 0])
        g[..., 1] = -2.0 * np.sin(x[..., 1] - x[..., 0])
        return g

    n = 400
    mids = -np.pi + (np.arange(n) + 0.5) * (2 * np.pi / n)
    grid = np.stack(np.meshgrid(mids, mids, indexing="ij"), axis=-1).reshape(-1, 2)
    log_z = np.log(np.exp(log_p(grid)).sum() * (2 * np.pi / n) ** 2)
    flow = flows.NCSF(2, n_layers=2, hidden=(16, 16), rotate=True, rng=0)
    history = fit_to_target(flow, log_p, grad_fn=grad, steps=300, n_samples=128, lr=5e-3, rng=0)
    assert history.train_loss[-1] < -log_z + 0.1, (history.train_loss[-1], -log_z)
