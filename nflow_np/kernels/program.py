"""A whole flow as one compiled program: log_prob, sampling and training epochs without Python per layer.

:func:`compile_flow` flattens a ``TransformedDistribution`` (standard normal
base, a ``Chain`` of supported layers) into plain arrays that compiled code
walks with one loop over layers:

``ops``      int64 ``(L,)``: the op of each layer, in density order (data -> base);
``fields``   int64 ``(L, 8)``: per-layer offsets and flags (``F_*`` below);
``clamps``   ``(L,)`` in the parameters' dtype: log-scale clamps (0: none);
``idata``    int64: index arrays and network widths, each stored as ``[count, values...]``;
``theta``    the parameters, flat, in ``flow.parameters()``'s shapes; ``pmask``
             multiplies them (MADE masks; ones elsewhere) into ``theta_eff``;
``layout``   int64: per-row offsets of the workspace regions (``W_*`` below).

Supported layers: AffineCoupling, AdditiveCoupling, SplineCoupling, MaskedAutoregressive,
SplineAutoregressive, Permute, Reverse, ActNorm, BatchNorm, and Chains of them, with relu/tanh/elu networks;
couplings may be conditional (a context appended to their network input), autoregressive
layers not. Anything else makes :func:`compile_flow` raise
:class:`Unsupported`, and callers run the bijectors' own NumPy passes.

Workspace: ``ws`` is ``(parts, n * row + const)``: each part (a thread's
share of the rows) processes chunks of ``n`` rows; region ``k`` of a chunk
starts at ``n * layout[k]``. ``Z_l`` (the input of density-order layer ``l``,
``Z_0`` the data and ``Z_L`` the base point) are kept for the backward, with
each layer's caches; gradients ping-pong between two ``n x d`` blocks. The
``W_CTX`` block holds the chunk's context rows (``layout[W_CTXW]`` wide, 0
for an unconditional flow); a conditional coupling copies them into its
network input after the gathered coordinates.
"""

import numpy as np

from .autoregressive import maf_forward_numba, maf_forward_numpy, maf_inverse_backward_numba, \
    maf_inverse_backward_numpy, maf_inverse_numba, maf_inverse_numpy, spline_maf_forward_numba, \
    spline_maf_forward_numpy, spline_maf_inverse_backward_numba, spline_maf_inverse_backward_numpy, \
    spline_maf_inverse_numba, spline_maf_inverse_numpy
from .backend import numba_twin
from .coupling import coupling_forward_numba, coupling_forward_numpy, coupling_inverse_backward_numba, \
    coupling_inverse_backward_numpy, coupling_inverse_numba, coupling_inverse_numpy, spline_coupling_forward_numba, \
    spline_coupling_forward_numpy, spline_coupling_inverse_backward_numba, spline_coupling_inverse_backward_numpy, \
    spline_coupling_inverse_numba, spline_coupling_inverse_numpy
from .elementwise import actnorm_forward_numba, actnorm_forward_numpy, actnorm_inverse_backward_numba, \
    actnorm_inverse_backward_numpy, actnorm_inverse_numba, actnorm_inverse_numpy, normal_log_prob_numba, \
    normal_log_prob_numpy, permute_backward_numba, permute_backward_numpy, permute_numba, permute_numpy, \
    HALF_LOG_2PI
from .normalization import batchnorm_forward_numba, batchnorm_forward_numpy, batchnorm_inverse_backward_numba, \
    batchnorm_inverse_backward_numpy, batchnorm_inverse_numba, batchnorm_inverse_numpy
from .optim import ACCEPTED, adam_step_numba, adam_step_numpy

# load_numba replaces this with numba.prange before the first compiled call; until then (NumPy
# backend) nothing here iterates with it
prange = range

__all__ = ["Unsupported", "flow_log_prob_numpy", "flow_log_prob_numba", "flow_sample_numpy", "flow_sample_numba",
           "flow_nll_grad_numpy", "flow_nll_grad_numba", "train_epoch_numpy", "train_epoch_numba"]

