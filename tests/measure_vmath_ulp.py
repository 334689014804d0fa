"""Prints the largest error, in ulp, of each vmath function in each dtype over many samples (not a test).

``python tests/measure_vmath_ulp.py [n]``: the samplers of ``tests/test_vmath.py`` with ``n`` per part (default
1e6, about 4e6 in all), compiled, against the long-double NumPy reference. The bounds documented in
:mod:`nflow_np.kernels.vmath` were measured so.
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


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000)
