"""Residual conditioners: ResidualMLP and ResidualMADE against finite differences, the residual MADE's
autoregressive property, the frames' conditioner="resnet", the compiled engine's fallback and the model file."""

import numpy as np
import pytest

from nflow_np import flows, io
from nflow_np.bijectors import AffineCoupling, Autoregressive, Coupling, MaskedAutoregressive, SplineCoupling
from nflow_np.bijectors.transforms import AffineTransform, SplineTransform
from nflow_np.kernels.plan import supports
from nflow_np.nn import ACTIVATIONS, MaskedMLP, ResidualMADE, ResidualMLP

from test_nn import _check_all_gradients, _made_jacobian_fd, _allowed, _perturb_params


def _made_perturbed(net, rng):
    # perturb, then re-mask the stored weights, so "masked entries stay 0" can be checked as well
    _perturb_params(net, rng)
    for key, mask in net.masks.items():
        net.params[key] *= mask
    return net


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("ctx", [0, 2])
@pytest.mark.parametrize("kind", ["mlp", "made"])
def test_backward_matches_finite_differences(kind, activation, ctx):
    rng = np.random.default_rng(1)
    if kind == "mlp":
        net = ResidualMLP(3, 4, 6, 2, activation, rng=rng, context_features=ctx)
    else:
        net = ResidualMADE(3, 6, 2, 2, activation, order=[2, 0, 1], rng=rng, context_features=ctx)
    _perturb_params(net, rng)
    x = rng.standard_normal((5, 3))
    c = rng.standard_normal((5, ctx)) if ctx else None
    _check_all_gradients(net, x, c, rng)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("d, order, width, blocks", [(1, None, 3, 1), (2, [1, 0], 4, 2), (5, None, 8, 1),
                                                     (5, [3, 0, 4, 1, 2], 4, 3), (5, [1, 4, 0, 2, 3], 9, 2)])
def test_residual_made_autoregressive_property(d, order, width, blocks, activation):
    rng = np.random.default_rng(5)
    net = _made_perturbed(ResidualMADE(d, width, blocks, 2, activation, order=order, rng=rng), rng)
    order = np.arange(d) if order is None else np.asarray(order)
    allowed = _allowed(order, 2)
    for _ in range(3):
        jac = _made_jacobian_fd(net, rng.standard_normal(d))
        # strictly triangular in the order: forbidden entries exactly zero, not merely small
        assert np.all(jac[~allowed] == 0.0)
        if width >= d - 1 and activation == "tanh":
            # every degree is present, so every allowed dependency is there
            assert np.all(jac[allowed] != 0.0)


def test_residual_made_context_reaches_every_output_and_masked_grads_are_zero():
    rng = np.random.default_rng(6)
    net = _made_perturbed(ResidualMADE(4, 5, 2, 3, "tanh", rng=rng, context_features=2), rng)
    x = rng.standard_normal((3, 4))
    c = rng.standard_normal((3, 2))
    out = net.forward(x, c)
    moved = net.forward(x, c + 0.1)
    assert np.all(out != moved), "a context change must reach every output, the first feature's included"
    _, cache = net.forward_with_cache(x, c)
    _, _, grads = net.backward(cache, rng.standard_normal(out.shape))
    for key, mask in net.masks.items():
        assert np.all(grads[key][mask == 0] == 0.0)


