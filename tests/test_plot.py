"""nflow_np.plot: every figure renders to a real PNG, bad inputs are refused, matplotlib stays optional."""

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
matplotlib.use("Agg")   # before pyplot: no display in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nflow_np import bijectors as nb  # noqa: E402
from nflow_np import datasets, flows, plot  # noqa: E402
from nflow_np.distributions import MultivariateNormalDiag, Normal, TransformedDistribution  # noqa: E402
from nflow_np.train import History  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_renders(fig, path, n_axes):
    """``fig`` is a Figure with ``n_axes`` axes that saves to a PNG with something drawn in it."""
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    # an empty 60-dpi canvas compresses to well under 2 kB; scatter points and contours do not
    assert len(data) > 4000, len(data)


def seed000_flow():
    stages = [nb.Shift([0.0, -2.0]), nb.Scale([2.0, 1.5]), nb.Rotation(0.7), nb.Sigmoid()]
    base = MultivariateNormalDiag(loc=[0.0, 0.0], scale_diag=[0.5, 0.5])
    return TransformedDistribution(base, nb.Chain(list(reversed(stages))))


# ---------------------------------------------------------------- plot_stages
def test_stages_of_a_chain_one_panel_per_bijector(tmp_path):
    flow = seed000_flow()
    fig = plot.plot_stages(flow, n=400, rng=0)
    assert_renders(fig, tmp_path / "stages.png", 1 + 4)
    titles = [ax.get_title() for ax in fig.axes]
    # sampling order: the Chain's last member first
    assert titles == ["base: MultivariateNormalDiag", "1. Shift", "2. Scale", "3. Rotation", "4. Sigmoid"]


def test_stages_follow_the_points_through_the_chain():
    flow = seed000_flow()
    fig = plot.plot_stages(flow, n=300, rng=5, titles=["shift", "scale", "rotate", "sigmoid"], clip_quantile=0)
    offsets = [ax.collections[0].get_offsets() for ax in fig.axes]
    z = flow.distribution.sample(300, rng=5)
    np.testing.assert_allclose(offsets[0], z)
    np.testing.assert_allclose(offsets[-1], flow.bijector.forward(z), rtol=1e-12)
    assert fig.axes[3].get_title() == "rotate"
    # four quadrant colours, and the base points of one colour share a quadrant
    colours = fig.axes[0].collections[0].get_facecolors()
    assert len(np.unique(colours, axis=0)) == 4


def test_stages_of_a_ready_made_flow_in_a_grid(tmp_path):
    flow = flows.RealNVP(2, n_layers=3, hidden=(4,), rng=0)
    fig = plot.plot_stages(flow, n=200, rng=1, ncols=2)
    assert_renders(fig, tmp_path / "realnvp.png", 1 + 3)


def test_stages_of_a_single_bijector_give_two_panels(tmp_path):
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), nb.Affine(shift=[1.0, 2.0]))
    fig = plot.plot_stages(flow, n=200, rng=0)
    assert_renders(fig, tmp_path / "single.png", 2)


def test_stages_of_a_higher_dimensional_flow_plot_two_coordinates(tmp_path):
    flow = flows.RealNVP(4, n_layers=2, hidden=(4,), rng=0)
    fig = plot.plot_stages(flow, n=200, rng=0)
    assert_renders(fig, tmp_path / "4d.png", 3)
    assert "first 2 of 4 coordinates" in fig.texts[0].get_text()


def test_stages_into_given_axes():
    fig, axes = plt.subplots(2, 3)
    out = plot.plot_stages(seed000_flow(), n=100, rng=0, axes=axes)
    assert out is fig and len(fig.axes) == 6
    with pytest.raises(ValueError, match="at least 5 axes"):
        plot.plot_stages(seed000_flow(), n=100, rng=0, axes=axes[0])


