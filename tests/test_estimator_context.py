"""FlowDensity(conditional=True) learns p(x | y); FlowOutlierDetector flags low-density points; every named flow;
scikit-learn's own checks for the outlier detector; model files of both."""

import json
import pickle
import warnings

import numpy as np
import pytest

import nflow_np
from nflow_np import io
from nflow_np._estimator_flows import FLOWS
from nflow_np.estimator import FlowDensity, FlowOutlierDetector, NotFittedError


@pytest.fixture(autouse=True)
def numpy_backend():
    # the estimator's contract, not kernels: the NumPy backend skips Numba's first-call compiles
    with nflow_np.backend("numpy"):
        yield


FAST = dict(n_layers=2, hidden=(8,), epochs=3, batch_size=64)


def _three_groups(n=600, seed=0):
    """x in 2-D around a centre that depends on a categorical y (one-hot, 3 columns)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    centres = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    X = centres[label] + 0.5 * rng.normal(size=(n, 2))
    return X, np.eye(3)[label], centres


# ---------------------------------------------------------------------------- conditional densities

def test_a_conditional_fit_learns_the_context():
    X, Y, centres = _three_groups()
    settings = dict(n_layers=3, hidden=(32,), epochs=25, batch_size=64, lr=5e-3, random_state=0)
    cond = FlowDensity(conditional=True, **settings).fit(X, Y)
    plain = FlowDensity(**settings).fit(X, Y)          # y ignored, as scikit-learn's density estimators do
    assert cond.n_context_in_ == 3 and cond.flow_.context_size == 3 and not hasattr(plain, "context_mean_")
    X_new, Y_new, _ = _three_groups(600, seed=1)
    # knowing the group is worth about log 3 nats per point
    assert cond.score(X_new, Y_new) / 600 > plain.score(X_new) / 600 + 0.7
    for k in range(3):
        drawn = cond.sample(400, y=np.eye(3)[k], random_state=k)
        assert np.linalg.norm(drawn.mean(axis=0) - centres[k]) < 0.6
        # one row per sample: the same draws as the broadcast row
        rows = np.repeat(np.eye(3)[k][None], 400, axis=0)
        np.testing.assert_array_equal(cond.sample(400, y=rows, random_state=k), drawn)
    # the density of a point is that of its own group
    point = centres[2][None]
    assert cond.score_samples(point, [[0.0, 0.0, 1.0]])[0] > cond.score_samples(point, [[1.0, 0.0, 0.0]])[0] + 5


def test_a_one_column_context_is_taken_in_every_shape():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, 300)
    X = np.c_[3.0 * y + 0.3 * rng.normal(size=300), rng.normal(size=300)]
    est = FlowDensity(conditional=True, flow="maf", **FAST, random_state=0).fit(X, y)   # 1-D y: one column
    assert est.n_context_in_ == 1
    np.testing.assert_array_equal(est.score_samples(X, y), est.score_samples(X, y[:, None]))
    assert est.score(X, y) == pytest.approx(est.score_samples(X, y).sum())
    one = est.sample(5, y=0.5, random_state=1)
    for same in (np.array([0.5]), np.array([[0.5]]), np.full(5, 0.5), np.full((5, 1), 0.5)):
        np.testing.assert_array_equal(est.sample(5, y=same, random_state=1), one)
    assert est.sample(0, y=0.5).shape == (0, 2)


def test_the_context_is_standardized_like_X():
    X, Y, _ = _three_groups(300)
    a = FlowDensity(conditional=True, **FAST, random_state=1).fit(X, Y)
    b = FlowDensity(conditional=True, **FAST, random_state=1).fit(X, Y * 5.0 - 2.0)
    np.testing.assert_allclose(b.context_mean_, a.context_mean_ * 5.0 - 2.0, rtol=1e-12)
    np.testing.assert_allclose(b.context_scale_, a.context_scale_ * 5.0, rtol=1e-12)
    # a context only conditions: rescaling it changes no density
    np.testing.assert_allclose(b.score_samples(X, Y * 5.0 - 2.0), a.score_samples(X, Y), rtol=1e-9, atol=1e-9)


def test_conditional_input_errors():
    X, Y, _ = _three_groups(200)
    est = FlowDensity(conditional=True, **FAST, random_state=0)
    with pytest.raises(ValueError, match="fit requires y to be passed.*conditional=True"):
        est.fit(X)
    with pytest.raises(ValueError, match="y has 199 row\\(s\\) but X has 200"):
        est.fit(X, Y[:-1])
    bad = Y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN or infinity \\(nan at row 3, column 1\\)"):
        est.fit(X, bad)
    with pytest.raises(ValueError, match="y must be a 1-D or 2-D array"):
        est.fit(X, Y[:, :, None])
    est.fit(X, Y)
    with pytest.raises(ValueError, match="y has 2 context column\\(s\\), but FlowDensity was fitted with 3"):
        est.score_samples(X, Y[:, :2])
    with pytest.raises(ValueError, match="score_samples requires y"):
        est.score_samples(X)
    with pytest.raises(ValueError, match="sample: y is required"):
        est.sample(3)
    with pytest.raises(ValueError, match=r"y must be one context row of 3 value\(s\) \(for every sample\) or 4 rows"):
        est.sample(4, y=np.ones((2, 3)))
    with pytest.raises(ValueError, match="sample: y contains NaN"):
        est.sample(2, y=[0.0, np.inf, 1.0])
    with pytest.raises(ValueError, match="conditional must be True or False"):
        FlowDensity(conditional="yes").fit(X, Y)
    plain = FlowDensity(**FAST, random_state=0).fit(X, Y)
    assert plain.score(X, Y) == plain.score(X)        # ignored, as scikit-learn does
    for call in (lambda: plain.score_samples(X, Y), lambda: plain.sample(2, y=Y[0])):
        with pytest.raises(ValueError, match="unconditional \\(fitted with conditional=False\\), so it takes no y"):
            call()


def test_refitting_follows_the_parameters():
    X, Y, _ = _three_groups(200)
    est = FlowDensity(conditional=True, **FAST, random_state=0).fit(X, Y)
    est.set_params(conditional=False).fit(X, Y)
    assert not hasattr(est, "context_mean_") and est.flow_.context_size == 0
    est.set_params(conditional=True).fit(X, Y[:, :2])
    assert est.n_context_in_ == 2


def test_a_conditional_fit_resumes():
    X, Y, _ = _three_groups(300)
    est = FlowDensity(conditional=True, **FAST, random_state=0).fit(X, Y)
    est.set_params(epochs=2)
    assert est._fit(X, Y, resume=True) is False
    assert est.history_.epochs == 5 and est.n_context_in_ == 3
    est.set_params(conditional=False)
    with pytest.raises(ValueError, match="cannot resume a conditional flow with conditional=False"):
        est._fit(X, Y, resume=True)


@pytest.mark.parametrize("flow", list(FLOWS))
def test_every_named_flow_fits_with_and_without_a_context(flow):
    X, Y, _ = _three_groups(150)
    if not FLOWS[flow].standardize:      # a flow on a fixed domain (angles) takes the data as they are
        X = np.arctan2(np.sin(X), np.cos(X))
    if not FLOWS[flow].networks:
        with pytest.raises(ValueError, match=f"flow='{flow}' has no conditional layers.*use one of 'realnvp'"):
            FlowDensity(flow=flow, conditional=True, **FAST).fit(X, Y)
    for conditional in (False, True) if FLOWS[flow].networks else (False,):
        est = FlowDensity(flow=flow, conditional=conditional, n_layers=2, hidden=(4,), epochs=1, batch_size=64,
                          random_state=0).fit(X, Y)
        assert type(est.flow_).__name__ == "TransformedDistribution"
        assert est.flow_.context_size == (3 if conditional else 0)
        scores = est.score_samples(X[:7], Y[:7] if conditional else None)
        assert scores.shape == (7,) and np.all(np.isfinite(scores))
        twin = io.from_bytes(io.to_bytes(est))        # and it goes through a model file
        np.testing.assert_array_equal(twin.score_samples(X[:7], Y[:7] if conditional else None), scores)


def test_ncsf_takes_angles_as_they_are():
    rng = np.random.default_rng(3)
    angles = np.stack([rng.vonmises(2.5, 3.0, 300), rng.vonmises(-1.0, 5.0, 300)], axis=1)
    est = FlowDensity(flow="ncsf", n_layers=2, hidden=(8,), epochs=3, batch_size=64, random_state=0).fit(angles)
    np.testing.assert_array_equal(est.mean_, 0.0)
    np.testing.assert_array_equal(est.scale_, 1.0)
    draws = est.sample(200, random_state=1)
    assert np.all(np.abs(draws) <= np.pi)
    with pytest.raises(ValueError):
        est.score_samples(angles[:3] + 2 * np.pi)         # off the torus: an error, not a number

def test_an_unknown_flow_lists_the_names():
    with pytest.raises(ValueError, match="flow must be one of 'realnvp', 'nice', 'maf', 'iaf', 'nsf', 'planar', "
                                         "'radial'.*; got 'glow'"):
        FlowDensity(flow="glow").fit(np.zeros((5, 2)))
    assert FlowDensity(flow="NSF", **FAST, random_state=0).fit(_three_groups(100)[0]).flow_ is not None
    import nflow_np.flows
    # every ready-made flow of nflow_np.flows has its name
    constructors = {entry.constructor for entry in FLOWS.values()}
    public = {name for name, obj in vars(nflow_np.flows).items()
              if name[:1].isupper() and callable(obj) and getattr(obj, "__module__", "") == "nflow_np.flows"}
    assert "Planar" in public and public <= constructors, sorted(public - constructors)


# ---------------------------------------------------------------------------- outlier detection

def _sklearn_checks(estimator, expected_failed=None):
    checks = pytest.importorskip("sklearn.utils.estimator_checks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = checks.check_estimator(estimator, on_fail=None, expected_failed_checks=expected_failed)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    return results


def test_scikit_learns_outlier_checks_pass():
    results = _sklearn_checks(FlowOutlierDetector(n_layers=2, hidden=(4,), epochs=2, batch_size=64))
    names = {r["check_name"] for r in results if r["status"] == "passed"}
    # the outlier detectors' own checks ran and passed
    assert {"check_outliers_train", "check_outliers_fit_predict", "check_estimators_unfitted"} <= names
    from sklearn.base import is_outlier_detector
    assert is_outlier_detector(FlowOutlierDetector())


def test_scikit_learns_checks_on_a_conditional_model():
    # score_samples(X) without y cannot work for p(x | y): the two checks that call it so are expected to fail
    reason = "a conditional density needs y in score_samples"
    _sklearn_checks(FlowDensity(conditional=True, n_layers=2, hidden=(4,), epochs=2, batch_size=64),
                    {"check_methods_sample_order_invariance": reason, "check_methods_subset_invariance": reason})


def test_the_threshold_is_the_contamination_quantile():
    X, _, _ = _three_groups(400)
    det = FlowOutlierDetector(contamination=0.05, **FAST, random_state=0).fit(X)
    scores = det.score_samples(X)
    assert det.offset_ == pytest.approx(np.quantile(scores, 0.05), abs=0)
    np.testing.assert_allclose(det.decision_function(X), scores - det.offset_, rtol=0, atol=0)
    labels = det.predict(X)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) == {-1, 1}
    assert (labels == -1).sum() == 20
    np.testing.assert_array_equal(labels, np.where(scores >= det.offset_, 1, -1))
    np.testing.assert_array_equal(det.fit_predict(X), labels)        # seeded: the same fit
    auto = FlowOutlierDetector(**FAST, random_state=0).fit(X)
    assert auto.offset_ == pytest.approx(np.quantile(auto.score_samples(X), 0.001), abs=0)
    assert (auto.predict(X) == -1).sum() == 1


def test_far_points_are_outliers():
    X, _, _ = _three_groups(600)
    det = FlowOutlierDetector(contamination=0.01, n_layers=3, hidden=(32,), epochs=20, batch_size=64, lr=5e-3,
                              random_state=0).fit(X)
    new, _, _ = _three_groups(200, seed=3)
    assert (det.predict(new) == 1).mean() > 0.9
    np.testing.assert_array_equal(det.predict([[0.0, -4.0], [12.0, 12.0], [-8.0, 0.0], [0.0, 8.0]]), [-1, -1, -1, -1])


def test_a_conditional_detector_judges_a_point_by_its_context():
    X, Y, centres = _three_groups(600)
    det = FlowOutlierDetector(conditional=True, contamination=0.01, n_layers=3, hidden=(32,), epochs=20,
                              batch_size=64, lr=5e-3, random_state=0).fit(X, Y)
    point = np.repeat(centres[:1], 3, axis=0)          # the centre of group 0, said to be in group 0, 1, 2
    np.testing.assert_array_equal(det.predict(point, np.eye(3)), [1, -1, -1])
    assert det.fit_predict(X, Y).shape == (600,)


@pytest.mark.parametrize("contamination", [0.0, 0.6, -0.1, "high", True, np.nan])
def test_contamination_is_validated(contamination):
    with pytest.raises(ValueError, match="contamination must be 'auto' or a float in \\(0, 0.5\\]"):
        FlowOutlierDetector(contamination=contamination, **FAST).fit(np.zeros((5, 2)) + np.arange(5)[:, None])


def test_unfitted_detector():
    det = FlowOutlierDetector()
    for call in (det.predict, det.decision_function, det.score_samples):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(np.zeros((2, 2)))


# ---------------------------------------------------------------------------- model files

@pytest.mark.parametrize("cls, conditional", [(FlowDensity, True), (FlowOutlierDetector, False),
                                              (FlowOutlierDetector, True)])
def test_model_file_round_trip(tmp_path, cls, conditional):
    X, Y, _ = _three_groups(200)
    extra = {"contamination": 0.03} if cls is FlowOutlierDetector else {}
    est = cls(flow="nsf", conditional=conditional, **FAST, random_state=2, **extra).fit(X, Y)
    path = tmp_path / "model.npz"
    io.save(est, path)
    y = Y if conditional else None
    for twin in (io.load(path), pickle.loads(pickle.dumps(est))):
        assert type(twin) is cls and twin.get_params() == est.get_params()
        np.testing.assert_array_equal(twin.score_samples(X, y), est.score_samples(X, y))
        np.testing.assert_array_equal(twin.sample(6, random_state=1, y=None if y is None else Y[0]),
                                      est.sample(6, random_state=1, y=None if y is None else Y[0]))
        if conditional:
            np.testing.assert_array_equal(twin.context_mean_, est.context_mean_)
            np.testing.assert_array_equal(twin.context_scale_, est.context_scale_)
        if cls is FlowOutlierDetector:
            assert twin.offset_ == est.offset_ and twin.contamination == 0.03
            np.testing.assert_array_equal(twin.predict(X, y), est.predict(X, y))


def _contents(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__spec__").tobytes().decode("utf-8")), arrays


def _write(path, spec, arrays):
    arrays = dict(arrays, __spec__=np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_damaged_conditional_files_are_refused(tmp_path):
    X, Y, _ = _three_groups(200)
    path = tmp_path / "m.npz"
    io.save(FlowOutlierDetector(conditional=True, **FAST, random_state=0).fit(X, Y), path)
    spec, arrays = _contents(path)
    no_offset = json.loads(json.dumps(spec))
    del no_offset["estimator"]["offset"]
    with pytest.raises(ValueError, match="a FlowOutlierDetector needs finite offset; got None"):
        io.load(_write(tmp_path / "a.npz", no_offset, arrays))
    unconditional = json.loads(json.dumps(spec))
    unconditional["estimator"]["params"]["conditional"] = False
    with pytest.raises(ValueError, match="the estimator's context does not match its flow"):
        io.load(_write(tmp_path / "b.npz", unconditional, arrays))
    no_context = json.loads(json.dumps(spec))
    for key in ("context_mean", "context_scale"):
        del no_context["estimator"]["arrays"][key]
    with pytest.raises(ValueError, match="the estimator's context does not match its flow|not in the spec"):
        io.load(_write(tmp_path / "c.npz", no_context, arrays))


def test_grid_search_over_a_conditional_model():
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, Y, _ = _three_groups(300)
    search = model_selection.GridSearchCV(FlowDensity(conditional=True, hidden=(8,), epochs=2, batch_size=64,
                                                      random_state=0), {"n_layers": [1, 2]}, cv=2)
    search.fit(X, Y)     # each fold's score is the held-out log p(x | y)
    assert np.isfinite(search.best_score_) and search.best_estimator_.n_context_in_ == 3
    base = pytest.importorskip("sklearn.base")
    det = FlowOutlierDetector(conditional=True, contamination=0.2, flow="maf")
    twin = base.clone(det)
    assert twin.get_params() == det.get_params()
    assert repr(det) == "FlowOutlierDetector(flow='maf', conditional=True, contamination=0.2)"
