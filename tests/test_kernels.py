"""Compiled kernels against the package's NumPy passes, and whole flows across backends.

Every ``*_numba`` kernel runs on random inputs (both dtypes, odd sizes: one
row, width one, odd dimensions) and must write what its reference computes:
:class:`nflow_np.nn.MLP` for the networks, the ``Permute``, ``ActNorm`` and
``BatchNorm`` bijectors and the standard normal for the per-feature layers,
:class:`nflow_np.train.Adam` under ``fit``'s guard for the optimizer step (see
``kernel_references.py``). Then whole flows: log_prob, samples, gradients and
training runs must agree between ``backend="numpy"`` (the bijectors' own
passes) and ``backend="numba"``.
"""

import numpy as np
import pytest

from kernel_references import (flat, guarded_adam_step, hidden_activations, reference_actnorm, reference_batchnorm,
                               reference_net)
import nflow_np
from nflow_np import flows
from nflow_np.bijectors import Permute
from nflow_np.distributions import MultivariateNormalDiag
from nflow_np.kernels import elementwise, mlp, normalization, optim, plan
from nflow_np.kernels import program as prog
from nflow_np.kernels.backend import load_numba
from nflow_np.train import Adam, fit, global_norm, value_and_grad

DTYPES = [np.float64, np.float32]


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def close(got, ref, dtype, err_msg=""):
    """Relative agreement, with the absolute floor scaled to the array (sums of many terms round to it)."""
    t = tol(dtype)
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"] * scale, err_msg=err_msg)


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
# (6, 64, 64, 9) over 100 rows: medium products, which BLAS runs as blocks of rows (mlp.MEDIUM_PRODUCT)
@pytest.mark.parametrize("widths,n", [((3, 5, 4), 7), ((1, 1, 1), 1), ((4, 2), 5), ((6, 40, 40, 9), 33),
                                      ((2, 3, 70, 5), 3), ((6, 64, 64, 9), 100)])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_mlp_twins(dtype, widths, n, act):
    """The network kernels, row-major and by unit, against :class:`nflow_np.nn.MLP` with the same parameters:
    output, hidden activations, input and parameter gradients."""
    rng = np.random.default_rng(len(widths) * 100 + n + act)
    if n * 64 * 64 > mlp.BLAS_SINGLE_THREAD:
        assert 1 < mlp._row_block(n, 64 * 64) < n
    net = reference_net(rng, widths, act, dtype)
    w = np.array(widths, dtype=np.int64)
    off = 3     # entries of theta before the network's: not read, not written
    theta = np.concatenate([rng.standard_normal(off).astype(dtype), flat(net.params)])
    assert theta.size == off + mlp.param_count(widths)
    inp = rng.standard_normal((n, widths[0])).astype(dtype)
    hid = np.zeros(n * mlp.hidden_size(widths), dtype)
    out = np.zeros((n, widths[-1]), dtype)
    mlp.mlp_forward_numba(theta, off, w, act, inp, hid, out)
    ref_out, cache = net.forward_with_cache(inp)
    close(out, ref_out, dtype, "out")
    close(hid, hidden_activations(net, inp), dtype, "hid")
    gout = rng.standard_normal((n, widths[-1])).astype(dtype)
    scratch = n * max(list(widths[1:-1]) + [1])
    gin, gtheta = np.zeros((n, widths[0]), dtype), np.full(theta.size, 7.0, dtype)
    mlp.mlp_backward_numba(theta, off, w, act, inp, hid, gout, gin, gtheta, np.zeros(scratch, dtype),
                           np.zeros(scratch, dtype))
    ref_gin, ref_grads = net.backward(cache, gout)
    close(gin, ref_gin, dtype, "gin")
    close(gtheta[off:], flat({k: ref_grads[k] for k in net.params}), dtype, "gtheta")
    # the parameters before `off` belong to someone else: untouched
    assert np.all(gtheta[:off] == 7.0)
    # the same network laid out by unit (every array transposed, the hidden layers each a (width, n) block)
    hid_t = np.zeros_like(hid)
    out_t = np.zeros((widths[-1], n), dtype)
    mlp.mlp_forward_by_unit_numba(theta, off, w, act, np.ascontiguousarray(inp.T), hid_t, out_t)
    close(out_t.T, ref_out, dtype, "out by unit")
    by_rows, at = [], 0
    for width in widths[1:-1]:
        by_rows.append(hid_t[at:at + n * width].reshape(width, n).T.ravel())
        at += n * width
    close(np.concatenate(by_rows) if by_rows else hid_t, hidden_activations(net, inp), dtype, "hid by unit")
    gin_t, gtheta = np.zeros((widths[0], n), dtype), np.full(theta.size, 7.0, dtype)
    mlp.mlp_backward_by_unit_numba(theta, off, w, act, np.ascontiguousarray(inp.T), hid_t,
                                   np.ascontiguousarray(gout.T), gin_t, gtheta, np.zeros(scratch, dtype),
                                   np.zeros(scratch, dtype))
    close(gin_t.T, ref_gin, dtype, "gin by unit")
    close(gtheta[off:], flat({k: ref_grads[k] for k in net.params}), dtype, "gtheta by unit")
    assert np.all(gtheta[:off] == 7.0)


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