OP_COUPLING, OP_MAF, OP_PERMUTE, OP_ACTNORM, OP_BATCHNORM, OP_SPLINE, OP_SPLINE_MAF = 0, 1, 2, 3, 4, 5, 6
# fields columns: parameter offset, widths, activation, index arrays a / b, cache offset, affine flag (spline:
# bins), MADE groups (spline: offset in theta of [bound, min_bin_width, min_bin_height, min_derivative])
F_THETA, F_WIDTHS, F_ACT, F_A, F_B, F_CACHE, F_FLAG, F_GROUPS = range(8)
# layout entries (per-row offsets), the two totals, and the number of trainable entries of theta (the
# rest holds BatchNorm's running statistics, which the optimizer leaves alone)
W_Z, W_LD, W_G0, W_G1, W_GLD, W_GNET, W_GCOND, W_D1, W_D2, W_ROW, W_CONST, W_PARAMS = range(12)
# the context block's per-row offset and width
W_CTX, W_CTXW = 12, 13


class Unsupported(ValueError):
    """The flow holds a layer the compiled program does not cover; the NumPy passes run it instead."""


# ====================================================================== NumPy reference

def _ints_numpy(idata, offset):
    return idata[offset + 1:offset + 1 + idata[offset]]


def _block_numpy(w, n, offset, width):
    return w[n * offset:n * (offset + width)].reshape(n, width)


def _caches_numpy(f, idata, w, n):
    widths = _ints_numpy(idata, f[F_WIDTHS])
    # a coupling's network input: its na coordinates, then its context (widths[0] - na); MAF keeps none
    na = int(widths[0]) if _ints_numpy(idata, f[F_A]).size else 0
    hidden = int(widths[1:-1].sum())
    c = f[F_CACHE]
    cond = _block_numpy(w, n, c, na)
    hid = w[n * (c + na):n * (c + na + hidden)]
    net = _block_numpy(w, n, c + na + hidden, widths[-1])
    return widths, cond, hid, net


def _spline_numpy(f, idata, theta, w, n):
    """A spline layer's scratch (``4 x n x nb``, after its network output) and ``[bound, minima...]``."""
    widths = _ints_numpy(idata, f[F_WIDTHS])
    nb = _ints_numpy(idata, f[F_B]).size
    cond = int(widths[0]) if _ints_numpy(idata, f[F_A]).size else 0
    start = f[F_CACHE] + cond + int(widths[1:].sum())
    return w[n * start:n * (start + 4 * nb)].reshape(4, n, nb), theta[f[F_GROUPS]:f[F_GROUPS] + 4]


def _context_numpy(idata, f, cond, ctx):
    """Append the context rows to a conditional coupling's network input."""
    na = _ints_numpy(idata, f[F_A]).size
    if cond.shape[1] > na:
        cond[:, na:] = ctx


