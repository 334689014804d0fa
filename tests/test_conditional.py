"""Conditional flows: every coupling and autoregressive layer, the ready-made flows, training with a context."""

import numpy as np
import pytest

import nflow_np as nf
from nflow_np import bijectors as nb
from nflow_np import datasets, flows
from nflow_np.bijectors.autoregressive import InverseAutoregressive, MaskedAutoregressive, SplineAutoregressive
from nflow_np.bijectors.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
from nflow_np.testing import check_bijector, check_gradients
from nflow_np.train import fit, fit_to_target, value_and_grad

C = 2   # context width in these tests


def _randomized(b, rng, scale=0.3):
    for _, array in b.parameters():
        array += (scale * rng.normal(size=array.shape)).astype(array.dtype)
    return b


LAYERS = {
    "AffineCoupling": lambda dt: AffineCoupling([True, False, True, False], (6,), "tanh", context=C, rng=1, dtype=dt),
    "AdditiveCoupling": lambda dt: AdditiveCoupling([True, False, False, True], (5,), "elu", context=C, rng=1,
                                                    dtype=dt),
    "SplineCoupling": lambda dt: SplineCoupling([False, True, True, False], (6,), "tanh", bins=5, bound=3.0,
                                                context=C, rng=1, dtype=dt),
    "MaskedAutoregressive": lambda dt: MaskedAutoregressive(4, (7,), "tanh", order=[2, 0, 3, 1], context=C, rng=1,
                                                            dtype=dt),
    "InverseAutoregressive": lambda dt: InverseAutoregressive(4, (6,), "tanh", context=C, rng=1, dtype=dt),
    # small: check_bijector's parameter stencils run the sequential sampling pass once per entry
    "SplineAutoregressive": lambda dt: SplineAutoregressive(4, (3,), "tanh", bins=3, bound=3.0, context=C, rng=1,
                                                            dtype=dt),
}


def _layer_cases():
    for name in sorted(LAYERS):
        for dtype, label in ((np.float64, "float64"), (np.float32, "float32")):
            # the autoregressive spline's sampling pass is sequential: its float32 twin runs with the slow tests
            marks = [pytest.mark.slow] if name == "SplineAutoregressive" and label == "float32" else []
            yield pytest.param(name, dtype, id=f"{name}-{label}", marks=marks)


