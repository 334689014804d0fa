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

from .entries import _block, _caches, _frame, _grads, _ints, _jit, _network_caches, _pass_arrays, _row, \
    mlp_backward_at, mlp_forward_at
from .mlp import _mm_numba, activate_values
from .residual import RESIDUAL
from .program import F_A, F_ACT, F_B, F_CONSTS, F_FLAG, F_GROUPS, F_PACK, F_PARAMS, F_THETA, W_D1, W_D2, W_G0, \
    W_G1, W_GCOND, W_GNET, W_ROW

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
    widths, cond, hid, net = _network_caches(f, idata, layout, w, n)
    a = _ints(idata, f[F_A])
    b = _ints(idata, f[F_B])
    for i in range(n):
        for j in range(a.size):
            cond[i, j] = zin[i, a[j]]
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    step, stride = _layout(f, b.size)
    net_t = _by_unit(w, n, layout[W_GNET], widths[widths.size - 1])
    scoring = _scoring(theta, gtheta)
    # scoring and sampling keep no caches, so a small plain network runs by unit, down the rows, straight into the
    # transposed output the steps read
    if scoring and f[F_ACT] < RESIDUAL and _small_network(widths):
        cond_t = _by_unit(w, n, layout[W_GCOND], cond.shape[1])
        _transpose(cond, cond_t)
        _forward_by_unit(theta, f[F_THETA], widths, f[F_ACT], cond_t, hid, net_t)
        _copy_columns(cond, a, zout)
        STEPS(zin, zout, ld, net_t, b, step, stride, layout, w, st)  # noqa: F821
        return
    mlp_forward_at(meta_p, theta, f[F_THETA], widths, f[F_ACT], cond, hid, net)
    _copy_columns(cond, a, zout)
    _transpose(net, net_t)
    STEPS(zin, zout, ld, net_t, b, step, stride, layout, w, st)  # noqa: F821
    if not scoring:
        _transpose(net_t, net)      # the steps leave values there for the VJP


@_jit
def _scoring(theta, gtheta):
    """Whether this pass scores or samples, with no backward pass to follow: the runner's loops then pass theta as
    gtheta (:func:`~.compiled.log_prob_rows`, :func:`~.compiled.sample_rows`)."""
    return theta.ctypes.data == gtheta.ctypes.data


# a network whose every product has at most this many weights runs by unit when scoring and sampling
SMALL_NETWORK = 1024


@_jit
def _small_network(widths):
    for k in range(widths.size - 1):
        if widths[k] * widths[k + 1] > SMALL_NETWORK:
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
def _copy_columns(cond, a, zout):
    """The conditioning coordinates pass through: ``zout[:, a] = cond[:, :a.size]``."""
    for i in range(cond.shape[0]):
        for j in range(a.size):
            zout[i, a[j]] = cond[i, j]


@_jit
def _forward_by_unit(theta, off, widths, act, inp_t, hid, out_t):
    """The MLP on inputs laid out by unit (``inp_t``: ``(widths[0], n)``), every layer likewise, into ``out_t``:
    each unit is a sum of scaled rows, ``W[0, u] x_0 + W[1, u] x_1 + ...``, then its bias, the order of
    :func:`~.mlp.mlp_forward_numba`, with every inner loop running down the rows (so it vectorizes however
    narrow the layer). ``hid`` holds the hidden layers by unit: not the cache a backward pass reads."""
    n = inp_t.shape[1]
    n_layers = widths.size - 1
    p = off
    hp = 0
    src = inp_t
    for layer in range(n_layers):
        fi = widths[layer]
        fo = widths[layer + 1]
        if layer == n_layers - 1:
            dst = out_t
        else:
            dst = hid[hp:hp + n * fo].reshape((fo, n))
            hp += n * fo
        for u in range(fo):
            row = dst[u]
            w0 = theta[p + u]
            s0 = src[0]
            for i in range(n):
                row[i] = w0 * s0[i]
            q = 1
            # four inputs per pass over the row, added in the same order: a quarter of the row's loads and stores
            while q + 4 <= fi:
                wa = theta[p + q * fo + u]
                wb = theta[p + (q + 1) * fo + u]
                wc = theta[p + (q + 2) * fo + u]
                wd = theta[p + (q + 3) * fo + u]
                sa = src[q]
                sb = src[q + 1]
                sc = src[q + 2]
                sd = src[q + 3]
                for i in range(n):
                    row[i] = row[i] + wa * sa[i] + wb * sb[i] + wc * sc[i] + wd * sd[i]
                q += 4
            while q < fi:
                wq = theta[p + q * fo + u]
                sq = src[q]
                for i in range(n):
                    row[i] += wq * sq[i]
                q += 1
            bu = theta[p + fi * fo + u]
            for i in range(n):
                row[i] += bu
            if layer < n_layers - 1:
                activate_values(row, act)
        p += fi * fo + fo
        src = dst


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
    widths, cond, hid, net = _caches(f, idata, w, n)
    a = _ints(idata, f[F_A])
    b = _ints(idata, f[F_B])
    gnet, gcond, d1, d2 = _backward_buffers(layout, w, n, widths[widths.size - 1], widths[0])
    st = SETTINGS(theta[f[F_CONSTS]:])  # noqa: F821
    nb = b.size
    step, stride = _layout(f, nb)
    for i in range(n):
        for j in range(nb):
            gin[i, b[j]] = STEP_VJP(zin[i, b[j]], gout[i, b[j]], gld[i], net, gnet, i, j * step, stride,  # noqa: F821
                                    st)
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
