"""Toy 2-D data sets for training and checking flows.

Every sampler has the signature ``name(n, rng=None, *, dtype=np.float64, ...)``
and returns an ``(n, 2)`` array. Points are drawn i.i.d. (each point picks its
mixture component on its own) so that any prefix of a sample is itself a fair
sample. Draws are made in float64 and cast at the end, so a float32 sample is
the float64 sample with the same seed, rounded.

Six targets come with an exact log-density: ``bimodal_log_prob``,
``eight_gaussians_log_prob`` and ``checkerboard_log_prob`` in closed form,
``rings_log_prob`` through the Bessel function, ``two_moons_log_prob`` and
``two_spirals_log_prob`` by quadrature along their curves; ``true_entropy``
gives their differential entropy, the floor that a flow's negative
log-likelihood on samples approaches.

``text_points`` draws points from a word rendered with a small built-in 5x7
bitmap font (no font library, no files); ``from_image`` draws them from any
grayscale image.

References
----------
Grathwohl et al., "FFJORD: Free-form continuous dynamics for scalable reversible
generative models", ICLR 2019 (the 8gaussians, checkerboard, 2spirals and rings
toy sets). Johnson et al., "Composing graphical models with neural networks for
structured representations and fast inference", NeurIPS 2016 (the pinwheel).
"""

import numpy as np

from ._data_checks import _check_n, _points, _scalar, _setup
from ._curves import rings_log_prob, two_moons_log_prob, two_spirals_log_prob
from ._font import FONT, GLYPH_SHAPE  # noqa: F401  (FONT and GLYPH_SHAPE are public here)
from ._pictures import from_image, render_text, text_points

for _public in (from_image, render_text, text_points, rings_log_prob, two_moons_log_prob, two_spirals_log_prob):
    _public.__module__ = __name__     # documented (and pickled) as nflow_np.datasets' own
del _public

