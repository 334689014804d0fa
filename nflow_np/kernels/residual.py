"""Residual networks on a flat parameter vector: forward and hand-written backward, compiled.

A residual conditioner (:class:`nflow_np.nn.ResidualMLP`, and the masked
:class:`nflow_np.nn.ResidualMADE` on masked weights) with ``B`` blocks of width
``H`` is stored like an MLP of widths ``(w_in, H, ..., H, w_out)`` with ``2B + 1``
hidden widths: from offset ``off`` of ``theta``, ``W_in``, ``b_in``, then per block
``W_k0``, ``b_k0``, ``W_k1``, ``b_k1``, then ``W_out``, ``b_out`` (the order of the
network's ``params``)::

    h_0     = inp W_in + b_in
    a_k     = act(h_k)
    v_k     = act(a_k W_k0 + b_k0)
    h_{k+1} = h_k + v_k W_k1 + b_k1                  k = 0 .. B-1
    out     = h_B W_out + b_out

The ``hid`` buffer (the same size as that MLP's) keeps, as ``(n, H)`` blocks,
``h_B`` then ``a_0, v_0, a_1, v_1, ...``: the backward needs nothing else, the
activations' derivatives being functions of their outputs. The backward uses
``d1`` (the residual stream's gradient) and ``d2`` (a block's inner gradient),
``n * H`` entries each.

The frames tell a residual network from an MLP by its activation code:
``RESIDUAL + code`` (see :func:`network_forward_numba`), so an MLP's pass takes one
integer comparison more and nothing else. Reference: :class:`nflow_np.nn.ResidualMLP`'s
``forward_with_cache`` and ``backward``.

References: He, Zhang, Ren and Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
"""

import numpy as np

from .backend import numba_twin
from .mlp import SMALL_PRODUCT, _act_grad_numba, _bias_act_numba, _mm_nt_numba, _mm_numba, _mm_tn_numba, \
    activate_values, mlp_backward_numba, mlp_forward_numba
from .scalar import activation_grad

__all__ = ["RESIDUAL", "BY_UNIT", "residual_blocks", "residual_forward_numba", "residual_backward_numba",
           "network_forward_numba", "network_backward_numba"]

# activation codes from here on name a residual network with activation ``code - RESIDUAL``
RESIDUAL = 8
# and from here on an MLP with activation ``code - BY_UNIT``, laid out by unit (:mod:`.mlp`): a frame adds it to a
# small network's code when it calls its network, which then runs the "network_by_unit" entries
BY_UNIT = 16


def residual_blocks(widths):
    """The number of residual blocks of a residual network stored with ``widths``."""
    return (len(widths) - 3) // 2


