"""The ready-made flows beside zuko's on small real tables the quality suite does not hold, over many seeds.

    python benchmarks/realdata.py                       # wine and breast cancer, seeds 1-10 (about 15 minutes)
    python benchmarks/realdata.py --datasets wine --seeds 1 2 --clamp-shapes rational

scikit-learn's bundled wine (13 columns, 178 rows) and breast cancer (30 columns, 569 rows) tables, with a
uniform jitter of one step of each column's resolution (rounded values would otherwise be atoms), shuffled and
split 80/10/10 per seed. Both sides train under the quality suite's protocol (``qualitysuite.protocol.run_cell``:
standardized float32 data, Adam, the best validation epoch kept) at 5 layers of (64, 64), batch 64, 100 epochs:
the suite's budget of 20 epochs at batch 512 would be a handful of steps on tables this small. nflow_np runs once
per log-scale clamp shape for RealNVP and MAF, once for the others. Each line is the mean test NLL minus zuko's over the seeds (nats per row) with its
standard error; the test parts hold 18 and 57 rows, so seeds move a cell by nats.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qualitysuite.data import Split  # noqa: E402
from qualitysuite.models import Budget  # noqa: E402
from qualitysuite.protocol import run_cell  # noqa: E402

TABLES = {"wine": "load_wine", "breast-cancer": "load_breast_cancer"}
MODELS = ["RealNVP", "NICE", "MAF", "NSF", "NSF-AR"]
AFFINE = ("RealNVP", "MAF")


def table(name):
    from sklearn import datasets
    return getattr(datasets, TABLES[name])().data.astype(np.float64)


def resolution(x):
    """Each column's smallest step between distinct values."""
    return np.array([np.min(np.diff(np.unique(column))) for column in x.T])


def split(name, x, step, seed):
    rng = np.random.default_rng(seed)
    x = (x + rng.uniform(-0.5, 0.5, x.shape) * step)[rng.permutation(len(x))].astype(np.float32)
    a, b = int(0.8 * len(x)), int(0.9 * len(x))
    return Split(name, x[:a], x[a:b], x[b:])


def main(names, models, shapes, seeds, epochs, batch):
    print(f"# 5 layers, hidden (64, 64), {epochs} epochs, batch {batch}, lr 1e-3; seeds {seeds}", flush=True)
    for name in names:
        x = table(name)
        step = resolution(x)
        for model in models:
            gaps = {shape: [] for shape in (shapes if model in AFFINE else shapes[:1])}
            for seed in seeds:
                part = split(name, x, step, seed)
                budget = Budget(layers=5, hidden=(64, 64), epochs=epochs, batch=batch, lr=1e-3, seed=seed)
                peer = run_cell(part, model, "zuko", budget)["nll"]
                for shape in gaps:
                    extra = dict(clamp_shape=shape) if model in AFFINE else {}
                    gaps[shape].append(run_cell(part, model, "nflow_np", budget, **extra)["nll"] - peer)
            for shape, g in gaps.items():
                g = np.array(g)
                se = g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")
                label = f"clamp {shape}" if model in AFFINE else ""
                print(f"{name:14s}{model:9s}{label:16s}vs zuko {g.mean():+8.3f} ± {se:.3f} "
                      f"(median {np.median(g):+.3f})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(TABLES), default=sorted(TABLES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--clamp-shapes", nargs="+", choices=["rational", "tanh"], default=["rational", "tanh"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    main(args.datasets, args.models, args.clamp_shapes, args.seeds, args.epochs, args.batch)
