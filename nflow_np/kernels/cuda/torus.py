"""NCSF's pieces on the device: the uniform box base (its log-density, its NLL head, its Philox draws) and the
circular shift (:class:`~nflow_np.bijectors.CircularShift`), twins of :mod:`nflow_np.kernels.elementwise`'s.

The box's constants come as one device vector ``base = [inside, low (d), high (d), span (d), half (d)]`` (see
:class:`~nflow_np.kernels.specs.UniformSpec`); its draws use the counter-based Philox4x32-10 stream of
:mod:`.elementwise` (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), so a seed gives the
same points on every card and under the simulator.
"""

import numpy as np

from .device import cuda, family, jit, launch_rows
from .elementwise import _MASK32, _PHILOX_M, _PHILOX_W, _philox_numpy, _seed_key
from .reduce import SUM, column_sums, vector_sum
from .scalar import circular_wrap

__all__ = ["uniform_log_prob_cuda", "uniform_nll_head_cuda", "philox_uniform_numpy", "philox_uniform_cuda",
           "circular_shift_cuda", "circular_shift_backward_cuda"]


# ---------------------------------------------------------------- the uniform box base

@family
def _uniform_kernels(ft, geom):
    zero, one = ft(0), ft(1)
    minus_inf = ft(-np.inf)

    @cuda.jit(device=True)
    def log_density(z, i, base):
        # base: [inside, low (d), high (d), span (d), half (d)]; edges inside, NaN outside
        d = z.shape[1]
        for j in range(d):
            v = z[i, j]
            if not (v >= base[1 + j] and v <= base[1 + d + j]):
                return minus_inf
        return base[0]

    @jit
    def log_prob(z, base, out, sign):
        i = cuda.grid(1)
        if i < z.shape[0]:
            out[i] = sign * out[i] + log_density(z, i, base)

    @jit
    def nll_head(z, ld, base, log_prob, gz, gld):
        # the box's log-density is constant inside: dz = 0, dld = -1 / n
        i = cuda.grid(1)
        n = z.shape[0]
        if i < n:
            for j in range(z.shape[1]):
                gz[i, j] = zero
            log_prob[i] = ld[i] + log_density(z, i, base)
            gld[i] = -one / ft(n)

    return log_prob, nll_head


def uniform_log_prob_cuda(z, base, out, sign=1):
    """``out = sign * out + log U(z)`` per row for the box whose constants ``base`` holds (see
    :class:`~nflow_np.kernels.specs.UniformSpec`): ``base[0]`` inside (edges included), ``-inf`` outside."""
    launch_rows(_uniform_kernels(z.dtype)[0], z.shape[0], z, base, out, z.dtype.type(sign))


def uniform_nll_head_cuda(z, ld, base, log_prob, gz, gld):
    """``log_prob = ld + log U(z)``; ``gz = 0`` and ``gld = -1 / n``, the gradients of ``-mean(log_prob)``."""
    launch_rows(_uniform_kernels(z.dtype)[1], z.shape[0], z, ld, base, log_prob, gz, gld)


