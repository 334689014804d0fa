"""The affine transform of RealNVP and MAF, ``s = clamp tanh(raw / clamp)`` or ``raw / (1 + |raw| / clamp)`` (the
rational clamp, ``AffineSpec.rational``) its log-scale.

Two placements of the shift (``AffineSpec.base_shift``): in the base space (``base_shift`` 1, the default of new
layers) the density direction is ``x = v exp(-s) - shift`` and sampling ``v = (x + shift) exp(s)``; in the data
space (0, files written before) ``x = (v - shift) exp(-s)`` and ``v = x exp(s) + shift``. Both have log-det ``-s``
in the density direction.

Parameters per element: ``(shift, raw)``; ``clamp`` 0 means ``s = raw``. A pass leaves ``s`` in place of
``raw``: the VJP reads it (both clamps' derivatives are written through ``s``), and needs no ``tanh``.

The two steps are inlined into the frames' loops over rows and computed without branches (both shift placements
and both clamps, then a choice; :mod:`..vmath`'s exp and tanh), so those loops vectorize.
"""

import math

from ..backend import numba_twin
from ..scalar import rational_clamp_grad, soft_clamp_grad
from ..vmath import exp_, tanh_
from ..specs import AffineSpec

SPEC = AffineSpec


def constants(spec):
    return (0.0, 1.0, float(spec.clamp), 1.0 if spec.base_shift else 0.0, 1.0 if spec.rational else 0.0)


@numba_twin
def settings(c):
    return c[0], c[1], c[2], c[3], c[4]


def _inline(fn):
    """A scalar step the frames inline into their loops over rows (see :func:`~..backend.numba_twin`)."""
    fn.inline_always = True
    return numba_twin(fn)


@_inline
def _log_scale(raw, clamp, rational, zero, one):
    """:func:`~..scalar.soft_clamp` or the rational clamp ``raw / (1 + |raw| / clamp)`` without a branch: every
    value is computed and one is chosen (vmath's tanh)."""
    q = raw / (clamp if clamp > zero else one)
    clamped = clamp * tanh_(q)
    squeezed = raw / (one + abs(q))
    chosen = squeezed if rational > zero else clamped
    return chosen if clamp > zero else raw


@_inline
def _slope(s, clamp, rational, zero, one):
    """``ds/draw`` of the chosen clamp, through ``s``."""
    if rational > zero:
        return rational_clamp_grad(s, clamp, zero, one)
    return soft_clamp_grad(s, clamp, zero, one)


@_inline
def density(v, p, r, base, stride, st):
    """Leaves the clamped log-scale ``s`` in place of ``raw``."""
    zero, one, clamp, base_shift, rational = st
    s = _log_scale(p[r, base + stride], clamp, rational, zero, one)
    p[r, base + stride] = s
    e = exp_(-s)
    shift = p[r, base]
    in_base = v * e - shift
    in_data = (v - shift) * e
    return (in_base if base_shift > zero else in_data), -s


@_inline
def sampling(v, p, r, base, stride, st):
    zero, one, clamp, base_shift, rational = st
    s = _log_scale(p[r, base + stride], clamp, rational, zero, one)
    p[r, base + stride] = s
    e = exp_(s)
    shift = p[r, base]
    in_base = (v + shift) * e
    in_data = v * e + shift
    return (in_base if base_shift > zero else in_data), s


@numba_twin
def density_vjp(v, g, gld, p, gp, r, base, stride, st):
    zero, one, clamp, base_shift, rational = st
    s = p[r, base + stride]
    inv_scale = math.exp(-s)
    gv = g * inv_scale
    if base_shift > zero:
        # x = v exp(-s) - shift: dx/dshift = -1, dx/ds = -v exp(-s)
        gp[r, base] = -g
        gp[r, base + stride] = (-g * (v * inv_scale) - gld) * _slope(s, clamp, rational, zero, one)
        return gv
    x = (v - p[r, base]) * inv_scale
    gp[r, base] = -gv
    # x = (v - shift) exp(-s) has log-det -s
    gp[r, base + stride] = (-g * x - gld) * _slope(s, clamp, rational, zero, one)
    return gv
