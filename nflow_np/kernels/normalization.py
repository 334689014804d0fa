"""BatchNorm as a layer of a compiled flow: the density pass (batch or running statistics), its VJP, sampling.

``stats`` holds ``[running_mean (d), running_var (d), momentum]``; the density
pass with ``batch`` set normalizes by the batch's mean and biased variance and
updates the running statistics in place (the unbiased variance, as the
bijector does); without it, it uses the running statistics. The backward
recomputes the statistics from the pass's input ``y`` instead of caching them.
Log-dets are added to ``ld``.
"""

import numpy as np

from .backend import numba_twin


# ---------------------------------------------------------------- NumPy reference

def _moments_numpy(y, stats, batch, eps):
    d = y.shape[1]
    if batch:
        mu = y.mean(axis=0)
        var = ((y - mu) ** 2).mean(axis=0)
    else:
        mu, var = stats[:d], stats[d:2 * d]
    return mu, var, np.sqrt(var + eps)


def batchnorm_inverse_numpy(log_gamma, beta, stats, eps, batch, y, x, ld):
    d = y.shape[1]
    mu, var, std = _moments_numpy(y, stats, batch, eps)
    x[...] = np.exp(log_gamma) * (y - mu) / std + beta
    ld += (log_gamma - 0.5 * np.log(var + eps)).sum()
    if batch:
        n, m = y.shape[0], stats[2 * d]
        stats[:d] = (1.0 - m) * stats[:d] + m * mu
        stats[d:2 * d] = (1.0 - m) * stats[d:2 * d] + (m * n / (n - 1.0)) * var
    return None


def batchnorm_inverse_backward_numpy(log_gamma, stats, eps, batch, y, gx, gld, gy, g_log_gamma, g_beta):
    """VJP of the density pass at input ``y``; with ``batch`` the statistics are those of ``y``."""
    n = y.shape[0]
    mu, _, std = _moments_numpy(y, stats, batch, eps)
    xhat = (y - mu) / std
    total = gld.sum()
    gamma = np.exp(log_gamma)
    g_beta[...] = gx.sum(axis=0)
    g_log_gamma[...] = (gx * xhat).sum(axis=0) * gamma + total
    g = gx * gamma
    if batch:
        gy[...] = (g - g.mean(axis=0) - xhat * ((g * xhat).mean(axis=0) + total / n)) / std
    else:
        gy[...] = g / std
    return None


def batchnorm_forward_numpy(log_gamma, beta, stats, eps, x, y, ld):
    """Sampling: always the running statistics."""
    d = x.shape[1]
    mean, var = stats[:d], stats[d:2 * d]
    y[...] = (x - beta) * np.exp(-log_gamma) * np.sqrt(var + eps) + mean
    ld -= (log_gamma - 0.5 * np.log(var + eps)).sum()
    return None


# ---------------------------------------------------------------- Numba twin

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