def test_stages_bad_inputs():
    scalar = TransformedDistribution(Normal(0.0, 1.0), nb.Exp())
    with pytest.raises(ValueError, match="at least 2 coordinates"):
        plot.plot_stages(scalar, n=10)
    with pytest.raises(ValueError, match="one title per stage"):
        plot.plot_stages(seed000_flow(), n=10, titles=["a"])
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        plot.plot_stages(seed000_flow(), n=0)
    with pytest.raises(ValueError, match="clip_quantile"):
        plot.plot_stages(seed000_flow(), n=10, clip_quantile=0.5)
    with pytest.raises(ValueError, match="ncols"):
        plot.plot_stages(seed000_flow(), n=10, ncols=0)
    with pytest.raises(TypeError, match="n must be an int"):
        plot.plot_stages(seed000_flow(), n=10.0)
    with pytest.raises(TypeError, match="TransformedDistribution"):
        plot.plot_stages(nb.Exp(), n=10)


# ---------------------------------------------------------------- plot_density
@pytest.mark.parametrize("kind, n_axes", [("contour", 1), ("surface", 1), ("both", 2)])
def test_density_kinds(tmp_path, kind, n_axes):
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), nb.Affine(shift=[1.0, -0.5]))
    fig = plot.plot_density(flow, ((-3, 4), (-4, 3)), grid=40, kind=kind, title=kind)
    assert_renders(fig, tmp_path / f"{kind}.png", n_axes)
    assert [ax.name for ax in fig.axes] == {"contour": ["rectilinear"], "surface": ["3d"],
                                           "both": ["rectilinear", "3d"]}[kind]


def test_density_of_a_callable_in_chunks_and_log_scale(tmp_path):
    calls = []

    def log_density(x):
        calls.append(len(x))
        return datasets.bimodal_log_prob(x)

    fig = plot.plot_density(log_density, ((-5, 5), (-5, 5)), grid=(30, 20), chunk_size=256, log=True)
    assert_renders(fig, tmp_path / "callable.png", 1)
    assert sum(calls) == 30 * 20 and max(calls) == 256


def test_density_of_a_bounded_flow_inside_its_support(tmp_path):
    fig = plot.plot_density(seed000_flow(), ((0.01, 0.99), (0.01, 0.99)), grid=30)
    assert_renders(fig, tmp_path / "bounded.png", 1)
    with pytest.raises(ValueError, match="inside the density's support"):
        plot.plot_density(seed000_flow(), ((-1, 2), (0.01, 0.99)), grid=30)


def test_density_float32_flow():
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0, dtype=np.float32)
    assert isinstance(plot.plot_density(flow, ((-2, 2), (-2, 2)), grid=10), Figure)


def test_density_into_given_axes():
    fig = plt.figure()
    flat, three_d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, projection="3d")
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    assert plot.plot_density(flow, ((-2, 2), (-2, 2)), grid=10, kind="both", ax=[flat, three_d]) is fig
    with pytest.raises(ValueError, match="3d"):
        plot.plot_density(flow, ((-2, 2), (-2, 2)), grid=10, kind="surface", ax=flat)


@pytest.mark.parametrize("bounds", [((-1, 1),), ((1, -1), (0, 1)), ((0, 0), (0, 1)), ((0, np.inf), (0, 1)),
                                    "wide", ((0, 1, 2), (0, 1, 2))])
def test_density_bad_bounds(bounds):
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    with pytest.raises(ValueError, match="bounds"):
        plot.plot_density(flow, bounds, grid=10)


def test_density_bad_inputs():
    box = ((-1, 1), (-1, 1))
    with pytest.raises(ValueError, match=r"event shape \(2,\)"):
        plot.plot_density(flows.RealNVP(3, n_layers=2, hidden=(4,), rng=0), box)
    with pytest.raises(ValueError, match=r"event shape \(2,\)"):
        plot.plot_density(Normal(0.0, 1.0), box)
    with pytest.raises(ValueError, match="one value per 2-D point"):
        plot.plot_density(lambda x: x, box, grid=5)
    with pytest.raises(ValueError, match="grid"):
        plot.plot_density(datasets.bimodal_log_prob, box, grid=1)
    with pytest.raises(ValueError, match="kind"):
        plot.plot_density(datasets.bimodal_log_prob, box, kind="heatmap")
    with pytest.raises(ValueError, match="chunk_size"):
        plot.plot_density(datasets.bimodal_log_prob, box, chunk_size=0)
    with pytest.raises(TypeError, match="log_prob"):
        plot.plot_density(42, box)


