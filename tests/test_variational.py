"""Variational fits: the amortized (conditional) reverse KL and the forward/reverse KL mix of fit_to_target."""

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.train import fit_to_target, mixed_kl_and_grad, nll_and_grad, reverse_kl_and_grad, value_and_grad
from nflow_np.train.variational import _RowStream

# p(x | c) = N(x; c m, I) in two dimensions: log Z(c) = 0
SHIFT = np.array([1.0, -0.5])


def conditional_log_p(x, c):
    r = x - c[:, :1] * SHIFT
    return -0.5 * (r * r).sum(-1) - np.log(2 * np.pi)


def conditional_grad(x, c):
    return -(x - c[:, :1] * SHIFT)


# two well separated modes at (+-3, 0), each N(., 0.6^2 I), weight 1/2: log Z = 0
MODES = np.array([[3.0, 0.0], [-3.0, 0.0]])
SPREAD = 0.6


def bimodal_log_p(x):
    d = ((x[:, None, :] - MODES[None]) ** 2).sum(-1) / (2 * SPREAD ** 2)
    top = (-d).max(1)
    return top + np.log(np.exp(-d - top[:, None]).sum(1)) - np.log(2 * 2 * np.pi * SPREAD ** 2)


def bimodal_grad(x):
    d = ((x[:, None, :] - MODES[None]) ** 2).sum(-1) / (2 * SPREAD ** 2)
    r = np.exp(-d - (-d).max(1)[:, None])
    r /= r.sum(1, keepdims=True)
    return -(r[:, :, None] * (x[:, None, :] - MODES[None])).sum(1) / SPREAD ** 2


def bimodal_samples(n, seed):
    rng = np.random.default_rng(seed)
    return MODES[rng.integers(0, 2, n)] + SPREAD * rng.normal(size=(n, 2))


def _perturbed(flow, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, array in flow.parameters():
        array += scale * rng.normal(size=array.shape)
    return flow


def _finite_difference_check(flow, loss_fn, grads, entries=3, h=1e-6, rtol=1e-5, atol=1e-7):
    """Central differences of ``loss_fn()`` at a few entries of every parameter against ``grads``."""
    rng = np.random.default_rng(0)
    checked = 0
    for name, array in flow.parameters():
        flat = array.reshape(-1)
        for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
            keep = flat[i]
            flat[i] = keep + h
            up = loss_fn()
            flat[i] = keep - h
            down = loss_fn()
            flat[i] = keep
            numeric = (up - down) / (2 * h)
            assert abs(numeric - grads[name].reshape(-1)[i]) <= atol + rtol * abs(numeric), (name, i)
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("build", [
    lambda: flows.RealNVP(2, n_layers=2, hidden=(6,), activation="tanh", context=1, rng=0),
    lambda: flows.IAF(2, n_layers=2, hidden=(6,), activation="tanh", context=1, rng=0),
], ids=["RealNVP", "IAF"])
def test_conditional_reverse_kl_gradient_matches_finite_differences(build):
    flow = _perturbed(build())
    z = flow.distribution.sample(32, rng=1)
    c = np.random.default_rng(2).uniform(-2, 2, size=(32, 1))
    loss, grads = reverse_kl_and_grad(flow, conditional_log_p, None, z=z, context=c, target_grad=conditional_grad)
    _finite_difference_check(flow, lambda: reverse_kl_and_grad(flow, conditional_log_p, None, z=z, context=c,
                                                               target_grad=conditional_grad)[0], grads)
    # without target_grad the target's gradient comes from finite differences, with the context held fixed
    loss_fd, numeric = reverse_kl_and_grad(flow, conditional_log_p, None, z=z, context=c)
    assert loss_fd == loss
    for k in grads:
        np.testing.assert_allclose(numeric[k], grads[k], rtol=1e-6, atol=1e-9)
    # one context row for all samples is that row repeated
    one, one_grads = reverse_kl_and_grad(flow, conditional_log_p, None, z=z, context=c[0],
                                         target_grad=conditional_grad)
    same, same_grads = reverse_kl_and_grad(flow, conditional_log_p, None, z=z, context=np.repeat(c[:1], 32, 0),
                                           target_grad=conditional_grad)
    assert one == same and all(np.array_equal(one_grads[k], same_grads[k]) for k in one_grads)


def test_amortized_fit_reaches_a_small_reverse_kl_at_held_out_contexts():
    rng = np.random.default_rng(0)
    train = rng.uniform(-2, 2, size=(256, 1))
    flow = flows.RealNVP(2, n_layers=2, hidden=(16,), context=1, rng=0)
    history = fit_to_target(flow, conditional_log_p, grad_fn=conditional_grad, context=train, steps=400,
                            n_samples=64, lr=5e-3, rng=1)
    assert history.rejected_steps == 0 and history.train_loss[-1] < 0.05 < history.train_loss[0]
    for c in np.linspace(-1.9, 1.9, 5):                  # none of them a training context
        row = np.array([c])
        x, log_q = flow.sample_and_log_prob(4000, rng=4, context=row)
        kl = np.mean(log_q - conditional_log_p(x, np.broadcast_to(row, (4000, 1))))
        assert 0.0 <= kl < 0.05, (c, kl)                 # log Z(c) = 0: the reverse KL itself
        assert np.allclose(x.mean(0), c * SHIFT, atol=0.2)


def test_contexts_are_drawn_in_passes_of_random_permutations():
    contexts = np.arange(8.0)[:, None]
    seen = []

    def target(x, c):
        seen.append(c[:, 0].copy())
        return -0.5 * (x * x).sum(-1)

    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), context=1, rng=0)
    fit_to_target(flow, target, grad_fn=lambda x, c: -x, context=contexts, steps=6, n_samples=4, lr=1e-3, rng=3)
    rows = np.concatenate(seen)
    for start in (0, 8, 16):                              # each pass of 8 rows is a permutation
        assert sorted(rows[start:start + 8]) == list(range(8))
    # the documented scheme: the permutations come from rng before each step's base draws
    rng = np.random.default_rng(3)
    expected = []
    order = rng.permutation(8)
    for step in range(6):
        part = order[(step % 2) * 4:(step % 2) * 4 + 4]
        expected.append(part)
        flow.distribution.sample(4, rng)                  # the step's base points
        if step % 2 == 1:
            order = rng.permutation(8)
    assert np.array_equal(rows, np.concatenate(expected))


