"""The compiled entries of the Numba runner: one C-callable function per layer op and pass.

Each entry rebuilds the arrays of a :class:`~nflow_np.kernels.plan.Program`
from raw pointers and runs one layer's pass over one chunk, calling the layer
kernels of :mod:`.elementwise` and :mod:`.normalization`; the coupling and
autoregressive frames' entries are in :mod:`.frames`, one per transform. :func:`entry_address` compiles an entry with
:func:`numba.cfunc` the first time it is asked for, per dtype, and caches the
machine code on disk; :mod:`.compiled` calls entries through their addresses.

Every layer entry has the same C signature::

    void entry(int64 *meta, T *clamps, T *theta, T *gtheta, T *w, int64 w_size, int64 layer, int64 n, int64 d)

The frames' networks are entries too (``"network"``: forward, and backward as
its ``BACKWARD`` pass), with signatures of their own: compiled once per dtype,
they are called through the addresses the program keeps in ``meta``, so that
no frame entry compiles the network's code again (:func:`mlp_forward_at`).

``meta`` packs ``[layers, total, theta size, idata size, network forward,
network backward]``, then ``fields``
(``layers x N_FIELDS``), ``idata`` and ``layout`` (see :mod:`.program`); ``w`` is one
chunk's workspace of ``n`` rows. Density passes run ``Z_layer -> Z_layer+1``,
sampling passes the reverse; backward passes read their upstream gradient from
``G0`` or ``G1`` (alternating, ``G0`` for the last layer) and write the other.

Importing this module imports Numba and compiles nothing.
"""

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from . import elementwise as _elementwise
from . import mlp as _mlp
from . import normalization as _normalization
from . import residual as _residual
from .backend import load_numba
from .residual import BY_UNIT
from .program import F_A, F_B, F_CACHE, F_CONSTS, F_FLAG, F_PARAMS, F_THETA, F_WIDTHS, N_FIELDS, W_CTX, W_CTXW, \
    W_G0, W_G1, W_GLD, W_LD, W_Z

# the twins become compiled dispatchers before anything below binds them
load_numba()

# a frame's network: an MLP, or a residual network (activation code RESIDUAL and up)
_mlp_forward = _residual.network_forward_numba
_mlp_backward = _residual.network_backward_numba
_mlp_forward_by_unit = _mlp.mlp_forward_by_unit_numba
_mlp_backward_by_unit = _mlp.mlp_backward_by_unit_numba
_actnorm_forward = _elementwise.actnorm_forward_numba
_actnorm_inverse = _elementwise.actnorm_inverse_numba
_actnorm_inverse_backward = _elementwise.actnorm_inverse_backward_numba
_permute = _elementwise.permute_numba
_permute_backward = _elementwise.permute_backward_numba
_circular_shift = _elementwise.circular_shift_numba
_circular_shift_backward = _elementwise.circular_shift_backward_numba
_batchnorm_forward = _normalization.batchnorm_forward_numba
_batchnorm_inverse = _normalization.batchnorm_inverse_numba
_batchnorm_inverse_backward = _normalization.batchnorm_inverse_backward_numba
# meta: [layers, total, theta size, idata size, network forward, network backward, and the same two by unit]
HEAD = 8
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
    fields = meta[HEAD:HEAD + N_FIELDS * n_layers].reshape((n_layers, N_FIELDS))
    start = HEAD + N_FIELDS * n_layers
    idata = meta[start:start + head[3]]
    layout = meta[start + head[3]:]
    return (fields, idata, layout, carray(clamps_p, (n_layers,)), carray(theta_p, (head[2],)),
            carray(gtheta_p, (head[2],)), carray(w_p, (w_size,)))


@intrinsic
def call_address(typingctx, address, args):
    """Call the C function at ``address`` (an int64) with the tuple ``args``: arrays as their data pointers,
    scalars as they are."""
    sig = types.void(address, args)

    def codegen(context, builder, signature, llargs):
        values = []
        for k, ty in enumerate(signature.args[1].types):
            value = builder.extract_value(llargs[1], k)
            if isinstance(ty, types.Array):
                value = context.make_array(ty)(context, builder, value).data
            values.append(value)
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), values)
        return context.get_dummy_value()

    return sig, codegen


@_jit
def _rows(inp, act):
    """The batch size of a network's input, ``(n, w)`` or, for an activation code from ``BY_UNIT``, ``(w, n)``."""
    return inp.shape[1] if act >= BY_UNIT else inp.shape[0]


@_jit
def mlp_forward_at(meta_p, theta, off, widths, act, inp, hid, out):
    """The network's forward pass (:func:`~.residual.network_forward_numba`, or from ``BY_UNIT``
    :func:`~.mlp.mlp_forward_by_unit_numba`) through the program's compiled copy."""
    address = carray(meta_p, (HEAD,))[6 if act >= BY_UNIT else 4]
    call_address(address, (theta, theta.size, off, widths, widths.size, act, inp, hid, out, _rows(inp, act)))


@_jit
def mlp_backward_at(meta_p, theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2):
    """The network's backward pass through the program's compiled copy."""
    address = carray(meta_p, (HEAD,))[7 if act >= BY_UNIT else 5]
    call_address(address, (theta, theta.size, off, widths, widths.size, act, inp, hid, gout, gin, gtheta, d1,
                           d1.size, d2, d2.size, _rows(inp, act)))


@_jit
def _hidden(widths):
    """Entries per row of a network's ``hid`` buffer (:func:`~.mlp.hidden_size`)."""
    hidden = 0
    for k in range(1, widths.size - 1):
        hidden += widths[k]
    return hidden


