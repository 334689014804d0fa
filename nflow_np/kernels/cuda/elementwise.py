"""CUDA twin of :mod:`nflow_np.kernels.elementwise`: permutations, ActNorm, the base distributions, base draws.

Row kernels run one thread per row (a flow's rows are short: the loops over
columns stay in the thread, and a row's log-det sums without atomics). Column
sums (ActNorm's parameter gradients) go through :mod:`.reduce`.

Base points are drawn on the device with Philox4x32-10 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011; the generator of cuRAND and
PyTorch's CUDA backend), counter-based: element ``k`` of a draw depends only on
the seed and ``k``, never on the launch geometry, so a seed reproduces the same
points on every card and under the simulator. :func:`philox_normal_numpy` is its
NumPy reference. Box-Muller turns each pair of uniforms into two normals; a
uniform box base scales the uniforms themselves (:mod:`.torus`).
"""

import math

import numpy as np

from ..elementwise import HALF_LOG_2PI
from .device import cuda, family, jit, launch_rows, scratch_or_default
from .reduce import PRODUCT, SUM, column_sums, vector_sum
from .scalar import affine_density, affine_sampling

__all__ = ["gather_cuda", "scatter_cuda", "permute_cuda", "permute_backward_cuda", "actnorm_inverse_cuda",
           "actnorm_forward_cuda", "actnorm_inverse_backward_cuda", "normal_log_prob_cuda", "nll_head_cuda",
           "fill_cuda", "masked_copy_cuda", "copy_tail_cuda", "gather_rows_cuda", "philox_normal_numpy",
           "philox_normal_cuda"]

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


