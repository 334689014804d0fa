"""The coupling frame and the autoregressive frame of the Numba runner, one source for every transform.

A coupling layer is a mask, a conditioner and an elementwise transform; an
autoregressive layer is a MADE and an elementwise transform. The functions
below are the frames' entries (see :mod:`.entries` for their C signature),
written once against four names that are not defined here:

``SETTINGS(c)``, ``STEP(v, p, r, base, stride, st)`` and ``STEP_VJP(v, g, gld, p, gp, r, base, stride, st)``
    a transform's scalar math (:mod:`.transforms`): ``STEP`` is its density or
    its sampling direction, as the entry runs;
``DIRECTION``
    ``-1`` for a density entry (it reads ``Z_layer``), ``1`` for a sampling one.

:func:`specialize` makes a copy of an entry whose globals bind those names to
one transform's compiled functions, under a name of its own, so that Numba
compiles and caches one entry per (frame, transform, pass). The frames hold no
transform-specific code: a new transform module is all a new transform needs.

Parameters of a transformed element are read from the network output ``net``
at row ``r``, columns ``base + q * stride``: a coupling emits them
``(parameter, coordinate)``-major (``base = j``, ``stride = nb``) unless its
layout flag says by coordinate (``base = j * P``, ``stride = 1``); a MADE emits
``(parameter, feature)`` (``base = j``, ``stride = d``).
"""

import types

import numpy as np

from .entries import _block, _caches, _frame, _grads, _hidden, _ints, _jit, _network_caches, _pass_arrays, \
    _row, mlp_backward_at, mlp_forward_at
from .mlp import SMALL_NETWORK, SMALL_TRAINING_NETWORK, _mm_numba, activate_values
from .residual import BY_UNIT, RESIDUAL
from .program import F_A, F_ACT, F_B, F_CACHE, F_CONSTS, F_FLAG, F_GROUPS, F_PACK, F_PARAMS, F_THETA, F_WIDTHS, \
    W_CTX, W_CTXW, W_D1, W_D2, W_G0, W_G1, W_GCOND, W_GNET, W_ROW

__all__ = ["FRAMES", "specialize"]


@_jit
def _backward_buffers(layout, w, n, net_width, input_width):
    """``(gnet, gin, d1, d2)`` of a backward pass: the network output's and input's gradient blocks, and the two
    delta buffers of the network's backward."""
    return (_block(w, n, layout[W_GNET], net_width), _block(w, n, layout[W_GCOND], input_width),
            w[n * layout[W_D1]:n * layout[W_D2]], w[n * layout[W_D2]:n * layout[W_ROW]])


@_jit
def _layout(f, nb):
    """``(step, stride)`` of a coupling's transformed coordinates: coordinate ``j``'s parameters start at
    ``j * step``, ``stride`` apart (see the module docstring)."""
    if f[F_FLAG] == 1:
        return f[F_PARAMS], 1
    return 1, nb


def coupling_pass(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(DIRECTION, layout, w, layer, n, d)  # noqa: F821 (bound by specialize)
    f = fields[layer]
    a = _ints(idata, f[F_A])
    b = _ints(idata, f[F_B])
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    step, stride = _layout(f, b.size)
    scoring = _scoring(theta, gtheta)
    by_unit = _by_units(f, idata, SMALL_NETWORK if scoring else SMALL_TRAINING_NETWORK)
    if by_unit:
        # a small plain network runs by unit, down the rows, its input, hidden layers and output (which the steps
        # read) kept by unit in the layer's caches, for the backward too (coupling_backward)
        widths, cond_t, hid, net_t = _caches_by_unit(f, idata, w, n)
        _gather_by_unit(zin, a, _block(w, n, layout[W_CTX], layout[W_CTXW]), cond_t)
        mlp_forward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT] + BY_UNIT, cond_t, hid, net_t)
        net = net_t         # the layer's cache: the steps leave their values for the VJP in place
    else:
        widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
        for i in range(n):
            for j in range(a.size):
                cond[i, j] = zin[i, a[j]]
        net_t = _by_unit(w, n, layout[W_GNET], widths[widths.size - 1])
        mlp_forward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], cond, hid, net)
        _transpose(net, net_t)
    _copy_columns(zin, a, zout)
    STEPS(zin, zout, ld, net_t, b, step, stride, layout, w, st)  # noqa: F821
    if not (scoring or by_unit):
        _transpose(net_t, net)      # the steps leave values there for the VJP


