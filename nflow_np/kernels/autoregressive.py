"""MAF layers: the one-pass density direction, its backward, and the sequential sampling loop.

``theta`` here holds the MADE weights already multiplied by their masks (the
caller's ``theta * mask`` once per pass), so the network is a plain MLP with
widths ``(d, h1, ..., 2 d)``: outputs ``[:d]`` are the shifts, ``[d:]`` the raw
log-scales, both in feature order. ``y`` is data, ``x`` base.

Sampling must fill ``y`` one feature at a time. The reference does it the
textbook way, ``d`` full network passes. The compiled twin computes every
hidden unit exactly once: MADE gives a unit of degree ``k`` inputs of order
``< k`` only, so once the features of orders ``0..k-1`` are known, the units
of degree ``k`` are final. Step ``k`` therefore finishes the units of
degree ``k`` in each layer and reads the two outputs of the order-``k``
feature: the whole loop costs one network pass instead of ``d`` (less, as it
skips the masked weights), with activations kept transposed so the inner
loops run over a chunk's rows. ``groups`` lists, per hidden layer, its units sorted by degree with
CSR-style offsets (see :func:`degree_groups`).

Autoregressive splines (``spline_maf_*``) take the same MADE network with
``3 bins - 1`` outputs per feature, laid out ``(parameter, feature)``, read
as the unnormalized spline parameters of :mod:`.spline` (``sp`` holds
``[bound, min_bin_width, min_bin_height, min_derivative]``). Their
``scratch`` is ``4 x (n x d)``: the per-element log-dets, then room for the
backward's gathered gradients. Sampling takes ``d`` network passes, the
textbook way, in both twins.
"""

import numpy as np

from .backend import numba_twin
from .coupling import _log_scale_numpy
from .mlp import activate_values, mlp_backward_numba, mlp_backward_numpy, mlp_forward_numba, mlp_forward_numpy
from .scalar import affine_density, affine_density_vjp, affine_sampling, soft_clamp
from .spline import rqs_forward_backward_numba, rqs_forward_backward_numpy, rqs_forward_numba, \
    rqs_forward_numpy, rqs_inverse_numba, rqs_inverse_numpy


def maf_forward_scratch_size(widths):
    """Entries of ``scratch`` that :func:`maf_forward_numba` needs: the transposed weights."""
    return int(sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1)))


def degree_groups(degrees, d):
    """Flat int64 array: for each hidden layer, ``d + 1`` offsets then its units sorted by degree.

    Offsets ``o[k]..o[k+1]`` (relative to the start of the unit list) select
    the units of degree ``k`` (``k = 1..d-1``; degree 0 and ``d`` are empty).
    """
    parts = []
    for deg in degrees[1:]:
        order = np.argsort(deg, kind="stable")
        counts = np.bincount(deg, minlength=d + 1)[:d + 1]
        offsets = np.concatenate([[0], np.cumsum(counts)])[:d + 1]
        parts.append(offsets)
        parts.append(order)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------------- NumPy reference

def maf_inverse_numpy(theta, off, widths, act, clamp, y, x, ld, hid, net):
    """``x = (y - t(y)) * exp(-s(y))``, ``ld += -sum(s)``; ``net[:, d:]`` keeps ``s``."""
    d = y.shape[1]
    mlp_forward_numpy(theta, off, widths, act, y, hid, net)
    s = _log_scale_numpy(net[:, d:], clamp)
    net[:, d:] = s
    x[...] = (y - net[:, :d]) * np.exp(-s)
    ld -= s.sum(axis=1)
    return None


def maf_inverse_backward_numpy(theta, off, widths, act, clamp, y, x, gx, gld, hid, net, gy, gtheta, gnet, d1, d2):
    d = y.shape[1]
    s = net[:, d:]
    inv_scale = np.exp(-s)
    direct = gx * inv_scale
    gnet[:, :d] = -direct
    squash = 1.0 - (s / clamp) ** 2 if clamp > 0 else 1.0
    gnet[:, d:] = (-gx * x - gld[:, None]) * squash
    mlp_backward_numpy(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2)
    gy += direct
    return None


def maf_forward_numpy(theta, off, widths, act, clamp, generation, groups, x, y, ld, hid, net, scratch):
    """Sampling: ``y_i = x_i * exp(s_i(y)) + t_i(y)`` in generation order, ``ld += sum(s)``.

    ``hid`` needs ``n * sum(hidden)`` entries, ``scratch`` :func:`maf_forward_scratch_size`;
    ``net`` is overwritten.
    """
    d = x.shape[1]
    y[...] = 0.0
    for i in generation:
        mlp_forward_numpy(theta, off, widths, act, y, hid, net)
        s = _log_scale_numpy(net[:, d + i], clamp)
        y[:, i] = x[:, i] * np.exp(s) + net[:, i]
    # one more pass gives every feature's final log-scale
    mlp_forward_numpy(theta, off, widths, act, y, hid, net)
    ld += _log_scale_numpy(net[:, d:], clamp).sum(axis=1)
    return None


