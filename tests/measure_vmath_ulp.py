"""Prints the largest error, in ulp, of each vmath function in each dtype over many samples (not a test).

``python tests/measure_vmath_ulp.py [n]``: the samplers of ``tests/test_vmath.py`` with ``n`` per part (default
1e6, about 3e6 in all), compiled, against the long-double NumPy reference. ``python tests/measure_vmath_ulp.py
float32``: log_ and log1p_ on every float32 of the ranges where their polynomial's argument is largest, and on
every 61st bit pattern (some minutes). The bounds documented in :mod:`nflow_np.kernels.vmath` were measured so.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_vmath as T  # noqa: E402


def main(n):
    for name, ref_fn, sampler in T.CASES:
        for dtype in (np.float32, np.float64):
            x = sampler(dtype, n)
            out = np.empty_like(x)
            T._loop(name)(x, out)
            with np.errstate(all="ignore"):
                ref = ref_fn(x.astype(T.LD))
                err, _ = T._ulp_error(out, ref, dtype)
            i = int(np.argmax(err))
            print(f"{name:7s} {np.dtype(dtype).name}: max {err.max():.3f} ulp over {x.size} samples "
                  f"(at x = {x[i]!r})")


def _float32_run(name, ref_fn, bits, label):
    apply = T._loop(name)
    worst, at = 0.0, None
    for start in range(0, bits.size, 1 << 23):
        x = bits[start:start + (1 << 23)].view(np.float32)
        out = np.empty_like(x)
        apply(x, out)
        with np.errstate(all="ignore"):
            err, ref_d = T._ulp_error(out, ref_fn(x.astype(T.LD)), np.float32)
        assert np.array_equal(np.isnan(out), np.isnan(ref_d)) and np.array_equal(np.isinf(out), np.isinf(ref_d))
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, at = float(err[i]), x[i]
    print(f"{name:7s} float32, {label}: max {worst:.3f} ulp over {bits.size} values (at x = {at!r})")


def float32_ranges():
    def span(lo, hi, step=1):
        return np.arange(lo, hi, step, dtype=np.int64).astype(np.uint32).view(np.int32)
    _float32_run("log_", np.log, span(0x3e800000, 0x40800000), "every value in [0.25, 4)")
    _float32_run("log_", np.log, span(0, 1 << 32, 61), "every 61st bit pattern")
    _float32_run("log1p_", np.log1p, span(0xbb800000, 0xbf800001), "every value in [-1, -2^-8]")
    _float32_run("log1p_", np.log1p, span(0x3b800000, 0x40800000), "every value in [2^-8, 4)")
    _float32_run("log1p_", np.log1p, span(0, 1 << 32, 61), "every 61st bit pattern")


if __name__ == "__main__":
    if sys.argv[1:] == ["float32"]:
        float32_ranges()
    else:
        main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000)
