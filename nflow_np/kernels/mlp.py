"""Dense networks on a flat parameter vector: forward and hand-written backward.

Layout shared by every kernel: a network with widths ``(w0, w1, ..., wL)``
keeps, from offset ``off`` of ``theta``, ``W0`` (``w0 x w1``, row-major), ``b0``,
``W1``, ``b1``, ... ``b_{L-1}``: exactly the order and shapes of
:class:`nflow_np.nn.MLP`'s ``params`` (``"w0"``, ``"b0"``, ...). A MADE
network is the same network on masked weights (the caller multiplies theta by
the mask vector once per pass and masks the weight gradients after).

Buffers are passed in, never allocated: ``hid`` is one flat buffer holding
the hidden activations of a batch of ``n`` rows, layer ``l`` as a contiguous
``(n, w_{l+1})`` block at offset ``n * (w1 + ... + w_l)``; ``d1``/``d2`` are two
scratch buffers of at least ``n * max(hidden)`` entries for the backward
deltas. Activations are codes: 0 relu, 1 tanh, 2 elu (the derivative of each
is a function of its output, so only outputs are kept).

The kernels here are the compiled ones (``*_numba``); their reference is
:class:`nflow_np.nn.MLP` (and :class:`nflow_np.nn.MaskedMLP` for MADE), whose
``forward_with_cache`` and ``backward`` the tests hold them to.
"""

import numpy as np

from .backend import numba_twin
from .scalar import activate, activation_grad
from .vmath import tanh_

ACTIVATION_CODES = {"relu": 0, "tanh": 1, "elu": 2}

# Matrix products of at most this many multiply-adds loop in compiled code; larger ones call BLAS,
# whose per-call overhead (about a microsecond) they amortize.
SMALL_PRODUCT = 8192
# Up to this many multiply-adds per product, OpenBLAS runs a product on the calling thread (OpenBLAS 0.3.31's sgemm:
# 10x64x256 and 16x64x256 take the same time on 1 and 2 threads, 64x64x256 not) ...
BLAS_SINGLE_THREAD = 262144
# ... and a product above it and up to this size runs as blocks of rows under that bound, so that it stays there too:
# at these sizes OpenBLAS's hand-off to its second thread costs more than it saves, and that thread spins between
# products, taking a core from the compiled code (40% of the samples of a W2, W4 or W7 step on 2 threads; a W4 step
# took 0.95-1.05 ms with one BLAS thread against 1.07-1.12 ms with two, W7 3.7-3.9 against 4.3-5.7)
MEDIUM_PRODUCT = 1 << 21
# A frame's plain network whose every product has at most this many weights runs by unit (mlp_forward_by_unit_numba)
# when scoring and sampling, and at most the second when training: a backward pass follows, whose products by unit
# (dot products and sums of rows) beat the row-major ones (BLAS from SMALL_PRODUCT) up to about that size (a 2-D
# RealNVP's epoch at batch 256: hidden (16, 16) 0.6x the time, (24, 24) level, (32, 32) 1.5x).
SMALL_NETWORK = 1024
SMALL_TRAINING_NETWORK = 512


def hidden_size(widths):
    """Entries per row of the ``hid`` buffer."""
    return int(sum(widths[1:-1]))


def param_count(widths):
    return int(sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(len(widths) - 1)))


# ---------------------------------------------------------------- compiled kernels