def test_row_stream_crosses_permutations():
    stream = _RowStream(5, np.random.default_rng(0))
    picks = np.concatenate([stream.take(3) for _ in range(5)])
    assert all(sorted(picks[i:i + 5]) == list(range(5)) for i in (0, 5, 10))
    assert len(stream.take(12)) == 12


def test_a_single_context_row_fits_one_conditional_target():
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), context=1, rng=0)
    fit_to_target(flow, conditional_log_p, grad_fn=conditional_grad, context=[1.5], steps=200, n_samples=64,
                  lr=1e-2, rng=0)
    x = flow.sample(4000, rng=1, context=[1.5])
    assert np.allclose(x.mean(0), 1.5 * SHIFT, atol=0.1)


def test_bad_contexts_and_weights_are_refused():
    conditional = flows.RealNVP(2, n_layers=2, hidden=(4,), context=1, rng=0)
    plain = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    target = lambda x, c=None: -0.5 * (x * x).sum(-1)      # noqa: E731
    with pytest.raises(ValueError, match=r"conditional \(context size 1\); pass context="):
        fit_to_target(conditional, target, steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        fit_to_target(plain, target, context=np.zeros((4, 1)), steps=1)
    with pytest.raises(ValueError, match=r"context must have shape \(m, 1\)"):
        fit_to_target(conditional, target, context=np.zeros((4, 2)), steps=1)
    with pytest.raises(ValueError, match="context must be finite"):
        fit_to_target(conditional, target, context=[[np.nan]], steps=1)
    with pytest.raises(ValueError, match="conditional"):
        reverse_kl_and_grad(conditional, target, 4, rng=0)
    with pytest.raises(ValueError, match="unconditional"):
        reverse_kl_and_grad(plain, target, 4, rng=0, context=np.zeros(1))
    x = bimodal_samples(20, 0)
    with pytest.raises(ValueError, match="without forward_weight"):
        fit_to_target(plain, target, samples=x, steps=1)
    with pytest.raises(ValueError, match="needs samples"):
        fit_to_target(plain, target, forward_weight=0.5, steps=1)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match=r"forward_weight must be a number in \[0, 1\]"):
            fit_to_target(plain, target, samples=x, forward_weight=bad, steps=1)
    with pytest.raises(ValueError, match="samples_context"):
        fit_to_target(conditional, target, context=[0.0], samples=x, forward_weight=0.5, steps=1)
    with pytest.raises(ValueError, match="one row per sample"):
        fit_to_target(conditional, target, context=[0.0], samples=x, samples_context=np.zeros((3, 1)),
                      forward_weight=0.5, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        fit_to_target(plain, target, samples=x, forward_weight=0.5, batch_size=-1, steps=1)


def test_mixed_gradient_is_the_weighted_sum_and_matches_finite_differences():
    flow = _perturbed(flows.RealNVP(2, n_layers=2, hidden=(6,), activation="tanh", rng=0), scale=0.2)
    z = flow.distribution.sample(32, rng=1)
    x = bimodal_samples(24, 2)
    beta = 0.3

    def mixed():
        return mixed_kl_and_grad(flow, bimodal_log_p, x, None, beta, z=z, target_grad=bimodal_grad,
                                 backend="numpy")

    loss, grads = mixed()
    nll, nll_grads = nll_and_grad(flow, x, backend="numpy")
    rkl, rkl_grads = reverse_kl_and_grad(flow, bimodal_log_p, None, z=z, target_grad=bimodal_grad)
    assert loss == pytest.approx(beta * nll + (1 - beta) * rkl, rel=1e-14)
    assert set(grads) == set(nll_grads) == set(rkl_grads)
    for k in grads:
        np.testing.assert_allclose(grads[k], beta * nll_grads[k] + (1 - beta) * rkl_grads[k], rtol=1e-13, atol=1e-15)
    _finite_difference_check(flow, lambda: mixed()[0], grads)
    # the ends of the mix are the two losses themselves
    assert mixed_kl_and_grad(flow, bimodal_log_p, x, None, 1.0, z=z, backend="numpy")[0] == nll
    assert mixed_kl_and_grad(flow, bimodal_log_p, None, None, 0.0, z=z, target_grad=bimodal_grad)[0] == rkl
    via = value_and_grad(flow, x, loss="mixed_kl", target_log_prob=bimodal_log_p, n_samples=None,
                         forward_weight=beta, z=z, target_grad=bimodal_grad, backend="numpy")
    assert via[0] == loss


def test_conditional_mixed_gradient_matches_finite_differences():
    flow = _perturbed(flows.RealNVP(2, n_layers=2, hidden=(6,), activation="tanh", context=1, rng=0), scale=0.2)
    z = flow.distribution.sample(16, rng=1)
    c = np.random.default_rng(2).uniform(-1, 1, size=(16, 1))
    data_c = np.random.default_rng(3).uniform(-1, 1, size=(20, 1))
    x = data_c * SHIFT + np.random.default_rng(4).normal(size=(20, 2))

    def mixed():
        return mixed_kl_and_grad(flow, conditional_log_p, x, None, 0.6, z=z, context=c, samples_context=data_c,
                                 target_grad=conditional_grad, backend="numpy")

    _finite_difference_check(flow, lambda: mixed()[0], mixed()[1])


@pytest.mark.parametrize("seed", [2, 4])
def test_the_mix_covers_both_modes_where_the_reverse_kl_alone_seeks_one(seed):
    x = bimodal_samples(400, 5)
    share = {}
    for beta in (0.0, 0.5):
        flow = flows.RealNVP(2, n_layers=3, hidden=(16,), rng=seed)
        extra = {} if beta == 0.0 else {"samples": x, "forward_weight": beta}
        fit_to_target(flow, bimodal_log_p, grad_fn=bimodal_grad, steps=250, n_samples=64, lr=1e-2, rng=seed,
                      backend="numpy", **extra)
        right = (flow.sample(4000, rng=9)[:, 0] > 0).mean()
        share[beta] = min(right, 1.0 - right)             # the share of the less visited mode
    assert share[0.0] < 0.02                              # the reverse KL alone: one mode
    assert share[0.5] > 0.25          # with the samples' forward KL: both (0.28-0.47 over seeds 0-7)


def test_a_zero_forward_weight_is_the_plain_reverse_kl_fit():
    runs = []
    for extra in ({}, {"samples": bimodal_samples(50, 0), "forward_weight": 0.0}):
        flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
        history = fit_to_target(flow, bimodal_log_p, grad_fn=bimodal_grad, steps=30, n_samples=16, lr=1e-2,
                                rng=0, log_every=10, **extra)
        runs.append((history.train_loss, {k: v.copy() for k, v in flow.parameters()}))
    assert runs[0][0] == runs[1][0] and all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_forward_weight_of_one_never_calls_the_target():
    def target(x):
        raise AssertionError("the target was evaluated")

    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit_to_target(flow, target, samples=bimodal_samples(200, 0), forward_weight=1.0, steps=60,
                            batch_size=50, lr=1e-2, rng=0, backend="numpy", log_every=20)
    assert history.steps == 60 and history.train_loss[-1] < history.train_loss[0]


def test_a_non_finite_target_still_rejects_mixed_steps():
    def target(x):
        out = -0.5 * (x * x).sum(-1)
        out[0] = -np.inf
        return out

    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    before = {k: v.copy() for k, v in flow.parameters()}
    with pytest.raises(RuntimeError, match=r"every step was rejected \(3 steps, 3 of them because log_prob_fn"):
        fit_to_target(flow, target, samples=bimodal_samples(50, 0), forward_weight=0.5, steps=3, n_samples=8,
                      rng=0, backend="numpy")
    assert all(np.array_equal(v, before[k]) for k, v in flow.parameters())