__all__ = [
    "DATASETS",
    "FONT",
    "LOG_PROBS",
    "bimodal",
    "bimodal_log_prob",
    "checkerboard",
    "checkerboard_log_prob",
    "eight_gaussians",
    "eight_gaussians_log_prob",
    "from_image",
    "load",
    "pinwheel",
    "render_text",
    "rings",
    "rings_log_prob",
    "text_points",
    "true_entropy",
    "two_moons",
    "two_moons_log_prob",
    "two_spirals",
    "two_spirals_log_prob",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


# ---------------------------------------------------------------------------
# helpers


def _logsumexp(a, axis):
    """log(sum(exp(a))) along ``axis`` without overflow; all -inf gives -inf."""
    m = np.max(a, axis=axis, keepdims=True)
    # An all -inf slice would give -inf - -inf = nan; shifting it by 0 leaves exp(-inf) = 0 instead
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def _gaussian_mixture_log_prob(x, centers, std):
    """Log-density of the equal-weight mixture of N(center_k, std^2 I) in 2-D."""
    diff = (x[..., None, :] - centers) / std
    log_comp = -0.5 * np.sum(diff * diff, axis=-1) - _LOG_2PI - 2.0 * np.log(std)
    # float() keeps the constant weak, so float32 input stays float32
    return _logsumexp(log_comp, axis=-1) - float(np.log(len(centers)))


# ---------------------------------------------------------------------------
# samplers


def two_moons(n, rng=None, *, dtype=np.float64, noise=0.1, return_labels=False):
    """Two interleaving half circles, like scikit-learn's ``make_moons``.

    The upper moon is (cos t, sin t), the lower one (1 - cos t, 1/2 - sin t), with
    t ~ U(0, pi) and each point's moon chosen with probability 1/2. Gaussian noise
    of standard deviation ``noise`` is added in these units, then the points are
    shifted by the noiseless mean (1/2, 1/4) and divided by one common scale (both
    axes alike, so the moons keep their shape) that gives the noiseless set a mean
    per-axis variance of 1.

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    noise : float
        Standard deviation of the Gaussian noise before scaling, non-negative.
    return_labels : bool
        Also return each point's moon, as scikit-learn's ``make_moons`` does:
        0 for the upper moon, 1 for the lower one (the conditioning label of
        a conditional flow p(x | moon)).

    Returns
    -------
    ndarray of shape (n, 2)
        With ``return_labels``, ``(points, labels)``, labels an int64 array of shape (n,).
    """
    n, rng, dtype = _setup(n, rng, dtype, "two_moons")
    noise = _scalar(noise, "two_moons", "noise", strict=False)
    t = rng.uniform(0.0, np.pi, size=n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    pts = np.stack([x, y], axis=-1) + noise * rng.standard_normal((n, 2))
    # Scale from the noiseless law (within-moon plus between-moon variance per axis), not from the
    # sample, so the map is the same for every n and seed and a small sample is not distorted.
    var_x = 0.75
    var_y = 0.5 - 4.0 / np.pi**2 + (2.0 / np.pi - 0.25) ** 2
    scale = np.sqrt(0.5 * (var_x + var_y))
    points = ((pts - np.array([0.5, 0.25])) / scale).astype(dtype)
    return (points, lower.astype(np.int64)) if return_labels else points


def eight_gaussians(n, rng=None, *, dtype=np.float64, scale=2.0, std=0.2):
    """Equal mixture of eight Gaussians N(mu_k, std^2 I), mu_k = scale (cos(k pi/4), sin(k pi/4)).

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    scale : float
        Radius of the circle of means, positive.
    std : float
        Standard deviation of each component, positive.

    Returns
    -------
    ndarray of shape (n, 2)

    See Also
    --------
    eight_gaussians_log_prob : its exact log-density.
    """
    n, rng, dtype = _setup(n, rng, dtype, "eight_gaussians")
    centers = _eight_centers(scale, "eight_gaussians")
    std = _scalar(std, "eight_gaussians", "std")
    k = rng.integers(0, 8, size=n)
    return (centers[k] + std * rng.standard_normal((n, 2))).astype(dtype)


def _eight_centers(scale, where):
    scale = _scalar(scale, where, "scale")
    angles = np.arange(8) * (np.pi / 4.0)
    return scale * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


# Lower-left corners of the black unit squares of the 4x4 board on [-2, 2]^2: cell (i, j)
# is black when i + j is even, the same squares as FFJORD's checkerboard (before its x2 scaling)
_BLACK_CELLS = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=float) - 2.0


def checkerboard(n, rng=None, *, dtype=np.float64):
    """Uniform on the 8 black unit squares of a 4x4 checkerboard on [-2, 2]^2.

    The square [i - 2, i - 1) x [j - 2, j - 1), i, j in 0..3, is black when i + j is even.

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.

    Returns
    -------
    ndarray of shape (n, 2)

    See Also
    --------
    checkerboard_log_prob : its exact log-density, log(1/8) on the black squares.
    """
    n, rng, dtype = _setup(n, rng, dtype, "checkerboard")
    cell = rng.integers(0, len(_BLACK_CELLS), size=n)
    return (_BLACK_CELLS[cell] + rng.random((n, 2))).astype(dtype)


def two_spirals(n, rng=None, *, dtype=np.float64, noise=0.5):
    """Two interleaved spirals, as in FFJORD's ``2spirals``.

    A point on the first arm is (-r cos r, r sin r) + U(0, noise)^2 with
    r = sqrt(u) * 3 pi, u ~ U(0, 1); the second arm is its mirror through the origin.
    The set is divided by 3 and blurred by N(0, 0.1^2 I), as FFJORD does.

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    noise : float
        Width of the uniform jitter before the division by 3, non-negative
        (FFJORD's value is 0.5).

    Returns
    -------
    ndarray of shape (n, 2)
    """
    n, rng, dtype = _setup(n, rng, dtype, "two_spirals")
    noise = _scalar(noise, "two_spirals", "noise", strict=False)
    # sqrt(u) makes the density along the arm grow with the radius, so the outer turns are not sparse
    r = np.sqrt(rng.random(n)) * (540.0 * 2.0 * np.pi / 360.0)
    pts = np.stack([-np.cos(r) * r, np.sin(r) * r], axis=-1) + noise * rng.random((n, 2))
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = pts * sign[:, None] / 3.0
    return (pts + 0.1 * rng.standard_normal((n, 2))).astype(dtype)


def rings(n, rng=None, *, dtype=np.float64):
    """Four concentric rings, as in FFJORD's ``rings``.

    Radii 0.75, 1.5, 2.25 and 3, each ring chosen with probability 1/4, the angle
    uniform, and isotropic Gaussian noise of standard deviation 0.08.

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.

    Returns
    -------
    ndarray of shape (n, 2)
    """
    n, rng, dtype = _setup(n, rng, dtype, "rings")
    radius = 0.75 * rng.integers(1, 5, size=n)
    theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
    pts = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    return (pts + 0.08 * rng.standard_normal((n, 2))).astype(dtype)


def pinwheel(n, rng=None, *, dtype=np.float64):
    """Five curved radial arms: the pinwheel of Johnson et al. (2016), as FFJORD samples it.

    Each point takes an arm k uniformly from 0..4 and f = (1 + 0.3 a, 0.1 b) with
    a, b ~ N(0, 1); its angle is 2 pi k / 5 + 0.25 exp(f_0), so points further out
    turn further, which bends the arms. The point is 2 f R(angle) with R the
    rotation matrix [[cos, -sin], [sin, cos]].

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.

    Returns
    -------
    ndarray of shape (n, 2)

    References
    ----------
    Johnson, Duvenaud, Wiltschko, Datta and Adams, "Composing graphical models with
    neural networks for structured representations and fast inference", NeurIPS 2016.
    """
    n, rng, dtype = _setup(n, rng, dtype, "pinwheel")
    radial_std, tangential_std, rate, arms = 0.3, 0.1, 0.25, 5
    f = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    f[:, 0] += 1.0
    arm = rng.integers(0, arms, size=n)
    angle = 2.0 * np.pi * arm / arms + rate * np.exp(f[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    # f @ R with R = [[c, -s], [s, c]]: the row-vector product of the original einsum
    pts = np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], axis=-1)
    return (2.0 * pts).astype(dtype)


_BIMODAL_MEANS = np.array([[1.5, 1.5], [-1.5, -1.5]])


def bimodal(n, rng=None, *, dtype=np.float64):
    """Equal mixture of N((1.5, 1.5), I) and N((-1.5, -1.5), I).

    Parameters
    ----------
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.

    Returns
    -------
    ndarray of shape (n, 2)

    See Also
    --------
    bimodal_log_prob : its exact log-density.
    """
    n, rng, dtype = _setup(n, rng, dtype, "bimodal")
    k = rng.integers(0, 2, size=n)
    return (_BIMODAL_MEANS[k] + rng.standard_normal((n, 2))).astype(dtype)


# ---------------------------------------------------------------------------
# exact log-densities


def bimodal_log_prob(x):
    """Exact log-density of :func:`bimodal`.

    ``log p(x) = logsumexp_k(log N(x; mu_k, I)) - log 2``, mu = +-(1.5, 1.5).

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "bimodal_log_prob")
    return _gaussian_mixture_log_prob(x, _BIMODAL_MEANS.astype(x.dtype), x.dtype.type(1.0))


def eight_gaussians_log_prob(x, scale=2.0, std=0.2):
    """Exact log-density of :func:`eight_gaussians` with the same ``scale`` and ``std``.

    ``log p(x) = logsumexp_k(log N(x; mu_k, std^2 I)) - log 8``.

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.
    scale, std : float
        As in :func:`eight_gaussians`.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "eight_gaussians_log_prob")
    centers = _eight_centers(scale, "eight_gaussians_log_prob").astype(x.dtype)
    std = _scalar(std, "eight_gaussians_log_prob", "std")
    return _gaussian_mixture_log_prob(x, centers, x.dtype.type(std))