@numba_twin
def _row_block(n, per_row):
    """Rows per BLAS call for a product of ``n`` rows of ``per_row`` multiply-adds: all of them, or for a medium
    product (up to :data:`MEDIUM_PRODUCT`) as many as keep a call on the calling thread."""
    if n * per_row <= BLAS_SINGLE_THREAD or n * per_row > MEDIUM_PRODUCT:
        return n
    return max(1, BLAS_SINGLE_THREAD // per_row)


@numba_twin
def _mm_numba(a, b, out):
    """out = a @ b."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > SMALL_PRODUCT:
        rows = _row_block(n, k * m)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            np.dot(a[r0:r1], b, out[r0:r1])
        return
    # row i of out is built as a[i, 0] b[0] + a[i, 1] b[1] + ...: the inner loop runs along contiguous rows
    # of b and out, so it vectorizes for any k (a dot product per output would run down b's columns)
    for i in range(n):
        a0 = a[i, 0]
        for j in range(m):
            out[i, j] = a0 * b[0, j]
        for p in range(1, k):
            ap = a[i, p]
            for j in range(m):
                out[i, j] += ap * b[p, j]


@numba_twin
def _mm_nt_numba(a, b, out):
    """out = a @ b.T."""
    n, k = a.shape
    m = b.shape[0]
    if n * k * m > SMALL_PRODUCT:
        rows = _row_block(n, k * m)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            np.dot(a[r0:r1], b.T, out[r0:r1])
        return
    for i in range(n):
        for j in range(m):
            acc = a[i, 0] * b[j, 0]
            for p in range(1, k):
                acc += a[i, p] * b[j, p]
            out[i, j] = acc


@numba_twin
def _mm_tn_numba(a, b, out):
    """out = a.T @ b."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > SMALL_PRODUCT:
        rows = _row_block(n, k * m)
        np.dot(a[:rows].T, b[:rows], out)
        if rows < n:
            # a sum over the rows: each further block's product is added
            part = np.empty_like(out)
            for r0 in range(rows, n, rows):
                r1 = min(n, r0 + rows)
                np.dot(a[r0:r1].T, b[r0:r1], part)
                for i in range(k):
                    for j in range(m):
                        out[i, j] += part[i, j]
        return
    if m < 4:
        # few columns: a dot product down the rows per output
        for p in range(k):
            for j in range(m):
                acc = a[0, p] * b[0, j]
                for i in range(1, n):
                    acc += a[i, p] * b[i, j]
                out[p, j] = acc
        return
    # out += a[i, p] b[i] row by row: the inner loop runs along contiguous rows of b and out
    for p in range(k):
        a0 = a[0, p]
        for j in range(m):
            out[p, j] = a0 * b[0, j]
    for i in range(1, n):
        for p in range(k):
            ap = a[i, p]
            for j in range(m):
                out[p, j] += ap * b[i, j]


@numba_twin
def activate_values(values, act):
    """``values[:] = activate(values[:])`` in place, choosing the activation once, outside the loop, so the loop
    vectorizes (a switch on ``act`` per element kept MAF sampling's unit loops scalar). tanh is :mod:`.vmath`'s,
    called here and not through :func:`~.scalar.activate`, which stays small (libm's tanh) so that the
    per-element loops calling it keep inlining it."""
    if act == 0:
        for r in range(values.size):
            values[r] = activate(values[r], 0, 0.0)
    elif act == 1:
        for r in range(values.size):
            values[r] = tanh_(values[r])     # the polynomial: this loop vectorizes, a libm call would not
    elif act == 2:
        for r in range(values.size):
            values[r] = activate(values[r], 2, 0.0)


@numba_twin
def _bias_act_numba(z, b, act):
    """z = act(z + b) in place; act -1 means linear. tanh (vmath's polynomial) runs as one flat loop over a
    contiguous ``z`` (:func:`activate_values`): a row's few units (8) are too short for 8-wide vector code.
    The others stay fused with the bias, one pass over ``z``: relu gains nothing from a second pass."""
    n, m = z.shape
    if act == 1 and z.flags.c_contiguous:
        for i in range(n):
            for j in range(m):
                z[i, j] = z[i, j] + b[j]
        activate_values(z.reshape(z.size), 1)
        return
    for i in range(n):
        for j in range(m):
            z[i, j] = activate(z[i, j] + b[j], act, 0.0)


@numba_twin
def _act_grad_numba(delta, h, act):
    """delta *= act'(.) written through the activation's output h, choosing the activation outside the loops (so
    that they vectorize)."""
    n, m = delta.shape
    if act == 0:
        for i in range(n):
            for j in range(m):
                delta[i, j] *= activation_grad(h[i, j], 0, 0.0, 1.0)
    elif act == 1:
        for i in range(n):
            for j in range(m):
                delta[i, j] *= activation_grad(h[i, j], 1, 0.0, 1.0)
    else:
        for i in range(n):
            for j in range(m):
                delta[i, j] *= activation_grad(h[i, j], act, 0.0, 1.0)


@numba_twin
def mlp_forward_numba(theta, off, widths, act, inp, hid, out):
    n = inp.shape[0]
    n_layers = widths.size - 1
    p = off
    hp = 0
    h = inp
    for layer in range(n_layers):
        fi = widths[layer]
        fo = widths[layer + 1]
        w = theta[p:p + fi * fo].reshape((fi, fo))
        b = theta[p + fi * fo:p + fi * fo + fo]
        p += fi * fo + fo
        if layer == n_layers - 1:
            _mm_numba(h, w, out)
            _bias_act_numba(out, b, -1)
        else:
            block = hid[hp:hp + n * fo].reshape((n, fo))
            hp += n * fo
            _mm_numba(h, w, block)
            _bias_act_numba(block, b, act)
            h = block


@numba_twin
def _last_layer(off, widths, n):
    """The offsets of the last layer's parameters in theta and of its input's block in ``hid`` (``n`` rows)."""
    p = off
    hp = 0
    for layer in range(widths.size - 2):
        p += widths[layer] * widths[layer + 1] + widths[layer + 1]
        hp += n * widths[layer + 1]
    return p, hp


@numba_twin
def mlp_backward_numba(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2):
    n = inp.shape[0]
    n_layers = widths.size - 1
    p, hp = _last_layer(off, widths, n)     # walked backwards below
    delta = gout
    use_d1 = True
    for layer in range(n_layers - 1, -1, -1):
        fi = widths[layer]
        fo = widths[layer + 1]
        w = theta[p:p + fi * fo].reshape((fi, fo))
        gw = gtheta[p:p + fi * fo].reshape((fi, fo))
        gb = gtheta[p + fi * fo:p + fi * fo + fo]
        if layer > 0:
            hp -= n * fi
            h_in = hid[hp:hp + n * fi].reshape((n, fi))
        else:
            h_in = inp
        _mm_tn_numba(h_in, delta, gw)
        for j in range(fo):
            gb[j] = 0.0
        for i in range(n):
            for j in range(fo):
                gb[j] += delta[i, j]
        if layer > 0:
            buf = d1 if use_d1 else d2
            use_d1 = not use_d1
            back = buf[:n * fi].reshape((n, fi))
            _mm_nt_numba(delta, w, back)
            _act_grad_numba(back, h_in, act)
            delta = back
            p -= widths[layer - 1] * fi + fi
        else:
            _mm_nt_numba(delta, w, gin)


# ---------------------------------------------------------------- small networks by unit

@numba_twin
def mlp_forward_by_unit_numba(theta, off, widths, act, inp_t, hid, out_t):
    """The MLP on inputs laid out by unit (``inp_t``: ``(widths[0], n)``), every layer likewise, into ``out_t``:
    each unit is a sum of scaled rows, ``W[0, u] x_0 + W[1, u] x_1 + ...``, then its bias, the order of
    :func:`mlp_forward_numba`, with every inner loop running down the rows (so it vectorizes however
    narrow the layer). ``hid`` holds the hidden layers by unit, the cache :func:`mlp_backward_by_unit_numba` reads."""
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
            _sum_of_rows(theta, p + u, fo, fi, src, row)
            bu = theta[p + fi * fo + u]
            for i in range(n):
                row[i] += bu
            if layer < n_layers - 1:
                activate_values(row, act)
        p += fi * fo + fo
        src = dst


@numba_twin
def mlp_backward_by_unit_numba(theta, off, widths, act, inp_t, hid, delta_t, gin_t, gtheta, d1, d2):
    """The backward of :func:`mlp_forward_by_unit_numba` (:func:`mlp_backward_numba`, by unit): from the output's
    gradient ``delta_t``, the parameters' gradients into ``gtheta`` and the input's into ``gin_t``, all by unit.
    A weight's gradient is a dot product down the rows; a unit's input gradient a sum of scaled rows; ``d1`` and
    ``d2`` take turns holding the hidden layers' deltas."""
    n = inp_t.shape[1]
    n_layers = widths.size - 1
    p, hp = _last_layer(off, widths, n)
    delta = delta_t
    use_d1 = True
    unit = widths.size // widths.size      # 1, not a literal: one compiled _sum_of_rows serves both passes
    for layer in range(n_layers - 1, -1, -1):
        fi = widths[layer]
        fo = widths[layer + 1]
        if layer > 0:
            hp -= n * fi
            h_in = hid[hp:hp + n * fi].reshape((fi, n))
        else:
            h_in = inp_t
        for q in range(fi):
            hq = h_in[q]
            for u in range(fo):
                du = delta[u]
                acc = hq[0] * du[0]
                for i in range(1, n):
                    acc += hq[i] * du[i]
                gtheta[p + q * fo + u] = acc
        for u in range(fo):
            du = delta[u]
            acc = du[0]
            for i in range(1, n):
                acc += du[i]
            gtheta[p + fi * fo + u] = acc
        if layer > 0:
            buf = d1 if use_d1 else d2
            use_d1 = not use_d1
            back = buf[:n * fi].reshape((fi, n))
        else:
            back = gin_t[:fi]
        for q in range(fi):
            _sum_of_rows(theta, p + q * fo, unit, fo, delta, back[q])
        if layer > 0:
            _act_grad_numba(back, h_in, act)
        delta = back
        if layer > 0:
            p -= widths[layer - 1] * fi + fi


@numba_twin
def _sum_of_rows(theta, at, step, count, rows, out):
    """``out = theta[at] rows[0] + theta[at + step] rows[1] + ...`` (``count`` rows), added in that order, four rows
    per pass over ``out``."""
    n = out.size
    w0 = theta[at]
    r0 = rows[0]
    for i in range(n):
        out[i] = w0 * r0[i]
    q = 1
    while q + 4 <= count:
        wa = theta[at + q * step]
        wb = theta[at + (q + 1) * step]
        wc = theta[at + (q + 2) * step]
        wd = theta[at + (q + 3) * step]
        sa = rows[q]
        sb = rows[q + 1]
        sc = rows[q + 2]
        sd = rows[q + 3]
        for i in range(n):
            out[i] = out[i] + wa * sa[i] + wb * sb[i] + wc * sc[i] + wd * sd[i]
        q += 4
    while q < count:
        wq = theta[at + q * step]
        sq = rows[q]
        for i in range(n):
            out[i] += wq * sq[i]
        q += 1