def _layer_numpy(direction, layer, ops, fields, clamps, idata, theta, w, n, d, zin, zout, ld, const, ctx):
    """One layer, ``direction`` +1 sampling (zin base side) or -1 density (zin data side)."""
    op, f = ops[layer], fields[layer]
    if op == OP_PERMUTE:
        permute_numpy(zin, _ints_numpy(idata, f[F_A] if direction < 0 else f[F_B]), zout)
    elif op == OP_ACTNORM:
        o = f[F_THETA]
        if direction < 0:
            actnorm_inverse_numpy(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)
        else:
            actnorm_forward_numpy(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)
    elif op == OP_BATCHNORM:
        o, st = f[F_THETA], f[F_B]
        if direction < 0:
            batchnorm_inverse_numpy(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer],
                                    f[F_FLAG] == 1 and n >= 2, zin, zout, ld)
        else:
            batchnorm_forward_numpy(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer],
                                    zin, zout, ld)
    else:
        widths, cond, hid, net = _caches_numpy(f, idata, w, n)
        _context_numpy(idata, f, cond, ctx)
        if op == OP_COUPLING:
            run = coupling_inverse_numpy if direction < 0 else coupling_forward_numpy
            run(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer], _ints_numpy(idata, f[F_A]),
                _ints_numpy(idata, f[F_B]), zin, zout, ld, cond, hid, net)
        elif op == OP_SPLINE:
            scratch, sp = _spline_numpy(f, idata, theta, w, n)
            run = spline_coupling_inverse_numpy if direction < 0 else spline_coupling_forward_numpy
            run(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints_numpy(idata, f[F_A]),
                _ints_numpy(idata, f[F_B]), zin, zout, ld, cond, hid, net, scratch)
        elif op == OP_SPLINE_MAF:
            scratch, sp = _spline_numpy(f, idata, theta, w, n)
            if direction < 0:
                spline_maf_inverse_numpy(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, zout, ld, hid, net,
                                         scratch)
            else:
                spline_maf_forward_numpy(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints_numpy(idata, f[F_B]),
                                         zin, zout, ld, hid, net, scratch)
        elif direction < 0:
            maf_inverse_numpy(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, ld, hid, net)
        else:
            maf_forward_numpy(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], _ints_numpy(idata, f[F_B]),
                              idata[f[F_GROUPS]:], zin, zout, ld, hid, net, const)


def _chain_numpy(direction, ops, fields, clamps, idata, layout, theta, w, n, d):
    """All layers over one chunk: density from ``Z_0`` to ``Z_L``, or sampling from ``Z_L`` to ``Z_0``."""
    n_layers = ops.size
    ld = w[n * layout[W_LD]:n * (layout[W_LD] + 1)]
    ld[...] = 0.0
    const = w[n * layout[W_ROW]:]
    ctx = _block_numpy(w, n, layout[W_CTX], layout[W_CTXW])
    steps = range(n_layers) if direction < 0 else range(n_layers - 1, -1, -1)
    for layer in steps:
        z_data = _block_numpy(w, n, layout[W_Z] + layer * d, d)
        z_base = _block_numpy(w, n, layout[W_Z] + (layer + 1) * d, d)
        zin, zout = (z_data, z_base) if direction < 0 else (z_base, z_data)
        _layer_numpy(direction, layer, ops, fields, clamps, idata, theta, w, n, d, zin, zout, ld, const, ctx)
    return ld


def flow_log_prob_numpy(ops, fields, clamps, idata, layout, theta, x, ctx, out, ws, chunk):
    """``out = log p(x | ctx)`` for rows ``x`` (n, d), context rows ``ctx`` (n, c); ``ws`` from :meth:`Program.workspace`."""
    n, d = x.shape
    parts = ws.shape[0]
    per_part = (n + parts - 1) // parts
    for part in range(parts):
        w = ws[part]
        for start in range(part * per_part, min(n, (part + 1) * per_part), chunk):
            m = min(chunk, min(n, (part + 1) * per_part) - start)
            _block_numpy(w, m, layout[W_Z], d)[...] = x[start:start + m]
            _block_numpy(w, m, layout[W_CTX], layout[W_CTXW])[...] = ctx[start:start + m]
            ld = _chain_numpy(-1, ops, fields, clamps, idata, layout, theta, w, m, d)
            out[start:start + m] = ld
            normal_log_prob_numpy(_block_numpy(w, m, layout[W_Z] + ops.size * d, d), out[start:start + m])
    return None


