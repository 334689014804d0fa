"""fit(average=...): the parameters' moving average, scored beside them at every validation, on every backend."""

import numpy as np
import pytest

from nflow_np import datasets, flows
from nflow_np.kernels import optim as optim_kernels
from nflow_np.kernels import scalar
from nflow_np.kernels.backend import load_numba
from nflow_np.train import Adam, fit
from nflow_np.train.losses import nll_and_grad


def _moons(n, seed):
    x = datasets.two_moons(n, rng=seed)
    return (x - x.mean(0)) / x.std(0)


def _formula(avg, theta, count, beta):
    decay = min(beta, (1.0 + count) / (10.0 + count))
    return avg.astype(np.float64) + (1.0 - decay) * (theta.astype(np.float64) - avg.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count, beta", [(0, 0.99), (3, 0.99), (5000, 0.99), (7, 0.5), (0, 0.0)])
def test_the_compiled_average_step_is_the_formula(dtype, count, beta):
    load_numba()
    rng = np.random.default_rng(count)
    theta = np.concatenate([rng.standard_normal(37), [0.0, -0.0, 1e30, -1e-30, 3e38 if dtype == np.float32
                                                      else 1e300]]).astype(dtype)
    avg = np.concatenate([rng.standard_normal(37), [1.0, 0.0, 1e30, 1e-30, 0.0]]).astype(dtype)
    expected = _formula(avg, theta, count, beta).astype(dtype)
    state = np.array([beta, float(count)])
    got = avg.copy()
    optim_kernels.average_step_numba(theta, got, state)
    # a few rounding errors of the operands' size (the compiled step may fuse the multiply-add)
    bound = 4 * np.finfo(dtype).eps * (np.abs(avg.astype(np.float64)) + np.abs(theta.astype(np.float64)))
    assert np.all(np.abs(got.astype(np.float64) - expected.astype(np.float64)) <= bound)
    assert state[1] == count + 1
    assert np.isfinite(got).all()
    optim_kernels.average_restart_numba(theta, got, state)
    assert np.array_equal(got, theta) and state[1] == 0.0


def test_the_decay_warms_up_to_its_cap():
    decay = [scalar.average_decay.py_func(float(t), 0.99) if hasattr(scalar.average_decay, "py_func")
             else scalar.average_decay(float(t), 0.99) for t in (0, 1, 10, 100, 890, 10_000)]
    assert decay == pytest.approx([0.1, 2 / 11, 11 / 20, 101 / 110, 0.99, 0.99])


def _reference_fit(make, x, xv, epochs, batch, lr, beta, seed):
    """fit's NumPy path written out: the same batches and Adam steps, the average by the formula, both scored at
    every epoch's end."""
    flow = make()
    params = dict(flow.parameters())
    opt = Adam(params.items(), lr=lr)
    avg = {k: v.copy() for k, v in params.items()}
    count = 0
    rng = np.random.default_rng(seed)
    epochs_seen = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            _, grads = nll_and_grad(flow, x[order[i:i + batch]])
            opt.step(grads)
            for k, v in params.items():
                avg[k][...] = _formula(avg[k], v, count, beta)
            count += 1
        raw = {k: v.copy() for k, v in params.items()}
        raw_score = -float(np.mean(flow.log_prob(xv, backend="numpy")))
        for k, v in params.items():
            v[...] = avg[k]
        avg_score = -float(np.mean(flow.log_prob(xv, backend="numpy")))
        for k, v in params.items():
            v[...] = raw[k]
        epochs_seen.append((raw_score, avg_score, raw, {k: v.copy() for k, v in avg.items()}))
    return epochs_seen


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fit_keeps_the_better_of_the_parameters_and_their_average(backend):
    """Against fit's steps written out by hand: the scores of both states at every epoch, which one won, and the
    state kept at the end (the average, at the best epoch, for this run)."""
    x, xv = _moons(200, 0), _moons(100, 1)
    make = lambda: flows.RealNVP(2, n_layers=2, hidden=(8,), rng=4)
    settings = dict(epochs=6, batch=20, lr=5e-2, beta=0.9, seed=5)
    reference = _reference_fit(make, x, xv, **settings)
    # both outcomes occur, by clear margins (so that float rounding cannot flip a decision)
    assert 0 < sum(a < r for r, a, _, _ in reference) < len(reference)
    assert min(abs(a - r) for r, a, _, _ in reference) > 1e-4
    flow = make()
    history = fit(flow, x, epochs=6, batch_size=20, lr=5e-2, validation_data=xv, rng=5, backend=backend,
                  average=0.9)
    tol = 1e-10 if backend == "numpy" else 1e-6
    wins = [avg_score < raw_score for raw_score, avg_score, _, _ in reference]
    assert history.averaged == wins
    np.testing.assert_allclose(history.val_loss, [min(r, a) for r, a, _, _ in reference], rtol=tol)
    best = int(np.argmin([min(r, a) for r, a, _, _ in reference]))
    assert history.best_epoch == best and wins[best], "the run is meant to keep an average"
    kept = reference[best][3]
    for k, v in flow.parameters():
        np.testing.assert_allclose(v, kept[k], rtol=tol, atol=tol)
    assert -float(np.mean(flow.log_prob(xv, backend="numpy"))) == pytest.approx(history.val_loss[best], rel=tol)


def test_the_average_is_off_without_validation_data_or_when_asked():
    x, xv = _moons(200, 0), _moons(100, 1)
    runs = []
    for average, validation in ((None, xv), (0.0, xv), (0.9, None), (None, None)):
        flow = flows.MAF(2, n_layers=2, hidden=(8,), rng=1)
        history = fit(flow, x, epochs=3, batch_size=50, validation_data=validation, rng=0, backend="numpy",
                      average=average)
        assert history.averaged == []
        runs.append((history.train_loss, {k: v.copy() for k, v in flow.parameters()}))
    for (loss_a, params_a), (loss_b, params_b) in (runs[:2], runs[2:]):
        assert loss_a == loss_b and all(np.array_equal(params_a[k], params_b[k]) for k in params_a)


@pytest.mark.parametrize("value, error", [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                          ("0.9", TypeError), (True, TypeError), ([0.9], TypeError)])
def test_a_bad_average_is_refused_before_training(value, error):
    flow = flows.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
    before = {k: v.copy() for k, v in flow.parameters()}
    with pytest.raises(error, match="average"):
        fit(flow, _moons(50, 0), epochs=1, validation_data=_moons(20, 1), average=value)
    assert all(np.array_equal(v, before[k]) for k, v in flow.parameters())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_diverging_fit_restarts_the_average_and_keeps_a_finite_state(backend):
    """lr=1e4 blows up the first updates: the divergence rule undoes them, and the average, which had taken in a
    blown-up state, starts again from the restored parameters, so a kept average is never the 1e20 of a diverged
    state. Both CPU backends take the same decisions."""
    x, xv = _moons(120, 0), _moons(60, 1)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=4)
    initial = -flow.log_prob(xv, backend="numpy").mean()
    history = fit(flow, x, epochs=5, batch_size=40, lr=1e4, validation_data=xv, rng=4, backend=backend,
                  average=0.5)
    assert history.diverged_steps > 0
    assert all(np.isfinite(p).all() for _, p in flow.parameters())
    # an epoch that ends on an update that blew up scores badly, average and all (the divergence shows at the next
    # step); the state kept is a good one
    assert history.val_loss[history.best_epoch] < initial + 0.5
    kept = -flow.log_prob(xv, backend="numpy").mean()
    assert kept == pytest.approx(history.val_loss[history.best_epoch], rel=1e-9)