# ---------------------------------------------------------------- plot_samples
def test_samples_side_by_side_and_overlaid(tmp_path):
    rng = np.random.default_rng(0)
    data, samples = datasets.two_moons(500, rng=rng), rng.normal(size=(700, 2))
    fig = plot.plot_samples(data, samples, title="two moons")
    assert_renders(fig, tmp_path / "side.png", 2)
    assert [ax.get_title() for ax in fig.axes] == ["data", "samples"]
    fig = plot.plot_samples(data, samples, overlay=True, title="overlaid")
    assert_renders(fig, tmp_path / "overlay.png", 1)
    assert fig.axes[0].get_legend() is not None


def test_samples_one_dimensional_histograms(tmp_path):
    rng = np.random.default_rng(1)
    fig = plot.plot_samples(rng.exponential(size=1000), rng.exponential(size=(800, 1)))
    assert_renders(fig, tmp_path / "hist.png", 2)


def test_samples_into_given_axes():
    fig, ax = plt.subplots()
    rng = np.random.default_rng(2)
    assert plot.plot_samples(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), ax=ax) is fig
    assert len(fig.axes) == 1


def test_samples_bad_inputs():
    good = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"shape \(n,\), \(n, 1\) or \(n, 2\)"):
        plot.plot_samples(np.zeros((10, 3)), good)
    with pytest.raises(ValueError, match="both be 1-D or both 2-D"):
        plot.plot_samples(good, np.zeros(10))
    with pytest.raises(ValueError, match="empty"):
        plot.plot_samples(good, np.zeros((0, 2)))
    fig, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="one axes"):
        plot.plot_samples(good, good, ax=axes)


# ---------------------------------------------------------------- plot_history
def test_history_from_fit(tmp_path):
    from nflow_np.train import fit

    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    history = fit(flow, datasets.two_moons(300, rng=0), epochs=3, batch_size=100, validation_split=0.2, rng=1)
    fig = plot.plot_history(history, title="two moons")
    assert_renders(fig, tmp_path / "history.png", 1)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[:2] == ["train", "validation"] and labels[2].startswith("kept")


def test_history_without_validation_and_as_mapping():
    h = History(train_loss=[3.0, 2.0, 1.5])
    fig = plot.plot_history(h, log_scale=True)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train"]
    assert fig.axes[0].get_yscale() == "log"
    fig = plot.plot_history({"train_loss": [2.0, 1.0], "val_loss": [2.5, 1.5], "best_epoch": 1})
    assert len(fig.axes[0].get_lines()) == 3


def test_history_bad_inputs():
    with pytest.raises(ValueError, match="no training loss"):
        plot.plot_history(History())
    with pytest.raises(TypeError, match="History"):
        plot.plot_history([1.0, 2.0])


# ---------------------------------------------------------------- matplotlib stays optional
def test_import_does_not_load_matplotlib():
    code = ("import sys; import nflow_np, nflow_np.plot; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)   # makes `import name` fail
    with pytest.raises(ImportError, match=r"pip install nflow_np\[plot\]"):
        plot.plot_history(History(train_loss=[1.0]))


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- a conditional density's context
def _conditional_estimator():
    import nflow_np
    from nflow_np.estimator import FlowDensity
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 200)
    X = np.array([[-3.0, 0.0], [3.0, 0.0]])[label] + 0.5 * rng.normal(size=(200, 2))
    with nflow_np.backend("numpy"):
        est = FlowDensity(conditional=True, n_layers=2, hidden=(8,), epochs=10, batch_size=64, lr=1e-2,
                          random_state=0).fit(X, np.eye(2)[label])
    return est, X, label


