"""CUDA twin of :mod:`nflow_np.kernels.normalization`: BatchNorm's density pass, its VJP, and sampling.

``stats`` is the device slice ``[running_mean (d), running_var (d), momentum]``.
Batch moments come from :mod:`.reduce` (float64 column sums: the mean, then the
centred squares); one single-thread kernel turns the column sums into the
per-feature constants (and, in the density pass with batch statistics, moves the
running statistics), so every row kernel reads ready constants. The backward
recomputes the moments from the pass's input, as the Numba twin does.
"""

import math

import numpy as np

from .device import cuda, family, jit, launch, launch_rows, scratch_or_default
from .reduce import CENTRED_PRODUCT, CENTRED_SQUARE, SUM, column_sums, vector_sum

__all__ = ["batchnorm_inverse_cuda", "batchnorm_inverse_backward_cuda", "batchnorm_forward_cuda"]


@family
def _kernels(ft, geom):
    half = ft(0.5)

    @jit
    def finish_moments(log_gamma, stats, eps, batch, update, n, moments):
        # moments: [mean (d), biased var (d), sum_j (log_gamma - log(var + eps) / 2), e^log_gamma / std (d)],
        # float64; with batch the first 2 d hold the column sums' results already, else they are read from
        # the running statistics
        if cuda.grid(1) == 0:
            d = log_gamma.size
            total = 0.0
            for j in range(d):
                if not batch:
                    moments[j] = stats[j]
                    moments[d + j] = stats[d + j]
                var = moments[d + j]
                total += log_gamma[j] - 0.5 * math.log(var + eps)
                moments[2 * d + 1 + j] = math.exp(log_gamma[j]) / math.sqrt(var + eps)
                if batch and update:
                    m = stats[2 * d]
                    stats[j] = (1.0 - m) * stats[j] + m * moments[j]
                    stats[d + j] = (1.0 - m) * stats[d + j] + (m * n / (n - 1.0)) * var
            moments[2 * d] = total

    @jit
    def normalize(beta, moments, y, x, ld):
        i = cuda.grid(1)
        if i < y.shape[0]:
            d = y.shape[1]
            for j in range(d):
                x[i, j] = (y[i, j] - ft(moments[j])) * ft(moments[2 * d + 1 + j]) + beta[j]
            ld[i] += ft(moments[2 * d])

    @jit
    def finish_grads(log_gamma, moments, eps, batch, n, sums, g_log_gamma, g_beta, coef):
        # sums: [sum_i gx (d), sum_i gx (y - mean) (d), sum_i gld]; coef: per feature [gamma, 1 / std, c1, c2]
        if cuda.grid(1) == 0:
            d = log_gamma.size
            total = sums[2 * d]
            for j in range(d):
                inv_std = 1.0 / math.sqrt(moments[d + j] + eps)
                gamma = math.exp(log_gamma[j])
                sum_g = sums[j]
                sum_gx = sums[d + j] * inv_std
                g_beta[j] = sum_g
                g_log_gamma[j] = sum_gx * gamma + total
                coef[j] = gamma
                coef[d + j] = inv_std
                coef[2 * d + j] = gamma * sum_g / n if batch else 0.0
                coef[3 * d + j] = (gamma * sum_gx + total) / n if batch else 0.0

    @jit
    def input_grad(y, gx, moments, coef, gy):
        i = cuda.grid(1)
        if i < y.shape[0]:
            d = y.shape[1]
            for j in range(d):
                inv_std = ft(coef[d + j])
                xhat = (y[i, j] - ft(moments[j])) * inv_std
                gy[i, j] = (gx[i, j] * ft(coef[j]) - ft(coef[2 * d + j]) - xhat * ft(coef[3 * d + j])) * inv_std

    @jit
    def denormalize(log_gamma, beta, stats, eps, x, y, ld):
        i = cuda.grid(1)
        if i < x.shape[0]:
            d = x.shape[1]
            total = ft(0)
            for j in range(d):
                var = stats[d + j] + eps
                y[i, j] = (x[i, j] - beta[j]) * math.exp(-log_gamma[j]) * math.sqrt(var) + stats[j]
                total += log_gamma[j] - half * math.log(var)
            ld[i] -= total

    return finish_moments, normalize, finish_grads, input_grad, denormalize


def _single(index, dtype, *args):
    launch(_kernels(dtype)[index], 1, 1)(*args)


def _rows(index, dtype, n, *args):
    launch_rows(_kernels(dtype)[index], n, *args)


def _moments(log_gamma, stats, eps, batch, update, y, work):
    """Float64 ``[mean, var, log-det, scale]`` of the pass at input ``y``; ``update`` moves the running statistics."""
    n, d = y.shape
    moments = work.get("batchnorm_moments", 3 * d + 1, np.float64)
    if batch:
        column_sums(y, moments[:d], SUM, scale=1.0 / n, work=work)
        column_sums(y, moments[d:2 * d], CENTRED_SQUARE, centre=moments[:d], scale=1.0 / n, work=work)
    _single(0, y.dtype, log_gamma, stats, float(eps), bool(batch), bool(update), float(n), moments)
    return moments


def batchnorm_inverse_cuda(log_gamma, beta, stats, eps, batch, y, x, ld, work=None):
    """Density pass; see :func:`nflow_np.kernels.normalization.batchnorm_inverse_numba` (``stats`` moves in place;
    reference: :meth:`nflow_np.bijectors.BatchNorm.inverse_and_log_det`)."""
    work = scratch_or_default(work)
    moments = _moments(log_gamma, stats, eps, batch, True, y, work)
    _rows(1, y.dtype, y.shape[0], beta, moments, y, x, ld)


def batchnorm_inverse_backward_cuda(log_gamma, stats, eps, batch, y, gx, gld, gy, g_log_gamma, g_beta, work=None):
    """VJP of the density pass at input ``y``; see
    :func:`nflow_np.kernels.normalization.batchnorm_inverse_backward_numba` (reference:
    :meth:`nflow_np.bijectors.BatchNorm.inverse_vjp`)."""
    work = scratch_or_default(work)
    n, d = y.shape
    moments = _moments(log_gamma, stats, eps, batch, False, y, work)
    sums = work.get("batchnorm_sums", 2 * d + 1, np.float64)
    column_sums(gx, sums[:d], SUM, work=work)
    column_sums(gx, sums[d:2 * d], CENTRED_PRODUCT, y=y, centre=moments[:d], work=work)
    vector_sum(gld, sums[2 * d:], work=work)
    coef = work.get("batchnorm_coef", 4 * d, np.float64)
    _single(2, y.dtype, log_gamma, moments, float(eps), bool(batch), float(n), sums, g_log_gamma, g_beta, coef)
    _rows(3, y.dtype, n, y, gx, moments, coef, gy)


def batchnorm_forward_cuda(log_gamma, beta, stats, eps, x, y, ld):
    """Sampling with the running statistics; see :func:`nflow_np.kernels.normalization.batchnorm_forward_numba`
    (reference: :meth:`nflow_np.bijectors.BatchNorm.forward_and_log_det`)."""
    _rows(4, x.dtype, x.shape[0], log_gamma, beta, stats, x.dtype.type(eps), x, y, ld)
