"""The Numba runner of a :class:`~nflow_np.kernels.plan.Program`: one small loop over layers, one compiled entry per
layer kind and pass, reached through a table of function addresses.

Why addresses: a loop that switches over every layer kind must compile every
kind before it can run any, which made a new user wait over a minute for a
first result. Here each ``(op, pass)`` pair is its own C-callable entry
(:func:`numba.cfunc`), compiled the first time a flow needs it, per dtype,
and cached on disk; the loops in this module call ``table[layer, pass]``
through :func:`_call_layer` and contain no layer code at all, so they compile
once per dtype in well under a second. A flow pays only for the kinds of layer
it has and the passes it runs: ``log_prob`` compiles density passes,
``sample`` sampling passes, training adds the backward ones.

Every entry has the same C signature::

    void entry(int64 *meta, T *clamps, T *theta, T *gtheta, T *w, int64 w_size, int64 layer, int64 n, int64 d)

``meta`` packs ``[layers, total, theta size, idata size]``, then ``fields``
(``layers x 8``), ``idata`` and ``layout`` (see :mod:`.program`); ``w`` is one
chunk's workspace of ``n`` rows. Density passes run ``Z_layer -> Z_layer+1``,
sampling passes the reverse; backward passes read their upstream gradient from
``G0`` or ``G1`` (alternating, ``G0`` for the last layer) and write the other.

The loops are compiled with ``nogil=True``; :class:`~nflow_np.kernels.plan.Program`
splits a large batch over threads itself, which costs nothing to compile
(Numba's ``parallel=True`` took seconds per loop).

Importing this module imports Numba and compiles nothing.
"""

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from . import autoregressive as _ar
from . import coupling as _coupling
from . import elementwise as _elementwise
from . import normalization as _normalization
from . import optim as _optim
from .backend import load_numba
from .program import F_A, F_ACT, F_B, F_CACHE, F_FLAG, F_GROUPS, F_THETA, F_WIDTHS, OP_ACTNORM, OP_BATCHNORM, \
    OP_COUPLING, OP_MAF, OP_PERMUTE, OP_SPLINE, OP_SPLINE_MAF, W_CONST, W_CTX, W_CTXW, W_D1, W_D2, W_G0, W_G1, \
    W_GCOND, W_GLD, W_GNET, W_LD, W_PARAMS, W_ROW, W_Z

# the twins become compiled dispatchers before anything below binds them
load_numba()

_actnorm_forward = _elementwise.actnorm_forward_numba
_actnorm_inverse = _elementwise.actnorm_inverse_numba
_actnorm_inverse_backward = _elementwise.actnorm_inverse_backward_numba
_permute = _elementwise.permute_numba
_permute_backward = _elementwise.permute_backward_numba
_normal_log_prob = _elementwise.normal_log_prob_numba
_batchnorm_forward = _normalization.batchnorm_forward_numba
_batchnorm_inverse = _normalization.batchnorm_inverse_numba
_batchnorm_inverse_backward = _normalization.batchnorm_inverse_backward_numba
_coupling_forward = _coupling.coupling_forward_numba
_coupling_inverse = _coupling.coupling_inverse_numba
_coupling_inverse_backward = _coupling.coupling_inverse_backward_numba
_spline_coupling_forward = _coupling.spline_coupling_forward_numba
_spline_coupling_inverse = _coupling.spline_coupling_inverse_numba
_spline_coupling_inverse_backward = _coupling.spline_coupling_inverse_backward_numba
_maf_forward = _ar.maf_forward_numba
_maf_inverse = _ar.maf_inverse_numba
_maf_inverse_backward = _ar.maf_inverse_backward_numba
_spline_maf_forward = _ar.spline_maf_forward_numba
_spline_maf_inverse = _ar.spline_maf_inverse_numba
_spline_maf_inverse_backward = _ar.spline_maf_inverse_backward_numba
_adam_step = _optim.adam_step_numba
ACCEPTED = _optim.ACCEPTED
HALF_LOG_2PI = _elementwise.HALF_LOG_2PI

HEAD = 4                      # meta: [layers, total, theta size, idata size]
DENSITY, SAMPLING, BACKWARD = 0, 1, 2
PASSES = 3

_OPTIONS = dict(error_model="numpy", fastmath={"reassoc", "contract"})
_jit = numba.njit(cache=True, **_OPTIONS)
_jit_nogil = numba.njit(cache=True, nogil=True, **_OPTIONS)


# ====================================================================== calling an entry by address

def _data_pointer(context, builder, array_type, value):
    return context.make_array(array_type)(context, builder, value).data


