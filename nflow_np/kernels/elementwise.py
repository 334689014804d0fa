"""Per-feature layers and reductions: permutations, ActNorm, the base distributions' log-densities.

Arrays are ``(n, d)`` rows; log-dets are added to ``ld`` (one per row).
Permutations are index arrays: ``out[:, j] = inp[:, idx[j]]``, whose backward
scatters ``g_in[:, idx[j]] = g_out[:, j]``.

The kernels here are the compiled ones; their reference is the NumPy passes
of :class:`nflow_np.bijectors.Permute` and :class:`nflow_np.bijectors.ActNorm`
and the log-densities of a standard
:class:`nflow_np.distributions.MultivariateNormalDiag` and of a
:class:`nflow_np.distributions.Uniform` box, which the tests hold them to.
"""

import math

import numpy as np

from .backend import numba_twin
from .scalar import circular_wrap
from .vmath import exp_

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ---------------------------------------------------------------- compiled kernels

@numba_twin
def permute_numba(inp, idx, out):
    for i in range(inp.shape[0]):
        for j in range(idx.size):
            out[i, j] = inp[i, idx[j]]


@numba_twin
def permute_backward_numba(gout, idx, gin):
    for i in range(gout.shape[0]):
        for j in range(idx.size):
            gin[i, idx[j]] = gout[i, j]


@numba_twin
def actnorm_inverse_numba(log_scale, shift, y, x, ld):
    d = log_scale.size
    total = 0.0
    for j in range(d):
        total += log_scale[j]
    for i in range(y.shape[0]):
        for j in range(d):
            # scalar.affine_density's map, with vmath's exp_: this loop vectorizes (affine_density keeps libm's
            # exp, cheaper where the frames call it one element at a time)
            x[i, j] = (y[i, j] - shift[j]) * exp_(-log_scale[j])
        ld[i] -= total


@numba_twin
def actnorm_forward_numba(log_scale, shift, x, y, ld):
    d = log_scale.size
    total = 0.0
    for j in range(d):
        total += log_scale[j]
    for i in range(x.shape[0]):
        for j in range(d):
            y[i, j] = x[i, j] * exp_(log_scale[j]) + shift[j]      # affine_sampling's map, vectorizable
        ld[i] += total


@numba_twin
def actnorm_inverse_backward_numba(log_scale, x, gx, gld, gy, g_log_scale, g_shift):
    d = log_scale.size
    gld_total = 0.0
    for i in range(x.shape[0]):
        gld_total += gld[i]
    for j in range(d):
        g_log_scale[j] = -gld_total
        g_shift[j] = 0.0
    for i in range(x.shape[0]):
        for j in range(d):
            g = gx[i, j] * exp_(-log_scale[j])     # vmath's: this loop vectorizes
            gy[i, j] = g
            g_log_scale[j] -= gx[i, j] * x[i, j]
            g_shift[j] -= g


@numba_twin
def normal_log_prob_numba(z, out):
    d = z.shape[1]
    for i in range(z.shape[0]):
        acc = 0.0
        for j in range(d):
            acc += z[i, j] * z[i, j]
        out[i] += -0.5 * acc - d * HALF_LOG_2PI


@numba_twin
def uniform_log_prob_numba(z, base, out):
    """``out += log U(z; low, high)``: ``base[0]`` (``-sum log(high - low)``) where ``low <= z <= high`` in every
    coordinate, ``-inf`` elsewhere (NaN included); ``base`` holds ``[inside, low (d), high (d), ...]``."""
    d = z.shape[1]
    for i in range(z.shape[0]):
        inside = True
        for j in range(d):
            v = z[i, j]
            if not (v >= base[1 + j] and v <= base[1 + d + j]):
                inside = False
        out[i] += base[0] if inside else -np.inf


@numba_twin
def circular_shift_numba(inp, shift, bound, period, direction, out):
    """:class:`~nflow_np.bijectors.CircularShift`: ``out = wrap(inp + shift)`` (``direction`` +1, sampling) or
    ``wrap(inp - shift)`` (-1, density; an input outside ``[-B, B]`` gives NaN, which the caller reports);
    ``shift`` holds one angle per coordinate or one for all. Log-det 0."""
    one = bound / bound
    wide = shift.size > 1
    for i in range(inp.shape[0]):
        for j in range(inp.shape[1]):
            s = shift[j] if wide else shift[0]
            v = inp[i, j]
            if direction > 0:
                out[i, j] = circular_wrap(v + s, bound, period, one)
            elif v >= -bound and v <= bound:
                out[i, j] = circular_wrap(v - s, bound, period, one)
            else:
                out[i, j] = np.nan


@numba_twin
def circular_shift_backward_numba(gout, gin, gshift):
    """The VJP of the density direction ``x = wrap(y - shift)``: ``dx/dy = 1``, ``dx/dshift = -1``."""
    for k in range(gshift.size):
        gshift[k] = 0.0
    wide = gshift.size > 1
    for i in range(gout.shape[0]):
        for j in range(gout.shape[1]):
            g = gout[i, j]
            gin[i, j] = g
            if wide:
                gshift[j] -= g
            else:
                gshift[0] -= g