def checkerboard_log_prob(x):
    """Exact log-density of :func:`checkerboard`: log(1/8) on the black squares, -inf elsewhere.

    Squares are half-open, [a, a + 1) on each axis, so the board is [-2, 2)^2.

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "checkerboard_log_prob")
    cell = np.floor(x) + 2.0
    on_board = np.all((cell >= 0.0) & (cell <= 3.0), axis=-1)
    black = (cell[..., 0] + cell[..., 1]) % 2.0 == 0.0
    return np.where(on_board & black, -np.log(8.0), -np.inf).astype(x.dtype)


LOG_PROBS = {
    "8gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
    "bimodal": bimodal_log_prob,
    "two-moons": two_moons_log_prob,
    "rings": rings_log_prob,
    "two-spirals": two_spirals_log_prob,
}
"""Registry name -> exact log-density, for the data sets whose density is known."""


# -integral p log p by the midpoint rule on a grid of spacing h (rings 0.01, two-moons 0.015, two-spirals 0.02,
# under a tenth of their noise's width) over a square holding all their mass (the grid sum of p is 1 to 1e-12);
# for two-moons, h = 0.02 gives the same value to 1e-13
_TABULATED_ENTROPIES = {"two-moons": 1.706556815168341, "rings": 2.623182770300424, "two-spirals": 2.6454310233442353}


def true_entropy(name, n_mc=200_000, rng=0, **params):
    """Differential entropy (nats) of a data set with a known density.

    A Monte Carlo estimate ``-mean(log p(x))`` over ``n_mc`` samples for
    ``"bimodal"`` and ``"8gaussians"`` (standard error about
    ``std(log p) / sqrt(n_mc)``, ~2e-3 at the default); exactly ``log 8`` for
    ``"checkerboard"``. For the curve sets (``"two-moons"``, ``"rings"``,
    ``"two-spirals"``) at their default parameters, the value of
    ``-integral p log p`` on a fine grid, tabulated (accurate to about 1e-5;
    their quadrature densities are slow to evaluate at ``n_mc`` points); with
    other parameters, the Monte Carlo estimate. A flow's mean negative
    log-likelihood on fresh samples cannot go below this number.

    Parameters
    ----------
    name : str
        One of :data:`LOG_PROBS` (as in :data:`DATASETS`).
    n_mc : int
        Monte Carlo sample size, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness for the estimate; a fixed seed by default so the
        number is the same from run to run.
    **params
        Passed to both sampler and log-density (``scale``, ``std`` for ``"8gaussians"``).

    Returns
    -------
    float
    """
    key = _canonical(name, "true_entropy")
    if key not in LOG_PROBS:
        raise ValueError(f"true_entropy: the density of {name!r} is not known in closed form; "
                         f"expected one of {sorted(LOG_PROBS)}")
    n_mc = _check_n(n_mc, "true_entropy")
    if key == "checkerboard":
        if params:
            raise TypeError(f"true_entropy: checkerboard takes no parameters; got {sorted(params)}")
        return float(np.log(8.0))
    if key in _TABULATED_ENTROPIES and not params:
        return _TABULATED_ENTROPIES[key]
    x = DATASETS[key](n_mc, rng, **params)
    return float(-np.mean(LOG_PROBS[key](x, **params)))


# ---------------------------------------------------------------------------
# registry

DATASETS = {
    "two-moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "two-spirals": two_spirals,
    "rings": rings,
    "pinwheel": pinwheel,
    "bimodal": bimodal,
}
"""Registry name -> sampler ``f(n, rng=None, *, dtype=np.float64, **params)``."""

# Spellings people reach for, so that "eight_gaussians", "moons" or "2spirals" (FFJORD's) work too
_ALIASES = {
    "eight-gaussians": "8gaussians",
    "8-gaussians": "8gaussians",
    "moons": "two-moons",
    "2spirals": "two-spirals",
    "2-spirals": "two-spirals",
    "spirals": "two-spirals",
}


def _canonical(name, where):
    if not isinstance(name, str):
        raise TypeError(f"{where}: name must be a str; got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"{where}: unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    return key


def load(name, n, rng=None, *, dtype=np.float64, **params):
    """Draw ``n`` points from the registered data set ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (underscores and case are forgiven, and
        ``"eight_gaussians"``, ``"moons"``, ``"2spirals"`` are accepted).
    n : int
        Number of points, positive.
    rng : numpy.random.Generator or int or None
        Source of randomness.
    dtype : float32 or float64
        Output dtype.
    **params
        Passed to the sampler (``noise=``, ``scale=``, ``std=``).

    Returns
    -------
    ndarray of shape (n, 2)
    """
    return DATASETS[_canonical(name, "load")](n, rng, dtype=dtype, **params)
