"""Coupling layers, fused: gather the conditioning half, run the MLP, transform, log-det; and the backward.

One call per layer and direction. ``a`` indexes the conditioning (passed
through) coordinates, ``b`` the transformed ones. With ``affine`` the network
emits ``(shift, raw)`` (``2 nb`` outputs) and the log-scale is
``s = clamp * tanh(raw / clamp)`` (``clamp <= 0``: no clamp); without it
(additive coupling) it emits the shift alone and the log-det is 0.

Caches kept between a pass and its backward, all caller-owned buffers:
``cond`` (``n x na``, the gathered network input), ``hid`` (see ``mlp``) and
``net`` (``n x nout``; for an affine layer the pass overwrites the raw half
with the clamped log-scale ``s``, which is all the backward needs).
Log-dets are *added* to ``ld`` so a flow accumulates them in one array.
"""

import numpy as np

from .backend import numba_twin
from .mlp import mlp_backward_numba, mlp_backward_numpy, mlp_forward_numba, mlp_forward_numpy


# ---------------------------------------------------------------- NumPy reference

def _log_scale_numpy(raw, clamp):
    return clamp * np.tanh(raw / clamp) if clamp > 0 else raw


def coupling_inverse_numpy(theta, off, widths, act, affine, clamp, a, b, y, x, ld, cond, hid, net):
    """Density direction: ``x_b = (y_b - t) * exp(-s)``, ``x_a = y_a``, ``ld += -sum(s)``."""
    nb = b.size
    cond[...] = y[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    x[:, a] = cond
    if affine:
        s = _log_scale_numpy(net[:, nb:], clamp)
        net[:, nb:] = s
        x[:, b] = (y[:, b] - net[:, :nb]) * np.exp(-s)
        ld -= s.sum(axis=1)
    else:
        x[:, b] = y[:, b] - net
    return None


def coupling_forward_numpy(theta, off, widths, act, affine, clamp, a, b, x, y, ld, cond, hid, net):
    """Sampling direction: ``y_b = x_b * exp(s) + t``, ``y_a = x_a``, ``ld += sum(s)``."""
    nb = b.size
    cond[...] = x[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    y[:, a] = cond
    if affine:
        s = _log_scale_numpy(net[:, nb:], clamp)
        net[:, nb:] = s
        y[:, b] = x[:, b] * np.exp(s) + net[:, :nb]
        ld += s.sum(axis=1)
    else:
        y[:, b] = x[:, b] + net
    return None


def _squash_grad_numpy(s, clamp):
    if clamp > 0:
        q = s / clamp
        return 1.0 - q * q
    return np.ones_like(s)


def coupling_inverse_backward_numpy(theta, off, widths, act, affine, clamp, a, b, x, gx, gld, cond, hid, net,
                                    gy, gtheta, gnet, gcond, d1, d2):
    """VJP of the density direction: from ``gx = dL/dx``, ``gld = dL/dld`` to ``gy = dL/dy`` and ``gtheta``."""
    nb = b.size
    gxb = gx[:, b]
    if affine:
        s = net[:, nb:]
        inv_scale = np.exp(-s)
        gy[:, b] = gxb * inv_scale
        gnet[:, :nb] = -gxb * inv_scale
        gnet[:, nb:] = (-gxb * x[:, b] - gld[:, None]) * _squash_grad_numpy(s, clamp)
    else:
        gy[:, b] = gxb
        gnet[...] = -gxb
    mlp_backward_numpy(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    gy[:, a] = gx[:, a] + gcond
    return None


def coupling_forward_backward_numpy(theta, off, widths, act, affine, clamp, a, b, x, gy, gld, cond, hid, net,
                                    gx, gtheta, gnet, gcond, d1, d2):
    """VJP of the sampling direction: from ``gy = dL/dy``, ``gld`` to ``gx = dL/dx`` (``x`` the pass input)."""
    nb = b.size
    gyb = gy[:, b]
    if affine:
        s = net[:, nb:]
        scale = np.exp(s)
        gx[:, b] = gyb * scale
        gnet[:, :nb] = gyb
        gnet[:, nb:] = (gyb * x[:, b] * scale + gld[:, None]) * _squash_grad_numpy(s, clamp)
    else:
        gx[:, b] = gyb
        gnet[...] = gyb
    mlp_backward_numpy(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    gx[:, a] = gy[:, a] + gcond
    return None


# ---------------------------------------------------------------- Numba twin

@numba_twin
def _gather_numba(src, idx, dst):
    for i in range(src.shape[0]):
        for j in range(idx.size):
            dst[i, j] = src[i, idx[j]]


@numba_twin
def _log_scale_numba(raw, clamp):
    return clamp * np.tanh(raw / clamp) if clamp > 0.0 else raw


@numba_twin
def coupling_inverse_numba(theta, off, widths, act, affine, clamp, a, b, y, x, ld, cond, hid, net):
    nb = b.size
    _gather_numba(y, a, cond)
    mlp_forward_numba(theta, off, widths, act, cond, hid, net)
    for i in range(y.shape[0]):
        for j in range(a.size):
            x[i, a[j]] = cond[i, j]
        if affine:
            total = 0.0
            for j in range(nb):
                s = _log_scale_numba(net[i, nb + j], clamp)
                net[i, nb + j] = s
                x[i, b[j]] = (y[i, b[j]] - net[i, j]) * np.exp(-s)
                total += s
            ld[i] -= total
        else:
            for j in range(nb):
                x[i, b[j]] = y[i, b[j]] - net[i, j]


@numba_twin
def coupling_forward_numba(theta, off, widths, act, affine, clamp, a, b, x, y, ld, cond, hid, net):
    nb = b.size
    _gather_numba(x, a, cond)
    mlp_forward_numba(theta, off, widths, act, cond, hid, net)
    for i in range(x.shape[0]):
        for j in range(a.size):
            y[i, a[j]] = cond[i, j]
        if affine:
            total = 0.0
            for j in range(nb):
                s = _log_scale_numba(net[i, nb + j], clamp)
                net[i, nb + j] = s
                y[i, b[j]] = x[i, b[j]] * np.exp(s) + net[i, j]
                total += s
            ld[i] += total
        else:
            for j in range(nb):
                y[i, b[j]] = x[i, b[j]] + net[i, j]


@numba_twin
def _squash_grad_numba(s, clamp):
    if clamp > 0.0:
        q = s / clamp
        return 1.0 - q * q
    return 1.0


@numba_twin
def coupling_inverse_backward_numba(theta, off, widths, act, affine, clamp, a, b, x, gx, gld, cond, hid, net,
                                    gy, gtheta, gnet, gcond, d1, d2):
    nb = b.size
    for i in range(x.shape[0]):
        for j in range(nb):
            g = gx[i, b[j]]
            if affine:
                s = net[i, nb + j]
                inv_scale = np.exp(-s)
                gy[i, b[j]] = g * inv_scale
                gnet[i, j] = -g * inv_scale
                gnet[i, nb + j] = (-g * x[i, b[j]] - gld[i]) * _squash_grad_numba(s, clamp)
            else:
                gy[i, b[j]] = g
                gnet[i, j] = -g
    mlp_backward_numba(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    for i in range(x.shape[0]):
        for j in range(a.size):
            gy[i, a[j]] = gx[i, a[j]] + gcond[i, j]


@numba_twin
def coupling_forward_backward_numba(theta, off, widths, act, affine, clamp, a, b, x, gy, gld, cond, hid, net,
                                    gx, gtheta, gnet, gcond, d1, d2):
    nb = b.size
    for i in range(x.shape[0]):
        for j in range(nb):
            g = gy[i, b[j]]
            if affine:
                s = net[i, nb + j]
                scale = np.exp(s)
                gx[i, b[j]] = g * scale
                gnet[i, j] = g
                gnet[i, nb + j] = (g * x[i, b[j]] * scale + gld[i]) * _squash_grad_numba(s, clamp)
            else:
                gx[i, b[j]] = g
                gnet[i, j] = g
    mlp_backward_numba(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    for i in range(x.shape[0]):
        for j in range(a.size):
            gx[i, a[j]] = gy[i, a[j]] + gcond[i, j]