@family
def _kernels(ft, geom):
    zero, half, one = ft(0), ft(0.5), ft(1)
    half_log_2pi = ft(HALF_LOG_2PI)

    @jit
    def gather(src, idx, dst):
        i = cuda.grid(1)
        if i < dst.shape[0]:
            for j in range(idx.size):
                dst[i, j] = src[i, idx[j]]

    @jit
    def scatter(src, idx, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            for j in range(idx.size):
                dst[i, idx[j]] = src[i, j]

    @jit
    def actnorm(log_scale, shift, inp, out, ld, direction):
        # direction -1: out = (inp - shift) e^-s (density); +1: out = inp e^s + shift (sampling)
        i = cuda.grid(1)
        if i < inp.shape[0]:
            total = zero
            for j in range(log_scale.size):
                s = log_scale[j]
                total += s
                if direction < 0:
                    out[i, j] = affine_density(inp[i, j], shift[j], s)
                else:
                    out[i, j] = affine_sampling(inp[i, j], shift[j], s)
            ld[i] += total if direction > 0 else -total

    @jit
    def actnorm_input_grad(log_scale, gx, gy):
        i = cuda.grid(1)
        if i < gx.shape[0]:
            for j in range(log_scale.size):
                gy[i, j] = gx[i, j] * math.exp(-log_scale[j])

    @jit
    def normal_log_prob(z, out, sign):
        i = cuda.grid(1)
        if i < z.shape[0]:
            acc = zero
            for j in range(z.shape[1]):
                acc += z[i, j] * z[i, j]
            out[i] = sign * out[i] - half * acc - ft(z.shape[1]) * half_log_2pi

    @jit
    def nll_head(z, ld, log_prob, gz, gld):
        # log p per row, and the seeds of the backward pass of -mean(log p): dz = z / n, dld = -1 / n
        i = cuda.grid(1)
        n = z.shape[0]
        if i < n:
            inv_n = one / ft(n)
            acc = zero
            for j in range(z.shape[1]):
                v = z[i, j]
                acc += v * v
                gz[i, j] = v * inv_n
            log_prob[i] = ld[i] - half * acc - ft(z.shape[1]) * half_log_2pi
            gld[i] = -inv_n

    @jit
    def fill(x, value):
        i = cuda.grid(1)
        if i < x.size:
            x[i] = value

    @jit
    def masked_copy(src, mask, dst, start):
        # dst = src * mask on [0, start), dst = src beyond
        i = cuda.grid(1)
        if i < dst.size:
            dst[i] = src[i] * mask[i] if i < start else src[i]

    @jit
    def copy_tail(src, dst, start):
        i = cuda.grid(1)
        if start <= i < dst.size:
            dst[i] = src[i]

    @jit
    def gather_rows(data, order, start, out):
        # a mini-batch: out[i] = data[order[start + i]]
        i = cuda.grid(1)
        if i < out.shape[0]:
            row = order[start + i]
            for j in range(out.shape[1]):
                out[i, j] = data[row, j]

    return (gather, scatter, actnorm, actnorm_input_grad, normal_log_prob, nll_head, fill, masked_copy, copy_tail,
            gather_rows)


def _rows(kernel_index, dtype, n, *args):
    launch_rows(_kernels(dtype)[kernel_index], n, *args)


def gather_cuda(src, idx, dst):
    """``dst[i, j] = src[i, idx[j]]``."""
    _rows(0, src.dtype, dst.shape[0], src, idx, dst)


def scatter_cuda(src, idx, dst):
    """``dst[i, idx[j]] = src[i, j]``."""
    _rows(1, src.dtype, src.shape[0], src, idx, dst)


def permute_cuda(inp, idx, out):
    """See :func:`nflow_np.kernels.elementwise.permute_numba` (reference: :class:`nflow_np.bijectors.Permute`)."""
    gather_cuda(inp, idx, out)


def permute_backward_cuda(gout, idx, gin):
    """See :func:`nflow_np.kernels.elementwise.permute_backward_numba` (reference: the VJP of
    :class:`nflow_np.bijectors.Permute`)."""
    scatter_cuda(gout, idx, gin)


def actnorm_inverse_cuda(log_scale, shift, y, x, ld):
    """``x = (y - shift) e^{-log_scale}``, ``ld -= sum(log_scale)``."""
    _rows(2, y.dtype, y.shape[0], log_scale, shift, y, x, ld, -1)


def actnorm_forward_cuda(log_scale, shift, x, y, ld):
    """``y = x e^{log_scale} + shift``, ``ld += sum(log_scale)``."""
    _rows(2, x.dtype, x.shape[0], log_scale, shift, x, y, ld, 1)


def actnorm_inverse_backward_cuda(log_scale, x, gx, gld, gy, g_log_scale, g_shift, work=None):
    """VJP of the inverse; the parameter gradients are written, not accumulated (as the Numba twin's)."""
    work = scratch_or_default(work)
    _rows(3, x.dtype, x.shape[0], log_scale, gx, gy)
    total = work.get("actnorm_gld", 1, np.float64)
    vector_sum(gld, total, work=work)
    # g_log_scale = -sum_i gx * x - sum(gld);  g_shift = -sum_i gy
    column_sums(gx, g_log_scale, PRODUCT, y=x, scale=-1.0, shift=total, shift_scale=-1.0, work=work)
    column_sums(gy, g_shift, SUM, scale=-1.0, work=work)


def normal_log_prob_cuda(z, out, sign=1):
    """``out = sign * out + log N(z; 0, I)`` per row (``sign`` 1: the Numba twin's ``+=``)."""
    _rows(4, z.dtype, z.shape[0], z, out, z.dtype.type(sign))


def nll_head_cuda(z, ld, log_prob, gz, gld):
    """``log_prob = ld + log N(z)``; ``gz = z / n`` and ``gld = -1 / n``, the gradients of ``-mean(log_prob)``."""
    _rows(5, z.dtype, z.shape[0], z, ld, log_prob, gz, gld)


def fill_cuda(x, value):
    """``x[...] = value`` for a contiguous device array."""
    launch_rows(_kernels(x.dtype)[6], x.size, x.reshape(x.size), x.dtype.type(value))


def _flat(index, dtype, size, *args):
    launch_rows(_kernels(dtype)[index], size, *args)


def masked_copy_cuda(src, mask, dst, start):
    """``dst = src * mask`` on the first ``start`` entries, ``dst = src`` after them (vectors)."""
    _flat(7, dst.dtype, dst.size, src, mask, dst, int(start))


def copy_tail_cuda(src, dst, start):
    """``dst[start:] = src[start:]`` (vectors)."""
    _flat(8, dst.dtype, dst.size, src, dst, int(start))


def gather_rows_cuda(data, order, start, out):
    """``out = data[order[start:start + len(out)]]``: a mini-batch gathered on the device."""
    _rows(9, data.dtype, out.shape[0], data, order, int(start), out)


# ---------------------------------------------------------------- base draws: Philox4x32-10 + Box-Muller

def _philox_numpy(counter, key):
    """Philox4x32-10 of uint64 arrays holding 32-bit words: ``counter`` (4, k), ``key`` (2,)."""
    c = [w.astype(np.uint64) for w in counter]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    m0, m1 = np.uint64(_PHILOX_M[0]), np.uint64(_PHILOX_M[1])
    mask = np.uint64(_MASK32)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(_PHILOX_W[0])) & mask
            k1 = (k1 + np.uint64(_PHILOX_W[1])) & mask
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return c