@pytest.mark.parametrize("d,hidden,per_feature", [(5, (7, 3), 2), (4, (16,), 3), (1, (4, 4), 2), (6, (), 2),
                                                  (3, (2, 9, 5), 5)])
def test_made_pack_index_packs_every_unmasked_weight_once(d, hidden, per_feature):
    """MADE sampling multiplies packed blocks by prefixes of the layer below: the blocks must hold every unmasked
    weight that can reach an output exactly once and no masked one, so each block product is the masked product restricted to its units."""
    from nflow_np.nn.mlp import MaskedMLP

    order = np.random.default_rng(d).permutation(d)
    net = MaskedMLP(d, hidden, out_per_feature=per_feature, order=order, rng=0)
    widths = (d,) + tuple(hidden) + (per_feature * d,)
    off = 11                                     # the network's parameters start after someone else's
    # a hidden unit of degree d (only when d == 1) feeds no output, and sampling leaves it out
    feeds = [m * (deg < d) for m, deg in zip(net.masks, net.degrees[1:])] + net.masks[len(hidden):]
    allowed = np.concatenate([np.zeros(off)] + [part for m in feeds
                                                for part in (m.ravel(), np.zeros(m.shape[1]))])
    groups = plan.degree_groups(net.degrees, d)
    index, block = plan.made_pack_index(off, widths, groups, np.argsort(order), d)
    assert index.size == np.unique(index).size, "a weight packed twice"
    assert np.all(allowed[index] == 1), "a masked weight packed"
    assert sorted(index.tolist()) == np.flatnonzero(allowed).tolist(), "an unmasked weight left out"
    assert 0 < block <= max(widths[i] * widths[i + 1] for i in range(len(widths) - 1)) or index.size == 0


def test_made_sampling_runs_chunks_in_parallel():
    """A MADE's sampling pass multiplies weight blocks small enough for OpenBLAS to keep on the calling thread, so
    its chunks run on all threads at once even where its density pass (whole weight matrices) leaves threading to
    BLAS."""
    flow = perturbed(flows.MAF(8, n_layers=2, hidden=(64, 64), rng=0, dtype=np.float32))
    program = plan.Program(flow)
    assert not program.parallel_chunks
    assert program.parallel_sampling
    n = 8 * plan.CHUNK + 77                     # enough rows for two threads, and a short last chunk
    s_ref, lp_ref = flow.sample_and_log_prob(n, rng=5, backend="numpy")
    s_got, lp_got = flow.sample_and_log_prob(n, rng=5, backend="numba")
    np.testing.assert_allclose(s_got, s_ref, **tol(np.float32))
    np.testing.assert_allclose(lp_got, lp_ref, **tol(np.float32))
    assert plan.Program(flows.RealNVP(8, n_layers=2, hidden=(64, 64), rng=0, dtype=np.float32)).parallel_sampling \
        is False


