"""CUDA twin of :mod:`nflow_np.kernels.residual`: residual networks on a flat parameter vector.

The products are :mod:`.mlp`'s fused kernels (``act(h @ W + b)``, ``(delta @ W.T) * act'(h)`` and the weight
gradients ``[h, 1].T @ delta``); two element kernels do the rest: ``a_k = act(h_k)`` and the residual sums
``h += t``. Layouts of ``theta`` and ``hid`` are the CPU's (see :mod:`nflow_np.kernels.residual`); the sum
``t = v_k W_k1 + b_k1`` of the forward and the gradient ``(g_u W_k0^T) act'(a_k)`` of the backward wait in a
``work`` scratch buffer of ``n * H`` entries. :func:`.mlp.mlp_forward_cuda` and :func:`.mlp.mlp_backward_cuda`
come here for an activation code of :data:`~nflow_np.kernels.residual.RESIDUAL` and up.

Reference: :class:`nflow_np.nn.ResidualMLP`'s ``forward_with_cache`` and ``backward``.
"""

from types import SimpleNamespace

from ..residual import residual_blocks
from .device import cuda, family, jit, launch_rows, scratch_or_default
from .mlp import NO_ACTIVATION, backward_product_cuda, matmul_bias_act_cuda, weight_grads_cuda
from .scalar import activate

__all__ = ["residual_forward_cuda", "residual_backward_cuda"]


@family
def _kernels(ft, geom):
    zero = ft(0)

    @jit
    def activate_copy(src, dst, act):
        i = cuda.grid(1)
        if i < dst.size:
            dst[i] = activate(src[i], act, zero)

    @jit
    def add_into(src, dst):
        i = cuda.grid(1)
        if i < dst.size:
            dst[i] += src[i]

    return SimpleNamespace(activate_copy=activate_copy, add_into=add_into)


def _shape(widths):
    widths = [int(w) for w in widths]
    return widths[0], widths[1], widths[-1], residual_blocks(widths)


def residual_forward_cuda(theta, off, widths, act, inp, hid, out, work=None):
    """``out = net(inp)``, keeping ``h_B, a_0, v_0, ...`` in ``hid`` (``act``: the plain activation code); see
    :func:`nflow_np.kernels.residual.residual_forward_numba`."""
    n = inp.shape[0]
    if not n:
        return
    fi, hw, fo, blocks = _shape(widths)
    size = n * hw
    k = _kernels(inp.dtype)
    h_flat = hid[:size]
    h = h_flat.reshape(n, hw)
    t_flat = scratch_or_default(work).get("residual", size, inp.dtype)
    t = t_flat.reshape(n, hw)
    p = int(off)
    matmul_bias_act_cuda(inp, theta[p:p + fi * hw].reshape(fi, hw), theta[p + fi * hw:p + fi * hw + hw], h)
    p += fi * hw + hw
    for b in range(blocks):
        a_flat = hid[(1 + 2 * b) * size:(2 + 2 * b) * size]
        v = hid[(2 + 2 * b) * size:(3 + 2 * b) * size].reshape(n, hw)
        launch_rows(k.activate_copy, size, h_flat, a_flat, int(act))
        matmul_bias_act_cuda(a_flat.reshape(n, hw), theta[p:p + hw * hw].reshape(hw, hw),
                             theta[p + hw * hw:p + hw * hw + hw], v, act)
        p += hw * hw + hw
        matmul_bias_act_cuda(v, theta[p:p + hw * hw].reshape(hw, hw), theta[p + hw * hw:p + hw * hw + hw], t)
        p += hw * hw + hw
        launch_rows(k.add_into, size, t_flat, h_flat)
    matmul_bias_act_cuda(h, theta[p:p + hw * fo].reshape(hw, fo), theta[p + hw * fo:p + hw * fo + fo], out,
                         NO_ACTIVATION)


def residual_backward_cuda(theta, off, widths, act, inp, hid, gout, gin, gtheta, d1, d2, work=None):
    """Parameter gradients into ``gtheta`` and ``gin = dL/dinp``; see
    :func:`nflow_np.kernels.residual.residual_backward_numba`."""
    n = inp.shape[0]
    if not n:
        return
    fi, hw, fo, blocks = _shape(widths)
    size = n * hw
    k = _kernels(inp.dtype)
    block_size = 2 * (hw * hw + hw)
    p_blocks = int(off) + fi * hw + hw
    p = p_blocks + blocks * block_size
    gh_flat = d1[:size]
    gh = gh_flat.reshape(n, hw)
    gu = d2[:size].reshape(n, hw)
    ga_flat = scratch_or_default(work).get("residual", size, inp.dtype)
    ga = ga_flat.reshape(n, hw)
    weight_grads_cuda(hid[:size].reshape(n, hw), gout, gtheta[p:p + hw * fo + fo], work)
    backward_product_cuda(gout, theta[p:p + hw * fo].reshape(hw, fo), gh)
    for b in range(blocks - 1, -1, -1):
        p0 = p_blocks + b * block_size
        p1 = p0 + hw * hw + hw
        a = hid[(1 + 2 * b) * size:(2 + 2 * b) * size].reshape(n, hw)
        v = hid[(2 + 2 * b) * size:(3 + 2 * b) * size].reshape(n, hw)
        weight_grads_cuda(v, gh, gtheta[p1:p1 + hw * hw + hw], work)
        backward_product_cuda(gh, theta[p1:p1 + hw * hw].reshape(hw, hw), gu, v, act)
        weight_grads_cuda(a, gu, gtheta[p0:p0 + hw * hw + hw], work)
        backward_product_cuda(gu, theta[p0:p0 + hw * hw].reshape(hw, hw), ga, a, act)
        launch_rows(k.add_into, size, ga_flat, gh_flat)
    off = int(off)
    weight_grads_cuda(inp, gh, gtheta[off:off + fi * hw + hw], work)
    backward_product_cuda(gh, theta[off:off + fi * hw].reshape(fi, hw), gin)
