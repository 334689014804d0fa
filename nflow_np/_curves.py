"""Exact log-densities of the toy sets drawn along curves: two-moons, rings and two-spirals.

Each is its sampler's law written out: a point on the curve, chosen by the
sampler's own parameter, plus the sampler's noise; the log-density integrates
the noise's density over the curve parameter. Rings integrate in closed form
(the von Mises normalizer, through SciPy's ``i0e``); two-moons and two-spirals
use the midpoint rule over the curve parameter with nodes far closer than the
noise is wide: at the default nodes, quadrupling them moves the mean
log-density of 2000 samples by under 1e-6 (a single point's by under 2e-4 for
two-moons, and by up to 1e-2 for two-spirals' points far outside the arms).
"""

import numpy as np

from ._data_checks import _points
from ._special import _scipy_special

# two_moons' scale: the noiseless set's mean per-axis variance made 1 (see datasets.two_moons)
_MOON_VAR_X = 0.75
_MOON_VAR_Y = 0.5 - 4.0 / np.pi ** 2 + (2.0 / np.pi - 0.25) ** 2
MOON_SCALE = float(np.sqrt(0.5 * (_MOON_VAR_X + _MOON_VAR_Y)))
MOON_SHIFT = np.array([0.5, 0.25])

_ROWS = 512      # points per block: bounds the (rows, nodes) temporaries to a few MB


def _logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _blocks(f, x):
    flat = x.reshape(-1, 2).astype(np.float64)
    out = np.empty(len(flat))
    for i in range(0, len(flat), _ROWS):
        out[i:i + _ROWS] = f(flat[i:i + _ROWS])
    return out.reshape(x.shape[:-1]).astype(x.dtype)


def two_moons_log_prob(x, noise=0.1, nodes=1024):
    """Exact log-density of :func:`nflow_np.datasets.two_moons` with the same ``noise``.

    Each moon is a half circle traced by ``t ~ U(0, pi)`` and blurred by
    ``N(0, noise^2 I)``; the density is the average of the Gaussian over ``t``
    (``nodes`` midpoint nodes), mixed half and half over the moons, then mapped
    through the sampler's shift and scale.

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.
    noise : float
        As in :func:`nflow_np.datasets.two_moons`, positive.
    nodes : int
        Quadrature nodes per moon.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "two_moons_log_prob")
    if not noise > 0:
        raise ValueError(f"two_moons_log_prob: noise must be > 0 (the noiseless moons have no density); got {noise}")
    t = (np.arange(nodes) + 0.5) * (np.pi / nodes)
    arcs = (np.stack([np.cos(t), np.sin(t)], -1), np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], -1))
    norm = np.log(2.0 * np.pi * noise ** 2) + np.log(nodes) + np.log(2.0) - 2.0 * np.log(MOON_SCALE)

    def block(xb):
        pts = xb * MOON_SCALE + MOON_SHIFT
        terms = [_logsumexp(-0.5 * ((pts[:, None, :] - arc[None]) ** 2).sum(-1) / noise ** 2, axis=1)
                 for arc in arcs]
        return np.logaddexp(*terms) - norm

    return _blocks(block, x)


RING_RADII = 0.75 * np.arange(1, 5)
RING_STD = 0.08


def rings_log_prob(x):
    """Exact log-density of :func:`nflow_np.datasets.rings`.

    A ring of radius ``r`` with a uniform angle, blurred by ``N(0, s^2 I)``, has
    density ``exp(-(rho - r)^2 / 2 s^2) i0e(rho r / s^2) / (2 pi s^2)`` at
    distance ``rho`` from the centre (integrating the angle in closed form);
    the four rings are mixed equally.

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "rings_log_prob")
    i0e = _scipy_special().i0e
    rho = np.hypot(x[..., 0].astype(np.float64), x[..., 1].astype(np.float64))
    s2 = RING_STD ** 2
    terms = np.stack([-0.5 * (rho - r) ** 2 / s2 + np.log(i0e(rho * r / s2)) for r in RING_RADII], -1)
    return (_logsumexp(terms, axis=-1) - np.log(2.0 * np.pi * s2) - np.log(4.0)).astype(x.dtype)


def two_spirals_log_prob(x, noise=0.5, nodes=1024):
    """Exact log-density of :func:`nflow_np.datasets.two_spirals` with the same ``noise``.

    A point is ``sign (arm(r) + J) / 3 + e`` with ``r = 3 pi sqrt(u)``,
    ``u ~ U(0, 1)``, ``J ~ U(0, noise)^2``, ``e ~ N(0, 0.1^2 I)``: given the
    arm position, the jitter and the blur factor per axis into differences of
    normal CDFs, and ``u = v^2`` is integrated over ``nodes`` midpoint nodes in ``v``.

    Parameters
    ----------
    x : array_like of shape (..., 2)
        Finite points; float32 input gives float32 output.
    noise : float
        As in :func:`nflow_np.datasets.two_spirals`, positive.
    nodes : int
        Quadrature nodes per arm.

    Returns
    -------
    ndarray of shape (...)
    """
    x = _points(x, "two_spirals_log_prob")
    if not noise > 0:
        raise ValueError(f"two_spirals_log_prob: noise must be > 0; got {noise}")
    log_ndtr = _scipy_special().log_ndtr
    blur = 0.1
    # u = v^2 makes the integrand smooth in v (r = 3 pi v, density 2v): the midpoint rule in v converges fast
    v = (np.arange(nodes) + 0.5) / nodes
    r = v * 3.0 * np.pi
    log_w = np.log(2.0 * v)
    arm = np.stack([-np.cos(r) * r, np.sin(r) * r], -1) / 3.0
    width = noise / 3.0

    def log_box(a):
        # log density of J' + e at a, J' ~ U(0, width): (Phi(a / s) - Phi((a - width) / s)) / width
        hi, lo = log_ndtr(a / blur), log_ndtr((a - width) / blur)
        with np.errstate(divide="ignore"):
            return hi + np.log1p(-np.exp(np.minimum(lo - hi, -1e-300))) - np.log(width)

    def block(xb):
        # x = sign (arm + J) / 3 + e, so sign x - arm / 3 = J / 3 + sign e, and sign e ~ e
        terms = [_logsumexp(log_box(sign * xb[:, None, :] - arm[None]).sum(-1) + log_w, axis=1)
                 for sign in (1.0, -1.0)]
        return np.logaddexp(*terms) - np.log(nodes) - np.log(2.0)

    return _blocks(block, x)
