"""The affine transform of RealNVP and MAF: ``y = x exp(s) + shift``, ``s = clamp tanh(raw / clamp)``.

Parameters per element: ``(shift, raw)``; ``clamp`` 0 means ``s = raw``.
"""

from ..backend import numba_twin
from ..scalar import affine_density, affine_density_vjp, affine_sampling, soft_clamp
from ..specs import AffineSpec

SPEC = AffineSpec


def constants(spec):
    return (0.0, 1.0, float(spec.clamp))


@numba_twin
def settings(c):
    return c[0], c[1], c[2]


@numba_twin
def density(v, p, r, base, stride, st):
    zero, one, clamp = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    return affine_density(v, p[r, base], s), -s


@numba_twin
def sampling(v, p, r, base, stride, st):
    zero, one, clamp = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    return affine_sampling(v, p[r, base], s), s


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, clamp = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    x = affine_density(v, p[r, base], s)
    gv, gshift, graw = affine_density_vjp(g, x, gld, s, clamp, zero, one)
    gp[r, base] = gshift
    gp[r, base + stride] = graw
    return gv
