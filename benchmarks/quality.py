"""Held-out NLL of the ready-made flows on the 2-D toy datasets (a benchmark, not a test).

    python benchmarks/quality.py            # the full table (several minutes on 2 cores)
    python benchmarks/quality.py --quick    # a smoke run with tiny budgets
    python benchmarks/quality.py --models RealNVP NSF --datasets checkerboard two-spirals

Every model trains with the same budget and seeds: Adam, batch 256, a 10%
validation split with best-epoch restore; NLL is measured on a fresh
held-out sample. Where the density is known in closed form, its entropy (the
best achievable NLL) is printed beside it. RealNVP and the coupling NSF have
about the same number of parameters (35.3k and 34.7k), so their columns
compare the transforms, not the model sizes; the first line of the table
gives every model's count.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nflow_np import datasets, flows  # noqa: E402
from nflow_np.train import fit  # noqa: E402

DATASETS = ["two-moons", "8gaussians", "checkerboard", "two-spirals", "rings", "bimodal"]
MODELS = {
    "RealNVP": lambda: flows.RealNVP(2, n_layers=8, hidden=(64, 64), rng=0),
    "NICE": lambda: flows.NICE(2, n_layers=8, hidden=(64, 64), rng=0),
    "MAF": lambda: flows.MAF(2, n_layers=5, hidden=(64, 64), rng=0),
    "NSF": lambda: flows.NSF(2, n_layers=6, bins=8, hidden=(64, 64), rng=0),
    "NSF-AR": lambda: flows.NSF(2, n_layers=5, bins=8, hidden=(64, 64), autoregressive=True, rng=0),
}


def _count(flow):
    return sum(array.size for _, array in flow.parameters())


def run(quick=False, models=None, names=None):
    models = {m: MODELS[m] for m in (models or MODELS)}
    n_train, n_test, epochs = (2000, 2000, 3) if quick else (10000, 20000, 30)
    header = f"{'dataset':14s}" + "".join(f"{m:>12s}" for m in models) + f"{'entropy':>10s}{'time (s)':>10s}"
    print(header)
    print("-" * len(header))
    print(f"{'(parameters)':14s}" + "".join(f"{_count(build()):12d}" for build in models.values()))
    for name in names or DATASETS:
        train = datasets.load(name, n_train, rng=1)
        test = datasets.load(name, n_test, rng=2)
        row = f"{name:14s}"
        start = time.perf_counter()
        for label, build in models.items():
            flow = build()
            fit(flow, train, epochs=epochs, batch_size=256, lr=1e-3, validation_split=0.1, rng=3)
            try:
                nll = -float(flow.log_prob(test).mean())
            except ValueError:
                nll = float("nan")
            row += f"{nll:12.3f}"
        try:
            entropy = f"{datasets.true_entropy(name):10.3f}"
        except ValueError:
            entropy = f"{'-':>10s}"
        print(row + entropy + f"{time.perf_counter() - start:10.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="a subset of the models")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help="a subset of the datasets")
    args = parser.parse_args()
    run(args.quick, args.models, args.datasets)
