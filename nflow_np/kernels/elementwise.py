"""Per-feature layers and reductions: permutations, ActNorm, the standard normal's log-density.

Arrays are ``(n, d)`` rows; log-dets are added to ``ld`` (one per row).
Permutations are index arrays: ``out[:, j] = inp[:, idx[j]]``, whose backward
scatters ``g_in[:, idx[j]] = g_out[:, j]``.
"""

import math

import numpy as np

from .backend import numba_twin
from .scalar import affine_density, affine_sampling

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ---------------------------------------------------------------- NumPy reference

def permute_numpy(inp, idx, out):
    out[...] = inp[:, idx]
    return None


def permute_backward_numpy(gout, idx, gin):
    gin[:, idx] = gout
    return None


def actnorm_inverse_numpy(log_scale, shift, y, x, ld):
    """``x = (y - shift) * exp(-log_scale)``, ``ld += -sum(log_scale)``."""
    x[...] = (y - shift) * np.exp(-log_scale)
    ld -= log_scale.sum()
    return None


def actnorm_forward_numpy(log_scale, shift, x, y, ld):
    y[...] = x * np.exp(log_scale) + shift
    ld += log_scale.sum()
    return None


def actnorm_inverse_backward_numpy(log_scale, x, gx, gld, gy, g_log_scale, g_shift):
    """VJP of the inverse: ``gy``, and the parameter gradients written (not accumulated)."""
    gy[...] = gx * np.exp(-log_scale)
    g_log_scale[...] = -(gx * x).sum(axis=0) - gld.sum()
    g_shift[...] = -gy.sum(axis=0)
    return None


def normal_log_prob_numpy(z, out):
    """``out += log N(z; 0, I)`` per row."""
    out += -0.5 * (z * z).sum(axis=1) - z.shape[1] * HALF_LOG_2PI
    return None


# ---------------------------------------------------------------- Numba twin

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
            x[i, j] = affine_density(y[i, j], shift[j], log_scale[j])
        ld[i] -= total


@numba_twin
def actnorm_forward_numba(log_scale, shift, x, y, ld):
    d = log_scale.size
    total = 0.0
    for j in range(d):
        total += log_scale[j]
    for i in range(x.shape[0]):
        for j in range(d):
            y[i, j] = affine_sampling(x[i, j], shift[j], log_scale[j])
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
            g = gx[i, j] * np.exp(-log_scale[j])
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