@intrinsic
def _call_layer(typingctx, address, meta, clamps, theta, gtheta, w, w_size, layer, n, d):
    """Call the entry at ``address`` (an int64) with the arrays' data pointers and the integers as they are."""
    sig = types.void(address, meta, clamps, theta, gtheta, w, w_size, layer, n, d)

    def codegen(context, builder, signature, args):
        values = [_data_pointer(context, builder, signature.args[k], args[k]) for k in range(1, 6)] + list(args[6:])
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), values)
        return context.get_dummy_value()

    return sig, codegen


# ====================================================================== the entries

@_jit
def _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size):
    """The arrays behind an entry's pointers."""
    head = carray(meta_p, (HEAD,))
    n_layers = head[0]
    meta = carray(meta_p, (head[1],))
    fields = meta[HEAD:HEAD + 8 * n_layers].reshape((n_layers, 8))
    start = HEAD + 8 * n_layers
    idata = meta[start:start + head[3]]
    layout = meta[start + head[3]:]
    return (fields, idata, layout, carray(clamps_p, (n_layers,)), carray(theta_p, (head[2],)),
            carray(gtheta_p, (head[2],)), carray(w_p, (w_size,)))


@_jit
def _ints(idata, offset):
    return idata[offset + 1:offset + 1 + idata[offset]]


@_jit
def _block(w, n, offset, width):
    return w[n * offset:n * (offset + width)].reshape((n, width))


@_jit
def _row(w, n, offset):
    return w[n * offset:n * (offset + 1)]


@_jit
def _pass_arrays(direction, layout, w, layer, n, d):
    """``(zin, zout, ld)``: density reads ``Z_layer`` and writes ``Z_layer+1``; sampling the reverse."""
    z_data = _block(w, n, layout[W_Z] + layer * d, d)
    z_base = _block(w, n, layout[W_Z] + (layer + 1) * d, d)
    ld = _row(w, n, layout[W_LD])
    if direction < 0:
        return z_data, z_base, ld
    return z_base, z_data, ld


@_jit
def _grads(layout, w, n_layers, layer, n, d):
    """``(gout, gin, gld)`` of a backward pass: the upstream gradient alternates between ``G0`` and ``G1``."""
    g0 = _block(w, n, layout[W_G0], d)
    g1 = _block(w, n, layout[W_G1], d)
    if (n_layers - 1 - layer) % 2 == 0:
        return g0, g1, _row(w, n, layout[W_GLD])
    return g1, g0, _row(w, n, layout[W_GLD])


@_jit
def _caches(f, idata, w, n):
    """A network layer's widths and its kept blocks (``cond``, ``hid``, ``net``)."""
    widths = _ints(idata, f[F_WIDTHS])
    na = widths[0] if idata[f[F_A]] > 0 else 0
    hidden = 0
    for k in range(1, widths.size - 1):
        hidden += widths[k]
    c = f[F_CACHE]
    cond = _block(w, n, c, na)
    hid = w[n * (c + na):n * (c + na + hidden)]
    net = _block(w, n, c + na + hidden, widths[widths.size - 1])
    return widths, cond, hid, net


@_jit
def _network_caches(f, idata, layout, w, n):
    """:func:`_caches`, with a conditional coupling's context rows copied after its gathered coordinates."""
    widths, cond, hid, net = _caches(f, idata, w, n)
    na = idata[f[F_A]]
    if cond.shape[1] > na:
        ctx = _block(w, n, layout[W_CTX], layout[W_CTXW])
        for i in range(n):
            for j in range(na, cond.shape[1]):
                cond[i, j] = ctx[i, j - na]
    return widths, cond, hid, net


@_jit
def _backward_scratch(f, layout, w, n, widths, cond_width):
    """``(gnet, gcond, d1, d2)``: a network layer's backward buffers."""
    return (_block(w, n, layout[W_GNET], widths[widths.size - 1]), _block(w, n, layout[W_GCOND], cond_width),
            w[n * layout[W_D1]:n * layout[W_D2]], w[n * layout[W_D2]:n * layout[W_ROW]])


@_jit
def _spline(f, idata, theta, w, n):
    """A spline layer's scratch (``4 x n x nb``, after its network output) and ``[bound, minima...]``."""
    widths = _ints(idata, f[F_WIDTHS])
    nb = idata[f[F_B]]
    start = f[F_CACHE] + (widths[0] if idata[f[F_A]] > 0 else 0)
    for k in range(1, widths.size):
        start += widths[k]
    return w[n * start:n * (start + 4 * nb)].reshape((4, n, nb)), theta[f[F_GROUPS]:f[F_GROUPS] + 4]


def permute_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    _permute(zin, _ints(idata, fields[layer, F_A]), zout)