def _made_spline_views_numpy(net, bins, d):
    """``(uw, uh, ud)``, each ``n x d x k``: views of MADE's ``(parameter, feature)``-ordered output."""
    params = net.reshape(net.shape[0], 3 * bins - 1, d).transpose(0, 2, 1)
    return params[:, :, :bins], params[:, :, bins:2 * bins], params[:, :, 2 * bins:]


def spline_maf_inverse_numpy(theta, off, widths, act, bins, sp, y, x, ld, hid, net, scratch):
    """Density direction of an autoregressive spline: ``x = g(y)`` with ``g``'s parameters from ``y``."""
    d = y.shape[1]
    mlp_forward_numpy(theta, off, widths, act, y, hid, net)
    rqs_forward_numpy(y, *_made_spline_views_numpy(net, bins, d), sp[0], sp[1], sp[2], sp[3], x, scratch[0])
    ld += scratch[0].sum(axis=1)
    return None


def spline_maf_inverse_backward_numpy(theta, off, widths, act, bins, sp, y, gx, gld, hid, net, scratch, gy, gtheta,
                                      gnet, d1, d2):
    """VJP of :func:`spline_maf_inverse_numpy` (``hid``, ``net`` from its pass)."""
    d = y.shape[1]
    grad_ld, direct = scratch[1], scratch[2]
    grad_ld[...] = gld[:, None]
    rqs_forward_backward_numpy(y, *_made_spline_views_numpy(net, bins, d), sp[0], sp[1], sp[2], sp[3], gx, grad_ld,
                               direct, *_made_spline_views_numpy(gnet, bins, d))
    mlp_backward_numpy(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2)
    gy += direct
    return None


def spline_maf_forward_numpy(theta, off, widths, act, bins, sp, generation, x, y, ld, hid, net, scratch):
    """Sampling: ``y_i = g_i^-1(x_i)`` in generation order, each spline's parameters from the ``y`` so far."""
    d = x.shape[1]
    y[...] = 0.0
    lde = scratch[0]
    for i in generation:
        mlp_forward_numpy(theta, off, widths, act, y, hid, net)
        uw, uh, ud = _made_spline_views_numpy(net, bins, d)
        rqs_inverse_numpy(x[:, i:i + 1], uw[:, i:i + 1], uh[:, i:i + 1], ud[:, i:i + 1], sp[0], sp[1], sp[2], sp[3],
                          y[:, i:i + 1], lde[:, i:i + 1])
    ld += lde.sum(axis=1)
    return None


# ---------------------------------------------------------------- Numba twin

@numba_twin
def maf_inverse_numba(theta, off, widths, act, clamp, y, x, ld, hid, net):
    d = y.shape[1]
    mlp_forward_numba(theta, off, widths, act, y, hid, net)
    for i in range(y.shape[0]):
        total = 0.0
        for j in range(d):
            s = soft_clamp(net[i, d + j], clamp, 0.0)
            net[i, d + j] = s
            x[i, j] = affine_density(y[i, j], net[i, j], s)
            total += s
        ld[i] -= total


@numba_twin
def maf_inverse_backward_numba(theta, off, widths, act, clamp, y, x, gx, gld, hid, net, gy, gtheta, gnet, d1, d2):
    d = y.shape[1]
    for i in range(y.shape[0]):
        for j in range(d):
            _, gnet[i, j], gnet[i, d + j] = affine_density_vjp(gx[i, j], x[i, j], gld[i], net[i, d + j], clamp, 0.0,
                                                               1.0)
    mlp_backward_numba(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2)
    for i in range(y.shape[0]):
        for j in range(d):
            gy[i, j] += gx[i, j] * np.exp(-net[i, d + j])