@_jit
def _by_units(f, idata, limit):
    """Whether a coupling's network runs by unit: a plain network (not residual) whose every product has at most
    ``limit`` weights, too narrow for vector code along a row of the batch."""
    return f[F_ACT] < RESIDUAL and _small_network(_ints(idata, f[F_WIDTHS]), limit)


@_jit
def _caches_by_unit(f, idata, w, n):
    """:func:`~.entries._caches` laid out by unit: ``(widths, cond_t, hid, net_t)``, one row of ``n`` per unit."""
    widths, cond, hid, net = _caches(f, idata, w, n)
    c = f[F_CACHE]
    return (widths, _by_unit(w, n, c, cond.shape[1]), hid,
            _by_unit(w, n, c + cond.shape[1] + _hidden(widths), net.shape[1]))


@_jit
def _gather_by_unit(zin, a, ctx, cond_t):
    """The network input by unit: the conditioning coordinates ``zin[:, a]``, then the context's columns."""
    for j in range(a.size):
        row = cond_t[j]
        aj = a[j]
        for i in range(zin.shape[0]):
            row[i] = zin[i, aj]
    for c in range(cond_t.shape[0] - a.size):
        row = cond_t[a.size + c]
        for i in range(zin.shape[0]):
            row[i] = ctx[i, c]


@_jit
def _scoring(theta, gtheta):
    """Whether this pass scores or samples, with no backward pass to follow: the runner's loops then pass theta as
    gtheta (:func:`~.compiled.log_prob_rows`, :func:`~.compiled.sample_rows`)."""
    return theta.ctypes.data == gtheta.ctypes.data


@_jit
def _small_network(widths, limit):
    for k in range(widths.size - 1):
        if widths[k] * widths[k + 1] > limit:
            return False
    return True


@_jit
def _by_unit(w, n, offset, width):
    """A workspace block of ``width`` values per row, laid out by unit: ``(width, n)``."""
    return w[n * offset:n * (offset + width)].reshape((width, n))


@_jit
def _transpose(src, dst):
    """``dst = src.T`` for C-contiguous blocks."""
    rows, cols = src.shape
    for c in range(cols):
        for i in range(rows):
            dst[c, i] = src[i, c]


@_jit
def _copy_columns(zin, a, zout):
    """The conditioning coordinates pass through: ``zout[:, a] = zin[:, a]``."""
    for i in range(zin.shape[0]):
        for j in range(a.size):
            zout[i, a[j]] = zin[i, a[j]]


def steps(zin, zout, ld, net_t, b, step, stride, layout, w, st):
    """``zout[:, b[j]], ld += STEP(zin[:, b[j]], ...)`` for every transformed coordinate ``j``, running down the
    rows one coordinate at a time on contiguous columns, so that the loop over rows vectorizes: the network output
    laid out by unit (``net_t``, in the gradient block, which a forward pass leaves free) is read through its
    transpose (row ``i``, column ``c`` at ``c * n + i``), and the coordinate's values and results sit in ``G0``
    and ``G1``."""
    n = net_t.shape[1]
    p = net_t.T
    vcol = _row(w, n, layout[W_G0])
    ocol = _row(w, n, layout[W_G1])
    for j in range(b.size):
        bj = b[j]
        base = j * step
        for i in range(n):
            vcol[i] = zin[i, bj]
        for i in range(n):
            out, l = STEP(vcol[i], p, i, base, stride, st)  # noqa: F821
            ocol[i] = out
            ld[i] += l
        for i in range(n):
            zout[i, bj] = ocol[i]


