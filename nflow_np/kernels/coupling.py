"""Coupling layers, fused: gather the conditioning half, run the MLP, transform, log-det; and the backward.

One call per layer and direction. ``a`` indexes the conditioning (passed
through) coordinates, ``b`` the transformed ones. With ``affine`` the network
emits ``(shift, raw)`` (``2 nb`` outputs) and the log-scale is
``s = clamp * tanh(raw / clamp)`` (``clamp <= 0``: no clamp); without it
(additive coupling) it emits the shift alone and the log-det is 0.

Caches kept between a pass and its backward, all caller-owned buffers:
``cond`` (the network input: ``n x na`` gathered from the layer's input,
then the context of a conditional layer, which the caller fills in; the
backward's ``gcond`` has the same width), ``hid`` (see ``mlp``) and
``net`` (``n x nout``; for an affine layer the pass overwrites the raw half
with the clamped log-scale ``s``, which is all the backward needs).
Log-dets are *added* to ``ld`` so a flow accumulates them in one array.

Spline couplings (NSF) run the same way, the network emitting ``3 bins - 1``
unnormalized spline parameters per transformed coordinate, contiguous per
coordinate. Their caches add ``scratch``, ``4 x (n x nb)``: the gathered
spline inputs (kept for the backward), then room for the spline outputs and
per-element log-dets (pass), or for the gathered gradients (backward).
``sp`` is ``[bound, min_bin_width, min_bin_height, min_derivative]``.
"""

import numpy as np

from .backend import numba_twin
from .mlp import mlp_backward_numba, mlp_backward_numpy, mlp_forward_numba, mlp_forward_numpy
from .scalar import affine_density, affine_density_vjp, affine_sampling, affine_sampling_vjp, soft_clamp
from .spline import rqs_forward_backward_numba, rqs_forward_backward_numpy, rqs_forward_numba, \
    rqs_forward_numpy, rqs_inverse_numba, rqs_inverse_numpy


# ---------------------------------------------------------------- NumPy reference

def _log_scale_numpy(raw, clamp):
    return clamp * np.tanh(raw / clamp) if clamp > 0 else raw


