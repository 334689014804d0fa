"""BatchNorm as a layer of a compiled flow: the density pass (batch or running statistics), its VJP, sampling.

``stats`` holds ``[running_mean (d), running_var (d), momentum]``; the density
pass with ``batch`` set normalizes by the batch's mean and biased variance and
updates the running statistics in place (the unbiased variance, as the
bijector does); without it, it uses the running statistics. The backward
recomputes the statistics from the pass's input ``y`` instead of caching them.
Log-dets are added to ``ld``.

The kernels here are the compiled ones; their reference is the NumPy passes
of the :class:`nflow_np.bijectors.BatchNorm` bijector (training mode for the
batch statistics, eval mode for the running ones), which the tests hold them to.
"""

import numpy as np

from .backend import numba_twin


# ---------------------------------------------------------------- compiled kernels

@numba_twin
def _moments_numba(y, stats, batch, eps, mu, var):
    n, d = y.shape
    for j in range(d):
        if batch:
            acc = 0.0
            for i in range(n):
                acc += y[i, j]
            mean = acc / n
            acc = 0.0
            for i in range(n):
                c = y[i, j] - mean
                acc += c * c
            mu[j] = mean
            var[j] = acc / n
        else:
            mu[j] = stats[j]
            var[j] = stats[d + j]


@numba_twin
def batchnorm_inverse_numba(log_gamma, beta, stats, eps, batch, y, x, ld):
    n, d = y.shape
    mu = np.empty(d)
    var = np.empty(d)
    _moments_numba(y, stats, batch, eps, mu, var)
    total = 0.0
    for j in range(d):
        total += log_gamma[j] - 0.5 * np.log(var[j] + eps)
        scale = np.exp(log_gamma[j]) / np.sqrt(var[j] + eps)
        for i in range(n):
            x[i, j] = (y[i, j] - mu[j]) * scale + beta[j]
    for i in range(n):
        ld[i] += total
    if batch:
        m = stats[2 * d]
        for j in range(d):
            stats[j] = (1.0 - m) * stats[j] + m * mu[j]
            stats[d + j] = (1.0 - m) * stats[d + j] + (m * n / (n - 1.0)) * var[j]


@numba_twin
def batchnorm_inverse_backward_numba(log_gamma, stats, eps, batch, y, gx, gld, gy, g_log_gamma, g_beta):
    n, d = y.shape
    mu = np.empty(d)
    var = np.empty(d)
    _moments_numba(y, stats, batch, eps, mu, var)
    total = 0.0
    for i in range(n):
        total += gld[i]
    for j in range(d):
        std = np.sqrt(var[j] + eps)
        gamma = np.exp(log_gamma[j])
        sum_g = 0.0
        sum_gx = 0.0
        for i in range(n):
            xhat = (y[i, j] - mu[j]) / std
            sum_g += gx[i, j]
            sum_gx += gx[i, j] * xhat
        g_beta[j] = sum_g
        g_log_gamma[j] = sum_gx * gamma + total
        for i in range(n):
            g = gx[i, j] * gamma
            if batch:
                xhat = (y[i, j] - mu[j]) / std
                gy[i, j] = (g - gamma * sum_g / n - xhat * (gamma * sum_gx / n + total / n)) / std
            else:
                gy[i, j] = g / std


@numba_twin
def batchnorm_forward_numba(log_gamma, beta, stats, eps, x, y, ld):
    n, d = x.shape
    total = 0.0
    for j in range(d):
        total += log_gamma[j] - 0.5 * np.log(stats[d + j] + eps)
        gain = np.exp(-log_gamma[j]) * np.sqrt(stats[d + j] + eps)
        for i in range(n):
            y[i, j] = (x[i, j] - beta[j]) * gain + stats[j]
    for i in range(n):
        ld[i] -= total
