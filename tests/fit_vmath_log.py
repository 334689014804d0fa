"""Derives the polynomial coefficients of ``log_``/``log1p_`` in :mod:`nflow_np.kernels.vmath` (not a test).

Run ``python tests/fit_vmath_log.py``: it prints the coefficients pasted into vmath.py and the error of each fit.

The functions reduce ``x`` to ``2^k m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` and write, with ``f = m - 1`` and
``s = f / (2 + f)`` (so ``|s| <= 3 - 2 sqrt(2)``, ``z = s^2 <= 0.0295``)::

    log(m) = 2 atanh(s) = 2s + s R(z),   R(z) = 2z/3 + 2z^2/5 + 2z^3/7 + ...

and approximate ``R(z)`` by ``z P(z)``, ``P`` a polynomial of degree ``n - 1``. The result's relative error from
that is ``(R - zP) / 2`` (``log(m)`` is about ``2s``), so the fit minimizes the largest ``|R(z) - z P(z)|`` on
``[0, z_max]``: a Remez exchange in long double (64-bit significand), with ``R`` from its series, which converges
fast there. The error printed is that maximum over the dtype's half-ulp at 1 (``eps / 2``) divided by 2: the
relative error the polynomial alone adds to a result, in ulp; rounding in the evaluation adds more, which the
tests measure.
"""

import numpy as np

LD = np.longdouble
Z_MAX = (LD(3) - LD(2) * np.sqrt(LD(2))) ** 2       # s at m = sqrt(2) (and minus it at sqrt(1/2))


def series_r(z):
    """``R(z) = sum_{k >= 1} 2 z^k / (2k + 1)``, summed in long double to convergence for ``z <= Z_MAX``."""
    z = np.asarray(z, dtype=LD)
    total = np.zeros_like(z)
    power = z.copy()
    for k in range(1, 40):
        total += LD(2) * power / LD(2 * k + 1)
        power = power * z
    return total


def solve(a, b):
    """``a x = b`` by Gaussian elimination with partial pivoting, in long double (numpy.linalg has no long double)."""
    a = np.array(a, dtype=LD)
    b = np.array(b, dtype=LD)
    n = len(b)
    for c in range(n):
        p = c + int(np.argmax(np.abs(a[c:, c])))
        a[[c, p]] = a[[p, c]]
        b[[c, p]] = b[[p, c]]
        for r in range(c + 1, n):
            m = a[r, c] / a[c, c]
            a[r, c:] -= m * a[c, c:]
            b[r] -= m * b[c]
    x = np.zeros(n, dtype=LD)
    for r in range(n - 1, -1, -1):
        x[r] = (b[r] - np.dot(a[r, r + 1:], x[r + 1:])) / a[r, r]
    return x


def horner(coef, z):
    acc = np.zeros_like(np.asarray(z, dtype=LD)) + coef[-1]
    for c in coef[-2::-1]:
        acc = acc * z + c
    return acc


def remez(n, iterations=30, grid=200_001):
    """``P`` (``n`` coefficients, lowest degree first) minimizing ``max |R(z) - z P(z)|`` on ``[0, Z_MAX]``."""
    zs = np.linspace(LD(0), Z_MAX, grid, dtype=LD)[1:]
    rs = series_r(zs)
    # start from the Chebyshev extrema of (0, Z_MAX] (the weight z makes the error vanish at 0)
    i = np.arange(n + 1, dtype=LD)
    ref = Z_MAX * (LD(1) - np.cos(np.pi * (i + LD(1)) / LD(n + 1))) / LD(2)
    coef = None
    for _ in range(iterations):
        # z_i P(z_i) + (-1)^i E = R(z_i): n coefficients and the level E from n + 1 points
        # in t = z / Z_MAX, so the columns t^j are of one size (z^j is not: the system would be singular in
        # long double), then back to powers of z
        a = np.zeros((n + 1, n + 1), dtype=LD)
        t = ref / Z_MAX
        for j in range(n):
            a[:, j] = t ** (j + 1)
        a[:, n] = (-1.0) ** np.arange(n + 1)
        sol = solve(a, series_r(ref))
        coef = sol[:n] / Z_MAX ** np.arange(1, n + 1, dtype=LD)
        err = rs - zs * horner(coef, zs)
        # the exchange: the largest |err| in each run of one sign, n + 1 alternating extrema kept
        sign = np.sign(err)
        cuts = np.flatnonzero(sign[1:] != sign[:-1]) + 1
        runs = np.split(np.arange(err.size), cuts)
        peaks = [run[np.argmax(np.abs(err[run]))] for run in runs]
        # rounding noise where the error crosses zero makes short runs of tiny peaks: drop the smallest peak;
        # inside the list that leaves two neighbours of one sign, of which the larger stays
        while len(peaks) > n + 1:
            size = [abs(err[q]) for q in peaks]
            j = int(np.argmin(size))
            if j == 0 or j == len(peaks) - 1:
                del peaks[j]
            else:
                del peaks[j]
                del size[j]
                del peaks[j if size[j] < size[j - 1] else j - 1]
        if len(peaks) < n + 1:
            break
        new_ref = zs[np.array(peaks)]
        if np.allclose(new_ref.astype(np.float64), ref.astype(np.float64), rtol=0, atol=1e-15):
            ref = new_ref
            break
        ref = new_ref
    err = rs - zs * horner(coef, zs)
    return coef, float(np.max(np.abs(err)))


def rounded_error(coef, dtype):
    """The largest ``|R(z) - z P(z)|`` with the coefficients rounded to ``dtype`` (evaluated in long double)."""
    zs = np.linspace(LD(0), Z_MAX, 200_001, dtype=LD)
    c = [LD(dtype(x)) for x in coef]
    return float(np.max(np.abs(series_r(zs) - zs * horner(c, zs))))


def main():
    for dtype, n in ((np.float32, 3), (np.float64, 7)):
        eps = float(np.finfo(dtype).eps)
        for m in (n - 1, n):
            coef, level = remez(m)
            ulp = rounded_error(coef, dtype) / 2 / (eps / 2)
            print(f"{np.dtype(dtype).name}: {m} coefficients, max |R - zP| = {level:.3e} "
                  f"(rounded to {np.dtype(dtype).name}: {ulp:.3g} ulp of the result)")
        coef, _ = remez(n)
        digits = 9 if dtype == np.float32 else 17
        print("  chosen, z^1 first: " + ", ".join(f"{float(dtype(c)):.{digits}g}" for c in coef))


if __name__ == "__main__":
    main()