def coupling_inverse_numpy(theta, off, widths, act, affine, clamp, a, b, y, x, ld, cond, hid, net):
    """Density direction: ``x_b = (y_b - t) * exp(-s)``, ``x_a = y_a``, ``ld += -sum(s)``."""
    nb = b.size
    cond[:, :a.size] = y[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    x[:, a] = cond[:, :a.size]
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
    cond[:, :a.size] = x[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    y[:, a] = cond[:, :a.size]
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
    gy[:, a] = gx[:, a] + gcond[:, :a.size]
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
    gx[:, a] = gy[:, a] + gcond[:, :a.size]
    return None


def _spline_views(params, bins):
    """Unnormalized widths, heights and derivatives: views of ``params`` (``n x nb x (3 bins - 1)``)."""
    return params[:, :, :bins], params[:, :, bins:2 * bins], params[:, :, 2 * bins:]


def spline_coupling_inverse_numpy(theta, off, widths, act, bins, sp, a, b, y, x, ld, cond, hid, net, scratch):
    """Density direction: ``x_b = g(y_b)``, ``x_a = y_a``, ``ld += sum(log g'(y_b))``."""
    n, nb = y.shape[0], b.size
    cond[:, :a.size] = y[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    values, out, lde = scratch[0], scratch[1], scratch[2]
    values[...] = y[:, b]
    rqs_forward_numpy(values, *_spline_views(net.reshape(n, nb, 3 * bins - 1), bins), sp[0], sp[1], sp[2], sp[3],
                      out, lde)
    x[:, a] = cond[:, :a.size]
    x[:, b] = out
    ld += lde.sum(axis=1)
    return None


def spline_coupling_forward_numpy(theta, off, widths, act, bins, sp, a, b, x, y, ld, cond, hid, net, scratch):
    """Sampling direction: ``y_b = g^-1(x_b)``, ``y_a = x_a``, ``ld += sum(log dg^-1/dx_b)``."""
    n, nb = x.shape[0], b.size
    cond[:, :a.size] = x[:, a]
    mlp_forward_numpy(theta, off, widths, act, cond, hid, net)
    values, out, lde = scratch[0], scratch[1], scratch[2]
    values[...] = x[:, b]
    rqs_inverse_numpy(values, *_spline_views(net.reshape(n, nb, 3 * bins - 1), bins), sp[0], sp[1], sp[2], sp[3],
                      out, lde)
    y[:, a] = cond[:, :a.size]
    y[:, b] = out
    ld += lde.sum(axis=1)
    return None


def spline_coupling_inverse_backward_numpy(theta, off, widths, act, bins, sp, a, b, gx, gld, cond, hid, net,
                                           scratch, gy, gtheta, gnet, gcond, d1, d2):
    """VJP of :func:`spline_coupling_inverse_numpy` (``scratch[0]`` still holding its spline inputs)."""
    n, nb = gx.shape[0], b.size
    values, grad_values, grad_lde, grad_in = scratch[0], scratch[1], scratch[2], scratch[3]
    grad_values[...] = gx[:, b]
    grad_lde[...] = gld[:, None]
    per_dim = 3 * bins - 1
    rqs_forward_backward_numpy(values, *_spline_views(net.reshape(n, nb, per_dim), bins), sp[0], sp[1], sp[2],
                               sp[3], grad_values, grad_lde, grad_in,
                               *_spline_views(gnet.reshape(n, nb, per_dim), bins))
    mlp_backward_numpy(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    gy[:, b] = grad_in
    gy[:, a] = gx[:, a] + gcond[:, :a.size]
    return None


# ---------------------------------------------------------------- Numba twin

@numba_twin
def _gather_numba(src, idx, dst):
    for i in range(src.shape[0]):
        for j in range(idx.size):
            dst[i, j] = src[i, idx[j]]


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
                s = soft_clamp(net[i, nb + j], clamp, 0.0)
                net[i, nb + j] = s
                x[i, b[j]] = affine_density(y[i, b[j]], net[i, j], s)
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
                s = soft_clamp(net[i, nb + j], clamp, 0.0)
                net[i, nb + j] = s
                y[i, b[j]] = affine_sampling(x[i, b[j]], net[i, j], s)
                total += s
            ld[i] += total
        else:
            for j in range(nb):
                y[i, b[j]] = x[i, b[j]] + net[i, j]


@numba_twin
def coupling_inverse_backward_numba(theta, off, widths, act, affine, clamp, a, b, x, gx, gld, cond, hid, net,
                                    gy, gtheta, gnet, gcond, d1, d2):
    nb = b.size
    for i in range(x.shape[0]):
        for j in range(nb):
            g = gx[i, b[j]]
            if affine:
                gy[i, b[j]], gnet[i, j], gnet[i, nb + j] = affine_density_vjp(g, x[i, b[j]], gld[i], net[i, nb + j],
                                                                              clamp, 0.0, 1.0)
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
                gx[i, b[j]], gnet[i, j], gnet[i, nb + j] = affine_sampling_vjp(g, x[i, b[j]], gld[i], net[i, nb + j],
                                                                               clamp, 0.0, 1.0)
            else:
                gx[i, b[j]] = g
                gnet[i, j] = g
    mlp_backward_numba(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    for i in range(x.shape[0]):
        for j in range(a.size):
            gx[i, a[j]] = gy[i, a[j]] + gcond[i, j]


@numba_twin
def _spline_views_numba(flat, n, nb, bins):
    params = flat.reshape((n, nb, 3 * bins - 1))
    return params[:, :, :bins], params[:, :, bins:2 * bins], params[:, :, 2 * bins:]


@numba_twin
def _spline_scatter_numba(cond, a, out, b, lde, dst, ld):
    for i in range(dst.shape[0]):
        for j in range(a.size):
            dst[i, a[j]] = cond[i, j]
        total = 0.0
        for j in range(b.size):
            dst[i, b[j]] = out[i, j]
            total += lde[i, j]
        ld[i] += total


@numba_twin
def spline_coupling_inverse_numba(theta, off, widths, act, bins, sp, a, b, y, x, ld, cond, hid, net, scratch):
    n = y.shape[0]
    nb = b.size
    _gather_numba(y, a, cond)
    mlp_forward_numba(theta, off, widths, act, cond, hid, net)
    values = scratch[0]
    _gather_numba(y, b, values)
    uw, uh, ud = _spline_views_numba(net, n, nb, bins)
    rqs_forward_numba(values, uw, uh, ud, sp[0], sp[1], sp[2], sp[3], scratch[1], scratch[2])
    _spline_scatter_numba(cond, a, scratch[1], b, scratch[2], x, ld)


@numba_twin
def spline_coupling_forward_numba(theta, off, widths, act, bins, sp, a, b, x, y, ld, cond, hid, net, scratch):
    n = x.shape[0]
    nb = b.size
    _gather_numba(x, a, cond)
    mlp_forward_numba(theta, off, widths, act, cond, hid, net)
    values = scratch[0]
    _gather_numba(x, b, values)
    uw, uh, ud = _spline_views_numba(net, n, nb, bins)
    rqs_inverse_numba(values, uw, uh, ud, sp[0], sp[1], sp[2], sp[3], scratch[1], scratch[2])
    _spline_scatter_numba(cond, a, scratch[1], b, scratch[2], y, ld)


@numba_twin
def spline_coupling_inverse_backward_numba(theta, off, widths, act, bins, sp, a, b, gx, gld, cond, hid, net,
                                           scratch, gy, gtheta, gnet, gcond, d1, d2):
    n = gx.shape[0]
    nb = b.size
    grad_values = scratch[1]
    grad_lde = scratch[2]
    grad_in = scratch[3]
    for i in range(n):
        for j in range(nb):
            grad_values[i, j] = gx[i, b[j]]
            grad_lde[i, j] = gld[i]
    uw, uh, ud = _spline_views_numba(net, n, nb, bins)
    guw, guh, gud = _spline_views_numba(gnet, n, nb, bins)
    rqs_forward_backward_numba(scratch[0], uw, uh, ud, sp[0], sp[1], sp[2], sp[3], grad_values, grad_lde, grad_in,
                               guw, guh, gud)
    mlp_backward_numba(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2)
    for i in range(n):
        for j in range(nb):
            gy[i, b[j]] = grad_in[i, j]
        for j in range(a.size):
            gy[i, a[j]] = gx[i, a[j]] + gcond[i, j]
