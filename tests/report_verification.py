"""Print the worst errors check_bijector sees for every registered bijector.

    python tests/report_verification.py

Errors are relative to max(1, |expected|), taken at points where the
comparison is not swamped by rounding noise (see nflow_np.testing).
"""

import os
import sys

import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bijector_cases import CASES  # noqa: E402
from nflow_np.testing import check_bijector  # noqa: E402


def main():
    print(f"{'bijector':26s} {'log-det f64':>12s} {'log-det f32':>12s} {'worst VJP f64':>14s}")
    for name in sorted(CASES):
        row = []
        vjp = 0.0
        for dtype in (np.float64, np.float32):
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            case = CASES[name]
            bijector = case.build(rng, dtype)
            x = case.draw(bijector, rng, dtype, 64)
            # edge rows apart from the bulk, as in test_bijectors
            reports = [check_bijector(bijector, part) for part in (x[:2], x[2:])]
            row.append(max(r["log_det_vs_jacobian"] for r in reports))
            if dtype == np.float64:
                vjp = max(v for r in reports for k, v in r.items() if "vjp" in k)
        print(f"{name:26s} {row[0]:12.2e} {row[1]:12.2e} {vjp:14.2e}")


if __name__ == "__main__":
    main()
