"""nflow_np.nn: MLP and MADE against finite differences, dtypes, shapes and the autoregressive property."""

import numpy as np
import pytest

from nflow_np.nn import ACTIVATIONS, MLP, MaskedMLP

RTOL = 1e-6


# ---- helpers

def _call(net, x, c):
    return net.forward(x) if c is None else net.forward(x, c)


def _backward(net, x, c, g):
    """``(grad_x, grad_c or None, grads)`` whatever the network's context convention."""
    out, cache = net.forward_with_cache(x) if c is None else net.forward_with_cache(x, c)
    res = net.backward(cache, g)
    if c is None:
        assert len(res) == 2
        return out, res[0], None, res[1]
    assert len(res) == 3
    return out, res[0], res[1], res[2]


def _fd_grad(fn, arr, step=1e-6):
    """Central differences of the scalar ``fn()`` along every entry of ``arr`` (perturbed in place)."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        keep = flat[j]
        flat[j] = keep + step
        up = fn()
        flat[j] = keep - step
        down = fn()
        flat[j] = keep
        gflat[j] = (up - down) / (2.0 * step)
    return grad


def _assert_close(analytic, numeric, what):
    assert analytic.shape == numeric.shape, what
    scale = max(float(np.max(np.abs(numeric), initial=0.0)), 1e-8)
    err = float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale
    assert err < RTOL, f"{what}: relative error {err:.2e}"


def _check_all_gradients(net, x, c, rng):
    out = _call(net, x, c)
    g = rng.standard_normal(out.shape)
    _, gx, gc, grads = _backward(net, x, c, g)

    def loss():
        return float(np.sum(g * _call(net, x, c)))

    _assert_close(gx, _fd_grad(loss, x), "grad x")
    if c is not None:
        _assert_close(gc, _fd_grad(loss, c), "grad context")
    assert set(grads) == set(net.params)
    for name, p in net.parameters():
        assert grads[name].shape == p.shape and grads[name].dtype == p.dtype
        _assert_close(grads[name], _fd_grad(loss, p), f"grad {name}")


def _perturb_params(net, rng):
    # zero biases and a zeroed last layer would hide bugs; give every parameter a value
    for _, p in net.parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    if isinstance(net, MaskedMLP):
        for layer, mask in enumerate(net.masks):
            net.params[f"w{layer}"] *= mask


NETS = {
    "mlp": lambda act, ctx, rng: MLP(3, 2, (5, 4), act, rng=rng, context_features=ctx),
    "mlp-linear": lambda act, ctx, rng: MLP(3, 2, (), act, rng=rng, context_features=ctx),
    "made": lambda act, ctx, rng: MaskedMLP(4, (6, 5), 2, act, order=[2, 0, 3, 1], rng=rng,
                                            context_features=ctx),
    "made-1layer": lambda act, ctx, rng: MaskedMLP(3, (4,), 3, act, rng=rng, context_features=ctx),
    "made-linear": lambda act, ctx, rng: MaskedMLP(3, (), 2, act, rng=rng, context_features=ctx),
}


# ---- gradients

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("ctx", [0, 2])
def test_backward_matches_finite_differences(kind, activation, ctx):
    rng = np.random.default_rng(7)
    net = NETS[kind](activation, ctx, rng)
    _perturb_params(net, rng)
    x = rng.standard_normal((4, net.in_features))
    c = rng.standard_normal((4, ctx)) if ctx else None
    _check_all_gradients(net, x, c, rng)


def test_context_broadcasts_against_x():
    rng = np.random.default_rng(1)
    net = MLP(3, 2, (4,), "tanh", rng=rng, context_features=2)
    x = rng.standard_normal((2, 3, 3))
    c = rng.standard_normal((3, 2))  # one context per column, shared across the leading axis
    out = net.forward(x, c)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out, net.forward(x, np.broadcast_to(c, (2, 3, 2))))
    _check_all_gradients(net, x, c, rng)


# ---- dtypes

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["mlp", "made"])
def test_float32_keeps_dtype_and_matches_float64(kind, activation):
    nets = {}
    for dtype in (np.float64, np.float32):
        if kind == "mlp":
            nets[dtype] = MLP(3, 2, (16, 8), activation, rng=3, dtype=dtype, context_features=2)
        else:
            nets[dtype] = MaskedMLP(4, (16, 8), 2, activation, order=[1, 3, 0, 2], rng=3, dtype=dtype,
                                    context_features=2)
    rng = np.random.default_rng(0)
    for name, p in nets[np.float64].parameters():
        p += 0.1 * rng.standard_normal(p.shape)
        nets[np.float32].params[name][...] = p
    x = rng.standard_normal((5, nets[np.float64].in_features))
    c = rng.standard_normal((5, 2))
    g = rng.standard_normal((5, nets[np.float64].out_features))
    res = {}
    for dtype, net in nets.items():
        for _, p in net.parameters():
            assert p.dtype == dtype
        out, gx, gc, grads = _backward(net, x.astype(dtype), c.astype(dtype), g.astype(dtype))
        assert out.dtype == dtype and gx.dtype == dtype and gc.dtype == dtype
        assert net.forward(x.astype(dtype), c.astype(dtype)).dtype == dtype
        assert all(v.dtype == dtype for v in grads.values())
        res[dtype] = (out, gx, gc, grads)

    def close(a, b, what):
        err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
        assert err < 1e-4, f"{what}: float32 vs float64 relative error {err:.1e}"

    (o32, x32, c32, g32), (o64, x64, c64, g64) = res[np.float32], res[np.float64]
    close(o32, o64, "out")
    close(x32, x64, "grad x")
    close(c32, c64, "grad context")
    for name in g64:
        close(g32[name], g64[name], name)


def test_mixed_dtypes_are_refused():
    net32 = MLP(3, 2, (4,), rng=0, dtype=np.float32)
    with pytest.raises(TypeError, match="MLP.forward: x has dtype float64"):
        net32.forward(np.zeros((2, 3)))
    net = MaskedMLP(3, (4,), rng=0, context_features=1)
    with pytest.raises(TypeError, match="MaskedMLP.forward: context has dtype float32"):
        net.forward(np.zeros((2, 3)), np.zeros((2, 1), dtype=np.float32))
    out, cache = MLP(3, 2, (4,), rng=0).forward_with_cache(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="grad_out"):
        MLP(3, 2, (4,), rng=0).backward(cache, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(TypeError):
        MLP(3, 2, dtype=np.int64)


# ---- shapes

@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
@pytest.mark.parametrize("kind", ["mlp", "made"])
def test_batch_shapes(kind, batch):
    rng = np.random.default_rng(2)
    net = (MLP(3, 4, (8,), "silu", rng=rng, context_features=2) if kind == "mlp"
           else MaskedMLP(3, (8,), 2, "elu", rng=rng, context_features=2))
    x = rng.standard_normal(batch + (3,))
    c = rng.standard_normal(batch + (2,))
    out, gx, gc, grads = _backward(net, x, c, np.ones(batch + (net.out_features,)))
    assert out.shape == batch + (net.out_features,)
    assert gx.shape == x.shape and gc.shape == c.shape
    # the batch is a stack of independent rows: the flattened pass gives the same numbers
    flat = net.forward(x.reshape(-1, 3), c.reshape(-1, 2))
    np.testing.assert_allclose(out.reshape(-1, net.out_features), flat, rtol=1e-14, atol=1e-14)
    flat_grads = _backward(net, x.reshape(-1, 3), c.reshape(-1, 2), np.ones(flat.shape))[3]
    for name in grads:
        np.testing.assert_allclose(grads[name], flat_grads[name], rtol=1e-12, atol=1e-14)


def test_empty_batch():
    net = MLP(3, 2, (4,), rng=0)
    out, cache = net.forward_with_cache(np.zeros((0, 3)))
    gx, grads = net.backward(cache, np.zeros((0, 2)))
    assert out.shape == (0, 2) and gx.shape == (0, 3)
    assert all(not np.any(v) for v in grads.values())


def test_params_layout():
    net = MLP(3, 2, (5, 4), rng=0, context_features=1)
    assert {k: v.shape for k, v in net.parameters()} == {
        "w0": (4, 5), "b0": (5,), "w1": (5, 4), "b1": (4,), "w2": (4, 2), "b2": (2,)}
    assert all(np.any(net.params[b]) for b in ("b0", "b1", "b2"))          # the default "uniform" init
    assert not any(np.any(MLP(3, 2, (5, 4), rng=0, init="normal").params[b]) for b in ("b0", "b1", "b2"))
    assert {k: v.shape for k, v in MLP(3, 2, (), rng=0).parameters()} == {"w0": (3, 2), "b0": (2,)}
    made = MaskedMLP(4, (6,), 3, rng=0, context_features=2)
    assert {k: v.shape for k, v in made.parameters()} == {
        "w0": (6, 6), "b0": (6,), "w1": (6, 12), "b1": (12,), "wc": (2, 12)}
    assert [m.shape for m in made.masks] == [(6, 6), (6, 12)]
    assert made.in_features == 4 and made.out_features == 12
    # parameters() hands out the arrays themselves, so in-place updates reach the network
    for name, p in net.parameters():
        assert p is net.params[name]


def test_init_scales():
    # "normal": He for the rectifier family, Glorot for tanh, at a width where the sample std is tight
    w_relu = MLP(400, 300, (), "relu", rng=0, init="normal").params["w0"]
    w_tanh = MLP(400, 300, (), "tanh", rng=0, init="normal").params["w0"]
    assert abs(w_relu.std() / np.sqrt(2 / 400) - 1) < 0.02
    assert abs(w_tanh.std() / np.sqrt(2 / 700) - 1) < 0.02
    # "uniform" (the default): weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) whatever the activation
    for activation in ("relu", "tanh"):
        net = MLP(400, 300, (), activation, rng=0)
        for arr in (net.params["w0"], net.params["b0"]):
            assert np.abs(arr).max() <= 1 / np.sqrt(400)
            assert abs(arr.std() / np.sqrt(1 / (3 * 400)) - 1) < 0.1
    made = MaskedMLP(5, (40,), rng=0)
    assert np.array_equal(made.params["w0"] != 0, made.masks[0] != 0)      # masked entries stay zero
    with pytest.raises(ValueError, match="init must be one of"):
        MLP(3, 2, init="he")


@pytest.mark.parametrize("kind", ["mlp", "made", "made-ctx"])
def test_zero_last_outputs_exact_zero(kind):
    rng = np.random.default_rng(4)
    if kind == "mlp":
        net, c = MLP(3, 2, (8, 8), rng=rng, zero_last=True, context_features=1), rng.standard_normal((6, 1))
    elif kind == "made":
        net, c = MaskedMLP(3, (8, 8), rng=rng, zero_last=True), None
    else:
        net, c = MaskedMLP(3, (8, 8), rng=rng, zero_last=True, context_features=2), rng.standard_normal((6, 2))
    out = _call(net, rng.standard_normal((6, 3)), c)
    assert np.array_equal(out, np.zeros_like(out))
    # only the last layer is zero: the hidden layers are initialized, so training can move it
    assert np.any(net.params["w0"])


# ---- MADE

def _made_jacobian_fd(net, x, step=1e-3):
    """d out / d x by central differences on one point: shape (out_features, features)."""
    jac = np.zeros((net.out_features, net.features))
    for j in range(net.features):
        e = np.zeros(net.features)
        e[j] = step
        jac[:, j] = (net.forward(x + e) - net.forward(x - e)) / (2 * step)
    return jac


def _allowed(order, out_per_feature):
    """allowed[k * D + i, j] = order[j] < order[i]."""
    order = np.asarray(order)
    return np.tile(order[None, :] < order[:, None], (out_per_feature, 1))


ORDERS = {1: [None, [0]], 2: [None, [1, 0]], 5: [None, list(np.random.default_rng(11).permutation(5))]}
MADE_CASES = [(d, order, hidden) for d in (1, 2, 5) for order in ORDERS[d]
              for hidden in [(), (3,), (8,), (8, 7), (3, 3, 9)]]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("d, order, hidden", MADE_CASES)
def test_made_autoregressive_property(d, order, hidden, activation):
    rng = np.random.default_rng(5)
    net = MaskedMLP(d, hidden, 2, activation, order=order, rng=rng)
    _perturb_params(net, rng)
    order = np.arange(d) if order is None else np.asarray(order)
    allowed = _allowed(order, 2)
    # by the masks: an output can reach input j only through a path of ones
    reach = net.masks[0].T.copy()
    for mask in net.masks[1:]:
        reach = (mask.T @ reach > 0).astype(float)
    assert reach.shape == (2 * d, d)
    assert not np.any(reach[~allowed]), "the masks connect an output to a later input"
    if all(h >= d - 1 for h in hidden):
        # every degree is represented, so every allowed dependency has a path
        assert np.all(reach[allowed]), "the masks drop an allowed connection"
    # by finite differences: the forbidden entries are exactly zero, not merely small
    for _ in range(3):
        jac = _made_jacobian_fd(net, rng.standard_normal(d))
        assert np.all(jac[~allowed] == 0.0)
        if not hidden:
            assert np.all(jac[allowed] != 0.0)


def test_made_single_feature_outputs_are_the_biases():
    rng = np.random.default_rng(6)
    net = MaskedMLP(1, (4, 4), 3, rng=rng)
    _perturb_params(net, rng)
    out = net.forward(rng.standard_normal((7, 1)))
    np.testing.assert_array_equal(out, np.broadcast_to(net.params["b2"], (7, 3)))


def test_made_context_reaches_every_output():
    # the first feature in the order sees no hidden unit; the direct context path still reaches it
    rng = np.random.default_rng(8)
    net = MaskedMLP(3, (6, 6), 2, rng=rng, order=[2, 0, 1], context_features=2)
    _perturb_params(net, rng)
    x = rng.standard_normal(3)
    c = rng.standard_normal(2)
    for j in range(2):
        e = np.zeros(2)
        e[j] = 1e-3
        assert np.all(net.forward(x, c + e) != net.forward(x, c - e))


def test_made_masked_weights_get_zero_gradient_and_are_ignored():
    rng = np.random.default_rng(9)
    net = MaskedMLP(5, (4, 6), 2, "silu", order=[3, 1, 4, 0, 2], rng=rng, context_features=1)
    _perturb_params(net, rng)
    x, c = rng.standard_normal((10, 5)), rng.standard_normal((10, 1))
    out, gx, gc, grads = _backward(net, x, c, rng.standard_normal((10, 10)))
    for layer, mask in enumerate(net.masks):
        g = grads[f"w{layer}"]
        assert np.all(g[mask == 0] == 0.0)
        assert np.any(g[mask == 1] != 0.0)
        # garbage in a masked entry (a stray optimizer step) changes nothing
        net.params[f"w{layer}"][mask == 0] = 123.0
    np.testing.assert_array_equal(net.forward(x, c), out)


def test_made_degrees_and_masks():
    net = MaskedMLP(4, (5,), 1, order=[1, 3, 0, 2], rng=0)
    np.testing.assert_array_equal(net.degrees[0], [2, 4, 1, 3])
    np.testing.assert_array_equal(net.degrees[1], [1, 2, 3, 1, 2])
    np.testing.assert_array_equal(net.masks[0], net.degrees[0][:, None] <= net.degrees[1][None, :])
    np.testing.assert_array_equal(net.masks[1], net.degrees[1][:, None] < net.degrees[0][None, :])
    for m in net.masks:
        assert m.dtype == np.float64 and set(np.unique(m)) <= {0.0, 1.0}
    assert not any(k.startswith("mask") for k in net.params)


# ---- randomness

@pytest.mark.parametrize("cls", [MLP, MaskedMLP])
def test_rng_seeding_is_reproducible(cls):
    args = (3, 2) if cls is MLP else (3,)
    a = cls(*args, hidden=(5, 4), rng=42)
    b = cls(*args, hidden=(5, 4), rng=np.random.default_rng(42))
    c = cls(*args, hidden=(5, 4), rng=43)
    for name, p in a.parameters():
        np.testing.assert_array_equal(p, b.params[name])
    assert not np.array_equal(a.params["w0"], c.params["w0"])
    state = np.random.get_state()[1].copy()
    cls(*args, hidden=(5, 4), rng=0)
    assert np.array_equal(state, np.random.get_state()[1]), "touched the global random state"


# ---- bad input

@pytest.mark.parametrize("cls", [MLP, MaskedMLP])
def test_bad_inputs_raise(cls):
    net = MLP(3, 2, (4,), rng=0) if cls is MLP else MaskedMLP(3, (4,), rng=0)
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"{name}.forward: x must have shape \(\.\.\., 3\); got shape \(2, 4\)"):
        net.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=rf"{name}.forward_with_cache: x must have shape"):
        net.forward_with_cache(np.zeros(()))
    with pytest.raises(ValueError, match="finite"):
        net.forward(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(TypeError, match="expected real numbers"):
        net.forward(np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="takes no context"):
        net.forward(np.zeros(3), np.zeros(1))
    _, cache = net.forward_with_cache(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=rf"{name}.backward: grad_out must have the output's shape"):
        net.backward(cache, np.zeros((3, net.out_features)))
    # ints are numbers, not a dtype clash: they take the network's dtype
    assert net.forward(np.zeros(3, dtype=int)).dtype == np.float64


@pytest.mark.parametrize("cls", [MLP, MaskedMLP])
def test_missing_or_malformed_context_raises(cls):
    net = (MLP(3, 2, (4,), rng=0, context_features=2) if cls is MLP
           else MaskedMLP(3, (4,), rng=0, context_features=2))
    with pytest.raises(ValueError, match=r"context_features=2; pass context of shape \(\.\.\., 2\)"):
        net.forward(np.zeros(3))
    with pytest.raises(ValueError, match="context_features=2"):
        net.forward_with_cache(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        net.forward(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        net.forward(np.zeros((4, 3)), np.zeros((3, 2)))


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoid'; choose one of 'relu', 'tanh', 'elu', 'silu'"):
        MLP(3, 2, activation="sigmoid")
    with pytest.raises(ValueError, match="MaskedMLP: unknown activation"):
        MaskedMLP(3, activation="gelu")
    with pytest.raises(ValueError, match="hidden"):
        MLP(3, 2, hidden=(4, 0))
    with pytest.raises(ValueError, match="out_features"):
        MLP(3, 0)
    with pytest.raises(ValueError, match="features"):
        MaskedMLP(0)
    for bad in ([0, 0, 1], [0, 1], [1, 2, 3], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match="permutation of range"):
            MaskedMLP(3, order=bad)
    with pytest.raises(TypeError, match="rng"):
        MLP(3, 2, rng="seed")
