"""The sinh-arcsinh transform (Jones and Pewsey 2009): ``y = sinh((asinh(x) + a) tau)``, ``tau = exp(s)``.

Parameters per element: ``(a, raw)``, the skewness and the log tail weight
before its soft clamp, ``s = clamp tanh(raw / clamp)`` (``clamp`` 0: ``s = raw``).
Zero parameters give the identity. With ``w = asinh(y) / tau - a`` the density
direction is ``x = sinh(w)``, with log-det ``log cosh(w) - s - log hypot(1, y)``. A pass leaves ``s`` in
place of ``raw`` for the VJP.
"""

import math

from ..backend import numba_twin
from ..scalar import soft_clamp, soft_clamp_grad
from ..specs import SinhArcsinhSpec

SPEC = SinhArcsinhSpec


def constants(spec):
    return (0.0, 1.0, float(spec.clamp), math.log(2.0))


@numba_twin
def settings(c):
    return c[0], c[1], c[2], c[3]


@numba_twin
def _log_cosh(w, log2):
    """``log cosh(w)`` without overflow."""
    a = abs(w)
    return a + math.log1p(math.exp(-(a + a))) - log2


@numba_twin
def density(v, p, r, base, stride, st):
    zero, one, clamp, log2 = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    p[r, base + stride] = s
    w = math.asinh(v) * math.exp(-s) - p[r, base]
    return math.sinh(w), _log_cosh(w, log2) - s - math.log(math.hypot(one, v))


@numba_twin
def sampling(v, p, r, base, stride, st):
    zero, one, clamp, log2 = st
    s = soft_clamp(p[r, base + stride], clamp, zero)
    p[r, base + stride] = s
    q = (math.asinh(v) + p[r, base]) * math.exp(s)
    return math.sinh(q), _log_cosh(q, log2) + s - math.log(math.hypot(one, v))


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, clamp, log2 = st
    s = p[r, base + stride]
    inv_tau = math.exp(-s)
    u = math.asinh(v)
    w = u * inv_tau - p[r, base]
    gw = g * math.cosh(w) + gld * math.tanh(w)
    gp[r, base] = -gw
    gp[r, base + stride] = (-gw * u * inv_tau - gld) * soft_clamp_grad(s, clamp, zero, one)
    h = math.hypot(one, v)
    return gw * inv_tau / h - gld * (v / h) / h
