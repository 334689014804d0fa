"""``nflow-np`` with a context (fit --context-columns; logprob, sample and outliers given the context), ``outliers``,
and ``--backend``."""

import numpy as np
import pytest

import nflow_np
from nflow_np import cli, io
from nflow_np.estimator import FlowDensity, FlowOutlierDetector


@pytest.fixture(autouse=True)
def numpy_backend():
    # the command line's behaviour, not kernels: the NumPy backend skips Numba's first-call compiles
    with nflow_np.backend("numpy"):
        yield


TINY = ["--epochs", "2", "--layers", "2", "--hidden", "8", "--batch-size", "64", "--seed", "0"]
CENTRES = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_clean_error(status, err, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nflow-np: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def grouped(tmp_path):
    """A CSV of x1, one-hot group (3 columns), x2: the context in the middle columns 1-3."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 300)
    X = CENTRES[label] + 0.5 * rng.normal(size=(300, 2))
    Y = np.eye(3)[label]
    path = tmp_path / "grouped.csv"
    np.savetxt(path, np.c_[X[:, :1], Y, X[:, 1:]], delimiter=",", header="x1,a,b,c,x2", comments="")
    return path, X, Y


@pytest.fixture
def conditional_model(tmp_path, grouped, capsys):
    path = tmp_path / "cond.npz"
    status, out, err = run(capsys, "fit", grouped[0], *TINY, "--context-columns", "1,2,3", "--out", path)
    assert status == 0, err
    assert "conditional on 3 context column(s)" in out
    return path


def test_fit_with_context_columns_learns_a_conditional_model(conditional_model, grouped, capsys):
    _, X, Y = grouped
    est = io.load(conditional_model)
    assert isinstance(est, FlowDensity) and est.n_context_in_ == 3 and est.n_features_in_ == 2
    # the same fit as the estimator's, on the columns left
    twin = FlowDensity(n_layers=2, hidden=(8,), epochs=2, batch_size=64, random_state=0, conditional=True).fit(X, Y)
    np.testing.assert_allclose(est.score_samples(X, Y), twin.score_samples(X, Y), rtol=1e-12)
    status, out, _ = run(capsys, "info", conditional_model)
    assert status == 0 and "context: 3 column(s)" in out


def test_logprob_takes_the_context_from_columns_or_values(tmp_path, conditional_model, grouped, capsys):
    path, X, Y = grouped
    est = io.load(conditional_model)
    out = tmp_path / "lp.npy"
    assert run(capsys, "logprob", conditional_model, path, "--context-columns", "1,2,3", "--out", out)[0] == 0
    np.testing.assert_allclose(np.load(out), est.score_samples(X, Y), rtol=1e-12)
    xs = tmp_path / "x.csv"
    np.savetxt(xs, X, delimiter=",")
    assert run(capsys, "logprob", conditional_model, xs, "--context", "0,1,0", "--out", out)[0] == 0
    np.testing.assert_allclose(np.load(out), est.score_samples(X, np.tile([0.0, 1.0, 0.0], (300, 1))), rtol=1e-12)


def test_sample_takes_one_context_row_or_a_file_of_them(tmp_path, conditional_model, capsys):
    est = io.load(conditional_model)
    out = tmp_path / "s.npy"
    status, _, err = run(capsys, "sample", conditional_model, "-n", "50", "--seed", "3", "--context", "0,0,1",
                         "--out", out)
    assert status == 0, err
    np.testing.assert_array_equal(np.load(out), est.sample(50, random_state=3, y=[0.0, 0.0, 1.0]))
    rows = np.eye(3)[[0, 2, 2, 1]]
    context_file = tmp_path / "ctx.csv"
    np.savetxt(context_file, rows, delimiter=",")
    assert run(capsys, "sample", conditional_model, "--seed", "1", "--context-file", context_file, "--out", out)[0] == 0
    np.testing.assert_array_equal(np.load(out), est.sample(4, random_state=1, y=rows))


def test_context_errors_are_clean(tmp_path, conditional_model, grouped, capsys):
    path, X, _ = grouped
    xs = tmp_path / "x.csv"
    np.savetxt(xs, X, delimiter=",")
    cases = [
        (("logprob", conditional_model, xs), "conditional on 3 context column(s); give --context-columns"),
        (("logprob", conditional_model, xs, "--context", "1,0"), "takes a context of 3 column(s); got 2"),
        (("logprob", conditional_model, path, "--context-columns", "1,2"), "takes a context of 3 column(s); got 2"),
        (("sample", conditional_model, "-n", "5"), "--context-file FILE or --context V1,...,V3"),
        (("fit", path, *TINY, "--context-columns", "1,7", "--out", tmp_path / "m.npz"), "has 5 column(s) (0 to 4)"),
        (("fit", path, *TINY, "--context-columns", "1,-4", "--out", tmp_path / "m.npz"), "names a column twice"),
    ]
    for argv, fragment in cases:
        status, _, err = run(capsys, *argv)
        assert_clean_error(status, err, fragment)
    ctx = tmp_path / "ctx.csv"
    np.savetxt(ctx, np.eye(3), delimiter=",")
    status, _, err = run(capsys, "sample", conditional_model, "-n", "5", "--context-file", ctx)
    assert_clean_error(status, err, "-n 5 differs from the 3 row(s) of --context-file")
    plain = tmp_path / "plain.npz"
    assert run(capsys, "fit", xs, *TINY, "--out", plain)[0] == 0
    status, _, err = run(capsys, "sample", plain, "-n", "5", "--context", "1")
    assert_clean_error(status, err, "the model is unconditional, so it takes no context")
    status, _, err = run(capsys, "fit", path, *TINY, "--resume", "--out", conditional_model)
    assert_clean_error(status, err, "the model is conditional on 3 context column(s); --context-columns must name")


def test_a_conditional_fit_resumes(conditional_model, grouped, capsys):
    status, _, err = run(capsys, "fit", grouped[0], *TINY, "--context-columns", "1,2,3", "--resume", "--out",
                         conditional_model)
    assert status == 0, err
    assert io.load(conditional_model).history_.epochs == 4


# ---------------------------------------------------------------------------- outliers

def test_fit_with_contamination_writes_a_detector_whose_threshold_outliers_uses(tmp_path, grouped, capsys):
    path, X, Y = grouped
    model = tmp_path / "det.npz"
    assert run(capsys, "fit", path, *TINY, "--context-columns", "1,2,3", "--contamination", "0.05", "--out",
               model)[0] == 0
    det = io.load(model)
    assert isinstance(det, FlowOutlierDetector) and det.contamination == 0.05
    out = tmp_path / "o.csv"
    status, _, err = run(capsys, "outliers", model, path, "--context-columns", "1,2,3", "--out", out)
    assert status == 0, err
    table = np.loadtxt(out, delimiter=",")
    np.testing.assert_array_equal(table[:, 0], det.predict(X, Y))
    np.testing.assert_allclose(table[:, 1], det.score_samples(X, Y), rtol=1e-12)
    np.testing.assert_allclose(table[:, 2], det.decision_function(X, Y), rtol=1e-9, atol=1e-12)
    assert f"{int((table[:, 0] < 0).sum())} of 300 row(s) flagged" in err and "the model's threshold" in err


def test_outliers_flags_the_contamination_quantile_of_a_file(tmp_path, grouped, capsys):
    _, X, _ = grouped
    xs = tmp_path / "x.csv"
    np.savetxt(xs, np.r_[X, [[20.0, 20.0]]], delimiter=",")
    model = tmp_path / "plain.npz"
    assert run(capsys, "fit", xs, *TINY, "--flow", "maf", "--out", model)[0] == 0
    status, out, err = run(capsys, "outliers", model, xs, "--contamination", "0.1")
    assert status == 0, err
    table = np.loadtxt(out.splitlines(), delimiter=",")
    assert table.shape == (301, 3) and (table[:, 0] == -1).sum() == 30 and table[-1, 0] == -1
    assert "30 of 301 row(s) flagged" in err
    status, _, err = run(capsys, "outliers", model, xs)
    assert_clean_error(status, err, "holds no outlier threshold; give --contamination")
    status, _, err = run(capsys, "outliers", model, xs, "--contamination", "0.7")
    assert_clean_error(status, err, "--contamination must lie in (0, 0.5]")


def test_fit_takes_a_backend(tmp_path, grouped, capsys):
    _, X, _ = grouped
    xs = tmp_path / "x.csv"
    np.savetxt(xs, X, delimiter=",")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run(capsys, "fit", xs, *TINY, "--backend", "numpy", "--out", a)[0] == 0
    assert run(capsys, "fit", xs, *TINY, "--out", b)[0] == 0
    np.testing.assert_array_equal(io.load(a).score_samples(X), io.load(b).score_samples(X))
    status, _, err = run(capsys, "fit", xs, "--backend", "gpu")
    assert status == 2 and "invalid choice: 'gpu'" in err
    status, out, _ = run(capsys, "fit", "--help")
    assert "--context-columns" in out and "--contamination" in out and "--backend" in out


def test_a_conditional_flow_file_takes_the_context_too(tmp_path, capsys):
    from nflow_np import flows
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), context=1, rng=0)
    model = tmp_path / "flow.npz"
    io.save(flow, model)
    X = np.random.default_rng(0).normal(size=(20, 2))
    xs, out = tmp_path / "x.csv", tmp_path / "lp.npy"
    np.savetxt(xs, np.c_[X, np.linspace(-1, 1, 20)], delimiter=",")
    assert run(capsys, "logprob", model, xs, "--context-columns", "-1", "--out", out)[0] == 0
    np.testing.assert_allclose(np.load(out), flow.log_prob(X, context=np.linspace(-1, 1, 20)[:, None]), rtol=1e-12)
    assert run(capsys, "sample", model, "-n", "6", "--seed", "2", "--context", "0.5", "--out", out)[0] == 0
    np.testing.assert_array_equal(np.load(out), flow.sample(6, rng=np.random.default_rng(2), context=[0.5]))


def test_auto_contamination_and_info(tmp_path, grouped, capsys):
    _, X, _ = grouped
    xs, model = tmp_path / "x.csv", tmp_path / "det.npz"
    np.savetxt(xs, X, delimiter=",")
    status, out, _ = run(capsys, "fit", xs, *TINY, "--contamination", "auto", "--out", model)
    assert status == 0 and "outlier threshold" in out
    det = io.load(model)
    assert det.contamination == "auto" and det.offset_ == np.quantile(det.score_samples(X), 0.001)
    status, out, _ = run(capsys, "info", model)
    assert status == 0 and f"outlier threshold: log-density {det.offset_:.6g} (contamination 'auto')" in out
    status, _, err = run(capsys, "fit", xs, "--contamination", "0.9")
    assert status == 2 and "expected 'auto' or a number in (0, 0.5]" in err