def permute_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    _permute(zin, _ints(idata, fields[layer, F_B]), zout)


def permute_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    _permute_backward(gout, _ints(idata, fields[layer, F_A]), gin)


def actnorm_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    o = fields[layer, F_THETA]
    _actnorm_inverse(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)


def actnorm_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    o = fields[layer, F_THETA]
    _actnorm_forward(theta[o:o + d], theta[o + d:o + 2 * d], zin, zout, ld)


def actnorm_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    o = fields[layer, F_THETA]
    _actnorm_inverse_backward(theta[o:o + d], zout, gout, gld, gin, gtheta[o:o + d], gtheta[o + d:o + 2 * d])


def batchnorm_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    o = f[F_THETA]
    st = f[F_B]
    _batchnorm_inverse(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer],
                       f[F_FLAG] == 1 and n >= 2, zin, zout, ld)


def batchnorm_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    o = f[F_THETA]
    st = f[F_B]
    _batchnorm_forward(theta[o:o + d], theta[o + d:o + 2 * d], theta[st:st + 2 * d + 1], clamps[layer], zin, zout,
                       ld)


def batchnorm_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    o = f[F_THETA]
    st = f[F_B]
    _batchnorm_inverse_backward(theta[o:o + d], theta[st:st + 2 * d + 1], clamps[layer], f[F_FLAG] == 1 and n >= 2,
                                zin, gout, gld, gin, gtheta[o:o + d], gtheta[o + d:o + 2 * d])


def coupling_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
    _coupling_inverse(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer], _ints(idata, f[F_A]),
                      _ints(idata, f[F_B]), zin, zout, ld, cond, hid, net)


def coupling_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
    _coupling_forward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer], _ints(idata, f[F_A]),
                      _ints(idata, f[F_B]), zin, zout, ld, cond, hid, net)


def coupling_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    gnet, gcond, d1, d2 = _backward_scratch(f, layout, w, n, widths, cond.shape[1])
    _coupling_inverse_backward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG] == 1, clamps[layer],
                               _ints(idata, f[F_A]), _ints(idata, f[F_B]), zout, gout, gld, cond, hid, net, gin,
                               gtheta, gnet, gcond, d1, d2)


def spline_coupling_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_coupling_inverse(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints(idata, f[F_A]),
                             _ints(idata, f[F_B]), zin, zout, ld, cond, hid, net, scratch)


def spline_coupling_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_coupling_forward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints(idata, f[F_A]),
                             _ints(idata, f[F_B]), zin, zout, ld, cond, hid, net, scratch)


def spline_coupling_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    gnet, gcond, d1, d2 = _backward_scratch(f, layout, w, n, widths, cond.shape[1])
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_coupling_inverse_backward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints(idata, f[F_A]),
                                      _ints(idata, f[F_B]), gout, gld, cond, hid, net, scratch, gin, gtheta, gnet,
                                      gcond, d1, d2)


def maf_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    _maf_inverse(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, ld, hid, net)


def maf_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    _maf_forward(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], _ints(idata, f[F_B]), idata[f[F_GROUPS]:],
                 zin, zout, ld, hid, net, w[n * layout[W_ROW]:])


def maf_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    gnet, gcond, d1, d2 = _backward_scratch(f, layout, w, n, widths, 0)
    _maf_inverse_backward(theta, f[F_THETA], widths, f[F_ACT], clamps[layer], zin, zout, gout, gld, hid, net, gin,
                          gtheta, gnet, d1, d2)


def spline_maf_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_maf_inverse(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, zout, ld, hid, net, scratch)


def spline_maf_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_maf_forward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, _ints(idata, f[F_B]), zin, zout, ld,
                        hid, net, scratch)


def spline_maf_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    gnet, gcond, d1, d2 = _backward_scratch(f, layout, w, n, widths, 0)
    scratch, sp = _spline(f, idata, theta, w, n)
    _spline_maf_inverse_backward(theta, f[F_THETA], widths, f[F_ACT], f[F_FLAG], sp, zin, gout, gld, hid, net,
                                 scratch, gin, gtheta, gnet, d1, d2)


# each op's entries, in the order of the passes
ENTRIES = {
    OP_PERMUTE: (permute_density, permute_sampling, permute_backward),
    OP_ACTNORM: (actnorm_density, actnorm_sampling, actnorm_backward),
    OP_BATCHNORM: (batchnorm_density, batchnorm_sampling, batchnorm_backward),
    OP_COUPLING: (coupling_density, coupling_sampling, coupling_backward),
    OP_SPLINE: (spline_coupling_density, spline_coupling_sampling, spline_coupling_backward),
    OP_MAF: (maf_density, maf_sampling, maf_backward),
    OP_SPLINE_MAF: (spline_maf_density, spline_maf_sampling, spline_maf_backward),
}

