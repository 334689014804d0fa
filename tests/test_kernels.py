"""Compiled twins against their NumPy references, and whole flows across backends.

Every ``*_numba`` kernel runs on the same random inputs as its ``*_numpy``
reference (both dtypes, odd sizes: one row, width one, odd dimensions) and
must write the same outputs. Then whole flows: log_prob, samples, gradients
and training runs must agree between ``backend="numpy"`` (the bijectors' own
passes) and ``backend="numba"``.
"""

import numpy as np
import pytest

import nflow_np
from nflow_np import flows
from nflow_np.kernels import elementwise, mlp, optim, plan
from nflow_np.kernels import program as prog
from nflow_np.kernels.backend import load_numba
from nflow_np.train import Adam, fit, value_and_grad

DTYPES = [np.float64, np.float32]


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def twin(module, name):
    return getattr(module, f"{name}_numpy"), getattr(module, f"{name}_numba")


def run_both(module, name, inputs, outputs):
    """Run reference and twin on copies of the same buffers; return both sets of outputs."""
    results = []
    for fn in twin(module, name):
        bufs = {k: v.copy() for k, v in outputs.items()}
        ret = fn(*[bufs.get(k, v) for k, v in inputs])
        results.append((bufs, ret))
    return results


def close(got, ref, dtype, err_msg=""):
    """Relative agreement, with the absolute floor scaled to the array (sums of many terms round to it)."""
    t = tol(dtype)
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"] * scale, err_msg=err_msg)


def assert_same(results, dtype, keys=None):
    (ref, ref_ret), (got, got_ret) = results
    for k in keys or ref:
        close(got[k], ref[k], dtype, err_msg=k)
    if ref_ret is not None:
        close(got_ret, ref_ret, dtype)


def random_net(rng, widths, dtype, scale=0.7):
    size = mlp.param_count(widths)
    return (rng.standard_normal(size + 3) * scale).astype(dtype), np.array(widths, dtype=np.int64)


# ---------------------------------------------------------------- backend switch

def test_backend_switch_scoping_and_errors():
    assert nflow_np.get_backend() in ("numpy", "numba")
    previous = nflow_np.set_backend("numpy")
    try:
        assert nflow_np.get_backend() == "numpy"
        with nflow_np.backend("numba"):
            assert nflow_np.get_backend() == "numba"
            with nflow_np.backend("numpy"):
                assert nflow_np.get_backend() == "numpy"
            assert nflow_np.get_backend() == "numba"
        assert nflow_np.get_backend() == "numpy"
    finally:
        nflow_np.set_backend(previous)
    with pytest.raises(ValueError, match="backend must be one of"):
        nflow_np.set_backend("torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        flows.RealNVP(2, rng=0).log_prob(np.zeros((1, 2)), backend="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        with nflow_np.backend(3):
            pass


# ---------------------------------------------------------------- MLP

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths,n", [((3, 5, 4), 7), ((1, 1, 1), 1), ((4, 2), 5), ((6, 40, 40, 9), 33),
                                      ((2, 3, 70, 5), 3)])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_mlp_twins(dtype, widths, n, act):
    rng = np.random.default_rng(len(widths) * 100 + n + act)
    theta, w = random_net(rng, widths, dtype)
    off = 3 if theta.size > mlp.param_count(widths) + 2 else 0
    theta = np.concatenate([np.zeros(off, dtype), theta[:mlp.param_count(widths)]])
    inp = rng.standard_normal((n, widths[0])).astype(dtype)
    hid = np.zeros(n * mlp.hidden_size(widths), dtype)
    out = np.zeros((n, widths[-1]), dtype)
    fwd = run_both(mlp, "mlp_forward", [("theta", theta), ("off", off), ("w", w), ("act", act), ("inp", inp),
                                        ("hid", None), ("out", None)], {"hid": hid, "out": out})
    assert_same(fwd, dtype)
    hid = fwd[0][0]["hid"]
    gout = rng.standard_normal((n, widths[-1])).astype(dtype)
    scratch = n * max(list(widths[1:-1]) + [1])
    bufs = {"gin": np.zeros((n, widths[0]), dtype), "gtheta": np.full(theta.size, 7.0, dtype),
            "d1": np.zeros(scratch, dtype), "d2": np.zeros(scratch, dtype)}
    bwd = run_both(mlp, "mlp_backward", [("theta", theta), ("off", off), ("w", w), ("act", act), ("inp", inp),
                                         ("hid", hid), ("gout", gout), ("gin", None), ("gtheta", None),
                                         ("d1", None), ("d2", None)], bufs)
    assert_same(bwd, dtype, ["gin", "gtheta"])
    # the parameters before `off` belong to someone else: untouched
    assert np.all(bwd[1][0]["gtheta"][:off] == 7.0)


