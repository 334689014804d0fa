"""CUDA twin of :mod:`nflow_np.kernels.coupling`: affine and additive couplings, both directions and their VJPs.

A pass is three steps on the device: gather the conditioning columns
(``cond = y[:, a]``), the network (:func:`.mlp.mlp_forward_cuda`), then one
row kernel that copies the pass-through columns, transforms the others and
adds the row's log-det (a sum over the row in a register: no atomics). The
backward mirrors it: a row kernel for the transform's VJP (``gnet`` and the
direct part of the input gradient), the network's backward, and a row kernel
adding the conditioning gradient. Buffers and their meaning are the
reference's: ``net[:, nb:]`` holds the clamped log-scale after a pass.
"""

from .device import cuda, family, jit, launch_rows
from .elementwise import gather_cuda
from .mlp import mlp_backward_cuda, mlp_forward_cuda
from .scalar import affine_density, affine_density_vjp, affine_sampling, affine_sampling_vjp, soft_clamp

__all__ = ["coupling_inverse_cuda", "coupling_forward_cuda", "coupling_inverse_backward_cuda",
           "coupling_forward_backward_cuda"]


@family
def _kernels(ft, geom):
    zero, one = ft(0), ft(1)

    @jit
    def transform(inp, out, net, ld, a, b, affine, clamp, direction):
        # direction -1 (density): out_b = (inp_b - t) e^-s, ld -= sum s; +1 (sampling): out_b = inp_b e^s + t
        i = cuda.grid(1)
        if i < inp.shape[0]:
            nb = b.size
            for j in range(a.size):
                out[i, a[j]] = inp[i, a[j]]
            if affine:
                total = zero
                for j in range(nb):
                    s = soft_clamp(net[i, nb + j], clamp, zero)
                    net[i, nb + j] = s
                    if direction < 0:
                        out[i, b[j]] = affine_density(inp[i, b[j]], net[i, j], s)
                    else:
                        out[i, b[j]] = affine_sampling(inp[i, b[j]], net[i, j], s)
                    total += s
                ld[i] += total if direction > 0 else -total
            else:
                for j in range(nb):
                    if direction < 0:
                        out[i, b[j]] = inp[i, b[j]] - net[i, j]
                    else:
                        out[i, b[j]] = inp[i, b[j]] + net[i, j]

    @jit
    def transform_grad(x, g_out, gld, net, g_in, gnet, b, affine, clamp, direction):
        # VJP of the transformed columns. Density: x is the pass output, g_out = dL/dx, g_in = dL/dy;
        # sampling: x is the pass input, g_out = dL/dy, g_in = dL/dx.
        i = cuda.grid(1)
        if i < x.shape[0]:
            nb = b.size
            for j in range(nb):
                g = g_out[i, b[j]]
                if affine:
                    s = net[i, nb + j]
                    if direction < 0:
                        g_in[i, b[j]], gnet[i, j], gnet[i, nb + j] = affine_density_vjp(g, x[i, b[j]], gld[i], s,
                                                                                        clamp, zero, one)
                    else:
                        g_in[i, b[j]], gnet[i, j], gnet[i, nb + j] = affine_sampling_vjp(g, x[i, b[j]], gld[i], s,
                                                                                         clamp, zero, one)
                else:
                    g_in[i, b[j]] = g
                    gnet[i, j] = -g if direction < 0 else g

    @jit
    def add_conditioning_grad(g_out, gcond, a, g_in):
        i = cuda.grid(1)
        if i < g_out.shape[0]:
            for j in range(a.size):
                g_in[i, a[j]] = g_out[i, a[j]] + gcond[i, j]

    return transform, transform_grad, add_conditioning_grad


def _rows(index, dtype, n, *args):
    launch_rows(_kernels(dtype)[index], n, *args)


def _pass(direction, theta, off, widths, act, affine, clamp, a, b, inp, out, ld, cond, hid, net, work):
    gather_cuda(inp, a, cond)
    mlp_forward_cuda(theta, off, widths, act, cond, hid, net, work)
    _rows(0, inp.dtype, inp.shape[0], inp, out, net, ld, a, b, bool(affine), inp.dtype.type(clamp), direction)


def coupling_inverse_cuda(theta, off, widths, act, affine, clamp, a, b, y, x, ld, cond, hid, net, work=None):
    """Density direction; see :func:`nflow_np.kernels.coupling.coupling_inverse_numpy` (``a``, ``b`` on the device)."""
    _pass(-1, theta, off, widths, act, affine, clamp, a, b, y, x, ld, cond, hid, net, work)


def coupling_forward_cuda(theta, off, widths, act, affine, clamp, a, b, x, y, ld, cond, hid, net, work=None):
    """Sampling direction; see :func:`nflow_np.kernels.coupling.coupling_forward_numpy`."""
    _pass(1, theta, off, widths, act, affine, clamp, a, b, x, y, ld, cond, hid, net, work)


def _backward(direction, theta, off, widths, act, affine, clamp, a, b, x, g_out, gld, cond, hid, net, g_in, gtheta,
              gnet, gcond, d1, d2, work):
    n = x.shape[0]
    _rows(1, x.dtype, n, x, g_out, gld, net, g_in, gnet, b, bool(affine), x.dtype.type(clamp), direction)
    mlp_backward_cuda(theta, off, widths, act, cond, hid, gnet, gcond, gtheta, d1, d2, work)
    _rows(2, x.dtype, n, g_out, gcond, a, g_in)


def coupling_inverse_backward_cuda(theta, off, widths, act, affine, clamp, a, b, x, gx, gld, cond, hid, net, gy,
                                   gtheta, gnet, gcond, d1, d2, work=None):
    """VJP of :func:`coupling_inverse_cuda`; see the NumPy reference."""
    _backward(-1, theta, off, widths, act, affine, clamp, a, b, x, gx, gld, cond, hid, net, gy, gtheta, gnet, gcond,
              d1, d2, work)


def coupling_forward_backward_cuda(theta, off, widths, act, affine, clamp, a, b, x, gy, gld, cond, hid, net, gx,
                                   gtheta, gnet, gcond, d1, d2, work=None):
    """VJP of :func:`coupling_forward_cuda` (``x`` its input); see the NumPy reference."""
    _backward(1, theta, off, widths, act, affine, clamp, a, b, x, gy, gld, cond, hid, net, gx, gtheta, gnet, gcond,
              d1, d2, work)
