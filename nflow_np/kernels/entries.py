"""The compiled entries of the Numba runner: one C-callable function per layer op and pass.

Each entry rebuilds the arrays of a :class:`~nflow_np.kernels.plan.Program`
from raw pointers and runs one layer's pass over one chunk, calling the layer
kernels of :mod:`.coupling`, :mod:`.autoregressive`, :mod:`.elementwise` and
:mod:`.normalization`. :func:`entry_address` compiles an entry with
:func:`numba.cfunc` the first time it is asked for, per dtype, and caches the
machine code on disk; :mod:`.compiled` calls entries through their addresses.

Every entry has the same C signature::

    void entry(int64 *meta, T *clamps, T *theta, T *gtheta, T *w, int64 w_size, int64 layer, int64 n, int64 d)

``meta`` packs ``[layers, total, theta size, idata size]``, then ``fields``
(``layers x 8``), ``idata`` and ``layout`` (see :mod:`.program`); ``w`` is one
chunk's workspace of ``n`` rows. Density passes run ``Z_layer -> Z_layer+1``,
sampling passes the reverse; backward passes read their upstream gradient from
``G0`` or ``G1`` (alternating, ``G0`` for the last layer) and write the other.

Importing this module imports Numba and compiles nothing.
"""

import threading

import numba
import numpy as np
from numba import carray, types

from . import autoregressive as _ar
from . import coupling as _coupling
from . import elementwise as _elementwise
from . import normalization as _normalization
from .backend import load_numba
from .program import F_A, F_ACT, F_B, F_CACHE, F_FLAG, F_GROUPS, F_THETA, F_WIDTHS, OP_ACTNORM, OP_BATCHNORM, \
    OP_COUPLING, OP_MAF, OP_PERMUTE, OP_SPLINE, OP_SPLINE_MAF, W_CTX, W_CTXW, W_D1, W_D2, W_G0, W_G1, W_GCOND, W_GLD, \
    W_GNET, W_LD, W_ROW, W_Z

# the twins become compiled dispatchers before anything below binds them
load_numba()

_actnorm_forward = _elementwise.actnorm_forward_numba
_actnorm_inverse = _elementwise.actnorm_inverse_numba
_actnorm_inverse_backward = _elementwise.actnorm_inverse_backward_numba
_permute = _elementwise.permute_numba
_permute_backward = _elementwise.permute_backward_numba
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

HEAD = 4                      # meta: [layers, total, theta size, idata size]
DENSITY, SAMPLING, BACKWARD = 0, 1, 2
PASSES = 3

_OPTIONS = dict(error_model="numpy", fastmath={"reassoc", "contract"})
_jit = numba.njit(cache=True, **_OPTIONS)
_jit_nogil = numba.njit(cache=True, nogil=True, **_OPTIONS)


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




__all__ = ["ENTRIES", "DENSITY", "SAMPLING", "BACKWARD", "PASSES", "HEAD", "entry_address"]