def network_forward(theta_p, theta_size, off, widths_p, n_widths, act, inp_p, hid_p, out_p, n):
    widths = carray(widths_p, (n_widths,))
    hidden = _hidden(widths)
    _mlp_forward(carray(theta_p, (theta_size,)), off, widths, act, carray(inp_p, (n, widths[0])),
                 carray(hid_p, (n * hidden,)), carray(out_p, (n, widths[n_widths - 1])))


def network_backward(theta_p, theta_size, off, widths_p, n_widths, act, inp_p, hid_p, gout_p, gin_p, gtheta_p,
                     d1_p, d1_size, d2_p, d2_size, n):
    widths = carray(widths_p, (n_widths,))
    hidden = _hidden(widths)
    _mlp_backward(carray(theta_p, (theta_size,)), off, widths, act, carray(inp_p, (n, widths[0])),
                  carray(hid_p, (n * hidden,)), carray(gout_p, (n, widths[n_widths - 1])),
                  carray(gin_p, (n, widths[0])), carray(gtheta_p, (theta_size,)), carray(d1_p, (d1_size,)),
                  carray(d2_p, (d2_size,)))


def network_forward_by_unit(theta_p, theta_size, off, widths_p, n_widths, act, inp_p, hid_p, out_p, n):
    widths = carray(widths_p, (n_widths,))
    hidden = _hidden(widths)
    _mlp_forward_by_unit(carray(theta_p, (theta_size,)), off, widths, act - BY_UNIT, carray(inp_p, (widths[0], n)),
                         carray(hid_p, (n * hidden,)), carray(out_p, (widths[n_widths - 1], n)))


def network_backward_by_unit(theta_p, theta_size, off, widths_p, n_widths, act, inp_p, hid_p, gout_p, gin_p,
                             gtheta_p, d1_p, d1_size, d2_p, d2_size, n):
    widths = carray(widths_p, (n_widths,))
    hidden = _hidden(widths)
    _mlp_backward_by_unit(carray(theta_p, (theta_size,)), off, widths, act - BY_UNIT, carray(inp_p, (widths[0], n)),
                          carray(hid_p, (n * hidden,)), carray(gout_p, (widths[n_widths - 1], n)),
                          carray(gin_p, (widths[0], n)), carray(gtheta_p, (theta_size,)), carray(d1_p, (d1_size,)),
                          carray(d2_p, (d2_size,)))


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
    hidden = _hidden(widths)
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


@_jit
def _shift_arrays(fields, theta, layer):
    """A circular shift's angles (``theta``'s slice; one or one per coordinate), bound and period."""
    f = fields[layer]
    c = f[F_CONSTS]
    return theta[f[F_THETA]:f[F_THETA] + f[F_PARAMS]], theta[c], theta[c + 1]


def circular_shift_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    shift, bound, period = _shift_arrays(fields, theta, layer)
    _circular_shift(zin, shift, bound, period, -1, zout)


def circular_shift_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(1, layout, w, layer, n, d)
    shift, bound, period = _shift_arrays(fields, theta, layer)
    _circular_shift(zin, shift, bound, period, 1, zout)


def circular_shift_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    f = fields[layer]
    _circular_shift_backward(gout, gin, gtheta[f[F_THETA]:f[F_THETA] + f[F_PARAMS]])


# each op's entries, in the order of the passes
ENTRIES = {
    # the networks of the frames, one compiled copy per dtype that every frame entry calls (see mlp_forward_at)
    "network": (network_forward, network_forward, network_backward),
    "network_by_unit": (network_forward_by_unit, network_forward_by_unit, network_backward_by_unit),
    "permute": (permute_density, permute_sampling, permute_backward),
    "actnorm": (actnorm_density, actnorm_sampling, actnorm_backward),
    "batchnorm": (batchnorm_density, batchnorm_sampling, batchnorm_backward),
    "circular_shift": (circular_shift_density, circular_shift_sampling, circular_shift_backward),
}

_entries = {}                 # (name, pass, dtype) -> compiled cfunc, kept alive so its address stays valid
_entries_lock = threading.Lock()


def entry_function(name, pass_):
    """The Python function of entry ``name`` (an op's, or ``"frame.transform"``) for ``pass_``."""
    if name in ENTRIES:
        return ENTRIES[name][pass_]
    from . import frames, transforms
    frame, transform = name.split(".")
    return frames.specialize(frame, pass_, transform, transforms.module_for(transform))


def _signature(name, pass_, dtype):
    ptr = types.CPointer(numba.from_dtype(np.dtype(dtype)))
    i64, ints = types.int64, types.CPointer(types.int64)
    if name.startswith("network") and pass_ == BACKWARD:
        return types.void(ptr, i64, i64, ints, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i64)
    if name.startswith("network"):
        return types.void(ptr, i64, i64, ints, i64, i64, ptr, ptr, ptr, i64)
    return types.void(ints, ptr, ptr, ptr, ptr, i64, i64, i64, i64)


def entry_address(name, pass_, dtype):
    """The address of the compiled entry ``name`` for ``pass_`` in ``dtype``, compiling it on first use."""
    key = (str(name), int(pass_), np.dtype(dtype).name)
    found = _entries.get(key)
    if found is None:
        with _entries_lock:
            found = _entries.get(key)
            if found is None:
                found = _entries[key] = numba.cfunc(_signature(key[0], key[1], dtype), cache=True, **_OPTIONS)(
                    entry_function(key[0], key[1]))
    return found.address




__all__ = ["ENTRIES", "DENSITY", "SAMPLING", "BACKWARD", "PASSES", "HEAD", "entry_function", "entry_address",
           "call_address", "mlp_forward_at", "mlp_backward_at"]
