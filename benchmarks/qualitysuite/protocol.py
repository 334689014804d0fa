"""One cell of the suite: standardize, train one model on one side, score the test points."""

import time

import numpy as np

from .models import Budget, nflow_train, zuko_train


def standardize(split):
    mean = split.train.mean(0)
    std = split.train.std(0)
    std = np.where(std > 0, std, 1.0)
    f = lambda a: ((a - mean) / std).astype(np.float32)
    # an NLL of standardized points plus sum(log std) is the NLL in the data's units
    return f(split.train), f(split.val), f(split.test), float(np.log(std).sum())


def run_cell(split, model, side, budget=None, fit_options=None, **overrides):
    """Test NLL (data units, nats per point), its KL to the data where the density is known, seconds."""
    budget = budget or Budget()
    train, val, test, log_std = standardize(split)
    start = time.perf_counter()
    if side == "nflow_np":
        log_q, history = nflow_train(model, train, val, budget, fit_options, **overrides)
    else:
        log_q, history = zuko_train(model, train, val, budget)
    seconds = time.perf_counter() - start
    lq = log_q(test) - log_std
    lq = np.where(np.isfinite(lq), lq, -1e30)
    nll = -float(np.mean(lq)) + split.offset
    kl = entropy = None
    if split.log_p is not None:
        if getattr(split, "_log_p_test", None) is None:
            split._log_p_test = np.asarray(split.log_p(split.test), np.float64)
        lp = split._log_p_test
        entropy = -float(np.mean(lp))
        kl = float(np.mean(lp - lq))
    return dict(nll=nll, kl=kl, entropy=entropy, seconds=seconds, history=history)