def test_both_cpu_backends_average_alike_through_divergences():
    x, xv = _moons(120, 0), _moons(60, 1)
    runs = {}
    for backend in ("numpy", "numba"):
        flow = flows.MAF(2, n_layers=2, hidden=(8,), rng=1)
        history = fit(flow, x, epochs=4, batch_size=20, lr=1e3, validation_data=xv, rng=0, backend=backend,
                      average=0.7)
        runs[backend] = (history, {k: v.copy() for k, v in flow.parameters()})
    (ref, ref_params), (got, got_params) = runs["numpy"], runs["numba"]
    assert ref.diverged_steps > 0 and any(ref.averaged)
    assert got.averaged == ref.averaged
    assert (got.steps, got.rejected_steps, got.diverged_steps, got.best_epoch) == \
        (ref.steps, ref.rejected_steps, ref.diverged_steps, ref.best_epoch)
    np.testing.assert_allclose(got.val_loss, ref.val_loss, rtol=1e-6)
    for k in ref_params:
        np.testing.assert_allclose(got_params[k], ref_params[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_streamed_fit_averages_as_fit_does(backend):
    from nflow_np.train import Stream
    x, xv = _moons(200, 0), _moons(100, 1)
    runs = []
    for data in (x, Stream(x, block_rows=200, buffer_rows=200)):
        flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=4)
        history = fit(flow, data, epochs=6, batch_size=20, lr=3e-2, validation_data=xv, rng=5, backend=backend,
                      average=0.9)
        runs.append((history, -float(np.mean(flow.log_prob(xv, backend="numpy")))))
    (ref, ref_nll), (got, got_nll) = runs
    assert any(got.averaged)
    # the stream shuffles its own way: the same promises, not the same steps
    assert got_nll == pytest.approx(got.val_loss[got.best_epoch], rel=1e-6)
    assert ref_nll == pytest.approx(ref.val_loss[ref.best_epoch], rel=1e-6)