def test_density_at_one_context(tmp_path):
    import nflow_np
    est, _, _ = _conditional_estimator()
    box = ((-6, 6), (-3, 3))
    gx, gy = np.meshgrid(np.linspace(-6, 6, 41), np.linspace(-3, 3, 21))
    points = np.stack([gx.ravel(), gy.ravel()], axis=-1)
    with nflow_np.backend("numpy"):
        for row, side in (([1.0, 0.0], -1), ([0.0, 1.0], 1)):
            fig = plot.plot_density(est, box, grid=(41, 21), context=row, log=True, levels=np.linspace(-60, 0, 61))
            assert_renders(fig, tmp_path / "cond.png", 1)
            lp = est.score_samples(points, np.tile(row, (len(points), 1)))
            assert np.sign(points[np.argmax(lp)][0]) == side      # the first category lies left, the second right
            # the filled cells are those of the estimator's log-density at that context
            contours = fig.axes[0].collections[0]
            drawn = [i for i, path in enumerate(contours.get_paths()) if len(path.vertices)]
            assert contours.levels[max(drawn) + 1] >= lp.max() > contours.levels[max(drawn)]
        flow = flows.RealNVP(2, n_layers=2, hidden=(4,), context=1, rng=0)
        assert_renders(plot.plot_density(flow, box, grid=30, context=[0.5]), tmp_path / "flow.png", 1)


def test_density_context_errors():
    est, _, _ = _conditional_estimator()
    box = ((-1, 1), (-1, 1))
    with pytest.raises(ValueError, match="is conditional .* passing context= one row of 2 value"):
        plot.plot_density(est, box, grid=5)
    with pytest.raises(ValueError, match="context must be one row of 2 value"):
        plot.plot_density(est, box, grid=5, context=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="conditional \\(a context of size 1\\)"):
        plot.plot_density(flows.MAF(2, n_layers=1, hidden=(4,), context=1, rng=0), box, grid=5)
    with pytest.raises(ValueError, match="unconditional"):
        plot.plot_density(flows.MAF(2, n_layers=1, hidden=(4,), rng=0), box, grid=5, context=[1.0])


def test_samples_coloured_by_a_categorical_context(tmp_path):
    import nflow_np
    est, X, label = _conditional_estimator()
    Y = np.eye(2)[label]
    with nflow_np.backend("numpy"):
        drawn = est.sample(len(X), y=Y, random_state=0)
    fig = plot.plot_samples(X, drawn, context=Y)
    assert_renders(fig, tmp_path / "categories.png", 2)
    # one scatter per category on each panel, each holding that category's points
    for ax, arr in zip(fig.axes, (X, drawn)):
        offsets = [c.get_offsets() for c in ax.collections]
        assert len(offsets) == 2
        np.testing.assert_array_equal(offsets[1], arr[label == 1])
        assert [t.get_text() for t in ax.get_legend().get_texts()][0].endswith("context 0")
    fig = plot.plot_samples(X, drawn[:50], context=(Y, Y[:50]), overlay=True)
    assert_renders(fig, tmp_path / "overlay.png", 1)


def test_samples_coloured_by_a_value_context(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 300)
    data = np.c_[np.cos(3 * t), np.sin(3 * t)] + 0.05 * rng.normal(size=(300, 2))
    fig = plot.plot_samples(data, data[::-1], context=t)
    assert_renders(fig, tmp_path / "values.png", 3)        # two panels and a colour bar
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array(), t)
    assert fig.axes[0].collections[0].get_clim() == (t.min(), t.max())


def test_samples_context_errors():
    good = np.zeros((10, 2))
    with pytest.raises(ValueError, match="one context value or row per point \\(10 of them\\)"):
        plot.plot_samples(good, good, context=np.zeros(9))
    with pytest.raises(ValueError, match="must be one-hot"):
        plot.plot_samples(good, good, context=np.ones((10, 2)))
    with pytest.raises(ValueError, match="pass context as a pair"):
        plot.plot_samples(good, good[:5], context=np.zeros(10))
    with pytest.raises(ValueError, match="context colours 2-D points"):
        plot.plot_samples(np.zeros(10), np.zeros(10), context=np.zeros(10))
    with pytest.raises(ValueError, match="must be finite"):
        plot.plot_samples(good, good, context=np.full(10, np.nan))
