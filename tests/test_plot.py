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