@pytest.mark.parametrize("name, dtype", list(_layer_cases()))
def test_conditional_layer_passes_check_bijector(name, dtype):
    rng = np.random.default_rng(3)
    b = _randomized(LAYERS[name](dtype), rng)
    assert b.context_size == C
    x = rng.normal(size=(6, 4)).astype(dtype)
    context = rng.normal(size=(6, C)).astype(dtype)
    report = check_bijector(b, x, context=context)
    assert report["log_det_vs_jacobian"] < (1e-8 if dtype == np.float64 else 1e-2)
    assert "forward_vjp grad of the context vs finite differences" in report


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_context_changes_the_map_and_broadcasts(name):
    rng = np.random.default_rng(4)
    b = _randomized(LAYERS[name](np.float64), rng)
    x = rng.normal(size=(5, 4))
    row = rng.normal(size=C)
    y_one = b.forward(x, context=row)
    y_rows = b.forward(x, context=np.tile(row, (5, 1)))
    np.testing.assert_allclose(y_one, y_rows, rtol=1e-13, atol=1e-13)
    assert not np.allclose(b.forward(x, context=row + 1.0), y_one)
    grad_x, grads, grad_context = b.forward_vjp(x, np.ones_like(x), np.ones(5), context=row)
    assert grad_context.shape == (C,)
    _, _, grad_rows = b.forward_vjp(x, np.ones_like(x), np.ones(5), context=np.tile(row, (5, 1)))
    np.testing.assert_allclose(grad_context, grad_rows.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_chain_of_conditional_and_plain_layers():
    rng = np.random.default_rng(5)
    chain = nb.Chain([_randomized(LAYERS["AffineCoupling"](np.float64), rng), nb.Reverse(),
                      _randomized(LAYERS["SplineCoupling"](np.float64), rng), nb.Shift(np.ones(4))])
    assert chain.context_size == C
    x = rng.normal(size=(5, 4))
    check_bijector(chain, x, context=rng.normal(size=(5, C)))
    inverted = nb.Invert(chain)
    assert inverted.context_size == C
    check_bijector(inverted, chain.forward(x, context=np.zeros(C)), context=np.zeros((5, C)))


def test_context_errors_name_the_problem():
    b = LAYERS["AffineCoupling"](np.float64)
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="conditional on a context of size 2"):
        b.forward(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        b.forward(x, context=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not broadcast"):
        b.forward(x, context=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="context must be finite"):
        b.forward(x, context=np.array([np.nan, 0.0]))
    with pytest.raises(TypeError, match="float32"):
        b.forward(x, context=np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="unconditional"):
        nb.Shift(1.0).forward(x, context=np.zeros(2))
    with pytest.raises(ValueError, match="different sizes"):
        nb.Chain([b, AffineCoupling([True, False, True, False], (3,), context=3)])
    with pytest.raises(ValueError, match="non-negative int"):
        AffineCoupling([True, False], context=-1)


FLOWS = {
    "RealNVP": lambda: flows.RealNVP(3, n_layers=2, hidden=(6,), context=C, rng=0),
    "NICE": lambda: flows.NICE(3, n_layers=2, hidden=(6,), context=C, rng=0),
    "MAF": lambda: flows.MAF(3, n_layers=2, hidden=(6,), context=C, rng=0),
    "IAF": lambda: flows.IAF(3, n_layers=2, hidden=(6,), context=C, rng=0),
    "NSF": lambda: flows.NSF(3, n_layers=2, bins=4, hidden=(6,), context=C, rng=0),
    "NSF(autoregressive)": lambda: flows.NSF(3, n_layers=2, bins=4, hidden=(6,), autoregressive=True, context=C,
                                             rng=0),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_flow_api_and_gradients(name):
    rng = np.random.default_rng(6)
    flow = FLOWS[name]()
    for _, array in flow.bijector.parameters():
        array += 0.2 * rng.normal(size=array.shape)
    assert flow.context_size == C
    x = rng.normal(size=(5, 3))
    context = rng.normal(size=(5, C))
    lp = flow.log_prob(x, context=context)
    assert lp.shape == (5,) and np.all(np.isfinite(lp))
    np.testing.assert_allclose(flow.log_prob(x[:1], context=context[0]), lp[:1], rtol=1e-12)
    # one context row for all samples, one per sample, or one sample per row
    assert flow.sample(4, rng=0, context=context[0]).shape == (4, 3)
    assert flow.sample(5, rng=0, context=context).shape == (5, 3)
    assert flow.sample(rng=0, context=context).shape == (5, 3)
    samples, log_prob = flow.sample_and_log_prob(5, rng=1, context=context)
    np.testing.assert_allclose(log_prob, flow.log_prob(samples, context=context), rtol=1e-9, atol=1e-9)
    # both backends agree (the compiled program runs conditional couplings; conditional MADE layers take the
    # NumPy passes)
    np.testing.assert_allclose(flow.log_prob(x, context=context, backend="numba"), lp, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(flow.sample(5, rng=0, context=context, backend="numba"),
                               flow.sample(5, rng=0, context=context, backend="numpy"), rtol=1e-10, atol=1e-10)
    report = check_gradients(flow, x, context=context, max_entries=6)
    assert "reverse_kl" not in report
    with pytest.raises(ValueError, match="conditional"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="conditional"):
        value_and_grad(flow, x)


def test_unconditional_flow_refuses_a_context():
    flow = flows.RealNVP(2, n_layers=2, rng=0)
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(np.zeros((2, 2)), context=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="unconditional"):
        fit(flow, np.zeros((4, 2)), context=np.zeros((4, 1)), epochs=1)


def test_fit_learns_the_two_moons_conditioned_on_the_moon():
    x, labels = datasets.two_moons(3000, rng=0, return_labels=True)
    context = labels[:, None].astype(float)
    flow = flows.RealNVP(2, n_layers=4, hidden=(32, 32), context=1, rng=1)
    history = fit(flow, x, context=context, epochs=25, batch_size=128, lr=3e-3, rng=2, validation_split=0.1)
    assert history.val_loss[-1] < history.val_loss[0]
    test, test_labels = datasets.two_moons(1000, rng=9, return_labels=True)
    right = flow.log_prob(test, context=test_labels[:, None].astype(float))
    wrong = flow.log_prob(test, context=1.0 - test_labels[:, None].astype(float))
    # each moon is far more likely under its own label than under the other one
    assert np.mean(right) > np.mean(wrong) + 2.0
    samples = flow.sample(2000, rng=3, context=[0.0])
    # the upper moon (label 0) lies above the lower one on average
    lower = flow.sample(2000, rng=3, context=[1.0])
    assert samples[:, 1].mean() > lower[:, 1].mean() + 0.5


def test_fit_validation_context_and_errors():
    x, labels = datasets.two_moons(400, rng=0, return_labels=True)
    flow = flows.MAF(2, n_layers=2, hidden=(8,), context=1, rng=0)
    history = fit(flow, x[:300], context=labels[:300, None].astype(float), validation_data=x[300:],
                  validation_context=labels[300:, None].astype(float), epochs=2, batch_size=50)
    assert len(history.val_loss) == 2 and np.isfinite(history.val_loss).all()
    with pytest.raises(ValueError, match="pass context="):
        fit(flow, x, epochs=1)
    with pytest.raises(ValueError, match="validation_context"):
        fit(flow, x[:300], context=labels[:300, None].astype(float), validation_data=x[300:], epochs=1)
    with pytest.raises(ValueError, match="does not broadcast"):
        fit(flow, x, context=np.zeros((10, 1)), epochs=1)
    with pytest.raises(ValueError, match="conditional"):
        fit_to_target(flow, lambda p: -0.5 * (p * p).sum(axis=-1), steps=1)


@pytest.mark.parametrize("build", [
    lambda: flows.RealNVP(3, n_layers=3, hidden=(8,), act_norm=True, context=2, rng=0),
    lambda: flows.NSF(3, n_layers=2, bins=5, hidden=(8,), permute="random", context=2, rng=0),
], ids=["RealNVP", "NSF"])
def test_compiled_conditional_fit_takes_the_numpy_steps(build):
    from nflow_np.kernels.plan import supports

    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5]
    context = np.stack([x[:, 0] > 0, rng.normal(size=300)], axis=1).astype(float)
    flows_by_backend = {}
    for backend in ("numpy", "numba"):
        flow = build()
        assert supports(flow) == (True, "")
        history = fit(flow, x, context=context, epochs=3, batch_size=64, lr=1e-2, rng=1, backend=backend,
                      validation_split=0.2)
        flows_by_backend[backend] = (flow, history)
    (a, ha), (b, hb) = flows_by_backend["numpy"], flows_by_backend["numba"]
    np.testing.assert_allclose(hb.train_loss, ha.train_loss, rtol=1e-9)
    np.testing.assert_allclose(hb.val_loss, ha.val_loss, rtol=1e-9)
    for (name, pa), (_, pb) in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pb, pa, rtol=1e-8, atol=1e-9, err_msg=name)