def flow_sample_numpy(ops, fields, clamps, idata, layout, theta, z, ctx, x, log_prob, ws, chunk):
    """``x = forward(z)`` and ``log_prob = log p(x)`` from base points ``z`` (n, d) and context rows ``ctx``."""
    n, d = z.shape
    parts = ws.shape[0]
    per_part = (n + parts - 1) // parts
    for part in range(parts):
        w = ws[part]
        for start in range(part * per_part, min(n, (part + 1) * per_part), chunk):
            m = min(chunk, min(n, (part + 1) * per_part) - start)
            _block_numpy(w, m, layout[W_Z] + ops.size * d, d)[...] = z[start:start + m]
            _block_numpy(w, m, layout[W_CTX], layout[W_CTXW])[...] = ctx[start:start + m]
            ld = _chain_numpy(1, ops, fields, clamps, idata, layout, theta, w, m, d)
            x[start:start + m] = _block_numpy(w, m, layout[W_Z], d)
            log_prob[start:start + m] = -ld
            normal_log_prob_numpy(z[start:start + m], log_prob[start:start + m])
    return None


def _nll_grad_numpy(ops, fields, clamps, idata, layout, theta, w, n, d, gtheta):
    """Mean NLL of the rows in ``Z_0`` and its gradient (w.r.t. ``theta``, unmasked) into ``gtheta``."""
    ld = _chain_numpy(-1, ops, fields, clamps, idata, layout, theta, w, n, d)
    z = _block_numpy(w, n, layout[W_Z] + ops.size * d, d)
    log_prob = ld.copy()
    normal_log_prob_numpy(z, log_prob)
    loss = -float(log_prob.mean(dtype=np.float64))
    gld = w[n * layout[W_GLD]:n * (layout[W_GLD] + 1)]
    gld[...] = -1.0 / n
    gout = _block_numpy(w, n, layout[W_G0], d)
    gout[...] = z / n   # d(-mean log N(z))/dz
    gin = _block_numpy(w, n, layout[W_G1], d)
    for layer in range(ops.size - 1, -1, -1):
        f = fields[layer]
        zin = _block_numpy(w, n, layout[W_Z] + layer * d, d)
        zout = _block_numpy(w, n, layout[W_Z] + (layer + 1) * d, d)
        op = ops[layer]
        if op == OP_PERMUTE:
            permute_backward_numpy(gout, _ints_numpy(idata, f[F_A]), gin)
        elif op == OP_ACTNORM:
            o = f[F_THETA]
            actnorm_inverse_backward_numpy(theta[o:o + d], zout, gout, gld, gin, gtheta[o:o + d],
                                           gtheta[o + d:o + 2 * d])
        elif op == OP_BATCHNORM:
            o, st = f[F_THETA], f[F_B]
            batchnorm_inverse_backward_numpy(theta[o:o + d], theta[st:st + 2 * d + 1], clamps[layer],
                                             f[F_FLAG] == 1 and n >= 2, zin, gout, gld, gin, gtheta[o:o + d],
                                             gtheta[o + d:o + 2 * d])
        else:
            widths, cond, hid, net = _caches_numpy(f, idata, w, n)
            gnet = _block_numpy(w, n, layout[W_GNET], widths[-1])
            d1 = w[n * layout[W_D1]:n * layout[W_D2]]
            d2 = w[n * layout[W_D2]:n * layout[W_ROW]]
            if op == OP_COUPLING:
                a = _ints_numpy(idata, f[F_A])
                coupling_inverse_backward_numpy(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer], a,
                                                _ints_numpy(idata, f[F_B]), zout, gout, gld, cond, hid, net, gin,
                                                gtheta, gnet, _block_numpy(w, n, layout[W_GCOND], cond.shape[1]),
                                                d1, d2)
            elif op == OP_SPLINE:
                a = _ints_numpy(idata, f[F_A])
                scratch, sp = _spline_numpy(f, idata, theta, w, n)
                spline_coupling_inverse_backward_numpy(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, a,
                                                       _ints_numpy(idata, f[F_B]), gout, gld, cond, hid, net, scratch,
                                                       gin, gtheta, gnet,
                                                       _block_numpy(w, n, layout[W_GCOND], cond.shape[1]), d1, d2)
            elif op == OP_SPLINE_MAF:
                scratch, sp = _spline_numpy(f, idata, theta, w, n)
                spline_maf_inverse_backward_numpy(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, gout, gld,
                                                  hid, net, scratch, gin, gtheta, gnet, d1, d2)
            else:
                maf_inverse_backward_numpy(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, gout, gld,
                                           hid, net, gin, gtheta, gnet, d1, d2)
        gout, gin = gin, gout
    return loss