# ---------------------------------------------------------------- per-feature layers, reductions, Adam

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(1, 1), (6, 5), (3, 37)])     # 37: vector lanes and a remainder
def test_elementwise_twins(dtype, n, d):
    """Permutations against :class:`~nflow_np.bijectors.Permute`, ActNorm against
    :class:`~nflow_np.bijectors.ActNorm`, the normal's log-density against the standard normal's."""
    rng = np.random.default_rng(n + d)
    y = rng.standard_normal((n, d)).astype(dtype)
    y[0, 0] = 0.0
    idx = rng.permutation(d).astype(np.int64)
    permute = Permute(idx)
    out = np.zeros((n, d), dtype)
    elementwise.permute_numba(y, idx, out)
    np.testing.assert_array_equal(out, permute.forward(y), err_msg="permute")
    g = rng.standard_normal((n, d)).astype(dtype)
    gin = np.zeros((n, d), dtype)
    elementwise.permute_backward_numba(g, idx, gin)
    np.testing.assert_array_equal(gin, permute.forward_vjp(y, g)[0], err_msg="permute backward")

    log_scale = rng.standard_normal(d).astype(dtype)
    shift = rng.standard_normal(d).astype(dtype)
    actnorm = reference_actnorm(log_scale, shift)
    for name, reference in (("actnorm_inverse", actnorm.inverse_and_log_det),
                            ("actnorm_forward", actnorm.forward_and_log_det)):
        x, ld = np.zeros((n, d), dtype), np.ones(n, dtype)
        getattr(elementwise, f"{name}_numba")(log_scale, shift, y, x, ld)
        ref_x, ref_ld = reference(y)
        close(x, ref_x, dtype, name)
        close(ld, 1.0 + ref_ld, dtype, f"{name} log-det")       # added to ld
    gx = rng.standard_normal((n, d)).astype(dtype)
    gld = rng.standard_normal(n).astype(dtype)
    gy, g_log_scale, g_shift = np.zeros((n, d), dtype), np.full(d, 7.0, dtype), np.full(d, 7.0, dtype)
    # the kernel takes the inverse's output x, the VJP's cache
    elementwise.actnorm_inverse_backward_numba(log_scale, actnorm.inverse(y), gx, gld, gy, g_log_scale, g_shift)
    ref_gy, ref_grads = actnorm.inverse_vjp(y, gx, gld)
    close(gy, ref_gy, dtype, "gy")
    close(g_log_scale, ref_grads["log_scale"], dtype, "g_log_scale")     # written, not accumulated
    close(g_shift, ref_grads["shift"], dtype, "g_shift")

    lp = np.ones(n, dtype)
    elementwise.normal_log_prob_numba(y, lp)
    close(lp, 1.0 + MultivariateNormalDiag(np.zeros(d, dtype), np.ones(d, dtype)).log_prob(y), dtype, "log-prob")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip,decay", [(0.0, 0.0), (0.5, 0.01)])
