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


def hidden_size(widths):
    """Entries per row of the ``hid`` buffer."""
    return int(sum(widths[1:-1]))


def param_count(widths):
    return int(sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(len(widths) - 1)))


# ---------------------------------------------------------------- compiled kernels

@numba_twin
def _mm_numba(a, b, out):
    """out = a @ b."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > SMALL_PRODUCT:
        np.dot(a, b, out)
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
        np.dot(a, b.T, out)
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
        np.dot(a.T, b, out)
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
    """delta *= act'(.) written through the activation's output h."""
    n, m = delta.shape
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
def mlp_backward_numba(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2):
    n = inp.shape[0]
    n_layers = widths.size - 1
    # parameter and hidden-block offsets of the last layer, walked backwards below
    p = off
    hp = 0
    for layer in range(n_layers - 1):
        p += widths[layer] * widths[layer + 1] + widths[layer + 1]
        hp += n * widths[layer + 1]
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