# ---------------------------------------------------------------- MADE's degree groups (autoregressive sampling)

def test_degree_groups_cover_every_unit_once():
    from nflow_np.nn.mlp import made_degrees

    d, hidden = 5, (7, 3)
    degrees = made_degrees(np.array([2, 0, 4, 1, 3]), hidden)
    groups = plan.degree_groups(degrees, d)
    at = 0
    for width, deg in zip(hidden, degrees[1:]):
        offsets, units = groups[at:at + d + 1], groups[at + d + 1:at + d + 1 + width]
        for k in range(d):
            assert np.all(deg[units[offsets[k]:offsets[k + 1]]] == k)
        assert sorted(units.tolist()) == list(range(width))
        at += d + 1 + width


# ---------------------------------------------------------------- per-feature layers, reductions, Adam

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(1, 1), (6, 5)])
def test_elementwise_twins(dtype, n, d):
    rng = np.random.default_rng(n + d)
    y = rng.standard_normal((n, d)).astype(dtype)
    idx = rng.permutation(d).astype(np.int64)
    assert_same(run_both(elementwise, "permute", [("y", y), ("idx", idx), ("out", None)],
                         {"out": np.zeros((n, d), dtype)}), dtype)
    assert_same(run_both(elementwise, "permute_backward", [("g", y), ("idx", idx), ("gin", None)],
                         {"gin": np.zeros((n, d), dtype)}), dtype)
    log_scale = rng.standard_normal(d).astype(dtype)
    shift = rng.standard_normal(d).astype(dtype)
    for name in ("actnorm_inverse", "actnorm_forward"):
        assert_same(run_both(elementwise, name, [("ls", log_scale), ("sh", shift), ("y", y), ("x", None),
                                                 ("ld", None)],
                             {"x": np.zeros((n, d), dtype), "ld": np.ones(n, dtype)}), dtype)
    gx = rng.standard_normal((n, d)).astype(dtype)
    gld = rng.standard_normal(n).astype(dtype)
    assert_same(run_both(elementwise, "actnorm_inverse_backward",
                         [("ls", log_scale), ("x", y), ("gx", gx), ("gld", gld), ("gy", None), ("gls", None),
                          ("gsh", None)],
                         {"gy": np.zeros((n, d), dtype), "gls": np.zeros(d, dtype), "gsh": np.zeros(d, dtype)}), dtype)
    assert_same(run_both(elementwise, "normal_log_prob", [("z", y), ("out", None)], {"out": np.ones(n, dtype)}), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip,decay", [(0.0, 0.0), (0.5, 0.01)])
def test_adam_twin_matches_reference_and_the_optimizer(dtype, clip, decay):
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(13).astype(dtype)
    grads = [rng.standard_normal(13).astype(dtype) for _ in range(4)]
    hyper = np.array([1e-2, 0.9, 0.999, 1e-8, decay, clip, np.finfo(dtype).max])
    runs = []
    for fn in twin(optim, "adam_step"):
        th, m, v, hy, st, status = theta.copy(), np.zeros_like(theta), np.zeros_like(theta), hyper.copy(), \
            np.zeros(2, np.int64), np.zeros(1, np.int64)
        for g in grads:
            fn(th, g, m, v, hy, st, status)
            assert status[0] == optim.ACCEPTED
        runs.append((th, m, v, st))
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_allclose(b, a, **tol(dtype))
    # the Python optimizer takes the same steps
    param = theta.copy()
    opt = Adam([("p", param)], lr=1e-2, weight_decay=decay, clip_norm=clip or None)
    for g in grads:
        opt.step({"p": g})
    np.testing.assert_allclose(runs[1][0], param, **tol(dtype))


@pytest.mark.parametrize("name", ["adam_step_numpy", "adam_step_numba"])
def test_adam_rejects_non_finite_gradients_and_overflow(name):
    fn = getattr(optim, name)
    theta = np.ones(3, np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    hyper = np.array([1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, np.finfo(np.float32).max])
    state, status = np.zeros(2, np.int64), np.zeros(1, np.int64)
    fn(theta, np.array([1.0, np.nan, 0.0], np.float32), m, v, hyper, state, status)
    assert status[0] == optim.REJECTED_GRADIENT and np.all(theta == 1) and np.all(m == 0)
    assert hyper[0] == 5e-3 and tuple(state) == (0, 1)
    theta[0] = 3e38     # one more step would overflow float32
    hyper[0] = 1e38
    fn(theta, np.array([-1.0, 0.0, 0.0], np.float32), m, v, hyper, state, status)
    assert status[0] == optim.REJECTED_OVERFLOW and np.isfinite(theta).all() and theta[0] == np.float32(3e38)


# ---------------------------------------------------------------- whole flows

def perturbed(flow, seed=1, scale=0.3):
    """Random parameters: the zero-initialized last layers would hide most of the arithmetic."""
    rng = np.random.default_rng(seed)
    for _, p in flow.parameters():
        # keep pre-activations O(1) whatever the width
        fan_in = p.shape[0] if p.ndim == 2 else 1
        p += (scale / np.sqrt(fan_in) * rng.standard_normal(p.shape)).astype(p.dtype)
    return flow


FLOWS = {
    "realnvp": lambda dt: flows.RealNVP(2, rng=0, dtype=dt),
    "realnvp-odd": lambda dt: flows.RealNVP(5, n_layers=3, hidden=(7, 1), permute="random", act_norm=True,
                                            activation="elu", rng=0, dtype=dt),
    "realnvp-wide": lambda dt: flows.RealNVP(6, n_layers=2, hidden=(48, 48), log_scale_clamp=None, rng=0,
                                             dtype=dt),
    "nice": lambda dt: flows.NICE(3, hidden=(6,), activation="tanh", rng=0, dtype=dt),
    "maf": lambda dt: flows.MAF(5, n_layers=3, hidden=(9, 11), rng=0, dtype=dt),
    "maf-1d": lambda dt: flows.MAF(1, n_layers=2, hidden=(4,), act_norm=True, rng=0, dtype=dt),
    "realnvp-bn": lambda dt: flows.RealNVP(3, n_layers=3, hidden=(6,), batch_norm=True, rng=0, dtype=dt),
    "maf-bn": lambda dt: flows.MAF(4, n_layers=2, hidden=(5,), batch_norm=True, rng=0, dtype=dt),
    "nsf": lambda dt: flows.NSF(4, n_layers=3, bins=6, bound=3.0, hidden=(9,), permute="random", act_norm=True,
                                activation="tanh", rng=0, dtype=dt),
    "nsf-ar": lambda dt: flows.NSF(3, n_layers=2, bins=4, bound=3.0, hidden=(8, 5), autoregressive=True,
                                   batch_norm=True, activation="elu", rng=0, dtype=dt),
    # the frames with the transforms no ready-made flow uses
    "coupling-sinh": lambda dt: frame_flow("coupling", "sinh_arcsinh", 5, dt),
    "ar-sinh": lambda dt: frame_flow("autoregressive", "sinh_arcsinh", 4, dt),
    "ar-additive": lambda dt: frame_flow("autoregressive", "additive", 3, dt),
    "coupling-spline-by-parameter": lambda dt: frame_flow("coupling", "spline-by-parameter", 4, dt),
}


def frame_flow(frame, transform, d, dtype):
    """Two layers of ``frame`` with ``transform``, reversed in between, over a standard normal."""
    from nflow_np.bijectors import Autoregressive, Chain, Coupling, Reverse
    from nflow_np.bijectors.coupling import alternating_mask
    from nflow_np.bijectors.transforms import TRANSFORMS, SplineTransform
    from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution

    layers = []
    for i in range(2):
        if transform == "spline-by-parameter":      # the other output layout of a coupling's network
            made = SplineTransform(bins=3, bound=2.0)
            made.by_coordinate = False
        else:
            made = TRANSFORMS[transform]()
        if frame == "coupling":
            layers.append(Coupling(alternating_mask(d, i % 2), made, (7,), rng=i, dtype=dtype))
        else:
            layers.append(Autoregressive(d, made, (7, 5), activation="tanh", rng=i, dtype=dtype))
        layers.append(Reverse())
    base = MultivariateNormalDiag(np.zeros(d, dtype), np.ones(d, dtype))
    return TransformedDistribution(base, Chain(layers))


def initialized(flow, x):
    """ActNorm initialized from ``x``; BatchNorm in eval mode with running statistics away from (0, 1)."""
    from nflow_np.bijectors.normalization import ActNorm, BatchNorm
    rng = np.random.default_rng(9)
    for b in flow.bijector.flatten():
        if isinstance(b, ActNorm):
            b.initialize(x)
        if isinstance(b, BatchNorm):
            b.eval()
            b.running_mean[...] = rng.standard_normal(b.features)
            b.running_var[...] = rng.uniform(0.5, 2.0, b.features)
    return flow


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_flows_agree_across_backends(kind, dtype):
    rng = np.random.default_rng(2)
    flow = perturbed(FLOWS[kind](dtype))
    d = flow.event_shape[0]
    x = (1.5 * rng.standard_normal((3, 67, d))).astype(dtype)
    flow = initialized(flow, x)
    assert plan.supports(flow) == (True, "")
    ref = flow.log_prob(x, backend="numpy")
    got = flow.log_prob(x, backend="numba")
    assert got.shape == (3, 67) and got.dtype == dtype
    np.testing.assert_allclose(got, ref, **tol(dtype))
    np.testing.assert_allclose(flow.log_prob(x[0, 0], backend="numba"), ref[0, 0], **tol(dtype))
    for shape in [(), 1, (4, 9), 600]:
        s_ref, lp_ref = flow.sample_and_log_prob(shape, rng=7, backend="numpy")
        s_got, lp_got = flow.sample_and_log_prob(shape, rng=7, backend="numba")
        np.testing.assert_allclose(s_got, s_ref, **tol(dtype))
        np.testing.assert_allclose(lp_got, lp_ref, **tol(dtype))
        np.testing.assert_allclose(flow.sample(shape, rng=7, backend="numba"), s_ref, **tol(dtype))
    loss_ref, g_ref = value_and_grad(flow, x[0], backend="numpy")
    loss_got, g_got = value_and_grad(flow, x[0], backend="numba")
    assert set(g_got) == set(g_ref)
    np.testing.assert_allclose(loss_got, loss_ref, **tol(dtype))
    for key in g_ref:
        assert g_got[key].shape == g_ref[key].shape and g_got[key].dtype == dtype
        close(g_got[key], g_ref[key], dtype, err_msg=key)


@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_program_calls_match_the_bijectors_and_compile_only_the_passes_used(kind):
    """The program's own calls agree with the bijectors' passes; each call fills in only its passes' entries."""
    from nflow_np.kernels.compiled import BACKWARD, DENSITY, SAMPLING
    flow = initialized(perturbed(FLOWS[kind](np.float64)), np.random.default_rng(0).standard_normal((20, 1)) if
                       FLOWS[kind](np.float64).event_shape[0] == 1 else
                       np.random.default_rng(0).standard_normal((20, FLOWS[kind](np.float64).event_shape[0])))
    program = plan.compile_flow(flow)
    x = np.random.default_rng(3).standard_normal((700, program.d))
    np.testing.assert_allclose(program.log_prob(x), flow.log_prob(x, backend="numpy"), rtol=1e-10)
    table = program.table()
    assert table[:, DENSITY].all() and not table[:, SAMPLING].any() and not table[:, BACKWARD].any()
    loss, g = program.nll_and_grad(x[:50])
    assert np.isclose(loss, -flow.log_prob(x[:50], backend="numpy").mean(), rtol=1e-12)
    assert table[:, BACKWARD].all() and not table[:, SAMPLING].any()


@pytest.mark.parametrize("kind", ["realnvp-odd", "maf", "nice", "realnvp-bn", "maf-bn", "nsf", "nsf-ar"])
def test_fit_takes_the_same_steps_on_both_backends(kind):
    data = np.random.default_rng(4).standard_normal((300, FLOWS[kind](np.float64).event_shape[0])) * [1.0] + 0.5
    runs = {}
    for backend in ("numpy", "numba"):
        flow = FLOWS[kind](np.float64)
        history = fit(flow, data, epochs=3, batch_size=64, lr=3e-3, validation_split=0.2, rng=0, backend=backend)
        runs[backend] = (history, np.concatenate([p.ravel() for _, p in flow.parameters()]))
        runs[backend] += (np.concatenate([np.concatenate([m.running_mean, m.running_var])
                                          for m in flow.bijector.flatten() if hasattr(m, "running_var")]
                                         + [np.zeros(0)]),)
    (h_ref, p_ref, b_ref), (h_got, p_got, b_got) = runs["numpy"], runs["numba"]
    np.testing.assert_allclose(b_got, b_ref, rtol=1e-9, atol=1e-12)
    assert h_got.steps == h_ref.steps and h_got.rejected_steps == h_ref.rejected_steps == 0
    np.testing.assert_allclose(h_got.train_loss, h_ref.train_loss, rtol=1e-9)
    np.testing.assert_allclose(h_got.val_loss, h_ref.val_loss, rtol=1e-9)
    np.testing.assert_allclose(p_got, p_ref, rtol=1e-7, atol=1e-9)


def test_compiled_fit_survives_a_nan_step_and_keeps_the_model():
    flow = flows.RealNVP(2, rng=0)
    data = np.random.default_rng(0).standard_normal((256, 2))
    history = fit(flow, data, epochs=2, batch_size=64, lr=1e6, rng=0, backend="numba")
    assert all(np.isfinite(p).all() for _, p in flow.parameters())
    assert np.isfinite(flow.log_prob(data, backend="numba")).all()
    assert history.steps + history.rejected_steps == 8


def test_other_optimizers_use_compiled_gradients():
    from nflow_np.train import SGD

    data = np.random.default_rng(1).standard_normal((128, 2))
    results = []
    for backend in ("numpy", "numba"):
        flow = flows.RealNVP(2, rng=0)
        fit(flow, data, epochs=2, batch_size=32, rng=0, backend=backend,
            optimizer=SGD(flow.parameters(), lr=0.05, momentum=0.9))
        results.append(np.concatenate([p.ravel() for _, p in flow.parameters()]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-9, atol=1e-12)


def test_float32_program_is_close_to_float64():
    """The seed-001 flow: float32 log-densities within 1e-5 relative of float64."""
    f64 = perturbed(flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0), scale=0.2)
    f32 = flows.RealNVP(2, n_layers=4, hidden=(8, 8), rng=0, dtype=np.float32)
    for (_, p32), (_, p64) in zip(f32.parameters(), f64.parameters()):
        p32[...] = p64
    x = np.random.default_rng(0).standard_normal((2000, 2))
    lp64 = f64.log_prob(x, backend="numba")
    lp32 = f32.log_prob(x.astype(np.float32), backend="numba")
    assert np.max(np.abs(lp32 - lp64) / np.maximum(1.0, np.abs(lp64))) < 1e-5


def test_edge_values():
    flow = perturbed(flows.RealNVP(3, hidden=(8,), rng=0))
    x = np.array([[0.0, 0.0, 0.0], [1e3, -1e3, 1e-300], [-5e2, 7.0, 1e5]])
    np.testing.assert_allclose(flow.log_prob(x, backend="numba"), flow.log_prob(x, backend="numpy"), rtol=1e-10)
    with pytest.raises(ValueError, match="finite"):
        flow.log_prob(np.array([[np.nan, 0.0, 0.0]]), backend="numba")
    with pytest.raises(TypeError):
        flow.log_prob(np.zeros((2, 3), np.float32), backend="numba")
    with pytest.raises(ValueError):
        flow.log_prob(np.zeros((2, 4)), backend="numba")
    assert flow.log_prob(np.zeros((0, 3)), backend="numba").shape == (0,)


def test_uncovered_flows_fall_back_to_numpy():
    from nflow_np.bijectors import Chain, Inline, Shift
    from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution

    lu = flows.RealNVP(2, lu_linear=True, rng=0)
    ok, reason = plan.supports(lu)
    assert not ok and "LULinear" in reason
    silu = flows.RealNVP(2, activation="silu", rng=0)
    assert "silu" in plan.supports(silu)[1]
    shifted = TransformedDistribution(MultivariateNormalDiag(np.ones(2)), Chain([Shift(np.ones(2))]))
    assert "base distribution" in plan.supports(shifted)[1]
    inline = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), Inline(lambda x: x, lambda y: y,
                                                                                 lambda x: np.zeros(x.shape[:-1]),
                                                                                 event_ndims=1))
    assert not plan.supports(inline)[0]
    x = np.random.default_rng(0).standard_normal((5, 2))
    for flow in (lu, silu, shifted):
        np.testing.assert_allclose(flow.log_prob(x, backend="numba"), flow.log_prob(x, backend="numpy"))


