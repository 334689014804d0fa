"""NICE's additive transform: ``y = x + shift``, log-det 0; one parameter per element."""

from ..backend import numba_twin
from ..specs import AdditiveSpec

SPEC = AdditiveSpec


def constants(spec):
    return (0.0, 1.0)


@numba_twin
def settings(c):
    return c[0], c[1]


@numba_twin
def density(v, p, r, base, stride, st):
    return v - p[r, base], st[0]


@numba_twin
def sampling(v, p, r, base, stride, st):
    return v + p[r, base], st[0]


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    gp[r, base] = -g
    return g