def test_adam_twin_matches_the_optimizer(dtype, clip, decay):
    """Step by step, the compiled step on the flat vector and :class:`nflow_np.train.Adam` on the named parameters
    (the global norm, and the clipping, span them all)."""
    rng = np.random.default_rng(5)
    shapes = {"w": (3, 4), "b": (1,)}
    params = {k: rng.standard_normal(shape).astype(dtype) for k, shape in shapes.items()}
    grads = [{k: rng.standard_normal(shape).astype(dtype) for k, shape in shapes.items()} for _ in range(4)]
    theta, hyper = flat(params), np.array([1e-2, 0.9, 0.999, 1e-8, decay, clip, np.finfo(dtype).max])
    m, v, state, status = np.zeros_like(theta), np.zeros_like(theta), np.zeros(2, np.int64), np.ones(1, np.int64)
    opt = Adam(params.items(), lr=1e-2, weight_decay=decay, clip_norm=clip or None)
    for g in grads:
        norm = optim.adam_step_numba(theta, flat(g), m, v, hyper, state, status)
        assert status[0] == optim.ACCEPTED
        close(norm, opt.step(g), dtype, "norm")
        close(theta, flat(opt.params), dtype, "theta")
        close(m, flat(opt.m), dtype, "m")
        close(v, flat(opt.v), dtype, "v")
        assert tuple(state) == (opt.steps, 0) and hyper[0] == opt.lr


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_twin_rejects_non_finite_gradients_and_overflow(dtype):
    """What each step leaves is what ``fit``'s NumPy path leaves (Adam under its guard); the status codes, which
    only the compiled step reports, and the values are also checked by hand."""
    big = float(np.finfo(dtype).max)
    theta, m, v = np.ones(3, dtype), np.zeros(3, dtype), np.zeros(3, dtype)
    hyper = np.array([1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, big])
    state, status = np.zeros(2, np.int64), np.zeros(1, np.int64)

    def step(grad, expected_status):
        grad = np.array(grad, dtype)
        ref = guarded_adam_step(theta, grad, m, v, hyper, state)
        with np.errstate(over="ignore", invalid="ignore"):
            want_norm = global_norm({"p": grad})
        norm = optim.adam_step_numba(theta, grad.copy(), m, v, hyper, state, status)     # the copy is spent
        assert status[0] == expected_status
        for got, want, name in zip((theta, m, v), ref, ("theta", "m", "v")):
            close(got, want, dtype, name)
        np.testing.assert_array_equal(hyper, ref[3], err_msg="hyper")     # lr halved exactly, or kept
        np.testing.assert_array_equal(state, ref[4], err_msg="state")
        if np.isfinite(want_norm):
            close(norm, want_norm, dtype, "norm")
        else:
            assert not np.isfinite(norm)

    step([1.0, np.nan, 0.0], optim.REJECTED_GRADIENT)
    assert np.all(theta == 1) and np.all(m == 0) and np.all(v == 0)
    assert hyper[0] == 5e-3 and tuple(state) == (0, 1)
    step([np.inf, 0.0, 0.0], optim.REJECTED_GRADIENT)
    assert hyper[0] == 2.5e-3 and tuple(state) == (0, 2)
    theta[0] = 0.9 * big     # a step of size lr = big / 2 would overflow
    hyper[0] = 0.5 * big
    step([-1.0, 0.0, 0.0], optim.REJECTED_OVERFLOW)
    assert theta[0] == dtype(0.9 * big) and np.all(theta[1:] == 1) and np.isfinite(theta).all()
    # the moments and the step count moved (as the NumPy path's optimizer step did before the guard undid it)
    close(m, [-0.1, 0.0, 0.0], dtype)
    close(v, [1e-3, 0.0, 0.0], dtype)
    assert hyper[0] == 0.25 * big and tuple(state) == (1, 3)
    # an ordinary step after, from those moments
    theta[0], hyper[0] = 1.0, 1e-2
    step([0.5, -0.5, 0.25], optim.ACCEPTED)
    assert tuple(state) == (2, 3) and not np.all(theta == 1)


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
    "realnvp-rational": lambda dt: flows.RealNVP(4, n_layers=3, hidden=(8,), clamp_shape="rational",
                                                 log_scale_clamp=1.0, rng=0, dtype=dt),
    "maf-rational": lambda dt: flows.MAF(3, n_layers=2, hidden=(7,), clamp_shape="rational", log_scale_clamp=1.0,
                                         rng=0, dtype=dt),
    "realnvp-tanh": lambda dt: flows.RealNVP(3, n_layers=2, hidden=(8,), clamp_shape="tanh", log_scale_clamp=1.0,
                                             rng=0, dtype=dt),
    "nice": lambda dt: flows.NICE(3, hidden=(6,), activation="tanh", rng=0, dtype=dt),
    "maf": lambda dt: flows.MAF(5, n_layers=3, hidden=(9, 11), rng=0, dtype=dt),
    "maf-1d": lambda dt: flows.MAF(1, n_layers=2, hidden=(4,), act_norm=True, rng=0, dtype=dt),
    "maf-linear": lambda dt: flows.MAF(4, n_layers=2, hidden=(), rng=0, dtype=dt),
    "realnvp-bn": lambda dt: flows.RealNVP(3, n_layers=3, hidden=(6,), batch_norm=True, rng=0, dtype=dt),
    "maf-bn": lambda dt: flows.MAF(4, n_layers=2, hidden=(5,), batch_norm=True, rng=0, dtype=dt),
    "nsf": lambda dt: flows.NSF(4, n_layers=3, bins=6, bound=3.0, hidden=(9,), permute="random", act_norm=True,
                                activation="tanh", rng=0, dtype=dt),
    "nsf-ar": lambda dt: flows.NSF(3, n_layers=2, bins=4, bound=3.0, hidden=(8, 5), autoregressive=True,
                                   batch_norm=True, activation="elu", rng=0, dtype=dt),
    "naf": lambda dt: flows.NAF(3, n_layers=2, hidden=(7,), sigmoid_units=3, activation="tanh", rng=0, dtype=dt),
    "nsf-softplus": lambda dt: flows.NSF(4, n_layers=2, bins=5, bound=3.0, hidden=(9,), parameterization="softplus",
                                        rng=0, dtype=dt),
    "nsf-ar-softplus": lambda dt: flows.NSF(3, n_layers=2, bins=4, bound=3.0, hidden=(8,), autoregressive=True,
                                           parameterization="softplus", rng=0, dtype=dt),
    # the frames with the transforms no ready-made flow uses
    "coupling-sigmoidal": lambda dt: frame_flow("coupling", "sigmoidal", 4, dt),
    "coupling-sinh": lambda dt: frame_flow("coupling", "sinh_arcsinh", 5, dt),
    "ar-sinh": lambda dt: frame_flow("autoregressive", "sinh_arcsinh", 4, dt),
    "ar-additive": lambda dt: frame_flow("autoregressive", "additive", 3, dt),
    "coupling-spline-by-parameter": lambda dt: frame_flow("coupling", "spline-by-parameter", 4, dt),
}