def flow_nll_grad_numpy(ops, fields, clamps, idata, layout, theta_eff, pmask, x, ctx, ws, gtheta):
    """Mean NLL of rows ``x`` (given context rows ``ctx``) and its gradient with respect to the unmasked parameters."""
    n, d = x.shape
    w = ws[0]
    _block_numpy(w, n, layout[W_Z], d)[...] = x
    _block_numpy(w, n, layout[W_CTX], layout[W_CTXW])[...] = ctx
    loss = _nll_grad_numpy(ops, fields, clamps, idata, layout, theta_eff, w, n, d, gtheta)
    gtheta *= pmask
    return loss


def train_epoch_numpy(ops, fields, clamps, idata, layout, theta, theta_eff, pmask, data, ctx, order, batch_size,
                      ws, gtheta, m, v, hyper, state, losses):
    """One epoch of Adam steps over ``data[order]`` in batches; ``losses[k]`` NaN marks a rejected step."""
    n_data, d = data.shape
    w = ws[0]
    status = np.zeros(1, np.int64)
    for k, start in enumerate(range(0, n_data, batch_size)):
        rows = order[start:start + batch_size]
        n = rows.size
        _block_numpy(w, n, layout[W_Z], d)[...] = data[rows]
        _block_numpy(w, n, layout[W_CTX], layout[W_CTXW])[...] = ctx[rows]
        np.multiply(theta, pmask, out=theta_eff)
        loss = _nll_grad_numpy(ops, fields, clamps, idata, layout, theta_eff, w, n, d, gtheta)
        gtheta *= pmask
        p = layout[W_PARAMS]
        theta[p:] = theta_eff[p:]     # running statistics updated by the pass
        losses[k] = np.nan
        if not np.isfinite(loss):
            state[1] += 1
            hyper[0] *= 0.5
            continue
        adam_step_numpy(theta[:p], gtheta[:p], m[:p], v[:p], hyper, state, status)
        if status[0] == ACCEPTED:
            losses[k] = loss
    return None


# ====================================================================== Numba twin

@numba_twin
def _ints_numba(idata, offset):
    return idata[offset + 1:offset + 1 + idata[offset]]


@numba_twin
def _block_numba(w, n, offset, width):
    return w[n * offset:n * (offset + width)].reshape((n, width))


@numba_twin
def _caches_numba(f, idata, w, n):
    widths = _ints_numba(idata, f[F_WIDTHS])
    na = widths[0] if idata[f[F_A]] > 0 else 0
    hidden = 0
    for k in range(1, widths.size - 1):
        hidden += widths[k]
    c = f[F_CACHE]
    cond = _block_numba(w, n, c, na)
    hid = w[n * (c + na):n * (c + na + hidden)]
    net = _block_numba(w, n, c + na + hidden, widths[widths.size - 1])
    return widths, cond, hid, net


@numba_twin
def _spline_numba(f, idata, theta, w, n):
    widths = _ints_numba(idata, f[F_WIDTHS])
    nb = idata[f[F_B]]
    start = f[F_CACHE] + (widths[0] if idata[f[F_A]] > 0 else 0)
    for k in range(1, widths.size):
        start += widths[k]
    return w[n * start:n * (start + 4 * nb)].reshape((4, n, nb)), theta[f[F_GROUPS]:f[F_GROUPS] + 4]


