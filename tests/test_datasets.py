"""Toy 2-D data sets: shapes, dtypes, reproducibility, exact densities and the bitmap-font text."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import special, stats

from nflow_np import datasets as ds

ALL_SAMPLERS = sorted(ds.DATASETS)


def _sampler(name):
    if name == "text":
        return lambda n, rng=None, **kw: ds.text_points("flow", n, rng, **kw)
    if name == "image":
        image = np.arange(12.0).reshape(3, 4)
        return lambda n, rng=None, **kw: ds.from_image(image, n, rng, **kw)
    return ds.DATASETS[name]


@pytest.mark.parametrize("name", ALL_SAMPLERS + ["text", "image"])
def test_shape_dtype_reproducible(name):
    f = _sampler(name)
    a = f(257, 3)
    assert a.shape == (257, 2) and a.dtype == np.float64 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, f(257, np.random.default_rng(3)))
    assert not np.array_equal(a, f(257, 4))
    b = f(257, 3, dtype=np.float32)
    assert b.dtype == np.float32
    # float32 is the float64 draw rounded, not a different sample
    np.testing.assert_array_equal(b, a.astype(np.float32))
    # A Generator is advanced, not reset
    g = np.random.default_rng(0)
    assert not np.array_equal(f(10, g), f(10, g))
    assert f(1, 0).shape == (1, 2)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_load_matches_sampler(name):
    np.testing.assert_array_equal(ds.load(name, 50, 1), ds.DATASETS[name](50, 1))
    assert ds.load(name, 5, 1, dtype=np.float32).dtype == np.float32


def test_load_aliases_and_params():
    np.testing.assert_array_equal(ds.load("eight_gaussians", 20, 0), ds.eight_gaussians(20, 0))
    np.testing.assert_array_equal(ds.load("Two_Moons", 20, 0, noise=0.0), ds.two_moons(20, 0, noise=0.0))
    np.testing.assert_array_equal(ds.load("2spirals", 20, 0), ds.two_spirals(20, 0))


def test_load_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown data set 'swiss'.*8gaussians.*two-spirals"):
        ds.load("swiss", 10)
    with pytest.raises(TypeError, match="name must be a str"):
        ds.load(3, 10)


@pytest.mark.parametrize("name", ALL_SAMPLERS + ["text", "image"])
@pytest.mark.parametrize("n, exc", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                    ("10", TypeError), (None, TypeError)])
def test_bad_n(name, n, exc):
    with pytest.raises(exc, match="n must be a positive int"):
        _sampler(name)(n, 0)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_bad_rng_and_dtype(name):
    f = ds.DATASETS[name]
    with pytest.raises(TypeError, match="rng"):
        f(5, rng="seed")
    with pytest.raises(TypeError, match="dtype"):
        f(5, 0, dtype=np.int64)
    assert f(5, np.int64(7)).shape == (5, 2)


def test_bad_parameters():
    with pytest.raises(ValueError, match="noise"):
        ds.two_moons(5, noise=-0.1)
    with pytest.raises(ValueError, match="std"):
        ds.eight_gaussians(5, std=0.0)
    with pytest.raises(ValueError, match="scale"):
        ds.eight_gaussians_log_prob(np.zeros(2), scale=-1.0)
    with pytest.raises(TypeError, match="noise"):
        ds.two_spirals(5, noise="big")
    with pytest.raises(ValueError, match="jitter"):
        ds.text_points("a", 5, jitter=1.5)


def test_noise_free_moons_lie_on_circles():
    x = ds.two_moons(2000, 0, noise=0.0)
    scale = np.sqrt(0.5 * (0.75 + 0.5 - 4 / np.pi**2 + (2 / np.pi - 0.25) ** 2))
    p = x * scale + np.array([0.5, 0.25])
    r_upper = np.hypot(p[:, 0], p[:, 1])
    r_lower = np.hypot(p[:, 0] - 1.0, p[:, 1] - 0.5)
    assert np.all(np.minimum(abs(r_upper - 1), abs(r_lower - 1)) < 1e-12)
    assert abs(np.mean(np.isclose(r_upper, 1.0)) - 0.5) < 0.05


def test_rings_radii():
    x = ds.rings(20000, 0)
    r = np.hypot(x[:, 0], x[:, 1])
    ring = np.clip(np.rint(r / 0.75), 1, 4)
    assert np.abs(r - 0.75 * ring).max() < 0.5
    np.testing.assert_allclose(np.bincount(ring.astype(int))[1:] / len(r), 0.25, atol=0.02)


# --- exact densities -------------------------------------------------------------------------

LOG_PROB_CASES = {
    "bimodal": (ds.bimodal_log_prob, 8.0, 0.04),
    "8gaussians": (ds.eight_gaussians_log_prob, 3.5, 0.02),
    "checkerboard": (ds.checkerboard_log_prob, 3.0, 0.05),
}


@pytest.mark.parametrize("name", sorted(LOG_PROB_CASES))
def test_density_integrates_to_one(name):
    log_prob, half_width, h = LOG_PROB_CASES[name]
    # Midpoints: a cell-centred grid never lands on the checkerboard's edges
    t = np.arange(-half_width + h / 2, half_width, h)
    grid = np.stack(np.meshgrid(t, t), axis=-1)
    total = np.exp(log_prob(grid)).sum() * h * h
    assert abs(total - 1.0) < 1e-3, total


def _scipy_mixture(x, means, std):
    comps = [stats.multivariate_normal(m, std**2 * np.eye(2)).logpdf(x) for m in means]
    return special.logsumexp(np.stack(comps), axis=0) - np.log(len(means))


def test_bimodal_log_prob_matches_scipy():
    x = np.random.default_rng(0).normal(size=(200, 2)) * 4
    ref = _scipy_mixture(x, [(1.5, 1.5), (-1.5, -1.5)], 1.0)
    np.testing.assert_allclose(ds.bimodal_log_prob(x), ref, rtol=1e-12)


@pytest.mark.parametrize("scale, std", [(2.0, 0.2), (4.0, 0.5)])
def test_eight_gaussians_log_prob_matches_scipy(scale, std):
    x = np.random.default_rng(1).normal(size=(200, 2)) * scale
    angles = np.arange(8) * np.pi / 4
    means = scale * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ref = _scipy_mixture(x, means, std)
    np.testing.assert_allclose(ds.eight_gaussians_log_prob(x, scale=scale, std=std), ref, rtol=1e-12)


def test_log_prob_far_away_is_finite_and_keeps_shape_and_dtype():
    # Far from every mode each component's log-density is ~ -1e6: a naive log(sum(exp)) gives -inf
    far = np.array([[1e3, -1e3], [0.0, 2e3]])
    for f in (ds.bimodal_log_prob, ds.eight_gaussians_log_prob):
        v = f(far)
        assert np.all(np.isfinite(v)) and np.all(v < -1e4)
        assert f(np.zeros((3, 4, 2))).shape == (3, 4)
        assert f(np.zeros(2)).shape == ()
        assert f(np.zeros((5, 2), np.float32)).dtype == np.float32
    assert ds.checkerboard_log_prob(np.zeros((5, 2), np.float32)).dtype == np.float32


@pytest.mark.parametrize("f", [ds.bimodal_log_prob, ds.eight_gaussians_log_prob, ds.checkerboard_log_prob])
def test_log_prob_rejects_bad_input(f):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        f(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="finite"):
        f(np.array([np.nan, 0.0]))


def test_checkerboard_log_prob_support():
    inside_black = np.array([[-1.5, -1.5], [-0.5, -0.5], [0.5, 0.5], [1.5, 1.5], [-1.5, 0.5], [0.5, -1.5],
                             [-0.5, 1.5], [1.5, -0.5]])
    white = inside_black + np.array([1.0, 0.0])
    white[white[:, 0] > 2, 0] -= 2.0
    off_board = np.array([[2.5, 0.5], [-2.5, -1.5], [0.5, 3.0], [100.0, -100.0], [2.0, -1.5]])
    np.testing.assert_array_equal(ds.checkerboard_log_prob(inside_black), np.full(8, -np.log(8.0)))
    assert np.all(ds.checkerboard_log_prob(white) == -np.inf)
    assert np.all(ds.checkerboard_log_prob(off_board) == -np.inf)


# --- samples against their densities ---------------------------------------------------------

def _assert_moments(x, mean, cov, tol):
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=tol)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=3 * tol)


def test_bimodal_moments():
    x = ds.bimodal(50_000, 0)
    _assert_moments(x, [0, 0], [[3.25, 2.25], [2.25, 3.25]], 0.03)
    assert abs(np.mean(x.sum(axis=1) > 0) - 0.5) < 0.01


def test_eight_gaussians_moments_and_modes():
    x = ds.eight_gaussians(40_000, 0, scale=2.0, std=0.2)
    _assert_moments(x, [0, 0], (2.0**2 / 2 + 0.2**2) * np.eye(2), 0.03)
    k = np.rint(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)).astype(int) % 8
    np.testing.assert_allclose(np.bincount(k, minlength=8) / len(x), 1 / 8, atol=0.01)
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 1]).mean(), 2.0, atol=0.02)


def test_checkerboard_samples_in_support_and_balanced():
    x = ds.checkerboard(40_000, 0)
    assert np.all(np.isfinite(ds.checkerboard_log_prob(x)))
    # Each marginal is U(-2, 2); black squares sit on the main diagonals, hence the +1/4 covariance
    _assert_moments(x, [0, 0], [[4 / 3, 0.25], [0.25, 4 / 3]], 0.03)
    cell = (np.floor(x[:, 0]) + 2) * 4 + (np.floor(x[:, 1]) + 2)
    counts = np.bincount(cell.astype(int), minlength=16)
    assert np.count_nonzero(counts) == 8
    np.testing.assert_allclose(counts[counts > 0] / len(x), 1 / 8, atol=0.01)


def test_true_entropy():
    assert ds.true_entropy("checkerboard") == np.log(8.0)
    # Well separated modes: entropy of one component plus log(number of modes)
    h8 = ds.true_entropy("8gaussians", n_mc=50_000)
    assert abs(h8 - (np.log(2 * np.pi * np.e * 0.2**2) + np.log(8))) < 0.02
    hb = ds.true_entropy("bimodal", n_mc=50_000)
    h_one = np.log(2 * np.pi * np.e)
    assert h_one < hb < h_one + np.log(2)
    # Same default seed, same number
    assert ds.true_entropy("bimodal", n_mc=1000) == ds.true_entropy("bimodal", n_mc=1000)
    # Entropy is -E[log p]: the MC estimate agrees with an independent draw
    x = ds.bimodal(50_000, 123)
    assert abs(hb + ds.bimodal_log_prob(x).mean()) < 0.03
    with pytest.raises(ValueError, match="not known in closed form"):
        ds.true_entropy("pinwheel")
    with pytest.raises(ValueError, match="unknown data set"):
        ds.true_entropy("nope")


# --- the curve sets: two-moons, rings, two-spirals ----------------------------------------------

CURVES = {"two-moons": (ds.two_moons_log_prob, 3.0), "rings": (ds.rings_log_prob, 3.6),
          "two-spirals": (ds.two_spirals_log_prob, 4.2)}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_curve_densities_integrate_to_one(name):
    log_prob, half = CURVES[name]
    # a grid step of half the noise's width: the midpoint rule is exact to far below the tolerance for these
    # smooth densities; fewer quadrature nodes keep it fast (their effect on the mass is below 1e-4)
    g = np.linspace(-half, half, 121)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    kwargs = {} if name == "rings" else {"nodes": 256}
    assert abs(np.exp(log_prob(pts, **kwargs)).sum() * (g[1] - g[0]) ** 2 - 1.0) < 2e-3


@pytest.mark.parametrize("name", sorted(CURVES))
def test_curve_densities_match_the_samplers_box_counts(name):
    # an independent check: the share of a million samples in small boxes around points of high density
    log_prob, _ = CURVES[name]
    x = ds.load(name, 1_000_000, rng=3)
    centers = x[:6]
    h = 0.1
    for c in centers:
        share = np.mean(np.all(np.abs(x - c) < h / 2, axis=1))
        g = np.linspace(-h / 2, h / 2, 9)[1::2] * 1.0
        cell = np.stack(np.meshgrid(c[0] + g, c[1] + g), -1).reshape(-1, 2)
        expected = np.exp(log_prob(cell)).mean() * h * h
        # binomial noise of the count (about 2-5%), plus the box average's midpoint rule
        assert abs(share - expected) < 4 * np.sqrt(expected / len(x)) + 0.02 * expected, (c, share, expected)


def test_curve_densities_keep_dtype_and_shape_and_check_input():
    x = ds.rings(12, 0).astype(np.float32).reshape(3, 4, 2)
    out = ds.rings_log_prob(x)
    assert out.shape == (3, 4) and out.dtype == np.float32
    assert ds.two_moons_log_prob(x).shape == (3, 4)
    with pytest.raises(ValueError, match="two_moons_log_prob"):
        ds.two_moons_log_prob(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="two_spirals_log_prob"):
        ds.two_spirals_log_prob([[np.nan, 0.0]])


def test_curve_entropies():
    # the tabulated defaults agree with a fresh Monte Carlo estimate
    for name in ("two-moons", "rings", "two-spirals"):
        x = ds.load(name, 4000, rng=99)
        log_p = ds.LOG_PROBS[name](x)
        # within 4 standard errors of a fresh Monte Carlo estimate
        assert abs(ds.true_entropy(name) + float(np.mean(log_p))) < 4 * log_p.std() / np.sqrt(len(x)), name


# --- text and images -------------------------------------------------------------------------

def test_font_covers_required_characters():
    required = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?-")
    assert required <= set(ds.FONT)


@pytest.mark.parametrize("char", sorted(ds.FONT))
def test_every_glyph_renders(char):
    image = ds.render_text(char)
    assert image.shape == (7, 5) and image.dtype == bool
    assert image.any() == (char != " ")
    np.testing.assert_array_equal(image, ds.render_text(char.lower()))


def test_glyphs_are_distinct():
    seen = {}
    for char in ds.FONT:
        key = ds.render_text(char).tobytes()
        assert key not in seen, f"{char!r} and {seen.get(key)!r} share a bitmap"
        seen[key] = char


def test_render_text_spacing():
    image = ds.render_text("flow")
    assert image.shape == (7, 4 * 5 + 3)
    assert not image[:, [5, 11, 17]].any()  # the one-column gaps
    np.testing.assert_array_equal(image[:, 6:11], ds.render_text("L"))


def test_text_points_flow_has_four_letter_bands():
    x = ds.text_points("flow", 2000, 0)
    column = 8.0 / 23  # the word is 23 pixel columns wide and spans [-4, 4]
    assert x[:, 0].min() >= -4 and x[:, 0].max() < 4
    assert abs(x[:, 0].min() + 4) < 0.05 and abs(x[:, 0].max() - 4) < 0.05
    # Histogram with bins of half a pixel column: four occupied runs, split by the three gap columns
    counts, _ = np.histogram(x[:, 0], bins=46, range=(-4, 4))
    occupied = counts > 0
    runs = np.flatnonzero(np.diff(occupied.astype(int)) == 1).size + occupied[0]
    assert runs == 4
    # The empty gaps sit where the blank columns are
    for gap_col in (5, 11, 17):
        lo, hi = -4 + gap_col * column, -4 + (gap_col + 1) * column
        assert not np.any((x[:, 0] >= lo + 1e-9) & (x[:, 0] < hi - 1e-9))
    # Aspect kept: 7 rows tall at the same scale, centred, y up (the L's foot is at the bottom)
    assert abs(x[:, 1].max() - 3.5 * column) < 0.05 and abs(x[:, 1].min() + 3.5 * column) < 0.05
    in_l = (x[:, 0] > -4 + 7 * column) & (x[:, 0] < -4 + 11 * column)
    assert np.all(x[in_l, 1] < -2.5 * column)


def test_text_points_uniform_over_lit_pixels():
    x = ds.text_points("i", 70_000, 0)
    image = ds.render_text("i")
    column = 8.0 / 3  # bounding box of "I" is its 3 middle columns
    col = np.floor((x[:, 0] + 4) / column).astype(int) + 1
    row = 6 - np.floor((x[:, 1] + 3.5 * column) / column).astype(int)
    assert np.all(image[row, col])
    counts = np.bincount(row * 5 + col, minlength=35)[image.ravel()]
    np.testing.assert_allclose(counts / len(x), 1 / image.sum(), rtol=0.1)


def test_text_points_jitter_zero_gives_pixel_centres():
    x = ds.text_points("a", 500, 0, jitter=0.0)
    column = 8.0 / 5
    frac = (x + np.array([4.0, 3.5 * column])) / column - 0.5
    np.testing.assert_allclose(frac, np.rint(frac), atol=1e-12)


def test_text_points_errors():
    with pytest.raises(ValueError, match=r"no glyph for '@~'"):
        ds.text_points("a@b~", 10)
    with pytest.raises(ValueError, match="non-empty"):
        ds.text_points("", 10)
    with pytest.raises(ValueError, match="no lit pixel"):
        ds.text_points("   ", 10)
    with pytest.raises(TypeError, match="str"):
        ds.text_points(42, 10)


def test_from_image_follows_intensity_and_flips_y():
    image = np.zeros((4, 8))
    image[0, 0] = 3.0  # top-left, three times as bright
    image[3, 7] = 1.0  # bottom-right
    x = ds.from_image(image, 20_000, 0)
    top_left = (x[:, 0] < 0) & (x[:, 1] > 0)
    bottom_right = (x[:, 0] > 0) & (x[:, 1] < 0)
    assert np.all(top_left | bottom_right)
    assert abs(top_left.mean() - 0.75) < 0.015
    assert abs(x[:, 0].min() + 4) < 0.01 and abs(x[:, 0].max() - 4) < 0.01
    np.testing.assert_allclose([x[:, 1].min(), x[:, 1].max()], [-2.0, 2.0], atol=0.01)


def test_from_image_accepts_bool_and_int_and_matches_text():
    image = ds.render_text("ok")
    for arr in (image, image.astype(np.uint8), image.astype(np.float32)):
        np.testing.assert_array_equal(ds.from_image(arr, 100, 5), ds.text_points("ok", 100, 5))


@pytest.mark.parametrize("bad, exc, msg", [
    (np.zeros((3, 3)), ValueError, "all zero"),
    (-np.ones((3, 3)), ValueError, "non-negative"),
    (np.array([[1.0, np.inf]]), ValueError, "finite"),
    (np.ones(5), ValueError, "2-D"),
    (np.ones((2, 2, 3)), ValueError, "2-D"),
    (np.zeros((0, 4)), ValueError, "2-D"),
    ([["a", "b"]], TypeError, "dtype"),
])
def test_from_image_rejects_bad_images(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        ds.from_image(bad, 10)


def test_import_needs_numpy_only():
    code = ("import sys, nflow_np.datasets as d; d.two_moons(3, 0); d.bimodal_log_prob([0.0, 0.0]); "
            "bad = [m for m in ('scipy', 'numba', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__file__.rsplit("/tests/", 1)[0])
