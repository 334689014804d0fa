"""What every implementation's runner shares: the timer, the repetition counts and the matmul probe."""

import time

import numpy as np

import workloads as wl


def timed(fn):
    """Seconds taken by one call of ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def w1_epochs(quick):
    # A quick run still trains the seed's flow, only for 10 epochs instead of 100.
    return 10 if quick else wl.SPECS["W1"]["epochs"]


def matmul_gflops(matmul, shapes, min_seconds=0.05, repeats=5):
    """Best float32 ``(m, k) @ (k, n)`` rate in GFLOP/s for each shape, ``matmul(a, b)`` doing the product.

    Best rather than median: the floor asks what this machine can do at its
    best, and interference only ever slows a sample down.
    """
    rates = {}
    for m, k, n in shapes:
        a, b = matmul.operands(m, k, n)
        matmul(a, b)
        number = 1
        while timed(lambda: [matmul(a, b) for _ in range(number)]) < min_seconds:
            number *= 2
        best = min(timed(lambda: [matmul(a, b) for _ in range(number)]) for _ in range(repeats)) / number
        rates[f"{m}x{k}@{k}x{n}"] = 2.0 * m * k * n / best / 1e9
    return rates


# The shapes the floor is built from: a square reference and W3's widest product (batch x hidden x hidden).
MATMUL_SHAPES = [(1024, 1024, 1024), (1024, 256, 256)]


class NumpyMatmul:
    @staticmethod
    def operands(m, k, n):
        rng = np.random.default_rng(0)
        return (rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32))

    def __call__(self, a, b):
        return a @ b