@numba_twin
def _context_numba(idata, f, cond, ctx):
    na = idata[f[F_A]]
    for i in range(cond.shape[0]):
        for j in range(na, cond.shape[1]):
            cond[i, j] = ctx[i, j - na]


@numba_twin
def _copy_rows_numba(src, start, dst):
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[start + i, j]


@numba_twin
def _layer_numba(direction, layer, ops, fields, clamps, idata, theta, w, n, d, zin, zout, ld, const, ctx):
    op = ops[layer]
    f = fields[layer]
    if op == OP_PERMUTE:
        permute_numba(zin, _ints_numba(idata, f[F_A] if direction < 0 else f[F_B]), zout)
    elif op == OP_ACTNORM:
        o = f[F_THETA]
        if direction < 0:
            actnorm_inverse_numba(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)
        else:
            actnorm_forward_numba(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)
    elif op == OP_BATCHNORM:
        o = f[F_THETA]
        st = f[F_B]
        if direction < 0:
            batchnorm_inverse_numba(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer],
                                    f[F_FLAG] == 1 and n >= 2, zin, zout, ld)
        else:
            batchnorm_forward_numba(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer],
                                    zin, zout, ld)
    else:
        widths, cond, hid, net = _caches_numba(f, idata, w, n)
        _context_numba(idata, f, cond, ctx)
        if op == OP_COUPLING:
            if direction < 0:
                coupling_inverse_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer],
                                       _ints_numba(idata, f[F_A]), _ints_numba(idata, f[F_B]), zin, zout, ld, cond,
                                       hid, net)
            else:
                coupling_forward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer],
                                       _ints_numba(idata, f[F_A]), _ints_numba(idata, f[F_B]), zin, zout, ld, cond,
                                       hid, net)
        elif op == OP_SPLINE:
            scratch, sp = _spline_numba(f, idata, theta, w, n)
            if direction < 0:
                spline_coupling_inverse_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp,
                                              _ints_numba(idata, f[F_A]), _ints_numba(idata, f[F_B]), zin, zout, ld,
                                              cond, hid, net, scratch)
            else:
                spline_coupling_forward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp,
                                              _ints_numba(idata, f[F_A]), _ints_numba(idata, f[F_B]), zin, zout, ld,
                                              cond, hid, net, scratch)
        elif op == OP_SPLINE_MAF:
            scratch, sp = _spline_numba(f, idata, theta, w, n)
            if direction < 0:
                spline_maf_inverse_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, zout, ld, hid, net,
                                         scratch)
            else:
                spline_maf_forward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints_numba(idata, f[F_B]),
                                         zin, zout, ld, hid, net, scratch)
        elif direction < 0:
            maf_inverse_numba(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, ld, hid, net)
        else:
            maf_forward_numba(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], _ints_numba(idata, f[F_B]),
                              idata[f[F_GROUPS]:], zin, zout, ld, hid, net, const)


@numba_twin
def _chain_numba(direction, ops, fields, clamps, idata, layout, theta, w, n, d):
    n_layers = ops.size
    ld = w[n * layout[W_LD]:n * (layout[W_LD] + 1)]
    for i in range(n):
        ld[i] = 0.0
    const = w[n * layout[W_ROW]:]
    ctx = _block_numba(w, n, layout[W_CTX], layout[W_CTXW])
    for step in range(n_layers):
        layer = step if direction < 0 else n_layers - 1 - step
        z_data = _block_numba(w, n, layout[W_Z] + layer * d, d)
        z_base = _block_numba(w, n, layout[W_Z] + (layer + 1) * d, d)
        if direction < 0:
            _layer_numba(direction, layer, ops, fields, clamps, idata, theta, w, n, d, z_data, z_base, ld, const, ctx)
        else:
            _layer_numba(direction, layer, ops, fields, clamps, idata, theta, w, n, d, z_base, z_data, ld, const, ctx)
    return ld


