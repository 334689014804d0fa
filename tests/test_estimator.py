"""``FlowDensity``: scikit-learn's estimator contract, exact densities in data units, reproducibility, model files."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import nflow_np
from nflow_np import io
from nflow_np.estimator import FlowDensity, NotFittedError


@pytest.fixture(autouse=True)
def numpy_backend():
    # The compiled backend spends seconds in Numba's JIT on its first call per flow and dtype; these tests are
    # about the estimator's contract, not kernels (test_kernels holds the compiled twins to the NumPy reference).
    with nflow_np.backend("numpy"):
        yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(n_layers=2, hidden=(8,), epochs=3, batch_size=64)


def _moons(n=300, seed=0):
    from nflow_np import datasets
    return datasets.load("two-moons", n, rng=seed)


@pytest.mark.filterwarnings("ignore:Estimator FlowDensity does not inherit")
@pytest.mark.filterwarnings("ignore:Skipping check check_array_api_input")
@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_check_estimator(flow):
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    estimator_checks.check_estimator(FlowDensity(flow=flow, n_layers=2, hidden=(4,), epochs=2, batch_size=64))


@pytest.mark.filterwarnings("ignore:Estimator FlowDensity does not inherit")
def test_grid_search_over_n_layers():
    model_selection = pytest.importorskip("sklearn.model_selection")
    search = model_selection.GridSearchCV(FlowDensity(hidden=(8,), epochs=2, batch_size=64, random_state=0),
                                          {"n_layers": [1, 2]}, cv=2)
    search.fit(_moons(200))
    assert search.best_params_["n_layers"] in (1, 2)
    assert np.isfinite(search.best_score_)
    assert search.best_estimator_.n_layers == search.best_params_["n_layers"]
    assert search.best_estimator_.score_samples(_moons(5, seed=1)).shape == (5,)


def test_clone_and_params_round_trip():
    base = pytest.importorskip("sklearn.base")
    est = FlowDensity(flow="maf", hidden=(3, 3), random_state=4)
    twin = base.clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert repr(est) == "FlowDensity(flow='maf', hidden=(3, 3), random_state=4)"
    assert est.set_params(n_layers=7) is est and est.n_layers == 7
    with pytest.raises(ValueError, match="invalid parameter 'layers'"):
        est.set_params(layers=2)


@pytest.mark.parametrize("flow", ["maf", "nsf"])
def test_density_integrates_to_one_in_1d(flow):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2.0, 0.5, 300), rng.normal(3.0, 1.0, 300)])[:, None] * 10.0 + 50.0
    est = FlowDensity(flow=flow, n_layers=3, hidden=(16,), epochs=30, batch_size=64, lr=5e-3, random_state=0).fit(X)
    grid = np.linspace(X.min() - 150.0, X.max() + 150.0, 40001)
    mass = np.trapezoid(np.exp(est.score_samples(grid[:, None])), grid)
    assert abs(mass - 1.0) < 1e-3
    if flow == "nsf":
        # splines find both modes (the density at each centre beats the trough between them); a 1-D MAF
        # layer is an affine map of nothing, so MAF stays a Gaussian here
        at = np.exp(est.score_samples(np.array([[30.0], [50.0], [80.0]])))
        assert at[0] > at[1] and at[2] > at[1]


def test_spline_flow_in_2d():
    X = _moons(600) * [3.0, 0.5] + [10.0, -4.0]
    est = FlowDensity(flow="nsf", n_layers=3, hidden=(16,), epochs=15, batch_size=64, lr=5e-3, random_state=0).fit(X)
    assert type(est.flow_.bijector.bijectors[0]).__name__ == "SplineCoupling"
    held_out = _moons(600, seed=5) * [3.0, 0.5] + [10.0, -4.0]
    # better than a Gaussian fitted to the same data
    gauss = -0.5 * np.log(2 * np.pi * np.e) * 2 - np.log(X.std(axis=0)).sum()
    assert est.score(held_out) / len(held_out) > gauss + 0.3


def test_density_integrates_to_one_in_2d():
    X = _moons(400) * [3.0, 0.5] + [10.0, -4.0]
    est = FlowDensity(n_layers=4, hidden=(16,), epochs=10, batch_size=64, lr=5e-3, random_state=0).fit(X)
    lo, hi = X.min(axis=0) - 8.0 * X.std(axis=0), X.max(axis=0) + 8.0 * X.std(axis=0)
    gx, gy = np.linspace(lo[0], hi[0], 601), np.linspace(lo[1], hi[1], 601)
    pts = np.stack(np.meshgrid(gx, gy, indexing="ij"), axis=-1).reshape(-1, 2)
    density = np.exp(est.score_samples(pts)).reshape(len(gx), len(gy))
    mass = np.trapezoid(np.trapezoid(density, gy, axis=1), gx)
    assert abs(mass - 1.0) < 2e-2


def test_standardization_is_accounted_for():
    X = _moons(300)
    scale, shift = np.array([4.0, 0.25]), np.array([-3.0, 7.0])
    a = FlowDensity(**FAST, random_state=1).fit(X)
    b = FlowDensity(**FAST, random_state=1).fit(X * scale + shift)
    np.testing.assert_allclose(b.mean_, a.mean_ * scale + shift, rtol=1e-12)
    np.testing.assert_allclose(b.scale_, a.scale_ * scale, rtol=1e-12)
    # the same flow on the same standardized data: densities differ by the Jacobian of x -> scale x + shift
    np.testing.assert_allclose(b.score_samples(X * scale + shift), a.score_samples(X) - np.log(scale).sum(),
                               rtol=1e-8, atol=1e-8)
    assert b.score(X * scale + shift) == pytest.approx(a.score(X) - len(X) * np.log(scale).sum(), rel=1e-8)
    np.testing.assert_allclose(b.sample(50, random_state=2), a.sample(50, random_state=2) * scale + shift,
                               rtol=1e-8, atol=1e-8)


def test_reproducible_with_random_state():
    X = _moons(200)
    first = FlowDensity(**FAST, random_state=5).fit(X)
    again = FlowDensity(**FAST, random_state=5).fit(X)
    other = FlowDensity(**FAST, random_state=6).fit(X)
    assert np.array_equal(first.score_samples(X), again.score_samples(X))
    assert not np.array_equal(first.score_samples(X), other.score_samples(X))
    assert np.array_equal(first.sample(20, random_state=3), again.sample(20, random_state=3))
    assert not np.array_equal(first.sample(20, random_state=3), first.sample(20, random_state=4))
    rs = np.random.RandomState(0)
    assert not np.array_equal(first.sample(5, random_state=rs), first.sample(5, random_state=rs))


def test_fitted_attributes_and_float32():
    X = _moons(200)
    est = FlowDensity(**FAST, dtype="float32", random_state=0).fit(X)
    assert est.n_features_in_ == 2 and est.flow_.dtype == np.float32
    assert est.history_.epochs == 3 and len(est.history_.val_loss) == 3
    scores = est.score_samples(X)
    assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
    assert est.sample(4, random_state=0).shape == (4, 2)


def test_one_feature_needs_an_autoregressive_flow():
    X = np.random.default_rng(0).normal(size=(100, 1))
    with pytest.raises(ValueError, match=r"needs at least 2 features; got 1 feature\(s\).*flow='maf'"):
        FlowDensity(flow="realnvp", **FAST).fit(X)
    est = FlowDensity(flow="maf", **FAST, random_state=0).fit(X)
    assert est.score_samples(X).shape == (100,) and est.sample(3, random_state=0).shape == (3, 1)


def test_unfitted_use():
    est = FlowDensity()
    for call in (lambda: est.score_samples(np.zeros((2, 2))), lambda: est.sample(2), lambda: est.score([[0.0]])):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call()
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_input_validation():
    est = FlowDensity(**FAST, random_state=0).fit(_moons(100))
    with pytest.raises(ValueError, match="X has 3 features, but FlowDensity is expecting 2 features"):
        est.score_samples(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN or infinity.*row 1, column 0"):
        est.score_samples([[0.0, 1.0], [np.nan, 2.0]])
    with pytest.raises(ValueError, match="Expected 2D array"):
        est.score_samples(np.zeros(2))
    with pytest.raises(ValueError, match="Complex data not supported"):
        FlowDensity(**FAST).fit(np.ones((5, 2), dtype=complex))
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse input is not supported"):
        FlowDensity(**FAST).fit(sparse.csr_matrix(np.ones((5, 2))))
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        FlowDensity(**FAST).fit(np.ones((1, 2)))


@pytest.mark.parametrize("param, value, message", [
    ("flow", "glow", "flow must be one of"), ("n_layers", 0, "n_layers must be an int >= 1"),
    ("hidden", (8, -1), "hidden must be a tuple of positive ints"), ("lr", -1.0, "lr must be a positive"),
    ("validation_fraction", 1.0, r"validation_fraction must lie in \[0, 1\)"), ("dtype", "int8", "dtype must be"),
    ("patience", 0, "patience must be an int >= 1 or None"), ("epochs", 2.5, "epochs must be an int"),
    ("average", 1.0, r"average must lie in \[0, 1\)"), ("average", "0.9", "average must be a float"),
])
def test_parameters_are_validated_in_fit(param, value, message):
    est = FlowDensity(**{param: value})   # __init__ stores anything
    with pytest.raises(ValueError, match=message):
        est.fit(_moons(50))


def test_pickle_and_model_file_round_trip(tmp_path):
    X = _moons(200)
    est = FlowDensity(flow="nice", **FAST, random_state=2).fit(X)
    for twin in (pickle.loads(pickle.dumps(est)), io.load(_saved(est, tmp_path))):
        assert isinstance(twin, FlowDensity) and twin.get_params() == est.get_params()
        assert np.array_equal(twin.score_samples(X), est.score_samples(X))
        assert np.array_equal(twin.sample(9, random_state=1), est.sample(9, random_state=1))
        assert twin.history_.train_loss == est.history_.train_loss
        assert twin.history_.best_epoch == est.history_.best_epoch
        assert twin.history_.averaged == est.history_.averaged and len(est.history_.averaged) == est.history_.epochs
        assert twin.optimizer_state_["steps"] == est.optimizer_state_["steps"] == est.history_.steps
        assert all(np.array_equal(twin.optimizer_state_[m][name], est.optimizer_state_[m][name])
                   for m in ("m", "v") for name in est.optimizer_state_[m])


def _saved(est, tmp_path):
    path = tmp_path / "est.npz"
    io.save(est, path)
    return path


def test_resume_continues_from_the_fitted_flow():
    X = _moons(200)
    est = FlowDensity(**FAST, random_state=0).fit(X)
    mean = est.mean_.copy()
    est.set_params(epochs=2)
    assert est._fit(X * 2.0, resume=True) is False
    assert est.history_.epochs == 5 and np.array_equal(est.mean_, mean)   # the standardization is kept
    with pytest.raises(ValueError, match="X has 1 features"):
        est._fit(X[:, :1], resume=True)


def test_unfitted_estimator_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        io.save(FlowDensity(), tmp_path / "x.npz")


def test_importing_the_estimator_needs_no_sklearn():
    code = ("import nflow_np.estimator, nflow_np.io, nflow_np.cli, sys; "
            "print(' '.join(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


# ---------------------------------------------------------------------------- resuming continues Adam

def _params(est):
    return {name: array.copy() for name, array in est.flow_.parameters()}


def _same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flow, fraction", [("realnvp", 0.1), ("maf", 0.0), ("nsf", 0.2)])
def test_resume_after_a_save_matches_one_uninterrupted_fit(tmp_path, flow, fraction):
    # E1 epochs, save, load, E2 more == E1 + E2 epochs at once, bit for bit (NumPy backend): Adam continues with its
    # moments and step count, and an int random_state replays the validation split and the shuffles (at a constant
    # rate: a schedule runs again over a resumed fit's own epochs)
    X = _moons(300)
    settings = dict(flow=flow, n_layers=2, hidden=(8,), batch_size=64, validation_fraction=fraction, random_state=3,
                    lr_schedule=None)
    whole = FlowDensity(**settings, epochs=5).fit(X)
    first = FlowDensity(**settings, epochs=2).fit(X)
    resumed = io.load(_saved(first, tmp_path))
    resumed.set_params(epochs=3)
    assert resumed._fit(X, resume=True) is False
    # the comparison holds when every fit keeps its last epoch (the flow is reset to the best one)
    assert first.history_.best_epoch == 1 and whole.history_.best_epoch == resumed.history_.best_epoch == 4
    assert _same_params(_params(resumed), _params(whole))
    assert resumed.history_.train_loss == whole.history_.train_loss
    assert resumed.history_.val_loss == whole.history_.val_loss   # the same held-out points
    state, expected = resumed.optimizer_state_, whole.optimizer_state_
    assert state["steps"] == expected["steps"] == whole.history_.steps and state["lr"] == expected["lr"]
    assert all(np.array_equal(state[m][k], expected[m][k]) for m in ("m", "v") for k in expected[m])


def test_resume_without_a_saved_optimizer_restarts_adam(tmp_path):
    # what --resume did before optimizer state was saved, and still does for such files: a fresh Adam
    X = _moons(300)
    settings = dict(n_layers=2, hidden=(8,), batch_size=64, validation_fraction=0.0, random_state=3)
    whole = FlowDensity(**settings, epochs=4).fit(X)
    first = FlowDensity(**settings, epochs=2).fit(X)
    continued, restarted = io.load(_saved(first, tmp_path)), io.load(_saved(first, tmp_path))
    restarted.optimizer_state_ = None
    for est in (continued, restarted):
        est.set_params(epochs=2)
        est._fit(X, resume=True)
    assert _same_params(_params(continued), _params(whole))
    assert not _same_params(_params(restarted), _params(whole))
    assert restarted.optimizer_state_["steps"] == restarted.history_.steps - first.history_.steps
    assert continued.optimizer_state_["steps"] == continued.history_.steps


def test_resume_continues_at_the_saved_learning_rate_unless_reset():
    X = _moons(200)
    est = FlowDensity(**FAST, validation_fraction=0.0, random_state=0).fit(X)
    est.optimizer_state_["lr"] = 2.5e-4   # as if rejected steps had halved it twice
    est.set_params(epochs=1)
    est._fit(X, resume=True)
    assert est.history_.lr[-1] == 2.5e-4 and est.optimizer_state_["lr"] == 2.5e-4
    est.set_params(lr=5e-3)
    est._fit(X, resume=True, reset_lr=True)
    assert est.history_.lr[-1] == 5e-3 and est.optimizer_state_["lr"] == 5e-3


def test_the_saved_optimizer_state_is_that_of_the_kept_epoch():
    # the flow is reset to its best epoch at the end; the optimizer state saved with it is that epoch's
    X = _moons(300)
    # a rate high enough that the validation loss bounces: the best epoch is not the last one
    est = FlowDensity(n_layers=2, hidden=(8,), epochs=30, batch_size=64, lr=0.2, validation_fraction=0.3,
                      random_state=1).fit(X)
    history = est.history_
    assert 0 <= history.best_epoch < history.epochs - 1 and history.rejected_steps == 0
    steps_per_epoch = -(-(300 - 90) // 64)
    assert est.optimizer_state_["steps"] == (history.best_epoch + 1) * steps_per_epoch < history.steps


def test_an_interrupted_resume_keeps_the_loaded_optimizer_state(monkeypatch):
    from nflow_np.train import loops
    X = _moons(200)
    est = FlowDensity(**FAST, random_state=0).fit(X)
    before, flow_before = est.optimizer_state_, _params(est)
    real, calls = loops.nll_and_grad, []

    def interrupt_in_the_first_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(loops, "nll_and_grad", interrupt_in_the_first_epoch)
    assert est._fit(X, resume=True, catch_interrupt=True) is True
    # one step was taken before Ctrl-C; the flow and the optimizer kept are both the ones loaded
    assert _same_params(_params(est), flow_before)
    assert est.optimizer_state_["steps"] == before["steps"]
    assert all(np.array_equal(est.optimizer_state_[m][k], before[m][k]) for m in ("m", "v") for k in before[m])


def test_resume_refuses_an_optimizer_state_that_does_not_fit():
    X = _moons(200)
    est = FlowDensity(**FAST, random_state=0).fit(X)
    name = next(iter(est.optimizer_state_["m"]))
    est.optimizer_state_["m"][name] = np.zeros(3)
    with pytest.raises(ValueError, match=rf"cannot resume from optimizer_state_: .*m\['{name}'\] has shape \(3,\)"):
        est._fit(X, resume=True)


def test_an_overflowed_moment_is_not_kept(tmp_path, monkeypatch):
    # The compiled trainers take the gradient norm in float64, so a float32 gradient of 1e22 is a finite step whose
    # square overflows Adam's second moment to infinity. Such a state cannot be saved or loaded: it is dropped, and
    # the model still saves. (Emulated here on the NumPy path, whose norm is taken the same way.)
    from nflow_np.train import loops, optim
    real, calls = loops.nll_and_grad, []

    def one_huge_gradient(*args, **kwargs):
        loss, grads = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            name = next(iter(grads))
            grads[name] = grads[name].copy()
            grads[name].flat[0] = 1e22
        return loss, grads
    monkeypatch.setattr(loops, "nll_and_grad", one_huge_gradient)
    monkeypatch.setattr(optim, "global_norm", lambda grads: float(np.sqrt(sum(
        float(np.vdot(g.astype(np.float64), g.astype(np.float64))) for g in grads.values()))))
    X = _moons(200)
    est = FlowDensity(**FAST, dtype="float32", validation_fraction=0.0, random_state=0).fit(X)
    assert est.optimizer_state_ is None and np.all(np.isfinite(est.score_samples(X)))
    twin = io.load(_saved(est, tmp_path))
    assert twin.optimizer_state_ is None
    twin._fit(X, resume=True)
    # a fresh Adam: the steps of the resumed epochs only (up to the kept one)
    assert 0 < twin.optimizer_state_["steps"] <= twin.history_.steps - est.history_.steps


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_an_interrupted_fit_keeps_the_best_epoch_so_far(monkeypatch, error):
    from nflow_np.train import loops
    X = _moons(300)
    real, calls, seen = loops.nll_and_grad, [], {}

    def interrupt_in_the_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 5 + 3:      # 270 training rows: 5 steps per epoch
            raise error
        return real(*args, **kwargs)
    monkeypatch.setattr(loops, "nll_and_grad", interrupt_in_the_third_epoch)
    real_fit = loops.fit

    def fit_watching_epochs(*args, callback=None, **kwargs):
        def remember(epoch, history):
            seen[epoch] = {k: v.copy() for k, v in args[0].parameters()}
            return callback(epoch, history)
        return real_fit(*args, callback=remember, **kwargs)
    monkeypatch.setattr("nflow_np.train.fit", fit_watching_epochs)
    est = FlowDensity(n_layers=2, hidden=(8,), epochs=10, batch_size=64, lr=0.05, random_state=0)
    with pytest.raises(error):
        est.fit(X)
    history = est.history_
    assert history.epochs == 2 and history.stopped_early and history.best_epoch in (0, 1)
    assert _same_params(_params(est), seen[history.best_epoch])
    assert est.optimizer_state_["steps"] == (history.best_epoch + 1) * 5
    scores = est.score_samples(X)
    assert np.all(np.isfinite(scores)) and scores[0] == est.score_samples(X[:1])[0]


def test_an_interrupt_before_the_first_epoch_ends_leaves_an_earlier_fit(monkeypatch):
    from nflow_np.train import loops
    X = _moons(200)
    est = FlowDensity(**FAST, random_state=0).fit(X)
    before, history = _params(est), est.history_

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(loops, "nll_and_grad", interrupt)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X * 2.0)
    assert _same_params(_params(est), before) and est.history_ is history
    fresh = FlowDensity(**FAST, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(X)
    with pytest.raises(NotFittedError):
        fresh.score_samples(X)


def test_a_column_of_huge_values_is_standardized(recwarn):
    # x * 1e200: its squares overflow, and a plain standard deviation would be inf (every density -inf)
    x = np.random.default_rng(0).normal(size=300)
    X = np.c_[x, x * 1e200]
    est = FlowDensity(**FAST, random_state=0).fit(X)
    assert np.all(np.isfinite(est.scale_)) and np.all(np.isfinite(est.mean_))
    np.testing.assert_allclose(est.scale_, [x.std(), x.std() * 1e200], rtol=1e-12)
    np.testing.assert_allclose(est.mean_, [x.mean(), x.mean() * 1e200], rtol=1e-12)
    scores = est.score_samples(X)
    assert np.all(np.isfinite(scores))
    # the Jacobian of the standardization: the same density as the standardized flow's, less log(scale)
    Z = (X - est.mean_) / est.scale_
    np.testing.assert_allclose(scores, est.flow_.log_prob(Z) - np.log(est.scale_).sum(), rtol=1e-12)
    assert np.all(np.isfinite(est.sample(5, random_state=0)))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_column_too_wide_to_standardize_is_named():
    x = np.random.default_rng(0).normal(size=300)
    X = np.c_[x, np.where(x > -2, 1.7e308, -1.7e308)]
    est = FlowDensity(**FAST, random_state=0)
    with pytest.raises(ValueError, match=r"FlowDensity.fit: column 1 cannot be standardized: row \d+ \(-1.7e\+308\) "
                                         r"lies farther from the column's mean"):
        est.fit(X)
    assert not hasattr(est, "flow_")
