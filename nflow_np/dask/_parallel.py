"""Data-parallel maximum likelihood on a Dask cluster: shards' gradients on the workers, Adam on the driver.

The data is cut into shards that stay on the workers. Every step the driver broadcasts the flat parameter vector;
each worker draws its part of the batch from its shard (rows in proportion to the shard's size, from a seed the
driver hands out), computes the mean NLL and its gradient with the compiled backend
(:func:`nflow_np.train.nll_and_grad`) and sends back ``(rows, loss, flat gradient, seconds)``. The driver averages
them weighted by rows (the gradient of the whole batch's mean NLL), takes one guarded Adam step (the rules
:func:`nflow_np.train.fit` applies to a rejected step) and goes on.
"""

import threading
import time
import uuid

import numpy as np

from .._validation import as_generator, is_dask_array
from ..kernels.backend import resolve_backend
from ..train._guard import Snapshot, Watch, guarded_step
from ..train.loops import History, modules, set_training
from ..train.losses import _check_flow, nll_and_grad
from ..train.optim import Adam, Optimizer
from ..io import from_bytes
from ._models import payload_of

__all__ = ["fit_distributed"]

_SESSIONS = {}
"""session id → this worker's private copy of the flow being trained (never the scoring cache's)."""
_LOCK = threading.Lock()


def _names(flow):
    return [name for name, _ in flow.parameters()]


def flatten(arrays, names):
    return np.concatenate([np.ravel(arrays[name]) for name in names])


def unflatten_into(flat, params, names):
    offset = 0
    for name in names:
        target = params[name]
        np.copyto(target, flat[offset:offset + target.size].reshape(target.shape))
        offset += target.size


def _session_flow(session, payload):
    with _LOCK:
        flow = _SESSIONS.get(session)
        if flow is None:
            flow = _SESSIONS[session] = from_bytes(payload.data, name=payload.name)
        return flow


def _drop_session(session):
    with _LOCK:
        _SESSIONS.pop(session, None)


def _shard_step(payload, session, theta, shard, seed, rows, backend):
    """One worker's part of a step: ``(rows, mean loss, flat gradient, compute seconds)``."""
    start = time.perf_counter()
    flow = _session_flow(session, payload)
    names = _names(flow)
    unflatten_into(theta, dict(flow.parameters()), names)
    x, context = shard if isinstance(shard, tuple) else (shard, None)
    pick = np.random.default_rng(seed).choice(len(x), size=rows, replace=rows > len(x))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, grads = nll_and_grad(flow, x[pick], backend=backend, context=None if context is None else context[pick])
    return rows, float(loss), flatten(grads, names), time.perf_counter() - start


