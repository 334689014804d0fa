"""Flows on scikit-learn's 8x8 digits (64-D), dequantized: a benchmark, not a test.

    python benchmarks/digits.py                 # NSF (coupling and autoregressive), RealNVP, MAF: 60 epochs
    python benchmarks/digits.py --quick         # a smoke run: 3 epochs
    python benchmarks/digits.py --models NSF --epochs 200

The data: ``sklearn.datasets.load_digits`` (1797 images, 17 grey levels),
dequantized with uniform noise to ``u = (pixel + U(0, 1)) / 17`` in (0, 1),
mapped through ``logit(a + (1 - 2a) u)`` with ``a = 0.05`` and standardized
with the training set's mean and standard deviation. A fixed 80/20 split
(seeded) gives 1437 training and 360 test images; 10% of the training images
are held out for best-epoch selection.

Reported on the test images: the NLL of the flow in the dequantized space of
``u`` (nats per image, the logit and the standardization's log-dets added
back), and the matching bound on the discrete pixels in bits per dimension,
``(NLL_u + 64 log 17) / (64 log 2)``: a model that knows nothing, uniform over
the 17 levels, scores ``log2 17 = 4.09``.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nflow_np import flows  # noqa: E402
from nflow_np.train import fit  # noqa: E402

ALPHA = 0.05
LEVELS = 17
# Sizes of 150-210k parameters: with 1293 training images, wider models overfit within a few epochs
# (best-epoch restore then keeps an early, worse model).
MODELS = {
    "NSF": lambda: flows.NSF(64, n_layers=6, bins=8, bound=5.0, hidden=(32, 32), permute="random", rng=0),
    "NSF-AR": lambda: flows.NSF(64, n_layers=3, bins=8, bound=5.0, hidden=(48,), autoregressive=True, rng=0),
    "RealNVP": lambda: flows.RealNVP(64, n_layers=10, hidden=(96, 96), permute="random", rng=0),
    "MAF": lambda: flows.MAF(64, n_layers=5, hidden=(128, 128), rng=0),
}


def load(seed=0):
    """Dequantized, logit-transformed, standardized train/test images and what undoes the transforms."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    n_train = int(0.8 * len(pixels))
    u = (pixels + rng.uniform(size=pixels.shape)) / LEVELS
    v = ALPHA + (1.0 - 2.0 * ALPHA) * u
    y = np.log(v) - np.log1p(-v)
    # log|dy/du| per image: the logit's derivative times the affine squeeze
    log_dy_du = (np.log(1.0 - 2.0 * ALPHA) - np.log(v) - np.log1p(-v)).sum(axis=1)
    train, test = order[:n_train], order[n_train:]
    mean, std = y[train].mean(axis=0), y[train].std(axis=0) + 1e-6
    z = (y - mean) / std
    return z[train], z[test], log_dy_du[test] - np.log(std).sum()


def run(models, epochs, batch_size, lr):
    train, test, correction = load()
    print(f"# digits: {len(train)} training and {len(test)} test images, 64-D; {epochs} epochs, batch {batch_size}")
    header = f"{'model':10s}{'params':>10s}{'NLL u (nats)':>14s}{'bits/dim':>10s}{'best epoch':>12s}{'time (s)':>10s}"
    print(header)
    print("-" * len(header))
    for name in models:
        flow = MODELS[name]()
        count = sum(a.size for _, a in flow.parameters())
        start = time.perf_counter()
        history = fit(flow, train, epochs=epochs, batch_size=batch_size, lr=lr, validation_split=0.1, rng=1)
        seconds = time.perf_counter() - start
        nll_u = -float(np.mean(flow.log_prob(test) + correction))
        bits = (nll_u + 64 * np.log(LEVELS)) / (64 * np.log(2.0))
        print(f"{name:10s}{count:10d}{nll_u:14.2f}{bits:10.3f}{history.best_epoch + 1:12d}{seconds:10.1f}",
              flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs: check the script runs")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    run(args.models, 3 if args.quick else args.epochs, args.batch_size, args.lr)