@numba_twin
def maf_forward_numba(theta, off, widths, act, clamp, generation, groups, x, y, ld, hid, net, scratch):
    n, d = x.shape
    n_hidden = widths.size - 2
    last = widths.size - 2
    # transposed weights (one row per unit) and the parameter offsets of each layer
    woff = np.empty(widths.size - 1, np.int64)
    toff = np.empty(widths.size - 1, np.int64)
    p = off
    t = 0
    for layer in range(widths.size - 1):
        fi = widths[layer]
        fo = widths[layer + 1]
        woff[layer] = p
        toff[layer] = t
        for u in range(fi):
            for v in range(fo):
                scratch[t + v * fi + u] = theta[p + u * fo + v]
        p += fi * fo + fo
        t += fi * fo
    # activations are kept transposed, one contiguous row of n values per unit (y too, in net), so the
    # inner loops run over the rows of the chunk and vectorize
    y_t = net.reshape(net.size)[:d * n].reshape((d, n))
    y_t[:, :] = 0.0
    hoff = np.zeros(n_hidden + 1, np.int64)
    for layer in range(n_hidden):
        hoff[layer + 1] = hoff[layer] + widths[layer + 1]
    hid[:n * hoff[n_hidden]] = 0.0
    goff = np.zeros(n_hidden + 1, np.int64)
    for layer in range(n_hidden):
        goff[layer + 1] = goff[layer] + d + 1 + widths[layer + 1]
    out = np.empty((2, n), dtype=x.dtype)
    for k in range(d):
        # the hidden units of degree k see only features of order < k, all final by now
        for layer in range(n_hidden):
            fi = widths[layer]
            fo = widths[layer + 1]
            prev = y_t if layer == 0 else hid[n * hoff[layer - 1]:n * hoff[layer]].reshape((fi, n))
            cur = hid[n * hoff[layer]:n * hoff[layer + 1]].reshape((fo, n))
            g = goff[layer]
            for at in range(groups[g + k], groups[g + k + 1]):
                u = groups[g + d + 1 + at]
                row = cur[u]
                row[:] = theta[woff[layer] + fi * fo + u]
                for q in range(fi):
                    wv = scratch[toff[layer] + u * fi + q]
                    if wv != 0.0:    # masked connections are exact zeros: skip them
                        src = prev[q]
                        for r in range(n):
                            row[r] += wv * src[r]
                activate_values(row, act)
        i = generation[k]
        fi = widths[last]
        feats = y_t if n_hidden == 0 else hid[n * hoff[n_hidden - 1]:n * hoff[n_hidden]].reshape((fi, n))
        for half in range(2):
            unit = i + half * d
            acc = out[half]
            acc[:] = theta[woff[last] + fi * 2 * d + unit]
            for q in range(fi):
                wv = scratch[toff[last] + unit * fi + q]
                if wv != 0.0:
                    src = feats[q]
                    for r in range(n):
                        acc[r] += wv * src[r]
        for r in range(n):
            s = soft_clamp(out[1, r], clamp, 0.0)
            value = affine_sampling(x[r, i], out[0, r], s)
            y_t[i, r] = value
            y[r, i] = value
            ld[r] += s


@numba_twin
def _made_spline_views_numba(net, bins, d):
    params = net.reshape((net.shape[0], 3 * bins - 1, d)).transpose((0, 2, 1))
    return params[:, :, :bins], params[:, :, bins:2 * bins], params[:, :, 2 * bins:]


@numba_twin
def spline_maf_inverse_numba(theta, off, widths, act, bins, sp, y, x, ld, hid, net, scratch):
    d = y.shape[1]
    mlp_forward_numba(theta, off, widths, act, y, hid, net)
    uw, uh, ud = _made_spline_views_numba(net, bins, d)
    lde = scratch[0]
    rqs_forward_numba(y, uw, uh, ud, sp[0], sp[1], sp[2], sp[3], x, lde)
    for i in range(y.shape[0]):
        total = 0.0
        for j in range(d):
            total += lde[i, j]
        ld[i] += total


@numba_twin
def spline_maf_inverse_backward_numba(theta, off, widths, act, bins, sp, y, gx, gld, hid, net, scratch, gy, gtheta,
                                      gnet, d1, d2):
    n, d = y.shape
    grad_ld = scratch[1]
    direct = scratch[2]
    for i in range(n):
        for j in range(d):
            grad_ld[i, j] = gld[i]
    uw, uh, ud = _made_spline_views_numba(net, bins, d)
    guw, guh, gud = _made_spline_views_numba(gnet, bins, d)
    rqs_forward_backward_numba(y, uw, uh, ud, sp[0], sp[1], sp[2], sp[3], gx, grad_ld, direct, guw, guh, gud)
    mlp_backward_numba(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2)
    for i in range(n):
        for j in range(d):
            gy[i, j] += direct[i, j]


@numba_twin
def spline_maf_forward_numba(theta, off, widths, act, bins, sp, generation, x, y, ld, hid, net, scratch):
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = 0.0
    lde = scratch[0]
    for i in generation:
        mlp_forward_numba(theta, off, widths, act, y, hid, net)
        uw, uh, ud = _made_spline_views_numba(net, bins, d)
        rqs_inverse_numba(x[:, i:i + 1], uw[:, i:i + 1], uh[:, i:i + 1], ud[:, i:i + 1], sp[0], sp[1], sp[2], sp[3],
                          y[:, i:i + 1], lde[:, i:i + 1])
    for i in range(n):
        total = 0.0
        for j in range(d):
            total += lde[i, j]
        ld[i] += total