def _shards(data, context, n_shards):
    """``[(rows, context rows or None), ...]`` on the driver (ndarray or memmap data, cut into equal shards)."""
    bounds = np.linspace(0, len(data), n_shards + 1).astype(int)
    return [(np.ascontiguousarray(data[a:b]), None if context is None else np.ascontiguousarray(context[a:b]))
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def fit_distributed(flow, data, *, client=None, steps=100, batch_size=8192, lr=1e-3, optimizer=None, rng=None,
                    backend=None, context=None, n_shards=None, log_every=10, callback=None, timings=None):
    """Fit ``flow`` by maximum likelihood with each batch's gradient computed in shards on a Dask cluster.

    Parameters
    ----------
    flow : TransformedDistribution
        Trained in place (its parameters hold the last step's at the end).
        BatchNorm layers (batch statistics) are refused: shards would
        normalize by different statistics; ActNorm initializes from the
        first batch on the driver before the shards start.
    data : ndarray, np.memmap or dask.array.Array, shape (n,) + event_shape
        An array is cut into ``n_shards`` shards sent to the workers once; a
        Dask array is persisted on the cluster and its blocks are the shards.
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    steps : int
        Adam steps.
    batch_size : int
        Rows per step, split over the shards in proportion to their sizes.
    lr, optimizer
        As for :func:`nflow_np.train.fit` (the default is Adam).
    rng : Generator or int
        Each step's per-shard row seeds.
    backend : {"numpy", "numba"}, optional
        Used on the workers (default :func:`nflow_np.get_backend`).
    context : array, optional
        For a conditional flow: one row per data row (cut with the data).
    n_shards : int, optional
        Default: the number of workers.
    log_every : int
        ``History.train_loss`` holds the mean loss of every ``log_every`` steps.
    callback : callable, optional
        ``callback(step, history)`` after each logged window; True stops.
    timings : dict, optional
        Filled with per-step lists: ``"step"`` (wall seconds of the whole
        step), ``"compute"`` (the slowest shard's compute seconds) and
        ``"update"`` (the driver's averaging and Adam step).

    Returns
    -------
    History
    """
    where = "fit_distributed"
    _check_flow(flow, where)
    from distributed import get_client, wait
    client = get_client() if client is None else client
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("log_every", log_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{where}: {name} must be an int >= {low}; got {value!r}")
    if any(hasattr(m, "running_mean") for m in modules(flow)):
        raise ValueError(f"{where}: the flow has BatchNorm layers, which normalize by each batch's statistics; "
                         f"shards of a batch would see different ones. Use ActNorm, or fit on one machine")
    backend = resolve_backend(backend, where)
    rng = as_generator(rng)
    workers = list(client.scheduler_info()["workers"])
    n_shards = len(workers) if n_shards is None else int(n_shards)
    if n_shards < 1:
        raise ValueError(f"{where}: n_shards must be >= 1 (and the cluster needs a worker)")
    if is_dask_array(data):
        if context is not None:
            raise ValueError(f"{where}: with a Dask array, stack the context into the data's blocks or pass "
                             f"ndarrays; got a context beside a Dask array")
        blocks = [data.blocks[i] for i in range(data.numblocks[0])]
        sizes = [int(s) for s in data.chunks[0]]
        futures = client.compute(blocks)      # each block computed where it lands, and kept there
        first = np.asarray(futures[0].result()[:batch_size])
        first_context = None
    else:
        x = np.asarray(data) if not isinstance(data, np.memmap) else data
        flow._prepare(np.asarray(x[:1]), where)
        ctx = None if context is None else np.asarray(context)
        shards = _shards(x, ctx, n_shards)
        sizes = [len(s[0]) for s in shards]
        # one future per shard (a list scatters its items: the tuple stays whole); hash=False: a fresh key, which
        # an earlier fit releasing the same data cannot forget under this one
        futures = [client.scatter([s], workers=[workers[i % len(workers)]], hash=False)[0]
                   for i, s in enumerate(shards)]
        first = shards[0][0][:batch_size]
        first_context = None if ctx is None else shards[0][1][:batch_size]
    for m in modules(flow):      # ActNorm takes its statistics from a first batch, once, here
        if hasattr(m, "initialized") and not m.initialized:
            flow.bijector._inverse_and_log_det(first, *flow._context_args(first_context, first, where))
            break
    set_training(flow, False)
    params = dict(flow.parameters())
    names = list(params)
    if optimizer is None:
        optimizer = Adam(params.items(), lr=lr)
    elif not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: optimizer must be an nflow_np Optimizer; got {type(optimizer).__name__}")
    payload = client.scatter(payload_of(flow, where), broadcast=True, hash=False)
    session = uuid.uuid4().hex
    total = sum(sizes)
    share = np.floor(np.asarray(sizes) / total * batch_size).astype(int)
    share[np.argmax(sizes)] += batch_size - share.sum()
    history, snapshot, watch = History(), Snapshot(params), Watch()
    window = []
    timings = {} if timings is None else timings
    for key in ("step", "compute", "update"):
        timings.setdefault(key, [])
    started = time.perf_counter()
    try:
        wait(futures)
        for step in range(steps):
            t0 = time.perf_counter()
            theta = client.scatter(flatten(params, names), broadcast=True, hash=False)
            seeds = rng.integers(2 ** 63, size=len(futures))
            parts = client.gather([client.submit(_shard_step, payload, session, theta, shard, int(seed), int(k),
                                                 backend, pure=False)
                                   for shard, seed, k in zip(futures, seeds, share) if k > 0])
            t1 = time.perf_counter()
            rows = np.array([p[0] for p in parts], dtype=np.float64)
            loss = float(np.dot(rows, [p[1] for p in parts]) / rows.sum())
            flat = sum(r * p[2] for r, p in zip(rows, parts)) / rows.sum()
            grads = {}
            offset = 0
            for name in names:
                grads[name] = flat[offset:offset + params[name].size].reshape(params[name].shape)
                offset += params[name].size
            if guarded_step(optimizer, loss, grads, snapshot, history, watch):
                window.append(loss)
            t2 = time.perf_counter()
            timings["step"].append(t2 - t0)
            timings["compute"].append(max(p[3] for p in parts))
            timings["update"].append(t2 - t1)
            if (step + 1) % log_every == 0 or step == steps - 1:
                history.train_loss.append(float(np.mean(window)) if window else np.nan)
                history.lr.append(optimizer.lr)
                window = []
                if callback is not None and callback(step, history):
                    history.stopped_early = True
                    break
    finally:
        client.run(_drop_session, session)
        history.wall_time = time.perf_counter() - started
    if history.steps == 0:
        raise RuntimeError(f"{where}: every step was rejected ({history.rejected_steps}): the loss or its gradient "
                           f"was not finite; standardize the data or lower lr")
    return history
