"""Fitting a flow to a density: the reverse KL (variational inference), amortized over contexts, optionally
mixed with the forward KL from samples of the target (``fit_to_target``)."""

import sys
import time

import numpy as np

from .._validation import as_float_array, as_generator
from ._guard import Snapshot, guarded_step, restore_kept
from .loops import _begin, _finish, set_training
from .losses import _check_flow, _check_forward_weight, _check_reparameterizable, _mixed_kl


class _RowStream:
    """Row indices drawn in passes: the next ``k`` of a sequence of random permutations of ``range(n)``, a fresh
    permutation from ``rng`` whenever one is used up (so over ``n / k`` calls every row comes up equally often)."""

    def __init__(self, n, rng):
        self.n, self.rng = n, rng
        self.order, self.pos = rng.permutation(n), 0

    def take(self, k):
        parts = []
        while k > 0:
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            m = min(k, self.n - self.pos)
            parts.append(self.order[self.pos:self.pos + m])
            self.pos += m
            k -= m
        return np.concatenate(parts)


def _rows(values, flow, where, argname, width):
    """``values`` as ``(m, width)`` rows of the flow's dtype (one row ``(width,)`` becomes ``(1, width)``)."""
    arr = as_float_array(values, flow.dtype, where, argname)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width or not len(arr):
        raise ValueError(f"{where}: {argname} must have shape (m, {width}) (one context per row) or ({width},); "
                         f"got shape {np.shape(values)}")
    return np.ascontiguousarray(arr)


def fit_to_target(flow, log_prob_fn, *, steps=1000, n_samples=256, lr=1e-3, optimizer=None, grad_fn=None,
                  rng=None, log_every=50, callback=None, progress=False, clip_norm=None, context=None,
                  samples=None, forward_weight=None, batch_size=None, samples_context=None, backend=None):
    """Fit ``flow`` to an unnormalized density by minimizing the reverse KL (maximizing the ELBO).

    Each step draws ``n_samples`` base points, pushes them forward, and
    follows the gradient of ``mean(log q(x) - log_prob_fn(x))`` through the
    reparameterized samples. ``grad_fn(x)`` is the gradient of ``log_prob_fn``
    (finite differences when not given). Returns a ``History`` whose
    ``train_loss`` holds the mean loss of every ``log_every`` steps; the
    parameters with the best such mean are kept, and restored (in evaluation
    mode) also when anything raises during training.

    A step whose loss or gradient is not finite is skipped and the learning
    rate halved (counted in ``History.rejected_steps``), as in :func:`fit`;
    among them the steps where ``log_prob_fn`` was not finite at a sample
    (-inf outside the target's support, NaN where it is undefined; counted in
    ``History.target_rejected_steps`` too). Those samples are not simply left
    out: the reverse KL is infinite there, and a loss over the other samples
    alone would reward the flow for moving its mass out of the support. A
    target with a bounded support needs a flow whose samples stay in it.

    **Amortized (conditional) fit.** A conditional flow (built with
    ``context=k``) fits a family of targets p(x | c) at once:
    ``log_prob_fn(x, c)`` and ``grad_fn(x, c)`` take the samples with one
    context row each, and the loss is ``mean(log q(x | c) - log p~(x | c))``,
    a Monte Carlo estimate of ``E_c[KL(q(. | c) || p(. | c))]`` up to
    ``E_c[log Z(c)]``. ``context`` is an ``(m, k)`` array of contexts, or one
    row ``(k,)`` for all samples. The scheme: each step takes the next
    ``n_samples`` row indices of a sequence of random permutations of
    ``range(m)`` (a fresh permutation from ``rng`` whenever one is used up,
    so all contexts come up equally often, each once per ``m / n_samples``
    steps), and draws one base point per context row. ``rng`` draws the
    permutations and the base points, in that order.

    **Mixed with the forward KL.** Given ``samples`` of the target (say from
    MCMC or simulation), each step also takes the next ``batch_size``
    (default ``n_samples``) rows of ``samples`` by the same permutation scheme
    (their own stream, drawn after the contexts), and minimizes
    ``forward_weight * mean(-log q(samples)) + (1 - forward_weight) * reverse KL``
    (:func:`mixed_kl_and_grad`, as the maximum-likelihood plus KL training of
    Boltzmann generators). The forward term covers every mode the samples
    visit, which the mode-seeking reverse KL alone can miss. ``forward_weight``
    in [0, 1] must be given with ``samples``; 1 is maximum likelihood alone
    (the target is then not evaluated). A conditional flow needs
    ``samples_context``, one context row per sample. ``backend`` applies to
    the forward term's passes (the reverse KL runs the bijectors' NumPy
    passes). ``History.train_loss`` then records the mixed loss.

    Raises
    ------
    RuntimeError
        When every step was rejected: the flow is left as it was.

    References
    ----------
    D. Rezende, S. Mohamed, "Variational inference with normalizing flows", ICML 2015.
    F. Noé, S. Olsson, J. Köhler, H. Wu, "Boltzmann generators", Science 365 (2019).
    """
    where = "fit_to_target"
    _check_flow(flow, where)
    if not callable(log_prob_fn):
        raise TypeError(f"{where}: log_prob_fn must be callable")
    beta = 0.0 if samples is None and forward_weight is None else _weight(forward_weight, samples, where)
    if beta < 1.0:
        _check_reparameterizable(flow, where)
    k = flow.context_size
    if k and context is None and beta < 1.0:
        raise ValueError(f"{where}: the flow is conditional (context size {k}); pass context= the contexts to fit "
                         f"at, an array of shape (m, {k}) or ({k},), and a target that takes them: "
                         f"log_prob_fn(x, context)")
    if not k and (context is not None or samples_context is not None):
        raise ValueError(f"{where}: the flow is unconditional (built without a context), so it takes no context or "
                         f"samples_context")
    rng = as_generator(rng)
    contexts = None if context is None or beta == 1.0 else _rows(context, flow, where, "context", k)
    source = None
    if beta > 0.0:
        source = _samples_source(flow, samples, samples_context, batch_size or n_samples, where)
    optimizer, history, snapshot, best = _begin(flow, optimizer, lr, clip_norm, where)
    initial = Snapshot(best.params)
    start = time.perf_counter()
    context_stream = None if contexts is None or len(contexts) == 1 else _RowStream(len(contexts), rng)
    sample_stream = None if source is None else _RowStream(len(source[0]), rng)

    def draw():
        """This step's context rows for the reverse KL, and its samples with their context rows."""
        rows = None if contexts is None else contexts[0] if context_stream is None else \
            contexts[context_stream.take(n_samples)]
        if sample_stream is None:
            return rows, None, None
        data, data_context, size = source
        pick = sample_stream.take(size)
        return rows, data[pick], None if data_context is None else data_context[pick]

    try:
        _target_steps(flow, log_prob_fn, steps, n_samples, optimizer, grad_fn, rng, log_every, callback, progress,
                      history, snapshot, best, draw, beta, backend)
    except BaseException:
        restore_kept(history, best, initial, ())
        set_training(flow, False)
        if progress:
            print(file=sys.stderr)
        raise
    if history.steps == 0:
        restore_kept(history, None, initial, ())
        set_training(flow, False)
        if progress:
            print(file=sys.stderr)
        raise RuntimeError(
            f"fit_to_target: every step was rejected ({history.rejected_steps} steps, {history.target_rejected_steps} "
            f"of them because log_prob_fn was not finite at a sample), so the flow was left unchanged: log_prob_fn "
            f"must be finite wherever the flow puts samples (a target with a bounded support needs a flow whose "
            f"samples stay in it), and the loss and its gradient finite (else lower lr)")
    return _finish(flow, history, best, start, progress)