def test_float32_keeps_dtype_and_matches_float64():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3))
    for make in (lambda dt: ResidualMLP(3, 2, 5, 2, "silu", rng=3, dtype=dt),
                 lambda dt: ResidualMADE(3, 5, 2, 2, "elu", rng=3, dtype=dt)):
        n64, n32 = make(np.float64), make(np.float32)
        out32 = n32.forward(x.astype(np.float32))
        assert out32.dtype == np.float32 and all(p.dtype == np.float32 for _, p in n32.parameters())
        np.testing.assert_allclose(out32, n64.forward(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(TypeError):
            n32.forward(x)


def test_blocks_start_near_the_identity_and_zero_last():
    net = ResidualMLP(2, 3, 8, 3, rng=0)
    for k in range(3):
        assert np.abs(net.params[f"block{k}_w1"]).max() <= 1e-3 and not net.params[f"block{k}_b1"].any()
    zero = ResidualMADE(3, 4, 1, 2, rng=0, zero_last=True, context_features=2)
    assert np.all(zero.forward(np.ones((2, 3)), np.ones((2, 2))) == 0.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="width"):
        ResidualMLP(2, 2, 0)
    with pytest.raises(ValueError, match="blocks"):
        ResidualMADE(3, 4, -1)
    with pytest.raises(ValueError, match="activation"):
        ResidualMLP(2, 2, 4, 1, "gelu")
    with pytest.raises(ValueError, match="order"):
        ResidualMADE(3, 4, 1, order=[0, 0, 1])
    with pytest.raises(ValueError, match="conditioner"):
        AffineCoupling([True, False], conditioner="transformer")
    with pytest.raises(ValueError, match=r"\(width,\) \* blocks"):
        MaskedAutoregressive(3, (8, 4), conditioner="resnet")
    with pytest.raises(ValueError, match=r"\(width,\) \* blocks"):
        SplineCoupling([True, False], (), conditioner="resnet")


def test_frames_build_the_residual_networks():
    c = AffineCoupling([True, False, True], (6, 6, 6), conditioner="resnet", rng=0)
    assert isinstance(c.net, ResidualMLP) and (c.net.width, c.net.blocks) == (6, 3) and c.net.hidden == (6, 6, 6)
    a = Autoregressive(3, SplineTransform(bins=4), 7, conditioner="resnet", context=2, rng=0)
    assert isinstance(a.net, ResidualMADE) and a.net.blocks == 1 and a.net.context_features == 2
    assert isinstance(MaskedAutoregressive(3, (8,), rng=0).net, MaskedMLP)
    names = [n for n, _ in flows.NSF(3, 2, hidden=(8, 8), conditioner="resnet", rng=0).parameters()]
    assert "bijector.0.net.block1_w0" in names


def test_compiled_engine_runs_residual_conditioners():
    """Compiled (tests/test_compiled_residual.py holds them to the NumPy passes in detail)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 3))
    for flow in (flows.NSF(3, 2, hidden=(6, 6), conditioner="resnet", rng=0),
                 flows.MAF(3, 2, (6,), conditioner="resnet", rng=0),
                 flows.RealNVP(3, 2, (6,), conditioner="resnet", rng=0, permute="random")):
        assert supports(flow) == (True, "")
        np.testing.assert_allclose(flow.log_prob(x, backend="numba"), flow.log_prob(x, backend="numpy"), rtol=1e-10)
        np.testing.assert_allclose(flow.sample(4, rng=1, backend="numba"), flow.sample(4, rng=1, backend="numpy"),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: Coupling([True, False, False], AffineTransform(), (5, 5), "tanh", conditioner="resnet", rng=0, context=2),
    lambda: Autoregressive(3, SplineTransform(bins=3), (4,), "elu", order=[1, 2, 0], conditioner="resnet", rng=0),
    lambda: flows.IAF(3, 2, (5,), conditioner="resnet", rng=0),
    lambda: flows.NSF(3, 2, hidden=(5, 5), autoregressive=True, conditioner="resnet", rng=0, dtype=np.float32),
], ids=["Coupling", "Autoregressive", "IAF", "NSF-autoregressive-float32"])
def test_model_file_round_trip(make):
    obj = make()
    rng = np.random.default_rng(9)
    for _, p in obj.parameters():
        p += (0.1 * rng.standard_normal(p.shape)).astype(p.dtype)
    back = io.from_bytes(io.to_bytes(obj))
    dt = dict(obj.parameters())[next(iter(dict(obj.parameters())))].dtype
    x = rng.standard_normal((4, 3)).astype(dt)
    c = {"context": rng.standard_normal((4, 2)).astype(dt)} if obj.context_size else {}
    fn = "log_prob" if hasattr(obj, "log_prob") else "inverse"
    np.testing.assert_array_equal(getattr(back, fn)(x, **c), getattr(obj, fn)(x, **c))
    assert [n for n, _ in back.parameters()] == [n for n, _ in obj.parameters()]


@pytest.mark.parametrize("make", [
    lambda: AffineCoupling([True, False, True, False], (5, 5), "tanh", conditioner="resnet", context=2, rng=1),
    lambda: MaskedAutoregressive(4, (6,), "tanh", order=[2, 0, 3, 1], conditioner="resnet", context=2, rng=1),
], ids=["AffineCoupling", "MaskedAutoregressive"])
def test_conditional_residual_layers_pass_check_bijector(make):
    from nflow_np.testing import check_bijector
    rng = np.random.default_rng(10)
    layer = make()
    _perturb_params(layer, rng)
    x, c = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    report = check_bijector(layer, x, context=c)
    assert report["log_det_vs_jacobian"] < 1e-8
    assert "forward_vjp grad of the context vs finite differences" in report