def test_program_follows_parameter_updates_and_structure_changes():
    flow = flows.RealNVP(2, rng=0)
    x = np.random.default_rng(0).standard_normal((10, 2))
    before = flow.log_prob(x, backend="numba")
    for _, p in flow.parameters():
        p += 0.1
    after = flow.log_prob(x, backend="numba")
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, flow.log_prob(x, backend="numpy"), rtol=1e-12)
    flow.bijector.bijectors.reverse()
    np.testing.assert_allclose(flow.log_prob(x, backend="numba"), flow.log_prob(x, backend="numpy"), rtol=1e-12)


def test_workspace_regions_do_not_overlap():
    program = plan.compile_flow(perturbed(flows.MAF(4, n_layers=2, hidden=(5, 6), rng=0)))
    layout = program.layout
    starts = list(layout[:prog.W_ROW]) + [int(program.fields[0, prog.F_CACHE])]
    assert starts == sorted(starts) and layout[prog.W_ROW] >= starts[-1]


def test_batchnorm_in_training_mode_runs_log_prob_on_the_whole_batch():
    """Training-mode batch statistics couple the rows: log_prob must not split them into chunks."""
    x = np.random.default_rng(0).standard_normal((2000, 3)) * 3 + 1
    flows_ = [perturbed(flows.RealNVP(3, n_layers=2, hidden=(6,), batch_norm=True, rng=0)) for _ in range(2)]
    values = [flow.log_prob(x, backend=b) for flow, b in zip(flows_, ("numpy", "numba"))]
    np.testing.assert_allclose(values[1], values[0], rtol=1e-12)
    bns = [[m for m in f.bijector.flatten() if hasattr(m, "running_var")][0] for f in flows_]
    np.testing.assert_allclose(bns[1].running_var, bns[0].running_var, rtol=1e-12)
    assert not np.allclose(bns[0].running_var, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,batch", [(1, 1, False), (7, 3, True), (7, 3, False), (2, 5, True)])
def test_batchnorm_twins(dtype, n, d, batch):
    from nflow_np.kernels import normalization

    rng = np.random.default_rng(n * 10 + d)
    y = (rng.standard_normal((n, d)) * 2 + 1).astype(dtype)
    log_gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    stats = np.concatenate([rng.standard_normal(d), rng.uniform(0.5, 2, d), [0.1]]).astype(dtype)
    assert_same(run_both(normalization, "batchnorm_inverse",
                         [("lg", log_gamma), ("b", beta), ("stats", None), ("eps", 1e-5), ("batch", batch),
                          ("y", y), ("x", None), ("ld", None)],
                         {"stats": stats, "x": np.zeros((n, d), dtype), "ld": np.ones(n, dtype)}), dtype)
    assert_same(run_both(normalization, "batchnorm_forward",
                         [("lg", log_gamma), ("b", beta), ("stats", stats), ("eps", 1e-5), ("x", y), ("y", None),
                          ("ld", None)], {"y": np.zeros((n, d), dtype), "ld": np.ones(n, dtype)}), dtype)
    gx, gld = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal(n).astype(dtype)
    assert_same(run_both(normalization, "batchnorm_inverse_backward",
                         [("lg", log_gamma), ("stats", stats), ("eps", 1e-5), ("batch", batch), ("y", y), ("gx", gx),
                          ("gld", gld), ("gy", None), ("glg", None), ("gb", None)],
                         {"gy": np.zeros((n, d), dtype), "glg": np.zeros(d, dtype), "gb": np.zeros(d, dtype)}), dtype)