@numba_twin(parallel=True)
def flow_log_prob_numba(ops, fields, clamps, idata, layout, theta, x, ctx, out, ws, chunk):
    n, d = x.shape
    parts = ws.shape[0]
    per_part = (n + parts - 1) // parts
    for part in prange(parts):
        w = ws[part]
        stop = min(n, (part + 1) * per_part)
        for start in range(part * per_part, stop, chunk):
            m = min(chunk, stop - start)
            z0 = _block_numba(w, m, layout[W_Z], d)
            for i in range(m):
                for j in range(d):
                    z0[i, j] = x[start + i, j]
            _copy_rows_numba(ctx, start, _block_numba(w, m, layout[W_CTX], layout[W_CTXW]))
            ld = _chain_numba(-1, ops, fields, clamps, idata, layout, theta, w, m, d)
            for i in range(m):
                out[start + i] = ld[i]
            normal_log_prob_numba(_block_numba(w, m, layout[W_Z] + ops.size * d, d), out[start:start + m])


@numba_twin(parallel=True)
def flow_sample_numba(ops, fields, clamps, idata, layout, theta, z, ctx, x, log_prob, ws, chunk):
    n, d = z.shape
    parts = ws.shape[0]
    per_part = (n + parts - 1) // parts
    for part in prange(parts):
        w = ws[part]
        stop = min(n, (part + 1) * per_part)
        for start in range(part * per_part, stop, chunk):
            m = min(chunk, stop - start)
            zl = _block_numba(w, m, layout[W_Z] + ops.size * d, d)
            for i in range(m):
                for j in range(d):
                    zl[i, j] = z[start + i, j]
            _copy_rows_numba(ctx, start, _block_numba(w, m, layout[W_CTX], layout[W_CTXW]))
            ld = _chain_numba(1, ops, fields, clamps, idata, layout, theta, w, m, d)
            z0 = _block_numba(w, m, layout[W_Z], d)
            for i in range(m):
                for j in range(d):
                    x[start + i, j] = z0[i, j]
                log_prob[start + i] = -ld[i]
            normal_log_prob_numba(z[start:start + m], log_prob[start:start + m])


@numba_twin
def _nll_grad_numba(ops, fields, clamps, idata, layout, theta, w, n, d, gtheta):
    ld = _chain_numba(-1, ops, fields, clamps, idata, layout, theta, w, n, d)
    n_layers = ops.size
    z = _block_numba(w, n, layout[W_Z] + n_layers * d, d)
    gld = w[n * layout[W_GLD]:n * (layout[W_GLD] + 1)]
    gout = _block_numba(w, n, layout[W_G0], d)
    gin = _block_numba(w, n, layout[W_G1], d)
    total = 0.0
    for i in range(n):
        sq = 0.0
        for j in range(d):
            sq += z[i, j] * z[i, j]
            gout[i, j] = z[i, j] / n
        total += ld[i] - 0.5 * sq - d * HALF_LOG_2PI
        gld[i] = -1.0 / n
    loss = -total / n
    for layer in range(n_layers - 1, -1, -1):
        f = fields[layer]
        zin = _block_numba(w, n, layout[W_Z] + layer * d, d)
        zout = _block_numba(w, n, layout[W_Z] + (layer + 1) * d, d)
        op = ops[layer]
        if op == OP_PERMUTE:
            permute_backward_numba(gout, _ints_numba(idata, f[F_A]), gin)
        elif op == OP_ACTNORM:
            o = f[F_THETA]
            actnorm_inverse_backward_numba(theta[o:o + d], zout, gout, gld, gin, gtheta[o:o + d],
                                           gtheta[o + d:o + 2 * d])
        elif op == OP_BATCHNORM:
            o = f[F_THETA]
            st = f[F_B]
            batchnorm_inverse_backward_numba(theta[o:o + d], theta[st:st + 2 * d + 1], clamps[layer],
                                             f[F_FLAG] == 1 and n >= 2, zin, gout, gld, gin, gtheta[o:o + d],
                                             gtheta[o + d:o + 2 * d])
        else:
            widths, cond, hid, net = _caches_numba(f, idata, w, n)
            gnet = _block_numba(w, n, layout[W_GNET], widths[widths.size - 1])
            d1 = w[n * layout[W_D1]:n * layout[W_D2]]
            d2 = w[n * layout[W_D2]:n * layout[W_ROW]]
            if op == OP_COUPLING:
                a = _ints_numba(idata, f[F_A])
                coupling_inverse_backward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer],
                                                a, _ints_numba(idata, f[F_B]), zout, gout, gld, cond, hid, net, gin,
                                                gtheta, gnet, _block_numba(w, n, layout[W_GCOND], cond.shape[1]),
                                                d1, d2)
            elif op == OP_SPLINE:
                a = _ints_numba(idata, f[F_A])
                scratch, sp = _spline_numba(f, idata, theta, w, n)
                spline_coupling_inverse_backward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, a,
                                                       _ints_numba(idata, f[F_B]), gout, gld, cond, hid, net, scratch,
                                                       gin, gtheta, gnet,
                                                       _block_numba(w, n, layout[W_GCOND], cond.shape[1]), d1, d2)
            elif op == OP_SPLINE_MAF:
                scratch, sp = _spline_numba(f, idata, theta, w, n)
                spline_maf_inverse_backward_numba(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, gout, gld,
                                                  hid, net, scratch, gin, gtheta, gnet, d1, d2)
            else:
                maf_inverse_backward_numba(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, gout, gld,
                                           hid, net, gin, gtheta, gnet, d1, d2)
        gout, gin = gin, gout
    return loss


