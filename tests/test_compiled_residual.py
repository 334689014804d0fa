"""Residual conditioners on the compiled backend: the kernels of :mod:`nflow_np.kernels.residual` against
:class:`nflow_np.nn.ResidualMLP` / :class:`nflow_np.nn.ResidualMADE`, then whole flows with ``conditioner="resnet"``
(log_prob, sampling, NLL gradients, fit) on ``backend="numba"`` against ``backend="numpy"``."""

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.bijectors import AffineCoupling, Chain, MaskedAutoregressive, Reverse, SplineAutoregressive, \
    SplineCoupling
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
from nflow_np.kernels import plan, residual
from nflow_np.kernels.backend import load_numba
from nflow_np.kernels.mlp import ACTIVATION_CODES, hidden_size
from nflow_np.nn import MLP, ResidualMADE, ResidualMLP
from nflow_np.train import fit, value_and_grad

DTYPES = [np.float64, np.float32]


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def close(got, ref, dtype, err_msg=""):
    t = tol(dtype)
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"] * scale, err_msg=err_msg)


def perturbed(obj, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, p in obj.parameters():
        p[...] += (scale * rng.standard_normal(p.shape)).astype(p.dtype)
    for key, mask in getattr(obj, "masks", {}).items():
        obj.params[key] *= mask
    return obj


# ---------------------------------------------------------------- the network kernels

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, width, blocks, rows, activation", [
    ("mlp", 5, 2, 7, "relu"), ("mlp", 3, 0, 1, "tanh"), ("mlp", 40, 1, 64, "elu"),    # 64 x 40 x 40: BLAS products
    ("made", 6, 3, 5, "tanh"), ("made", 33, 2, 50, "relu")])
def test_network_kernels_match_the_residual_networks(kind, width, blocks, rows, activation, dtype):
    rng = np.random.default_rng(3)
    if kind == "mlp":
        net = ResidualMLP(4, 3, width, blocks, activation, rng=rng, dtype=dtype, context_features=2)
    else:
        net = ResidualMADE(4, width, blocks, 2, activation, order=[2, 0, 3, 1], rng=rng, dtype=dtype)
    perturbed(net)
    spec = net.lower()
    assert spec.residual and len(spec.widths) == 2 * blocks + 3
    theta = np.concatenate([spec.params[k].ravel() for k in spec.keys])
    if spec.masks is not None:       # the program multiplies the masks in; here the weights are stored masked
        for key, mask in zip(spec.keys[::2], spec.masks):
            assert np.all(spec.params[key][mask == 0] == 0)
    theta = np.concatenate([np.zeros(3, dtype), theta]).astype(dtype)    # an offset into theta
    widths = np.array(spec.widths, dtype=np.int64)
    act = ACTIVATION_CODES[activation] + residual.RESIDUAL
    inp = rng.standard_normal((rows, widths[0])).astype(dtype)
    hid = np.full(rows * hidden_size(widths), np.nan, dtype)
    out = np.empty((rows, widths[-1]), dtype)
    residual.network_forward_numba(theta, 3, widths, act, inp, hid, out)
    x, c = inp[:, :4], (inp[:, 4:] if net.context_features else None)
    ref, cache = net.forward_with_cache(x, c) if c is not None else net.forward_with_cache(x)
    close(out, ref, dtype, "forward")
    gout = rng.standard_normal(out.shape).astype(dtype)
    gin = np.empty_like(inp)
    gtheta = np.full_like(theta, np.nan)
    d1 = np.full(rows * width, np.nan, dtype)
    d2 = np.full(rows * width, np.nan, dtype)
    residual.network_backward_numba(theta, 3, widths, act, inp, hid, gout, gin, gtheta, d1, d2)
    back = net.backward(cache, gout)
    grads = back[-1]
    close(gin[:, :4], back[0], dtype, "grad_x")
    if c is not None:
        close(gin[:, 4:], back[1], dtype, "grad_context")
    p = 3
    for key in spec.keys:
        size = spec.params[key].size
        got = gtheta[p:p + size].reshape(spec.params[key].shape)
        if spec.masks is not None and key in net.masks:
            got = got * net.masks[key]
        close(got, grads[key], dtype, key)
        p += size


def test_plain_mlps_keep_their_codes_and_layout():
    spec = MLP(3, 2, (4, 5), "tanh", rng=0).lower()
    assert not spec.residual and spec.keys == ("w0", "b0", "w1", "b1", "w2", "b2")
    assert plan.network_code(spec) == ACTIVATION_CODES["tanh"] < residual.RESIDUAL
    rspec = ResidualMLP(3, 2, 4, 2, "tanh", rng=0).lower()
    assert plan.network_code(rspec) == ACTIVATION_CODES["tanh"] + residual.RESIDUAL
    assert rspec.keys[:4] == ("in_w", "in_b", "block0_w0", "block0_b0") and rspec.keys[-1] == "out_b"


# ---------------------------------------------------------------- whole flows