def frame_flow(frame, transform, d, dtype):
    """Two layers of ``frame`` with ``transform``, reversed in between, over a standard normal; the networks
    start as the identity and ``perturbed`` moves them a set distance from there."""
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
            layers.append(Coupling(alternating_mask(d, i % 2), made, (7,), rng=i, dtype=dtype, init="identity"))
        else:
            layers.append(Autoregressive(d, made, (7, 5), activation="tanh", rng=i, dtype=dtype, init="identity"))
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


@pytest.mark.parametrize("kind", ["realnvp-odd", "maf", "nice", "realnvp-bn", "maf-bn", "nsf", "nsf-ar", "naf",
                                  "nsf-softplus", "nsf-ar-softplus"])
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
    # the compiled affine steps use vmath's exp and tanh (within 2 ulp, libm's within 1): over 3 epochs the running
    # statistics drift apart by about 1e-9 relative
    np.testing.assert_allclose(b_got, b_ref, rtol=1e-8, atol=1e-12)
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
    """The BatchNorm kernels against the :class:`~nflow_np.bijectors.BatchNorm` bijector's passes: training mode
    (batch statistics, the running ones moved) with ``batch``, eval mode without."""
    rng = np.random.default_rng(n * 10 + d)
    y = (rng.standard_normal((n, d)) * 2 + 1).astype(dtype)
    log_gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    stats = np.concatenate([rng.standard_normal(d), rng.uniform(0.5, 2, d), [0.1]]).astype(dtype)
    eps = 1e-5

    s, x, ld = stats.copy(), np.zeros((n, d), dtype), np.ones(n, dtype)
    normalization.batchnorm_inverse_numba(log_gamma, beta, s, eps, batch, y, x, ld)
    bn = reference_batchnorm(log_gamma, beta, stats, eps, batch)
    ref_x, ref_ld = bn.inverse_and_log_det(y)
    close(x, ref_x, dtype, "inverse")
    close(ld, 1.0 + ref_ld, dtype, "inverse log-det")
    close(s[:d], bn.running_mean, dtype, "running mean")
    close(s[d:2 * d], bn.running_var, dtype, "running var")
    assert s[2 * d] == stats[2 * d]
    if batch:
        assert not np.allclose(s[:2 * d], stats[:2 * d])
    else:
        np.testing.assert_array_equal(s, stats)

    out, ld = np.zeros((n, d), dtype), np.ones(n, dtype)
    normalization.batchnorm_forward_numba(log_gamma, beta, stats, eps, y, out, ld)
    ref_y, ref_ld = reference_batchnorm(log_gamma, beta, stats, eps, batch).forward_and_log_det(y)
    close(out, ref_y, dtype, "forward")
    close(ld, 1.0 + ref_ld, dtype, "forward log-det")

    gx, gld = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal(n).astype(dtype)
    gy, g_log_gamma, g_beta = np.zeros((n, d), dtype), np.full(d, 7.0, dtype), np.full(d, 7.0, dtype)
    normalization.batchnorm_inverse_backward_numba(log_gamma, stats, eps, batch, y, gx, gld, gy, g_log_gamma, g_beta)
    ref_gy, ref_grads = reference_batchnorm(log_gamma, beta, stats, eps, batch).inverse_vjp(y, gx, gld)
    close(gy, ref_gy, dtype, "gy")
    close(g_log_gamma, ref_grads["log_gamma"], dtype, "g_log_gamma")
    close(g_beta, ref_grads["beta"], dtype, "g_beta")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden, by_unit, trains_by_unit", [((8, 8), True, True), ((3,), True, True),
                                                            ((24, 24), True, False), ((40, 40), False, False)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
