"""Errors that name the object or function and the argument, and what they expected (reliability item 23).

Each case used to end in a message from deep inside NumPy or the standard library (or in no error at all); each
now raises at the public entry point, naming it.
"""

import json
import os
import zipfile

import numpy as np
import pytest

import nflow_np
from nflow_np import flows, io
from nflow_np.distributions import MultivariateNormalDiag, Normal


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: flows.RealNVP(2, rng=-1), ValueError, r"rng: an int seed must be non-negative; got -1"),
    (lambda: flows.RealNVP(2, n_layers=2.5), TypeError, r"RealNVP: n_layers must be an int >= 1; got float 2.5"),
    (lambda: flows.MAF(2, n_layers="3"), TypeError, r"MAF: n_layers must be an int >= 1; got str '3'"),
    (lambda: flows.NSF(2, n_layers=None), TypeError, r"NSF: n_layers must be an int >= 1; got NoneType"),
    (lambda: flows.RealNVP(2, dtype="banana"), TypeError, r"RealNVP: dtype must be float32 or float64; got 'banana'"),
    (lambda: flows.RealNVP(2, permute="foo"), ValueError, r"RealNVP: permute must be None or 'random'; got 'foo'"),
    (lambda: flows.NSF(2, permute="shuffle"), ValueError, r"NSF: permute must be None or 'random'"),
    (lambda: Normal([0.0, 1.0], [1.0, 1.0, 1.0]), ValueError,
     r"Normal: loc and scale must broadcast together; got shapes \(2,\) and \(3,\)"),
    (lambda: MultivariateNormalDiag(np.zeros((2, 3)), np.ones((4, 3))), ValueError,
     r"MultivariateNormalDiag: loc and scale_diag must broadcast together"),
    (lambda: nflow_np.FlowDensity().fit(np.array([["a", "b"], ["c", "d"]])), ValueError,
     r"FlowDensity.fit: X must hold numbers; could not convert string to float"),
])
def test_constructors_and_fit_name_the_argument(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_save_and_load_name_a_path_that_is_not_one(tmp_path):
    flow = flows.RealNVP(2, n_layers=1, hidden=(4,), rng=0)
    with pytest.raises(TypeError, match=r"save: path must be a str or os.PathLike; got NoneType None"):
        io.save(flow, None)
    with pytest.raises(TypeError, match=r"load: path must be a str or os.PathLike; got int 3"):
        io.load(3)
    with pytest.raises(TypeError, match=r"load: path must be a str or os.PathLike"):
        io.read_spec(None)
    # a directory: the message names the path given, not a temporary file, and nothing is left behind
    with pytest.raises(ValueError, match=f"save: {str(tmp_path)!r} is a directory"):
        io.save(flow, tmp_path)
    assert os.listdir(tmp_path) == []
    io.save(flow, tmp_path / "flow.npz")        # a real path still works, str or PathLike
    assert io.load(str(tmp_path / "flow.npz")).event_shape == (2,)


def _edit_spec(path, edit):
    """Rewrite a model file's spec member in place through ``edit(spec)``."""
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    key = next(k for k in members if members[k].dtype == np.uint8)
    spec = json.loads(members[key].tobytes().decode("utf-8"))
    edit(spec)
    members[key] = np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8)
    np.savez(path, **members)
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize("field, value, pattern", [
    ("train_loss", "abc", r"'train_loss' must be a list of numbers"),
    ("val_loss", [1.0, "x"], r"'val_loss' must be a list of numbers"),
    ("steps", 2.5, r"'steps' must be an integer"),
    ("stopped_early", "no", r"'stopped_early' must be true or false"),
    ("wall_time", [1], r"'wall_time' must be a number"),
])
def test_a_hand_edited_history_is_refused(tmp_path, field, value, pattern):
    x = np.random.default_rng(0).standard_normal((60, 2))
    est = nflow_np.FlowDensity(flow="realnvp", n_layers=1, hidden=(4,), epochs=1, random_state=0).fit(x)
    path = tmp_path / "model.npz"
    io.save(est, path)
    io.load(path)                                # as written, it loads

    def edit(spec):
        spec["estimator"]["history"][field] = value

    _edit_spec(path, edit)
    with pytest.raises(ValueError, match=pattern):
        io.load(path)


def test_plot_density_of_a_conditional_flow_names_the_missing_context():
    pytest.importorskip("matplotlib")
    from nflow_np.plot import plot_density

    flow = flows.RealNVP(2, n_layers=1, hidden=(4,), context=3, rng=0)
    with pytest.raises(ValueError, match=r"plot_density: dist is conditional \(a context of size 3\)"):
        plot_density(flow, ((-2, 2), (-2, 2)), grid=5)
    # the way the message suggests works
    fig = plot_density(lambda x: flow.log_prob(x, context=np.zeros(3)), ((-2, 2), (-2, 2)), grid=5)
    assert len(fig.axes) == 1
