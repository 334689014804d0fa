"""CUDA twin of :mod:`nflow_np.kernels.autoregressive`: MAF's density pass, its VJP, and sampling.

``theta`` holds the MADE weights already multiplied by their masks, as on the
CPU. The density pass is one network call and a row kernel; sampling is the
reference's ``d`` sequential network passes (one per feature, in generation
order), each followed by a row kernel that fixes that feature, then a last
pass for the log-det. The CPU twin's degree-grouped single pass computes each
hidden unit once but walks units one at a time; on the GPU the ``d`` full passes
are dense products, so ``groups`` and ``scratch`` are accepted and unused.
"""

import math

import numpy as np

from .device import cuda, family, jit, launch_rows
from .elementwise import fill_cuda
from .mlp import mlp_backward_cuda, mlp_forward_cuda
from .scalar import affine_density, affine_density_vjp, affine_sampling, soft_clamp

__all__ = ["maf_inverse_cuda", "maf_inverse_backward_cuda", "maf_forward_cuda"]


@family
def _kernels(ft, geom):
    zero, one = ft(0), ft(1)

    @jit
    def inverse_tail(y, x, net, ld, clamp):
        i = cuda.grid(1)
        if i < y.shape[0]:
            d = y.shape[1]
            total = zero
            for j in range(d):
                s = soft_clamp(net[i, d + j], clamp, zero)
                net[i, d + j] = s
                x[i, j] = affine_density(y[i, j], net[i, j], s)
                total += s
            ld[i] -= total

    @jit
    def backward_head(x, gx, gld, net, gnet, clamp):
        i = cuda.grid(1)
        if i < x.shape[0]:
            d = x.shape[1]
            for j in range(d):
                _, gnet[i, j], gnet[i, d + j] = affine_density_vjp(gx[i, j], x[i, j], gld[i], net[i, d + j], clamp,
                                                                   zero, one)

    @jit
    def backward_tail(gx, net, gy):
        # the direct path y -> x, added to the network's input gradient
        i = cuda.grid(1)
        if i < gx.shape[0]:
            d = gx.shape[1]
            for j in range(d):
                gy[i, j] += gx[i, j] * math.exp(-net[i, d + j])

    @jit
    def sample_feature(x, y, net, feature, clamp):
        i = cuda.grid(1)
        if i < x.shape[0]:
            d = x.shape[1]
            s = soft_clamp(net[i, d + feature], clamp, zero)
            y[i, feature] = affine_sampling(x[i, feature], net[i, feature], s)

    @jit
    def sample_log_det(net, ld, clamp):
        i = cuda.grid(1)
        if i < net.shape[0]:
            d = net.shape[1] // 2
            total = zero
            for j in range(d):
                total += soft_clamp(net[i, d + j], clamp, zero)
            ld[i] += total

    return inverse_tail, backward_head, backward_tail, sample_feature, sample_log_det


def _rows(index, dtype, n, *args):
    launch_rows(_kernels(dtype)[index], n, *args)


def maf_inverse_cuda(theta, off, widths, act, clamp, y, x, ld, hid, net, work=None):
    """``x = (y - t(y)) e^{-s(y)}``, ``ld -= sum(s)``; see :func:`nflow_np.kernels.autoregressive.maf_inverse_numpy`."""
    mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
    _rows(0, y.dtype, y.shape[0], y, x, net, ld, y.dtype.type(clamp))


def maf_inverse_backward_cuda(theta, off, widths, act, clamp, y, x, gx, gld, hid, net, gy, gtheta, gnet, d1, d2,
                              work=None):
    """VJP of :func:`maf_inverse_cuda`; see the NumPy reference."""
    n = y.shape[0]
    _rows(1, y.dtype, n, x, gx, gld, net, gnet, y.dtype.type(clamp))
    mlp_backward_cuda(theta, off, widths, act, y, hid, gnet, gy, gtheta, d1, d2, work)
    _rows(2, y.dtype, n, gx, net, gy)


def maf_forward_cuda(theta, off, widths, act, clamp, generation, groups, x, y, ld, hid, net, scratch=None,
                     work=None):
    """Sampling, ``y_i = x_i e^{s_i(y)} + t_i(y)`` in ``generation`` order (host ints); ``ld += sum(s)``."""
    n = x.shape[0]
    ft = x.dtype.type
    fill_cuda(y, 0.0)
    for feature in np.asarray(generation).tolist():
        mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
        _rows(3, x.dtype, n, x, y, net, int(feature), ft(clamp))
    # one more pass gives every feature's final log-scale
    mlp_forward_cuda(theta, off, widths, act, y, hid, net, work)
    _rows(4, x.dtype, n, net, ld, ft(clamp))