_entries = {}                 # (op, pass, dtype) -> compiled cfunc, kept alive so its address stays valid
_entries_lock = threading.Lock()


def entry_address(op, pass_, dtype):
    """The address of the compiled entry for ``op``'s ``pass_`` in ``dtype``, compiling it on first use."""
    key = (int(op), int(pass_), np.dtype(dtype).name)
    found = _entries.get(key)
    if found is None:
        with _entries_lock:
            found = _entries.get(key)
            if found is None:
                real = numba.from_dtype(np.dtype(dtype))
                ptr = types.CPointer(real)
                sig = types.void(types.CPointer(types.int64), ptr, ptr, ptr, ptr, types.int64, types.int64,
                                 types.int64, types.int64)
                found = _entries[key] = numba.cfunc(sig, cache=True, **_OPTIONS)(ENTRIES[key[0]][key[1]])
    return found.address


LOOPS = ("log_prob_rows", "sample_rows", "nll_grad", "train_epoch")
LOOP = -1                     # the "pass" of a loop's key: (index in LOOPS, LOOP, dtype name)


def compile_loop(index, dtype):
    """Compile (or load from the disk cache) loop ``LOOPS[index]`` for ``dtype``, by a call that runs no layer."""
    ft = np.dtype(dtype)
    table = np.zeros((0, PASSES), np.int64)
    meta = pack_meta(np.zeros((0, 8), np.int64), np.zeros(1, np.int64), np.zeros(14, np.int64), 1)
    clamps, theta, vec = np.zeros(0, ft), np.zeros(1, ft), np.zeros(1, ft)
    rows, ctx = np.zeros((0, 1), ft), np.zeros((0, 0), ft)
    name = LOOPS[index]
    if name == "log_prob_rows":
        log_prob_rows(table, meta, clamps, theta, rows, ctx, vec, vec, 1, 0, 0)
    elif name == "sample_rows":
        sample_rows(table, meta, clamps, theta, rows, ctx, rows, vec, vec, 1, 0, 0)
    elif name == "nll_grad":
        nll_grad(table, meta, clamps, theta, theta, rows, ctx, vec, vec)
    else:
        train_epoch(table, meta, clamps, theta, theta, theta, rows, ctx, np.zeros(0, np.int64), 1, vec, vec, vec,
                    vec, np.zeros(7), np.zeros(2, np.int64), np.zeros(0))


def pack_meta(fields, idata, layout, theta_size):
    """The ``meta`` array every entry reads (see the module docstring)."""
    n_layers = fields.shape[0]
    head = np.array([n_layers, HEAD + fields.size + idata.size + layout.size, theta_size, idata.size], np.int64)
    return np.concatenate([head, fields.reshape(-1), idata, layout]).astype(np.int64)


# ====================================================================== the loops over layers

@_jit
def _layout(meta):
    start = HEAD + 8 * meta[0] + meta[3]
    return meta[start:]


@_jit
def _run(table, pass_, meta, clamps, theta, gtheta, w, n, d):
    """Every layer's ``pass_`` over one chunk of ``n`` rows, in the pass's order."""
    n_layers = meta[0]
    for step in range(n_layers):
        layer = n_layers - 1 - step if pass_ != DENSITY else step
        _call_layer(table[layer, pass_], meta, clamps, theta, gtheta, w, w.size, layer, n, d)


@_jit
def _load_rows(src, rows_from, m, w, n_offset_block, width):
    """Copy ``src[rows_from:rows_from + m]`` into a workspace block."""
    dst = _block(w, m, n_offset_block, width)
    for i in range(m):
        for j in range(width):
            dst[i, j] = src[rows_from + i, j]


@_jit_nogil
def log_prob_rows(table, meta, clamps, theta, x, ctx, out, w, chunk, start, stop):
    """``out[start:stop] = log p(x | ctx)`` for those rows, ``chunk`` rows at a time on workspace ``w``."""
    d = x.shape[1]
    layout = _layout(meta)
    n_layers = meta[0]
    for first in range(start, stop, chunk):
        m = min(chunk, stop - first)
        _load_rows(x, first, m, w, layout[W_Z], d)
        _load_rows(ctx, first, m, w, layout[W_CTX], layout[W_CTXW])
        ld = _row(w, m, layout[W_LD])
        ld[:] = 0.0
        _run(table, DENSITY, meta, clamps, theta, theta, w, m, d)
        for i in range(m):
            out[first + i] = ld[i]
        _normal_log_prob(_block(w, m, layout[W_Z] + n_layers * d, d), out[first:first + m])