def philox_uniform_numpy(seed, size, dtype):
    """``size`` uniform draws on ``[0, 1)`` in ``dtype`` from a 64-bit ``seed``: the reference of the device's
    uniform base draws (24-bit uniforms in float32, four per Philox block; 53-bit ones in float64, two)."""
    dtype = np.dtype(dtype)
    per = 4 if dtype == np.float32 else 2
    groups = -(-int(size) // per)
    g = np.arange(groups, dtype=np.uint64)
    zeros = np.zeros(groups, np.uint64)
    u = _philox_numpy([g & np.uint64(_MASK32), g >> np.uint64(32), zeros, zeros], _seed_key(seed))
    if per == 4:
        parts = [(u[q] >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24) for q in range(4)]
    else:
        parts = [((u[q] >> np.uint64(5)) * np.uint64(1 << 26) + (u[q + 1] >> np.uint64(6))).astype(np.float64)
                 * 2.0 ** -53 for q in (0, 2)]
    return np.stack(parts, axis=1).astype(dtype).reshape(-1)[:size]


@family
def _philox_uniform(ft, geom):
    mask = np.uint64(_MASK32)
    m0, m1 = np.uint64(_PHILOX_M[0]), np.uint64(_PHILOX_M[1])
    w0, w1 = np.uint64(_PHILOX_W[0]), np.uint64(_PHILOX_W[1])
    u0, u5, u6, u8, u32 = (np.uint64(v) for v in (0, 5, 6, 8, 32))
    u26 = np.uint64(1 << 26)
    single = ft is np.float32
    per = 4 if single else 2
    scale24, scale53 = ft(2.0 ** -24), ft(2.0 ** -53)

    @jit
    def uniforms(out, base, key0, key1):
        # out (n, d) flat: element k is the k-th uniform, scaled into the box as Uniform's sampler does,
        # (half low + span u) / half, clipped to high
        g = cuda.grid(1)
        d = out.shape[1]
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
        for q in range(per):
            k = g * per + q
            if k < out.size:
                if single:
                    word = c0 if q == 0 else (c1 if q == 1 else (c2 if q == 2 else c3))
                    u = ft(word >> u8) * scale24
                elif q == 0:
                    u = ft((c0 >> u5) * u26 + (c1 >> u6)) * scale53
                else:
                    u = ft((c2 >> u5) * u26 + (c3 >> u6)) * scale53
                j = k % d
                half = base[1 + 3 * d + j]
                v = (half * base[1 + j] + base[1 + 2 * d + j] * u) / half
                out[k // d, j] = min(v, base[1 + d + j])

    return uniforms, per


def philox_uniform_cuda(seed, out, base):
    """Fill the contiguous device array ``out`` (n, d) with draws from the uniform box whose constants ``base``
    holds: :func:`philox_uniform_numpy`'s uniforms for ``seed``, scaled as ``Uniform``'s sampler scales them."""
    if not out.size:
        return
    kernel, per = _philox_uniform(out.dtype)
    key0, key1 = _seed_key(seed)
    launch_rows(kernel, -(-out.size // per), out, base, np.uint64(key0), np.uint64(key1))


# ---------------------------------------------------------------- CircularShift

@family
def _shift_kernels(ft, geom):
    one = ft(1)
    nan = ft(np.nan)

    @jit
    def shift(inp, angles, bound, period, direction, out):
        # +1: out = wrap(inp + shift) (sampling); -1: out = wrap(inp - shift), NaN for an input outside [-B, B]
        i = cuda.grid(1)
        if i < inp.shape[0]:
            wide = angles.size > 1
            for j in range(inp.shape[1]):
                s = angles[j] if wide else angles[0]
                v = inp[i, j]
                if direction > 0:
                    out[i, j] = circular_wrap(v + s, bound, period, one)
                elif v >= -bound and v <= bound:
                    out[i, j] = circular_wrap(v - s, bound, period, one)
                else:
                    out[i, j] = nan

    @jit
    def copy(src, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            for j in range(src.shape[1]):
                dst[i, j] = src[i, j]

    return shift, copy


def circular_shift_cuda(inp, angles, bound, period, direction, out):
    """:func:`~nflow_np.kernels.elementwise.circular_shift_numba` on the device (``bound``, ``period`` in the
    dtype)."""
    ft = inp.dtype.type
    launch_rows(_shift_kernels(inp.dtype)[0], inp.shape[0], inp, angles, ft(bound), ft(period), int(direction), out)


def circular_shift_backward_cuda(gout, gin, gshift, work=None):
    """The density pass's VJP: ``gin = gout``; ``gshift = -sum_i gout`` per coordinate (over everything for one
    angle)."""
    launch_rows(_shift_kernels(gout.dtype)[1], gout.shape[0], gout, gin)
    if gshift.size > 1:
        column_sums(gout, gshift, SUM, scale=-1.0, work=work)
    else:
        vector_sum(gout.reshape(gout.size), gshift, scale=-1.0, work=work)
