"""Deterministic sums on the device: column sums of ``(n, m)`` arrays and sums of vectors.

Two stages: each block of stage one sums its own ``geometry().split_rows`` rows
and writes one partial per column; stage two adds the partials in a fixed order.
No atomics, so a sum comes out bit for bit the same on every run and a training
run is reproducible. Partials and the stage-two accumulator are float64: a sum
reads each value once, so the card's double-precision rate does not limit it.

Stage one reduces ``f(x[i, j])`` for one of the modes below, so the gradient
sums of the normalization layers need no temporary arrays.
"""

import numpy as np

from .device import blocks, cuda, dummy, family, geometry, jit, launch, launch_rows, scratch_or_default

__all__ = ["SUM", "PRODUCT", "CENTRED_SQUARE", "CENTRED_PRODUCT", "SQUARE", "column_sums", "vector_sum",
           "reduce_partials"]

# f(x, y, c): x; x * y; (x - c)^2; x * (y - c); x^2  (c: a per-column vector)
SUM, PRODUCT, CENTRED_SQUARE, CENTRED_PRODUCT, SQUARE = range(5)


@family
def _kernels(ft, geom):
    cols, rows = geom.reduce
    threads = geom.vector

    @jit
    def column_partials(x, y, centre, mode, split, partial):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        j = cuda.blockIdx.x * cols + tx
        s = cuda.blockIdx.y
        n = x.shape[0]
        m = x.shape[1]
        buf = cuda.shared.array((rows, cols), np.float64)
        acc = 0.0
        if j < m:
            for i in range(s * split + ty, min(n, (s + 1) * split), rows):
                v = x[i, j]
                if mode == PRODUCT:
                    v = v * y[i, j]
                elif mode == CENTRED_SQUARE:
                    v = v - centre[j]
                    v = v * v
                elif mode == CENTRED_PRODUCT:
                    v = v * (y[i, j] - centre[j])
                elif mode == SQUARE:
                    v = v * v
                acc += v
        buf[ty, tx] = acc
        cuda.syncthreads()
        step = rows // 2
        while step > 0:
            if ty < step:
                buf[ty, tx] += buf[ty + step, tx]
            cuda.syncthreads()
            step //= 2
        if ty == 0 and j < m:
            partial[s, j] = buf[0, tx]

    @jit
    def vector_partials(x, mode, split, partial):
        t = cuda.threadIdx.x
        s = cuda.blockIdx.x
        buf = cuda.shared.array(threads, np.float64)
        acc = 0.0
        for i in range(s * split + t, min(x.size, (s + 1) * split), threads):
            v = x[i]
            if mode == SQUARE:
                v = v * v
            acc += v
        buf[t] = acc
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if t < step:
                buf[t] += buf[t + step]
            cuda.syncthreads()
            step //= 2
        if t == 0:
            partial[s, 0] = buf[0]

    @jit
    def reduce_partials(partial, out, scale, shift, shift_scale, accumulate):
        j = cuda.grid(1)
        if j < out.size:
            acc = 0.0
            for s in range(partial.shape[0]):
                acc += partial[s, j]
            value = scale * acc + shift_scale * shift[0]
            if accumulate:
                value += out[j]
            out[j] = value

    return column_partials, vector_partials, reduce_partials


def reduce_partials(partial, out, scale=1.0, shift=None, shift_scale=0.0, accumulate=False):
    """``out[j] = scale * sum_s partial[s, j] + shift_scale * shift[0]`` (``+= `` with ``accumulate``).

    ``partial`` is ``(S, len(out))`` in any float dtype; ``shift`` a one-element float64 device vector.
    """
    launch_rows(_kernels(np.float64)[2], out.size, partial, out, float(scale),
                dummy(np.float64) if shift is None else shift, float(shift_scale), bool(accumulate))


def column_sums(x, out, mode=SUM, y=None, centre=None, scale=1.0, shift=None, shift_scale=0.0, accumulate=False,
                work=None):
    """``out[j] = scale * sum_i f(x[i, j], y[i, j], centre[j]) + shift_scale * shift[0]`` for ``x`` (n, m)."""
    n, m = x.shape
    geom = geometry()
    cols, rows = geom.reduce
    splits = blocks(n, geom.split_rows)
    partial = scratch_or_default(work).get("column_sums", splits * m, np.float64).reshape(splits, m)
    column_partials = _kernels(x.dtype)[0]
    launch(column_partials, (blocks(m, cols), splits), (cols, rows))(
        x, x if y is None else y, dummy(x.dtype) if centre is None else centre, mode, geom.split_rows, partial)
    reduce_partials(partial, out, scale, shift, shift_scale, accumulate)


def vector_sum(x, out, mode=SUM, scale=1.0, accumulate=False, work=None):
    """``out[0] = scale * sum_i f(x[i])`` (``SUM`` or ``SQUARE``) for a device vector ``x``."""
    geom = geometry()
    splits = blocks(x.size, geom.split_rows)
    partial = scratch_or_default(work).get("vector_sum", splits, np.float64).reshape(splits, 1)
    launch(_kernels(x.dtype)[1], splits, geom.vector)(x, mode, geom.split_rows, partial)
    reduce_partials(partial, out, scale, accumulate=accumulate)
