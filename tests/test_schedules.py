"""Learning-rate schedules in fit: the rate each epoch runs at, on every backend, and their arguments."""

import math

import numpy as np
import pytest

from nflow_np import datasets, flows
from nflow_np.train import SGD, CosineDecay, ReduceOnPlateau, fit


def _rates(backend, schedule, epochs=6, **kwargs):
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit(flow, datasets.two_moons(200, rng=0), epochs=epochs, batch_size=50, lr=0.01, rng=0,
                  backend=backend, lr_schedule=schedule, **kwargs)
    return np.array(history.lr), history


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cosine_sets_each_epochs_rate(backend):
    rates, history = _rates(backend, CosineDecay(warmup=2, final=0.1))
    assert history.rejected_steps == 0
    expected = [0.01 / 3, 0.02 / 3, 0.01] + [0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)))
                                            for k in (1, 2, 3)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    plain, _ = _rates(backend, "cosine")
    np.testing.assert_allclose(plain, [0.01 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)], rtol=1e-12)


def test_the_backends_train_alike_under_a_schedule():
    a, ha = _rates("numpy", "cosine")
    b, hb = _rates("numba", "cosine")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ha.train_loss, hb.train_loss, rtol=1e-6)


def test_a_constant_schedule_is_the_default():
    rates, _ = _rates("numba", None)
    assert np.all(rates == 0.01)


def test_plateau_halves_the_rate_after_patience_epochs_without_progress():
    sched = ReduceOnPlateau(factor=0.5, patience=2, threshold=1e-6)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    # a rate far too small to improve anything measurably: every epoch is a plateau after the first
    history = fit(flow, datasets.two_moons(200, rng=0), epochs=7, batch_size=50, lr=1e-12, rng=0,
                  validation_data=datasets.two_moons(100, rng=1), lr_schedule=sched)
    rates = np.array(history.lr) / 1e-12
    # epoch 0 sets the best; epochs 1, 2 fail to improve -> the rate halves from epoch 3, again from epoch 5
    assert list(np.round(rates, 12)) == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]
    assert sched.reductions == 3    # the third reduction comes after the last epoch


def test_a_schedule_keeps_the_guards_halving():
    # SGD with a rate so large that every other step overflows: the guard halves the rate, and the schedule's
    # next epoch starts from the halved rate, not from the schedule's own value
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), log_scale_clamp=None, init="identity", rng=0)
    data = np.random.default_rng(0).normal(size=(200, 2)) * 50
    opt = SGD(flow.parameters(), lr=1e300)
    sched = CosineDecay()
    history = fit(flow, data, epochs=3, batch_size=50, optimizer=opt, rng=0, lr_schedule=sched)
    assert history.rejected_steps > 0
    assert history.lr[-1] <= 1e300 * sched.factor(2) * 0.5 ** history.rejected_steps * (1 + 1e-12)


@pytest.mark.parametrize("bad, match", [
    ("linear", "lr_schedule must be None, 'cosine', 'plateau'"),
    (3, "lr_schedule must be"),
])
def test_bad_schedules_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        _rates("numpy", bad)


def test_bad_schedule_parameters_are_named():
    with pytest.raises(ValueError, match="CosineDecay: warmup"):
        CosineDecay(warmup=-1)
    with pytest.raises(ValueError, match="CosineDecay: final"):
        CosineDecay(final=2.0)
    with pytest.raises(ValueError, match="ReduceOnPlateau: factor"):
        ReduceOnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="ReduceOnPlateau: patience"):
        ReduceOnPlateau(patience=0)
    with pytest.raises(ValueError, match="warm-up"):
        _rates("numpy", CosineDecay(warmup=6))


def test_a_streamed_fit_follows_the_schedule():
    data = datasets.two_moons(200, rng=0)
    path_rates = {}
    for label, x in [("memory", data), ("memmap", None)]:
        if x is None:
            import tempfile, os
            folder = tempfile.mkdtemp()
            x = np.lib.format.open_memmap(os.path.join(folder, "x.npy"), mode="w+", dtype=data.dtype,
                                          shape=data.shape)
            x[...] = data
        flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
        path_rates[label] = fit(flow, x, epochs=4, batch_size=50, lr=0.01, rng=0, lr_schedule="cosine").lr
    np.testing.assert_allclose(path_rates["memmap"], path_rates["memory"], rtol=1e-12)
    assert path_rates["memory"][-1] < path_rates["memory"][0]