def coupling_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    a = _ints(idata, f[F_A])
    b = _ints(idata, f[F_B])
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    nb = b.size
    step, stride = _layout(f, nb)
    widths, cond, hid, net = _caches(f, idata, w, n)
    gnet, gcond, d1, d2 = _backward_buffers(layout, w, n, widths[widths.size - 1], widths[0])
    by_unit = _by_units(f, idata, SMALL_TRAINING_NETWORK)
    # row i's parameter q of coordinate j: p[i, j * step + q * stride] row-major, or, by unit (the network's output
    # and its gradient read as one row each), p[0, (j * step + q * stride) * n + i]
    p, gp = net, gnet
    r_step, i_step, scale = 1, 0, 1
    if by_unit:
        p = net.reshape((1, net.size))
        gp = gnet.reshape((1, gnet.size))
        r_step, i_step, scale = 0, 1, n
    for j in range(nb):
        bj = b[j]
        for i in range(n):
            gin[i, bj] = STEP_VJP(zin[i, bj], gout[i, bj], gld[i], p, gp, i * r_step,  # noqa: F821
                                  j * step * scale + i * i_step, stride * scale, st)
    if by_unit:
        gcond_t = _by_unit(w, n, layout[W_GCOND], cond.shape[1])
        cond_t = _by_unit(w, n, f[F_CACHE], cond.shape[1])
        mlp_backward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT] + BY_UNIT, cond_t, hid,
                        _by_unit(w, n, layout[W_GNET], net.shape[1]), gcond_t, gtheta, d1, d2)
        for i in range(n):
            for j in range(a.size):
                gin[i, a[j]] = gout[i, a[j]] + gcond_t[j, i]
    else:
        mlp_backward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], cond, hid, gnet, gcond, gtheta, d1, d2)
        for i in range(n):
            for j in range(a.size):
                gin[i, a[j]] = gout[i, a[j]] + gcond[i, j]


def autoregressive_density(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    mlp_forward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], zin, hid, net)
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    # a MADE emits feature j's parameters at columns j, j + d, ...: coordinate j of d, base j, stride d
    net_t = _by_unit(w, n, layout[W_GNET], net.shape[1])
    _transpose(net, net_t)
    STEPS(zin, zout, ld, net_t, np.arange(d), 1, d, layout, w, st)  # noqa: F821
    if not _scoring(theta, gtheta):
        _transpose(net_t, net)      # the steps leave values there for the VJP


def autoregressive_backward(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    gout, gin, gld = _grads(layout, w, fields.shape[0], layer, n, d)
    zin, zout, ld = _pass_arrays(-1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    # the direct gradients wait in the conditioning-gradient block, which a MADE (no gathered input) leaves free
    gnet, direct, d1, d2 = _backward_buffers(layout, w, n, widths[widths.size - 1], d)
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    for i in range(n):
        for j in range(d):
            direct[i, j] = STEP_VJP(zin[i, j], gout[i, j], gld[i], net, gnet, i, j, d, st)  # noqa: F821
    mlp_backward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], zin, hid, gnet, gin, gtheta, d1, d2)
    for i in range(n):
        for j in range(d):
            gin[i, j] += direct[i, j]


def autoregressive_sampling(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size, layer, n, d):
    """Sampling fills the coordinates in generation order, computing every hidden unit exactly once.

    MADE gives a unit of degree ``k`` inputs of order ``< k`` only, so once the
    coordinates of orders ``0..k-1`` are known, the units of degree ``k`` are
    final: step ``k`` finishes them in each layer, then reads the ``P`` outputs
    of the order-``k`` coordinate. The whole loop costs one network pass instead
    of ``d`` (less: it skips the masked weights). Activations are kept
    transposed, one contiguous row of ``n`` values per unit, each layer's units
    sorted by degree (``groups``, :func:`~.plan.degree_groups`) and the
    coordinates in generation order, so that a unit of degree ``k`` reads a prefix
    of the layer below: each step's group of units is one dense product
    (:func:`~.mlp._mm_numba`, BLAS when large) of a weight block, packed by
    :func:`~.plan.made_pack_index` into theta at ``F_PACK``, and that prefix.
    """
    fields, idata, layout, clamps, theta, gtheta, w = _frame(meta_p, clamps_p, theta_p, gtheta_p, w_p, w_size)
    x, y, ld = _pass_arrays(1, layout, w, layer, n, d)
    f = fields[layer]
    widths, cond, hid, net = _caches(f, idata, w, n)
    generation = _ints(idata, f[F_B])
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    if f[F_ACT] >= RESIDUAL:
        # a residual MADE: its skip connections mix a unit's degree group with the layers before, so no unit is
        # final early; d network passes over the partly filled y, each fixing the next coordinate
        y[:, :] = 0.0
        for k in range(d):
            i = generation[k]
            mlp_forward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], y, hid, net)
            for r in range(n):
                value, l = STEP(x[r, i], net, r, i, d, st)  # noqa: F821
                y[r, i] = value
                ld[r] += l
        return
    groups = idata[f[F_GROUPS]:]
    packed = theta[f[F_PACK]:]
    n_hidden = widths.size - 2
    n_out = widths[widths.size - 1] // d
    boff = np.empty(widths.size - 1, np.int64)     # each layer's bias offset in theta
    hoff = np.zeros(n_hidden + 1, np.int64)         # each hidden layer's first unit in hid
    goff = np.zeros(n_hidden + 1, np.int64)         # each hidden layer's entry in groups
    p = f[F_THETA]
    for lyr in range(widths.size - 1):
        boff[lyr] = p + widths[lyr] * widths[lyr + 1]
        p = boff[lyr] + widths[lyr + 1]
    for lyr in range(n_hidden):
        hoff[lyr + 1] = hoff[lyr] + widths[lyr + 1]
        goff[lyr + 1] = goff[lyr] + d + 1 + widths[lyr + 1]
    y_g = net.reshape(net.size)[:d * n].reshape((d, n))     # row k: the coordinate of order k
    out = np.empty((n_out, n), dtype=x.dtype)
    t = 0
    for k in range(d):
        for lyr in range(n_hidden + 1):
            c = groups[goff[lyr - 1] + k + 1] if lyr > 0 else k      # the inputs' prefix (made_pack_index)
            prev = y_g if lyr == 0 else _by_unit(hid, n, hoff[lyr - 1], widths[lyr])
            lo = 0
            if lyr < n_hidden:
                lo = groups[goff[lyr] + k]
                hi = groups[goff[lyr] + k + 1]
                cur = _by_unit(hid, n, hoff[lyr] + lo, hi - lo)
            else:
                cur = out
            t = _group_product(packed, t, c, prev, cur)
            for s in range(cur.shape[0]):
                if lyr < n_hidden:
                    unit = groups[goff[lyr] + d + 1 + lo + s]
                else:
                    unit = generation[k] + s * d
                row = cur[s]
                bias = theta[boff[lyr] + unit]
                for r in range(n):
                    row[r] += bias
                if lyr < n_hidden:
                    activate_values(row, f[F_ACT])
        # the order-k coordinate's step down the rows (its parameters: out[q, r]), then its values as row k
        STEPS(x, y, ld, out, generation[k:k + 1], 1, 1, layout, w, st)  # noqa: F821
        _copy_column(y, generation[k], y_g[k])


