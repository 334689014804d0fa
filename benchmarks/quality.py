"""The quality suite: held-out NLL of nflow_np's ready-made flows beside zuko's, at one architecture and budget.

    python benchmarks/quality.py                       # everything (about an hour on 2 cores)
    python benchmarks/quality.py --quick               # a smoke run: small data, 3 epochs
    python benchmarks/quality.py --datasets two-moons teacher-8 --models RealNVP NSF
    python benchmarks/quality.py --sides nflow_np      # without the peer (no torch needed)
    python benchmarks/quality.py --sides nflow_np --models NSF NSF-res --res-hidden 40 40
                                                       # residual conditioners: 2 blocks of width 40
    python benchmarks/quality.py --models NSF NSF-AR --spline-parameterization bounded
    python benchmarks/quality.py --seeds 1 2 3 --peer-cache zuko.json
                                                       # reuse zuko's cells from an earlier run

Data sets (``qualitysuite/data.py``): the 2-D toys with their exact
densities, random teacher flows in 4-32 dimensions, an 8-D Student-t and an
8-D 20-component mixture, and scikit-learn's digits. Protocol
(``qualitysuite/protocol.py``): standardize by the training part, float32,
Adam, shuffled mini-batches, keep the best validation epoch; the budget
defaults to 5 transforms with (64, 64) ReLU conditioners, 20 epochs, batch
512, learning rate 1e-3. Each cell prints the test NLL in the data's units
(nats per point); ``KL`` is ``mean(log p - log q)`` on the test points where
the density p is known (the gap to the entropy, with less noise); ``vs zuko``
is nflow_np's NLL minus zuko's (negative: nflow_np better); ``s/ep`` the training time per epoch
(compilation and validation included).

zuko's side does not depend on nflow_np's code, so ``--peer-cache FILE``
keeps each of its cells (test NLL, KL, seconds) under a key made of the data
set, model, seed, budget, a hash of the split's arrays and the zuko and torch
versions; a later run with the same key reads the cell instead of training.
A change to the data, the budget or the peer's version makes a new key.
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qualitysuite import data  # noqa: E402
from qualitysuite.models import MODELS, RESIDUAL, RESIDUAL_MODELS, Budget  # noqa: E402
from qualitysuite.protocol import run_cell  # noqa: E402


def _fmt(v, width=9, digits=3):
    return f"{'-':>{width}s}" if v is None else f"{v:{width}.{digits}f}"


def _paired(results):
    """nflow_np's NLL minus zuko's per seed, their mean and its standard error (None for one seed)."""
    diffs = [a["nll"] - b["nll"] for a, b in zip(results["nflow_np"], results["zuko"])]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return diffs, mean, None
    var = sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)
    return diffs, mean, math.sqrt(var / len(diffs))


class PeerCache:
    """zuko's finished cells in a JSON file, keyed by everything that decides them (see the module's doc)."""

    def __init__(self, path):
        import torch
        import zuko
        self.path = path
        self.versions = f"zuko {zuko.__version__}, torch {torch.__version__}"
        self.cells = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.cells = json.load(f)

    def key(self, split, model, budget):
        digest = hashlib.sha256()
        for part in (split.train, split.val, split.test):
            digest.update(np.ascontiguousarray(part).tobytes())
        b = budget.__dict__
        fields = {k: b[k] for k in ("layers", "hidden", "epochs", "batch", "lr", "seed")}
        return json.dumps([split.name, model, fields, digest.hexdigest()[:16], self.versions], default=list)

    def get(self, key):
        return self.cells.get(key)

    def put(self, key, cell):
        self.cells[key] = {k: cell[k] for k in ("nll", "kl", "entropy", "seconds")}
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.cells, f, indent=0)
            os.replace(tmp, self.path)


def run(names, models, sides, budget, size, seeds, out=None, peer_cache=None):
    print(f"# budget: {budget.layers} transforms, hidden {budget.hidden} (residual: {budget.res_hidden}), "
          f"{budget.epochs} epochs, batch {budget.batch}, lr {budget.lr}; data {size}; seeds {seeds}; "
          f"nflow_np splines {budget.spline_parameterization}, affine clamp {budget.clamp_shape}", flush=True)
    header = f"{'data':13s}{'model':12s}{'params':>8s}{'entropy':>9s}" + "".join(
        f"{s + ' NLL':>13s}{'KL':>8s}{'s/ep':>7s}" for s in sides) + (
        f"{'vs zuko':>9s}" + (f"{'+-se':>7s}" if len(seeds) > 1 else "") if len(sides) == 2 else "")
    print(header)
    print("-" * len(header), flush=True)
    gaps = []
    records = []
    splits = {}       # each data set drawn once per seed; its exact test log-density computed once (see protocol)
    for name in names:
        for model in models:
            results = {s: [] for s in sides}
            entropies = {}       # per seed: each seed draws its own data (and its own teacher)
            for seed in seeds:
                if (name, seed) not in splits:
                    splits = {k: v for k, v in splits.items() if k[0] == name}     # one data set's at a time
                    splits[(name, seed)] = data.load(name, size, seed=seed)
                split = splits[(name, seed)]
                b = Budget(**{**budget.__dict__, "seed": seed})
                for side in sides:
                    if side == "zuko" and model.endswith(RESIDUAL):
                        results[side].append({"nll": float("nan"), "kl": None})     # nflow_np's conditioners only
                        continue
                    if side == "zuko" and peer_cache is not None:
                        key = peer_cache.key(split, model, b)
                        cell = peer_cache.get(key)
                        if cell is None:
                            cell = run_cell(split, model, side, b)
                            peer_cache.put(key, cell)
                    else:
                        cell = run_cell(split, model, side, b)
                    results[side].append(cell)
                    entropies[seed] = cell["entropy"]
            known = [e for e in entropies.values() if e is not None]
            entropy = sum(known) / len(known) if known else None
            history = results[sides[0]][0].get("history")
            n_params = getattr(history, "n_params", None)
            row = f"{name:13s}{model:12s}{'-' if n_params is None else n_params:>8}{_fmt(entropy)}"
            mean = {}
            for side in sides:
                mean[side] = sum(c["nll"] for c in results[side]) / len(seeds)
                kls = [c["kl"] for c in results[side]]
                row += f"{mean[side]:13.3f}" + _fmt(None if kls[0] is None else sum(kls) / len(kls), 8)
                seconds = [c["seconds"] for c in results[side] if "seconds" in c]
                row += _fmt(sum(seconds) / len(seconds) / budget.epochs if seconds else None, 7, 2)
            record = {"data": name, "model": model, "entropy": entropy, "seeds": list(seeds),
                      **{side: [c["nll"] for c in results[side]] for side in sides}}
            if len(sides) == 2 and not model.endswith(RESIDUAL):
                diffs, gap, se = _paired(results)
                gaps.append(gap)
                row += f"{gap:+9.3f}" + ("" if se is None else f"{se:7.3f}")
                record.update(gap=gap, gap_se=se)
            print(row, flush=True)
            records.append(record)
            if out is not None:        # rewritten after every cell, so a long run that is stopped keeps its cells
                with open(out, "w") as f:
                    json.dump({"budget": budget.__dict__, "size": size, "cells": records}, f, indent=1)
    if gaps:
        print(f"# vs zuko: mean {sum(gaps) / len(gaps):+.3f}, worst {max(gaps):+.3f} nats over {len(gaps)} cells")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and 3 epochs: check the script runs")
    parser.add_argument("--datasets", nargs="+", choices=data.ALL, default=data.ALL)
    parser.add_argument("--models", nargs="+", choices=MODELS + RESIDUAL_MODELS, default=MODELS,
                        help=f"'<model>{RESIDUAL}': the model with residual conditioners (nflow_np only)")
    parser.add_argument("--sides", nargs="+", choices=["nflow_np", "zuko"], default=["nflow_np", "zuko"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--res-hidden", type=int, nargs="+", default=[32, 32],
                        help="the residual conditioners of the '-res' models: one width per block, all equal")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="several seeds: each cell is the mean over them, and 'vs zuko' gets the standard "
                             "error of the paired per-seed differences")
    parser.add_argument("--spline-parameterization", choices=["softplus", "bounded"], default="bounded",
                        help="how nflow_np's NSF and NSF-AR map their networks' outputs to bins and slopes")
    parser.add_argument("--clamp-shape", choices=["rational", "tanh"], default="rational",
                        help="the log-scale clamp of nflow_np's RealNVP and MAF")
    parser.add_argument("--out", help="also write every cell's per-seed NLLs to this JSON file")
    parser.add_argument("--peer-cache", metavar="FILE",
                        help="read zuko's cells from this JSON file when their key matches, and add new ones")
    args = parser.parse_args()
    budget = Budget(layers=args.layers, hidden=tuple(args.hidden), epochs=3 if args.quick else args.epochs,
                    batch=args.batch, lr=args.lr, res_hidden=tuple(args.res_hidden),
                    spline_parameterization=args.spline_parameterization, clamp_shape=args.clamp_shape)
    run(args.datasets, args.models, args.sides, budget, "quick" if args.quick else "full", args.seeds,
        out=args.out, peer_cache=PeerCache(args.peer_cache) if args.peer_cache and "zuko" in args.sides
        else None)