def _seed_key(seed):
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & _MASK32, seed >> 32


def philox_normal_numpy(seed, size, dtype):
    """``size`` standard normal draws in ``dtype`` from a 64-bit ``seed``: the reference of the device draws."""
    dtype = np.dtype(dtype)
    per = 4 if dtype == np.float32 else 2
    groups = -(-int(size) // per)
    g = np.arange(groups, dtype=np.uint64)
    zeros = np.zeros(groups, np.uint64)
    u = _philox_numpy([g & np.uint64(_MASK32), g >> np.uint64(32), zeros, zeros], _seed_key(seed))
    if per == 4:
        # 24-bit uniforms: (0, 1] for the radius (log 0 impossible), [0, 1) for the angle
        first = [((u[q] >> np.uint64(8)) + np.uint64(1)).astype(np.float32) * np.float32(2.0 ** -24) for q in (0, 2)]
        second = [(u[q] >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24) for q in (1, 3)]
    else:
        # 53-bit uniforms from two words each
        first = [((u[0] >> np.uint64(5)) * np.uint64(1 << 26) + (u[1] >> np.uint64(6)) + np.uint64(1))
                 .astype(np.float64) * 2.0 ** -53]
        second = [((u[2] >> np.uint64(5)) * np.uint64(1 << 26) + (u[3] >> np.uint64(6))).astype(np.float64)
                  * 2.0 ** -53]
    out = np.empty((groups, per), dtype=dtype)
    two_pi = dtype.type(2.0 * math.pi)
    for pair, (a, b) in enumerate(zip(first, second)):
        radius = np.sqrt(dtype.type(-2.0) * np.log(a))
        out[:, 2 * pair] = radius * np.cos(two_pi * b)
        out[:, 2 * pair + 1] = radius * np.sin(two_pi * b)
    return out.reshape(-1)[:size]


@family
def _philox(ft, geom):
    mask = np.uint64(_MASK32)
    m0, m1 = np.uint64(_PHILOX_M[0]), np.uint64(_PHILOX_M[1])
    w0, w1 = np.uint64(_PHILOX_W[0]), np.uint64(_PHILOX_W[1])
    u0, u1, u5, u6, u8, u32 = (np.uint64(v) for v in (0, 1, 5, 6, 8, 32))
    u26 = np.uint64(1 << 26)
    single = ft is np.float32
    per = 4 if single else 2
    two_pi, minus_two = ft(2.0 * math.pi), ft(-2.0)
    scale24, scale53 = ft(2.0 ** -24), ft(2.0 ** -53)

    @jit
    def normals(out, key0, key1):
        g = cuda.grid(1)
        if g * per >= out.size:
            return
        gu = np.uint64(g)
        c0, c1, c2, c3 = gu & mask, gu >> u32, u0, u0
        k0, k1 = key0, key1
        for r in range(10):
            if r:
                k0 = (k0 + w0) & mask
                k1 = (k1 + w1) & mask
            p0 = m0 * c0
            p1 = m1 * c2
            c0, c1, c2, c3 = (p1 >> u32) ^ c1 ^ k0, p1 & mask, (p0 >> u32) ^ c3 ^ k1, p0 & mask
        if single:
            a0 = ft((c0 >> u8) + u1) * scale24
            b0 = ft(c1 >> u8) * scale24
            a1 = ft((c2 >> u8) + u1) * scale24
            b1 = ft(c3 >> u8) * scale24
        else:
            a0 = ft((c0 >> u5) * u26 + (c1 >> u6) + u1) * scale53
            b0 = ft((c2 >> u5) * u26 + (c3 >> u6)) * scale53
            a1 = a0
            b1 = b0
        base = g * per
        for pair in range(per // 2):
            a = a0 if pair == 0 else a1
            b = b0 if pair == 0 else b1
            radius = math.sqrt(minus_two * math.log(a))
            k = base + 2 * pair
            if k < out.size:
                out[k] = radius * math.cos(two_pi * b)
            if k + 1 < out.size:
                out[k + 1] = radius * math.sin(two_pi * b)

    return normals, per


def philox_normal_cuda(seed, out):
    """Fill the contiguous device array ``out`` with :func:`philox_normal_numpy`'s draws for ``seed``."""
    if not out.size:
        return
    kernel, per = _philox(out.dtype)
    key0, key1 = _seed_key(seed)
    launch_rows(kernel, -(-out.size // per), out.reshape(out.size), np.uint64(key0), np.uint64(key1))