@_jit
def _copy_column(a, j, dst):
    for r in range(dst.size):
        dst[r] = a[r, j]


@_jit
def _group_product(packed, t, c, prev, cur):
    """``cur = block @ prev[:c]``, the block of ``cur``'s rows by ``c`` packed at ``packed[t:]``; returns the next
    block's offset. With no inputs (``c == 0``) the product is zero."""
    rows, n = cur.shape
    if rows == 0:
        return t
    if c == 0:
        cur[:, :] = 0.0
        return t
    block = packed[t:t + rows * c].reshape((rows, c))
    inputs = prev.reshape(prev.size)[:c * n].reshape((c, n))
    _mm_numba(block, inputs, cur)
    return t + rows * c


# frame -> its entries in the order of the passes (density, sampling, backward), each with the transform
# functions it binds: (template, {global name: name of the transform's function}, DIRECTION)
FRAMES = {
    "coupling": ((coupling_pass, "density", -1), (coupling_pass, "sampling", 1), (coupling_backward, None, -1)),
    "autoregressive": ((autoregressive_density, "density", -1), (autoregressive_sampling, "sampling", 1),
                       (autoregressive_backward, None, -1)),
}


def specialize(frame, pass_, transform_name, module):
    """Entry ``pass_`` of ``frame`` for one transform: a copy of its template whose globals bind the transform."""
    template, step, direction = FRAMES[frame][pass_]
    bound = dict(template.__globals__, SETTINGS=module.settings, STEP_VJP=module.density_vjp, DIRECTION=direction)
    if step is not None:
        bound["STEP"] = getattr(module, step)
    name = f"{frame}_{('density', 'sampling', 'backward')[pass_]}__{transform_name}"
    if template is not coupling_backward and template is not autoregressive_backward:
        # the loop over rows, compiled on its own (small enough for LLVM to vectorize) with the step bound
        bound["STEPS"] = _jit(_copy(steps, dict(bound), f"steps_{name}"))
    return _copy(template, bound, name)


def _copy(template, bound, name):
    """``template`` with globals ``bound``, under ``name``."""
    fn = types.FunctionType(template.__code__, bound, name, template.__defaults__)
    fn.__qualname__ = name      # Numba names a function's disk cache after its qualified name
    fn.__module__ = template.__module__
    fn.__doc__ = template.__doc__
    return fn