def chain_flow(kind, dtype):
    d = 3
    layers = []
    for i in range(2):
        if kind == "AffineCoupling":
            layers.append(AffineCoupling([i % 2 == 0, True, False], (6, 6), "tanh", conditioner="resnet", rng=i,
                                         dtype=dtype))
        elif kind == "SplineCoupling":
            layers.append(SplineCoupling([i % 2 == 0, False, True], (5,), "relu", bins=4, bound=2.0,
                                         conditioner="resnet", rng=i, dtype=dtype))
        elif kind == "MaskedAutoregressive":
            layers.append(MaskedAutoregressive(d, (7, 7), "elu", conditioner="resnet", rng=i, dtype=dtype))
        else:
            layers.append(SplineAutoregressive(d, (6,), "tanh", bins=3, bound=2.0, conditioner="resnet", rng=i,
                                               dtype=dtype, order=[2, 0, 1]))
        layers.append(Reverse())
    base = MultivariateNormalDiag(np.zeros(d, dtype), np.ones(d, dtype))
    return TransformedDistribution(base, Chain(layers))


KINDS = ["AffineCoupling", "SplineCoupling", "MaskedAutoregressive", "SplineAutoregressive"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_residual_flows_agree_across_backends(kind, dtype):
    flow = perturbed(chain_flow(kind, dtype))
    assert plan.supports(flow) == (True, "")
    rng = np.random.default_rng(2)
    x = (1.5 * rng.standard_normal((2, 301, 3))).astype(dtype)
    ref = flow.log_prob(x, backend="numpy")
    got = flow.log_prob(x, backend="numba")
    assert got.dtype == dtype
    close(got, ref, dtype, "log_prob")
    for shape in [(), (3, 5), 300]:
        s_ref, lp_ref = flow.sample_and_log_prob(shape, rng=7, backend="numpy")
        s_got, lp_got = flow.sample_and_log_prob(shape, rng=7, backend="numba")
        close(s_got, s_ref, dtype, "sample")
        close(lp_got, lp_ref, dtype, "sample log_prob")
    loss_ref, g_ref = value_and_grad(flow, x[0], backend="numpy")
    loss_got, g_got = value_and_grad(flow, x[0], backend="numba")
    assert set(g_got) == set(g_ref)
    close(loss_got, loss_ref, dtype, "loss")
    for key in g_ref:
        assert g_got[key].dtype == dtype
        close(g_got[key], g_ref[key], dtype, key)


CONDITIONAL = {
    "AffineCoupling": lambda dt: flows.RealNVP(3, 2, (6, 6), "tanh", context=2, conditioner="resnet", rng=0, dtype=dt),
    "SplineCoupling": lambda dt: flows.NSF(3, 2, bins=4, bound=2.0, hidden=(5,), context=2, conditioner="resnet",
                                           rng=0, dtype=dt),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(CONDITIONAL))
def test_conditional_residual_couplings_agree_across_backends(kind, dtype):
    flow = perturbed(CONDITIONAL[kind](dtype))
    assert plan.supports(flow) == (True, "")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 3)).astype(dtype)
    c = rng.standard_normal((40, 2)).astype(dtype)
    close(flow.log_prob(x, context=c, backend="numba"), flow.log_prob(x, context=c, backend="numpy"), dtype)
    close(flow.sample(40, rng=3, context=c, backend="numba"), flow.sample(40, rng=3, context=c, backend="numpy"),
          dtype)
    loss_ref, g_ref = value_and_grad(flow, x, context=c, backend="numpy")
    loss_got, g_got = value_and_grad(flow, x, context=c, backend="numba")
    close(loss_got, loss_ref, dtype)
    for key in g_ref:
        close(g_got[key], g_ref[key], dtype, key)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS + ["conditional"])
def test_residual_fit_takes_the_same_steps_on_both_backends(kind, dtype):
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((200, 3)) * [1.0, 2.0, 0.5] + 0.3).astype(dtype)
    context = rng.standard_normal((200, 2)).astype(dtype) if kind == "conditional" else None
    runs = {}
    for backend in ("numpy", "numba"):
        flow = (CONDITIONAL["SplineCoupling"](dtype) if kind == "conditional" else chain_flow(kind, dtype))
        history = fit(flow, data, context=context, epochs=2, batch_size=64, lr=3e-3, validation_split=0.2, rng=0,
                      backend=backend)
        runs[backend] = history, np.concatenate([p.ravel() for _, p in flow.parameters()])
    (h_ref, p_ref), (h_got, p_got) = runs["numpy"], runs["numba"]
    assert h_got.steps == h_ref.steps and h_got.rejected_steps == h_ref.rejected_steps == 0
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(h_got.train_loss, h_ref.train_loss, rtol=rtol)
    np.testing.assert_allclose(h_got.val_loss, h_ref.val_loss, rtol=rtol)
    np.testing.assert_allclose(p_got, p_ref, rtol=1e-7 if dtype == np.float64 else 1e-3,
                               atol=1e-9 if dtype == np.float64 else 1e-4)


def test_conditional_residual_made_still_runs_the_numpy_passes():
    """A MADE with a context is not compiled (residual or not): its flow keeps the NumPy passes on every backend."""
    for flow in (flows.MAF(3, 2, (6,), context=2, conditioner="resnet", rng=0),
                 flows.MAF(3, 2, (6,), context=2, rng=0)):
        ok, reason = plan.supports(flow)
        assert not ok and "conditional MADE" in reason
        x, c = np.ones((2, 3)), np.ones((2, 2))
        np.testing.assert_array_equal(flow.log_prob(x, context=c, backend="numba"),
                                      flow.log_prob(x, context=c, backend="numpy"))