@_jit_nogil
def sample_rows(table, meta, clamps, theta, z, ctx, x, log_prob, w, chunk, start, stop):
    """``x = forward(z)`` and ``log_prob = log p(x)`` for rows ``start:stop`` of base points ``z``."""
    d = z.shape[1]
    layout = _layout(meta)
    n_layers = meta[0]
    for first in range(start, stop, chunk):
        m = min(chunk, stop - first)
        _load_rows(z, first, m, w, layout[W_Z] + n_layers * d, d)
        _load_rows(ctx, first, m, w, layout[W_CTX], layout[W_CTXW])
        ld = _row(w, m, layout[W_LD])
        ld[:] = 0.0
        _run(table, SAMPLING, meta, clamps, theta, theta, w, m, d)
        z0 = _block(w, m, layout[W_Z], d)
        for i in range(m):
            for j in range(d):
                x[first + i, j] = z0[i, j]
            log_prob[first + i] = -ld[i]
        _normal_log_prob(z[first:first + m], log_prob[first:first + m])


@_jit
def _nll_grad(table, meta, clamps, theta, gtheta, w, n, d):
    """Mean NLL of the rows in ``Z_0`` and its gradient (w.r.t. ``theta``, unmasked) into ``gtheta``."""
    layout = _layout(meta)
    n_layers = meta[0]
    ld = _row(w, n, layout[W_LD])
    ld[:] = 0.0
    _run(table, DENSITY, meta, clamps, theta, gtheta, w, n, d)
    z = _block(w, n, layout[W_Z] + n_layers * d, d)
    gld = _row(w, n, layout[W_GLD])
    gout = _block(w, n, layout[W_G0], d)
    total = 0.0
    for i in range(n):
        sq = 0.0
        for j in range(d):
            sq += z[i, j] * z[i, j]
            gout[i, j] = z[i, j] / n
        total += ld[i] - 0.5 * sq - d * HALF_LOG_2PI
        gld[i] = -1.0 / n
    _run(table, BACKWARD, meta, clamps, theta, gtheta, w, n, d)
    return -total / n


@_jit_nogil
def nll_grad(table, meta, clamps, theta_eff, pmask, x, ctx, w, gtheta):
    """Mean NLL of rows ``x`` (given ``ctx``) and its gradient with respect to the unmasked parameters."""
    n, d = x.shape
    layout = _layout(meta)
    _load_rows(x, 0, n, w, layout[W_Z], d)
    _load_rows(ctx, 0, n, w, layout[W_CTX], layout[W_CTXW])
    loss = _nll_grad(table, meta, clamps, theta_eff, gtheta, w, n, d)
    for k in range(gtheta.size):
        gtheta[k] *= pmask[k]
    return loss


@_jit_nogil
def train_epoch(table, meta, clamps, theta, theta_eff, pmask, data, ctx, order, batch_size, w, gtheta, m, v, hyper,
                state, losses):
    """One epoch of Adam steps over ``data[order]`` in batches; ``losses[k]`` NaN marks a rejected step."""
    n_data, d = data.shape
    layout = _layout(meta)
    status = np.zeros(1, np.int64)
    k = 0
    for start in range(0, n_data, batch_size):
        n = min(batch_size, n_data - start)
        z0 = _block(w, n, layout[W_Z], d)
        c0 = _block(w, n, layout[W_CTX], layout[W_CTXW])
        for i in range(n):
            row = order[start + i]
            for j in range(d):
                z0[i, j] = data[row, j]
            for j in range(c0.shape[1]):
                c0[i, j] = ctx[row, j]
        for q in range(theta.size):
            theta_eff[q] = theta[q] * pmask[q]
        loss = _nll_grad(table, meta, clamps, theta_eff, gtheta, w, n, d)
        for q in range(gtheta.size):
            gtheta[q] *= pmask[q]
        p = layout[W_PARAMS]
        for q in range(p, theta.size):
            theta[q] = theta_eff[q]
        losses[k] = np.nan
        if np.isfinite(loss):
            _adam_step(theta[:p], gtheta[:p], m[:p], v[:p], hyper, state, status)
            if status[0] == ACCEPTED:
                losses[k] = loss
        else:
            state[1] += 1
            hyper[0] *= 0.5
        k += 1


__all__ = ["ENTRIES", "DENSITY", "SAMPLING", "BACKWARD", "LOOPS", "LOOP", "entry_address", "compile_loop", "pack_meta",
           "log_prob_rows", "sample_rows", "nll_grad", "train_epoch"]
