"""The affine transform of RealNVP and MAF: ``y = x exp(s) + shift``, ``s = clamp tanh(raw / clamp)``.

Parameters per element: ``(shift, raw)``; ``clamp`` 0 means ``s = raw``. A pass leaves ``s`` in place of
``raw``: the VJP reads it (its derivative is written through ``s``), and needs no ``tanh``.
"""

import math

from ..backend import numba_twin
from ..scalar import affine_density, affine_sampling, soft_clamp, soft_clamp_grad
from ..specs import AffineSpec

SPEC = AffineSpec


def constants(spec):
    return (0.0, 1.0, float(spec.clamp))


@numba_twin
def settings(c):
    return c[0], c[1], c[2]


@numba_twin
def density(v, p, r, base, stride, st):
    """Leaves the clamped log-scale ``s`` in place of ``raw``."""
    zero, one, clamp = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    p[r, base + stride] = s
    return affine_density(v, p[r, base], s), -s


@numba_twin
def sampling(v, p, r, base, stride, st):
    zero, one, clamp = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    p[r, base + stride] = s
    return affine_sampling(v, p[r, base], s), s


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, clamp = st
    s = p[r, base + stride]
    inv_scale = math.exp(-s)
    x = (v - p[r, base]) * inv_scale
    gv = g * inv_scale
    gp[r, base] = -gv
    # x = (v - shift) exp(-s) has log-det -s
    gp[r, base + stride] = (-g * x - gld) * soft_clamp_grad(s, clamp, zero, one)
    return gv