@numba_twin
def flow_nll_grad_numba(ops, fields, clamps, idata, layout, theta_eff, pmask, x, ctx, ws, gtheta):
    n, d = x.shape
    w = ws[0]
    z0 = _block_numba(w, n, layout[W_Z], d)
    for i in range(n):
        for j in range(d):
            z0[i, j] = x[i, j]
    _copy_rows_numba(ctx, 0, _block_numba(w, n, layout[W_CTX], layout[W_CTXW]))
    loss = _nll_grad_numba(ops, fields, clamps, idata, layout, theta_eff, w, n, d, gtheta)
    for k in range(gtheta.size):
        gtheta[k] *= pmask[k]
    return loss


@numba_twin
def train_epoch_numba(ops, fields, clamps, idata, layout, theta, theta_eff, pmask, data, ctx, order, batch_size,
                      ws, gtheta, m, v, hyper, state, losses):
    n_data, d = data.shape
    w = ws[0]
    status = np.zeros(1, np.int64)
    k = 0
    for start in range(0, n_data, batch_size):
        n = min(batch_size, n_data - start)
        z0 = _block_numba(w, n, layout[W_Z], d)
        c0 = _block_numba(w, n, layout[W_CTX], layout[W_CTXW])
        for i in range(n):
            row = order[start + i]
            for j in range(d):
                z0[i, j] = data[row, j]
            for j in range(c0.shape[1]):
                c0[i, j] = ctx[row, j]
        for q in range(theta.size):
            theta_eff[q] = theta[q] * pmask[q]
        loss = _nll_grad_numba(ops, fields, clamps, idata, layout, theta_eff, w, n, d, gtheta)
        for q in range(gtheta.size):
            gtheta[q] *= pmask[q]
        p = layout[W_PARAMS]
        for q in range(p, theta.size):
            theta[q] = theta_eff[q]
        losses[k] = np.nan
        if np.isfinite(loss):
            adam_step_numba(theta[:p], gtheta[:p], m[:p], v[:p], hyper, state, status)
            if status[0] == ACCEPTED:
                losses[k] = loss
        else:
            state[1] += 1
            hyper[0] *= 0.5
        k += 1