def test_small_networks_run_by_unit_as_the_reference_does(hidden, by_unit, trains_by_unit, activation, dtype):
    """Scoring and sampling run a small plain network by unit (every product down the rows) and a larger one by
    row, and so does training with its own, smaller, bound (its backward keeps the forward's layout); all match
    the NumPy passes, with and without a context: densities, samples, the NLL and its gradient."""
    from nflow_np.kernels import frames
    widths = np.array([2, *hidden, 4], np.int64)
    assert frames._small_network(widths, mlp.SMALL_NETWORK) == by_unit
    assert frames._small_network(widths, mlp.SMALL_TRAINING_NETWORK) == trains_by_unit
    rng = np.random.default_rng(5)
    for context in (0, 3):
        flow = perturbed(flows.RealNVP(4, n_layers=3, hidden=hidden, activation=activation, context=context,
                                       rng=1, dtype=dtype))
        x = rng.standard_normal((300, 4)).astype(dtype)
        c = rng.standard_normal((300, context)).astype(dtype) if context else None
        ref = flow.log_prob(x, context=c, backend="numpy")
        got = flow.log_prob(x, context=c, backend="numba")
        np.testing.assert_allclose(got, ref, **tol(dtype))
        s_ref, lp_ref = flow.sample_and_log_prob(300, context=c, rng=3, backend="numpy")
        s_got, lp_got = flow.sample_and_log_prob(300, context=c, rng=3, backend="numba")
        np.testing.assert_allclose(s_got, s_ref, **tol(dtype))
        np.testing.assert_allclose(lp_got, lp_ref, **tol(dtype))
        loss, grads = value_and_grad(flow, x, backend="numba", context=c)
        loss_ref, grads_ref = value_and_grad(flow, x, backend="numpy", context=c)
        np.testing.assert_allclose(loss, loss_ref, **tol(dtype))
        for key in grads_ref:
            close(grads[key], grads_ref[key], dtype, err_msg=key)
        np.testing.assert_allclose(loss, -got.astype(np.float64).mean(), **tol(dtype))