@numba_twin
def _mm_acc_numba(a, b, bias, out):
    """out += a @ b + bias."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > SMALL_PRODUCT:
        t = np.empty((n, m), dtype=out.dtype)
        np.dot(a, b, t)
        for i in range(n):
            for j in range(m):
                out[i, j] += t[i, j] + bias[j]
        return
    for i in range(n):
        for j in range(m):
            acc = a[i, 0] * b[0, j]
            for p in range(1, k):
                acc += a[i, p] * b[p, j]
            out[i, j] += acc + bias[j]


@numba_twin
def _mm_nt_act_acc_numba(delta, w, h, act, out):
    """out += (delta @ w.T) * act'(.), the derivative written through the activation's output ``h``."""
    n, m = delta.shape
    k = w.shape[0]
    if n * k * m > SMALL_PRODUCT:
        t = np.empty((n, k), dtype=out.dtype)
        np.dot(delta, w.T, t)
        for i in range(n):
            for j in range(k):
                out[i, j] += t[i, j] * activation_grad(h[i, j], act, 0.0, 1.0)
        return
    for i in range(n):
        for j in range(k):
            acc = delta[i, 0] * w[j, 0]
            for p in range(1, m):
                acc += delta[i, p] * w[j, p]
            out[i, j] += acc * activation_grad(h[i, j], act, 0.0, 1.0)


@numba_twin
def _column_sums_numba(delta, out):
    n, m = delta.shape
    for j in range(m):
        out[j] = 0.0
    for i in range(n):
        for j in range(m):
            out[j] += delta[i, j]


@numba_twin
def residual_forward_numba(theta, off, widths, act, inp, hid, out):
    """``out = net(inp)``, keeping ``h_B, a_0, v_0, ...`` in ``hid`` (``act``: the plain activation code)."""
    n = inp.shape[0]
    fi = widths[0]
    hw = widths[1]
    fo = widths[widths.size - 1]
    blocks = (widths.size - 3) // 2
    size = n * hw
    h = hid[:size].reshape((n, hw))
    p = off
    _mm_numba(inp, theta[p:p + fi * hw].reshape((fi, hw)), h)
    _bias_act_numba(h, theta[p + fi * hw:p + fi * hw + hw], -1)
    p += fi * hw + hw
    for k in range(blocks):
        a = hid[(1 + 2 * k) * size:(2 + 2 * k) * size]
        v = hid[(2 + 2 * k) * size:(3 + 2 * k) * size].reshape((n, hw))
        a[:] = hid[:size]
        activate_values(a, act)
        _mm_numba(a.reshape((n, hw)), theta[p:p + hw * hw].reshape((hw, hw)), v)
        _bias_act_numba(v, theta[p + hw * hw:p + hw * hw + hw], act)
        p += hw * hw + hw
        _mm_acc_numba(v, theta[p:p + hw * hw].reshape((hw, hw)), theta[p + hw * hw:p + hw * hw + hw], h)
        p += hw * hw + hw
    _mm_numba(h, theta[p:p + hw * fo].reshape((hw, fo)), out)
    _bias_act_numba(out, theta[p + hw * fo:p + hw * fo + fo], -1)


@numba_twin
def residual_backward_numba(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2):
    """Parameter gradients into ``gtheta`` and ``gin = dL/dinp`` from the caches of :func:`residual_forward_numba`."""
    n = inp.shape[0]
    fi = widths[0]
    hw = widths[1]
    fo = widths[widths.size - 1]
    blocks = (widths.size - 3) // 2
    size = n * hw
    block_size = 2 * (hw * hw + hw)
    p_blocks = off + fi * hw + hw
    p = p_blocks + blocks * block_size
    gh = d1[:size].reshape((n, hw))
    gu = d2[:size].reshape((n, hw))
    _mm_tn_numba(hid[:size].reshape((n, hw)), gout, gtheta[p:p + hw * fo].reshape((hw, fo)))
    _column_sums_numba(gout, gtheta[p + hw * fo:p + hw * fo + fo])
    _mm_nt_numba(gout, theta[p:p + hw * fo].reshape((hw, fo)), gh)
    for k in range(blocks - 1, -1, -1):
        p0 = p_blocks + k * block_size
        p1 = p0 + hw * hw + hw
        a = hid[(1 + 2 * k) * size:(2 + 2 * k) * size].reshape((n, hw))
        v = hid[(2 + 2 * k) * size:(3 + 2 * k) * size].reshape((n, hw))
        _mm_tn_numba(v, gh, gtheta[p1:p1 + hw * hw].reshape((hw, hw)))
        _column_sums_numba(gh, gtheta[p1 + hw * hw:p1 + hw * hw + hw])
        _mm_nt_numba(gh, theta[p1:p1 + hw * hw].reshape((hw, hw)), gu)
        _act_grad_numba(gu, v, act)
        _mm_tn_numba(a, gu, gtheta[p0:p0 + hw * hw].reshape((hw, hw)))
        _column_sums_numba(gu, gtheta[p0 + hw * hw:p0 + hw * hw + hw])
        _mm_nt_act_acc_numba(gu, theta[p0:p0 + hw * hw].reshape((hw, hw)), a, act, gh)
    _mm_tn_numba(inp, gh, gtheta[off:off + fi * hw].reshape((fi, hw)))
    _column_sums_numba(gh, gtheta[off + fi * hw:off + fi * hw + hw])
    _mm_nt_numba(gh, theta[off:off + fi * hw].reshape((fi, hw)), gin)


@numba_twin
def network_forward_numba(theta, off, widths, act, inp, hid, out):
    """A frame's network forward: an MLP (:func:`~.mlp.mlp_forward_numba`) or, for ``act >= RESIDUAL``, a residual
    network."""
    if act >= RESIDUAL:
        residual_forward_numba(theta, off, widths, act - RESIDUAL, inp, hid, out)
    else:
        mlp_forward_numba(theta, off, widths, act, inp, hid, out)


@numba_twin
def network_backward_numba(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2):
    """The backward of :func:`network_forward_numba`."""
    if act >= RESIDUAL:
        residual_backward_numba(theta, off, widths, act - RESIDUAL, inp, hid, gout, gin, gtheta, d1, d2)
    else:
        mlp_backward_numba(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2)