def _weight(forward_weight, samples, where):
    if forward_weight is None:
        raise ValueError(f"{where}: samples were given without forward_weight; pass forward_weight= in [0, 1], the "
                         f"weight of their negative log-likelihood against the reverse KL's 1 - forward_weight")
    beta = _check_forward_weight(forward_weight, where)
    if beta > 0.0 and samples is None:
        raise ValueError(f"{where}: forward_weight={forward_weight} needs samples= of the target to weigh")
    return beta


def _samples_source(flow, samples, samples_context, size, where):
    """The samples, their context rows (None when unconditional) and the number drawn per step."""
    data = as_float_array(samples, flow.dtype, where, "samples")
    if data.ndim < 1 or not len(data):
        raise ValueError(f"{where}: samples must be an array of points, shape (m, ...); got shape {data.shape}")
    flow._prepare(data[:1], where)
    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"{where}: batch_size must be a positive int; got {size!r}")
    rows = None
    if flow.context_size:
        if samples_context is None:
            raise ValueError(f"{where}: the flow is conditional; pass samples_context=, one context row per sample, "
                             f"shape ({len(data)}, {flow.context_size})")
        rows = _rows(samples_context, flow, where, "samples_context", flow.context_size)
        if len(rows) != len(data):
            raise ValueError(f"{where}: samples_context must have one row per sample ({len(data)}); got {len(rows)}")
    return data, rows, min(int(size), len(data))


def _target_steps(flow, log_prob_fn, steps, n_samples, optimizer, grad_fn, rng, log_every, callback, progress,
                  history, snapshot, best, draw, beta, backend):
    """The steps of :func:`fit_to_target`, with its best-state bookkeeping."""
    best_loss = np.inf
    window = []
    set_training(flow, True)
    for step in range(steps):
        rows, data, data_context = draw()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, grads, target_finite = _mixed_kl(flow, log_prob_fn, data, n_samples, beta, rng, grad_fn, None, rows,
                                                   data_context, backend, refuse_non_finite=False)
            history.target_rejected_steps += int(not target_finite)
            accepted = guarded_step(optimizer, loss, grads, snapshot, history)
        if accepted:
            window.append(loss)
        if (step + 1) % log_every == 0 or step == steps - 1:
            mean = float(np.mean(window)) if window else np.nan
            window = []
            history.train_loss.append(mean)
            history.lr.append(optimizer.lr)
            if np.isfinite(mean) and mean < best_loss:
                best_loss = mean
                history.best_epoch = len(history.train_loss) - 1
                best.save()
            if progress:
                print(f"\rstep {step + 1}/{steps}  loss {mean:.4f}", end="", file=sys.stderr, flush=True)
            if callback is not None and callback(step, history):
                history.stopped_early = True
                break
