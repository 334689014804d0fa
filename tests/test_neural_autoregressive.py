"""NAF and BNAF beyond the shared bijector checks: their flows train, sample and refuse bad settings."""

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.bijectors import BlockNeuralAutoregressive
from nflow_np.train import fit


def _two_moons_like(n, rng):
    t = rng.uniform(0.0, np.pi, n)
    side = rng.integers(0, 2, n)
    x = np.stack([np.cos(t) + side * 1.0 - 0.5, np.sin(t) * (1 - 2 * side) + side * 0.5 - 0.25], axis=1)
    return x + 0.1 * rng.standard_normal((n, 2))


@pytest.mark.parametrize("make", [lambda: flows.NAF(2, n_layers=2, hidden=(16,), sigmoid_units=4, rng=0),
                                  lambda: flows.BNAF(2, n_layers=1, hidden_factor=4, hidden_layers=1, rng=0)],
                         ids=["NAF", "BNAF"])
def test_flows_learn_and_sample_what_they_learned(make):
    rng = np.random.default_rng(0)
    data = _two_moons_like(600, rng)
    flow = make()
    before = -flow.log_prob(data, backend="numpy").mean()
    history = fit(flow, data, epochs=15, batch_size=100, lr=1e-2, rng=0, backend="numpy")
    after = -flow.log_prob(data, backend="numpy").mean()
    assert after < before - 0.3 and history.rejected_steps == 0
    samples, log_prob = flow.sample_and_log_prob(200, rng=1, backend="numpy")
    assert samples.shape == (200, 2) and np.isfinite(samples).all()
    np.testing.assert_allclose(log_prob, flow.log_prob(samples, backend="numpy"), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bnaf_inverts_far_points_in_both_dtypes(dtype):
    """Far from the bulk the leaky tanh saturates to its leak; the bracketed solve still finds the point."""
    b = BlockNeuralAutoregressive(3, hidden_factor=4, hidden_layers=2, rng=1, dtype=dtype)
    y = np.array([[0.0, 1.0, -2.0], [5.0, -5.0, 8.0], [-12.0, 3.0, 0.5]], dtype=dtype)
    x, ld = b.inverse_and_log_det(y)
    assert np.isfinite(x).all() and np.isfinite(ld).all()
    back, back_ld = b.forward_and_log_det(x)
    np.testing.assert_allclose(back, y, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(back_ld, -ld, rtol=1e-4 if dtype == np.float32 else 1e-10)


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="sigmoid_units"):
        flows.NAF(2, sigmoid_units=0)
    with pytest.raises(ValueError, match="leak"):
        flows.BNAF(2, leak=0.0)
    with pytest.raises(ValueError, match="hidden_factor"):
        BlockNeuralAutoregressive(2, hidden_factor=0)
    with pytest.raises(ValueError, match="dim"):
        flows.BNAF(0)


@pytest.mark.parametrize("kwargs", [dict(conditioner="resnet", hidden=(8, 8), context=2), dict(embedding="mlp")],
                         ids=["resnet", "embedding"])
def test_a_conditional_naf_with_residual_conditioners_or_an_embedding_round_trips(kwargs, tmp_path):
    from nflow_np import io, nn
    if kwargs.get("embedding") == "mlp":
        kwargs = dict(embedding=nn.MLP(3, 4, (6,), rng=1))
    flow = flows.NAF(2, n_layers=2, sigmoid_units=3, rng=0, **kwargs)
    rng = np.random.default_rng(0)
    x, context = rng.normal(size=(7, 2)), rng.normal(size=(7, flow.context_size))
    lp = flow.log_prob(x, context=context)
    np.testing.assert_allclose(flow.log_prob(x, context=context, backend="numpy"), lp, rtol=1e-10, atol=1e-10)
    io.save(flow, tmp_path / "naf.npz")
    assert np.array_equal(io.load(tmp_path / "naf.npz").log_prob(x, context=context), lp)
    draws = flow.sample(7, context=context, rng=1)
    np.testing.assert_allclose(flow.log_prob(draws, context=context), flow.log_prob(draws, context=context,
                                                                                    backend="numpy"), atol=1e-8)
