"""Training loops: maximum likelihood on data (``fit``); the reverse KL to a target is in :mod:`.variational`."""

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .._validation import as_float_array, as_generator
from ..kernels.backend import backend as use_backend
from ..kernels.backend import resolve_backend
from ..kernels.scalar import loss_diverged
from ._average import ParameterAverage, check_average
from ._guard import Snapshot, Watch, guarded_step, plain, restore_kept, verified_state
from .losses import _check_flow, nll_and_grad
from .optim import Adam, Optimizer, _clip_norm, _real
from .schedules import as_schedule


@dataclass
class History:
    """What happened during training.

    ``train_loss`` and ``val_loss`` hold one mean loss per epoch (per
    ``log_every`` steps for ``fit_to_target``); ``rejected_steps`` counts
    steps that were skipped (the learning rate was halved each time): their
    loss or gradient was not finite, their update would have left a
    parameter non-finite, or their loss had diverged; ``diverged_steps``
    counts those of them rejected by the divergence rule (see :func:`fit`);
    ``target_rejected_steps`` those of ``fit_to_target`` rejected because the
    target's log-density was not finite at a sample; ``best_epoch`` is the
    epoch whose parameters were kept. With ``fit``'s ``average``, ``averaged``
    says per validated epoch whether the parameters' moving average scored
    better than the parameters themselves (``val_loss`` holds the better score,
    and that state is the epoch's candidate for keeping).
    """

    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    averaged: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    steps: int = 0
    rejected_steps: int = 0
    diverged_steps: int = 0
    target_rejected_steps: int = 0
    best_epoch: int = -1
    wall_time: float = 0.0
    stopped_early: bool = False

    @property
    def epochs(self):
        return len(self.train_loss)


def modules(obj):
    """Every bijector and distribution inside a flow, depth first."""
    yield obj
    for attr in ("distribution", "bijector"):
        child = getattr(obj, attr, None)
        if child is not None:
            yield from modules(child)
    children = getattr(obj, "_children", None)
    if callable(children):
        for _, child in children():
            if child is not getattr(obj, "bijector", None):
                yield from modules(child)


def set_training(flow, training):
    """Switch layers with a training mode (BatchNorm) to training or evaluation."""
    for m in modules(flow):
        if hasattr(m, "training"):
            m.training = bool(training)


def _state_arrays(flow, params):
    """Parameters plus non-trainable state (BatchNorm's running statistics), by name."""
    arrays = dict(params)
    for i, m in enumerate(modules(flow)):
        buffers = getattr(m, "buffers", None)
        if callable(buffers):
            for key, value in buffers():
                arrays[f"buffer{i}.{key}"] = value
    return arrays


def _progress_line(epoch, epochs, train, val, steps_per_s):
    val_text = f"  val {val:.4f}" if val is not None else ""
    return f"\repoch {epoch + 1}/{epochs}  train {train:.4f}{val_text}  {steps_per_s:.0f} steps/s"


def _begin(flow, optimizer, lr, clip_norm, where):
    """The optimizer, an empty History, the per-step snapshot and the best-state snapshot (both of the parameters
    and the buffers)."""
    params = dict(flow.parameters())
    if optimizer is None:
        optimizer = Adam(params.items(), lr=lr, clip_norm=clip_norm)
    elif not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: optimizer must be an nflow_np Optimizer; got {type(optimizer).__name__}")
    state = _state_arrays(flow, params)
    return optimizer, History(), Snapshot(state), Snapshot(state)


def _finish(flow, history, best, start, progress):
    """Keep the best state, leave the flow in evaluation mode, record the wall time."""
    if progress:
        print(file=sys.stderr)
    if history.best_epoch >= 0:
        best.restore()
    set_training(flow, False)
    history.wall_time = time.perf_counter() - start
    return history


def _mean_nll(flow, data, batch_size, context=None):
    total = 0.0
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]
        rows = None if context is None else context[start:start + batch_size]
        total += -float(flow.log_prob(chunk, context=rows).sum())
    return total / len(data)


def _rows_context(flow, context, data, where, argname):
    """``context`` for a conditional fit: one row per data row (or one row for all), as an (n, c) array;
    None for an unconditional flow."""
    rows = flow._prepare_context(context, data, where, "data", where=f"{where} ({argname})")
    return None if rows is None else np.ascontiguousarray(rows)


def fit(flow, data, *, epochs=100, batch_size=64, lr=1e-3, optimizer=None, validation_data=None,
        validation_split=0.0, patience=None, rng=None, callback=None, progress=False, clip_norm=None, backend=None,
        context=None, validation_context=None, lr_schedule=None, average=0.99):
    """Fit ``flow`` to ``data`` by maximum likelihood with mini-batches.

    Parameters
    ----------
    flow : TransformedDistribution
    data : array, shape (n, ...) matching the flow's event shape
        A ``dask.array.Array``, an ``np.memmap``, a zarr array or a
        :class:`~nflow_np.train.Stream` is streamed block by block through a
        shuffle buffer instead of being loaded (peak memory: the buffer); see
        :mod:`nflow_np.train._stream`. An in-memory ndarray is not.
    epochs : int
        At least 1.
    batch_size : int
        Rows per step. A batch is at most the training data: a larger value
        is clamped to the number of training rows (one step per epoch), on
        every backend.
    lr : float
        Positive. Learning rate of the default Adam optimizer (ignored when ``optimizer`` is given).
    optimizer : Optimizer, optional
        Built on ``flow.parameters()``.
    validation_data : array, optional
        Held-out points; else ``validation_split`` of ``data`` is held out.
    patience : int, optional
        Stop after this many epochs without a better validation loss.
    rng : Generator or int
        Shuffling and the validation split.
    callback : callable, optional
        ``callback(epoch, history)`` after every epoch; returning True stops training.
    progress : bool
        Print a progress line per epoch to stderr.
    clip_norm : float, optional
        Positive. Clip the global gradient norm (default Adam only).
    backend : {"numpy", "numba", "cuda"}, optional
        Default :func:`nflow_np.get_backend`. With ``"numba"`` and a flow the
        compiled program covers, each epoch of Adam steps is one compiled call
        on buffers allocated once (another optimizer gets compiled gradients
        and steps in Python); with ``"cuda"`` the epochs run on the GPU, data,
        parameters and Adam's moments staying there for the whole fit;
        validation uses the same backend.
    context : array, shape (n, c), optional
        For a conditional flow (built with ``context=c``): the conditioning
        row of each data point (or one row for all), shuffled and split
        with the data; the flow learns p(x | context).
    validation_context : array, optional
        The context rows of ``validation_data``.
    lr_schedule : None, "cosine", "plateau" or Schedule, optional
        Set the learning rate at the start of every epoch, on every backend:
        ``"cosine"`` decays it from ``lr`` to 0 over the epochs
        (:class:`~nflow_np.train.schedules.CosineDecay`, with optional warm-up),
        ``"plateau"`` halves it when the validation loss stalls
        (:class:`~nflow_np.train.schedules.ReduceOnPlateau`). Default: constant.
    average : float in [0, 1) or None
        Keep a moving average of the parameters (Polyak averaging), moved
        after every accepted step with decay ``min(average, (1 + t) / (10 + t))``
        at its ``t``-th update, on every backend. At every validation both the
        epoch's parameters and their average are scored, and the better one
        competes for the kept state (``History.averaged`` says per epoch
        whether the average won). Used only with validation data; ``None`` or
        0 turns it off. Default 0.99: an average over about the last 100
        steps, which on the quality suite lowered held-out NLL by about 0.01
        nats (``docs/performance.rst``).

    Returns
    -------
    History
        At the end the parameters of the best validation epoch (or of the
        epoch with the lowest training loss, without validation data) are
        restored, and the flow is left in evaluation mode. A step whose loss
        or gradient is not finite is skipped and the learning rate halved
        (``rejected_steps``).

    Notes
    -----
    Divergence: a step whose loss is finite but has exploded is rejected like
    a non-finite one, on every backend alike. The level is a moving average of
    the accepted steps' losses (weight 0.1, the first loss sets it) and the
    spread a moving average of their distance to it; a loss above ``level +
    1000 * (|level| + spread + 1)`` has diverged (normal training, whose
    losses fall or wander by a few spreads, never comes near: a learning rate
    too large throws the loss up by tens of orders of magnitude). Such a step
    puts the parameters and buffers back to where the last loss that passed
    was measured (undoing the update that blew up), halves the learning rate
    and counts in ``rejected_steps`` and ``diverged_steps``. Without
    validation data an epoch whose last update diverged is not the one kept:
    the state before that update is.

    Interrupts: when anything raises during training (Ctrl-C, a callback),
    the best state so far is restored (the state before the call when no
    epoch was kept) and the flow left in evaluation mode before the exception
    propagates.

    Raises
    ------
    RuntimeError
        When every step was rejected (typically data far from unit scale,
        whose loss overflows): nothing was learned, the flow is left as it
        was before the call.
    """
    _check_flow(flow, "fit")
    _check_fit_arguments(epochs, lr, callback, clip_norm)
    schedule = as_schedule(lr_schedule, "fit")
    average = check_average(average, "fit")
    from ._stream import fit_streamed, streams
    with use_backend(resolve_backend(backend, "fit")):
        if streams(data):
            return fit_streamed(flow, data, epochs, batch_size, lr, optimizer, validation_data, validation_split,
                                patience, rng, callback, progress, clip_norm, context, validation_context, schedule,
                                average)
        return _fit(flow, data, epochs, batch_size, lr, optimizer, validation_data, validation_split, patience, rng,
                    callback, progress, clip_norm, context, validation_context, schedule, average)


def _check_fit_arguments(epochs, lr, callback, clip_norm):
    if isinstance(epochs, (bool, np.bool_)) or not isinstance(epochs, (int, np.integer)):
        raise TypeError(f"fit: epochs must be an int >= 1; got {type(epochs).__name__} {epochs!r}")
    if epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1; got {epochs!r}")
    lr_value = _real(lr, "lr", "fit")
    if not (np.isfinite(lr_value) and lr_value > 0):
        raise ValueError(f"fit: 'lr' must be a finite number > 0; got {lr!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable(epoch, history) or None; got {type(callback).__name__} "
                        f"{callback!r}")
    _clip_norm(clip_norm, "fit")


def _compiled_trainer(flow, optimizer, batch_size):
    """A compiled whole-epoch trainer (on the GPU for ``"cuda"``) when the backend, the flow and the optimizer
    allow one."""
    name = resolve_backend(None)
    if name not in ("numba", "cuda") or type(optimizer) is not Adam:
        return None
    if getattr(flow, "embedding", None) is not None:
        return None     # the compiled epoch returns no context gradient for the embedding: NumPy steps

    from ..kernels.plan import NumbaTrainer, program_for
    program = program_for(flow)
    if program is None:
        return None
    if name == "cuda":
        from ..kernels.cuda.runner import DeviceTrainer, runner_for
        runner = runner_for(program)
        return None if runner is None else DeviceTrainer(runner, optimizer, batch_size)
    return NumbaTrainer(program, optimizer, batch_size)


def _check_validation_data(validation_data, data, flow):
    """``validation_data`` as a float array of at least one row shaped like the rows of ``data``."""
    validation_data = as_float_array(validation_data, flow.dtype, "fit", "validation_data")
    if validation_data.ndim != data.ndim or validation_data.shape[1:] != data.shape[1:]:
        raise ValueError(f"fit: validation_data must have shape (m, {', '.join(map(str, data.shape[1:]))}) like the "
                         f"rows of data; got {validation_data.shape}")
    if len(validation_data) == 0:
        raise ValueError("fit: validation_data has no rows; pass None to train without validation")
    return validation_data


def _fit(flow, data, epochs, batch_size, lr, optimizer, validation_data, validation_split, patience, rng, callback,
         progress, clip_norm, context, validation_context, schedule=None, average=0.0):
    rng = as_generator(rng)
    data = as_float_array(data, flow.dtype, "fit", "data")
    if data.ndim == 0:
        raise ValueError(f"fit: data must hold rows of points, shape (n, ...); got a scalar ({data})")
    flow._prepare(data[:1], "fit")
    context = _rows_context(flow, context, data, "fit", "context")
    if validation_data is None and validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"fit: validation_split must lie in (0, 1); got {validation_split}")
        order = rng.permutation(len(data))
        n_val = max(1, int(round(validation_split * len(data))))
        validation_data, data = data[order[:n_val]], data[order[n_val:]]
        if context is not None:
            validation_context, context = context[order[:n_val]], context[order[n_val:]]
    elif validation_data is not None:
        validation_data = _check_validation_data(validation_data, data, flow)
        validation_context = _rows_context(flow, validation_context, validation_data, "fit", "validation_context")
    if len(data) == 0:
        raise ValueError("fit: no training data")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"fit: batch_size must be a positive int; got {batch_size!r}")
    batch_size = min(int(batch_size), len(data))    # a batch is at most the training data, on every backend
    optimizer, history, snapshot, best = _begin(flow, optimizer, lr, clip_norm, "fit")
    if schedule is not None:
        schedule.begin(optimizer, epochs)
    initial = Snapshot(best.params)
    initialized = [(m, m.initialized) for m in modules(flow) if hasattr(m, "initialized")]
    trainer = _compiled_trainer(flow, optimizer, batch_size)
    if trainer is not None:
        data = np.ascontiguousarray(data.reshape(len(data), -1))
    watch = Watch()
    averaged = ParameterAverage(average, flow, trainer) if average and validation_data is not None else None
    return run_fit(flow, history, best, initial, initialized, progress,
                   lambda: _epochs(flow, optimizer, trainer, data, context, validation_data, validation_context, epochs,
                                   batch_size, patience, rng, callback, progress, history, snapshot, best, watch,
                                   schedule, averaged),
                   lambda: f"largest |value| here {float(np.max(np.abs(data))):.3g}")


def run_fit(flow, history, best, initial, initialized, progress, run, describe_scale):
    """Run ``run()`` (the epochs) with :func:`fit`'s ending, whatever the data's source.

    On any exception (Ctrl-C, a callback raising) the best state so far (or the flow as it came, when no epoch was
    kept) is restored, in evaluation mode, and the exception goes on. When every step was rejected the flow is left
    as it came (ActNorm's data initialization included) and a RuntimeError says so, ``describe_scale()`` naming the
    data's scale when it can. Otherwise the best state is kept (:func:`_finish`).
    """
    start = time.perf_counter()
    try:
        run()
    except BaseException:
        restore_kept(history, best, initial, initialized)
        set_training(flow, False)
        if progress:
            print(file=sys.stderr)
        raise
    if history.steps == 0:
        restore_kept(history, None, initial, initialized)
        set_training(flow, False)
        if progress:
            print(file=sys.stderr)
        scale = describe_scale()
        raise RuntimeError(
            f"fit: every training step was rejected ({history.rejected_steps} steps, {history.epochs} epochs): the "
            f"loss or its gradient was not finite at every step, so the flow was left unchanged. Data far from unit "
            f"scale{f' ({scale})' if scale else ''} overflows: standardize it first, or lower lr")
    return _finish(flow, history, best, start, progress)


def _epochs(flow, optimizer, trainer, data, context, validation_data, validation_context, epochs, batch_size,
            patience, rng, callback, progress, history, snapshot, best, watch, schedule=None, average=None):
    """The epochs of :func:`fit`: in-memory rows, shuffled from ``rng`` every epoch."""
    kept = {}

    def run_epoch(epoch):
        order = kept["order"] = rng.permutation(len(data))
        if trainer is not None:
            return _compiled_epoch(flow, trainer, data, order, batch_size, history, context)
        return _numpy_epoch(flow, optimizer, data, order, batch_size, snapshot, history, context, watch, average)

    def validate():
        return _safe_nll(flow, validation_data, batch_size, validation_context)

    def probe_loss():
        probe = kept["order"][:min(batch_size, _PROBE_ROWS)]
        # on the backend that trained: its density passes are compiled already
        backend = "numpy" if trainer is None else "cuda" if hasattr(trainer, "runner") else "numba"
        with use_backend(backend), np.errstate(all="ignore"):
            return _safe_nll(flow, data[probe], len(probe), None if context is None else context[probe])

    run_epochs(flow, optimizer, trainer, epochs, patience, callback, progress, history, snapshot, best, watch,
               schedule, run_epoch, validate if validation_data is not None else None, probe_loss, average)


def run_epochs(flow, optimizer, trainer, epochs, patience, callback, progress, history, snapshot, best, watch,
               schedule, run_epoch, validate, probe_loss, average=None):
    """Epochs with :func:`fit`'s bookkeeping, whatever the data's source.

    ``run_epoch(epoch)`` trains one epoch and returns the accepted steps' losses and whether its first step was
    rejected by the divergence rule; ``validate()`` (None without validation data) scores the epoch;
    ``probe_loss()`` is a fresh loss on some training rows, taken after the last epoch. ``average`` (a
    :class:`~nflow_np.train._average.ParameterAverage`, with validation only) is scored beside the parameters.
    """
    best_loss = np.inf
    since_best = 0
    # Without validation data an epoch is scored by its training losses, measured before each update, so an epoch
    # whose last update blew up would still look good: ``verified`` keeps the state where the last loss that passed
    # the divergence rule was measured, and replaces the kept best one when the next loss (the next epoch's first,
    # or a probe after the last epoch) says that the epoch ended diverged.
    verified = None
    for epoch in range(epochs):
        if schedule is not None:
            schedule.before_epoch(epoch)
        set_training(flow, True)
        epoch_start = time.perf_counter()
        losses, first_diverged = run_epoch(epoch)
        set_training(flow, False)
        if first_diverged and verified is not None and history.best_epoch == epoch - 1:
            verified.restore_into(best)
        train_loss = float(np.mean(losses)) if losses else np.nan
        history.train_loss.append(train_loss)
        history.lr.append(optimizer.lr)
        score = train_loss
        saved = False
        if validate is not None:
            score = validate()
            if average is not None:
                with average.swapped_in():
                    averaged_score = validate()
                    # NaN never wins; a tie keeps the parameters themselves
                    use_average = bool(averaged_score < score or (np.isfinite(averaged_score) and np.isnan(score)))
                    if use_average:
                        score = averaged_score
                        if np.isfinite(score) and score < best_loss:
                            best.save()     # the epoch's state to keep, taken while the flow holds it
                            saved = True
                history.averaged.append(use_average)
            history.val_loss.append(score)
        else:
            verified = verified_state(trainer, snapshot, watch)
        if schedule is not None:
            schedule.after_epoch(epoch, score)
        if np.isfinite(score) and score < best_loss:
            best_loss, since_best = score, 0
            history.best_epoch = epoch
            if not saved:
                best.save()
        else:
            since_best += 1
        if progress:
            rate = len(losses) / max(time.perf_counter() - epoch_start, 1e-9)
            print(_progress_line(epoch, epochs, train_loss, history.val_loss[-1] if history.val_loss else None, rate),
                  end="", file=sys.stderr, flush=True)
        if callback is not None and callback(epoch, history):
            history.stopped_early = True
            break
        if patience is not None and validate is not None and since_best >= patience:
            history.stopped_early = True
            break
    if verified is not None and history.best_epoch == history.epochs - 1:
        level = watch.state if trainer is None else trainer.level()
        loss = probe_loss()
        if not np.isfinite(loss) or plain(loss_diverged)(float(loss), *level):
            verified.restore_into(best)


# rows of the last epoch's first batch whose loss checks, after a fit without validation data, that the last
# update did not diverge
_PROBE_ROWS = 64


def _numpy_epoch(flow, optimizer, data, order, batch_size, snapshot, history, context=None, watch=None, average=None):
    """The accepted steps' losses, and whether the first step was rejected by the divergence rule; ``average``
    (when given) moves after every accepted step and starts again after a step the divergence rule undid."""
    losses = []
    first_diverged = False
    _initialize_actnorms(flow, data, order, batch_size, context)
    for i in range(0, len(data), batch_size):
        rows = order[i:i + batch_size]
        batch = data[rows]
        diverged = history.diverged_steps
        # overflow is caught by the guard below, which rejects the step: no warning spam
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                loss, grads = nll_and_grad(flow, batch, context=None if context is None else context[rows])
            except ValueError as exc:
                if "must be finite" not in str(exc):
                    raise
                # the data passed fit's checks: an inner layer refusing a non-finite value means the pass overflowed
                raise ValueError(f"fit: the loss overflows the {flow.dtype} range on a batch of data ({exc})") from exc
            accepted = guarded_step(optimizer, loss, grads, snapshot, history, watch)
        if accepted:
            losses.append(loss)
        if average is not None:
            if accepted:
                average.update()
            elif history.diverged_steps > diverged:
                average.restart()
        if i == 0:
            first_diverged = history.diverged_steps > diverged
    return losses, first_diverged


# ActNorm's data-dependent start takes its statistics from up to this many rows of the first epoch's order (at
# least one batch), on every backend. From a batch of 512 rows each feature's scale starts about 3% off, which costs
# about 1e-3 nats per feature that a short fit does not win back (0.05 nats per 64-D digit for NICE on the quality
# suite); from 8192 rows, about 1e-4.
ACTNORM_INIT_ROWS = 8192


def _initialize_actnorms(flow, data, order, batch_size, context=None):
    """Initialize the flow's ActNorm layers that have seen no data from the first ``ACTNORM_INIT_ROWS`` rows of
    ``order`` (at least one batch): one data-to-base pass, in the training mode the epoch runs in."""
    if not any(hasattr(m, "initialized") and not m.initialized for m in modules(flow)):
        return
    first = order[:max(batch_size, ACTNORM_INIT_ROWS)]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            flow.bijector._inverse_and_log_det(data[first], *flow.bijector._context_args(
                None if context is None else context[first]))
        except (ValueError, FloatingPointError):
            pass        # a pass that overflows initializes what it reached; the steps' guards handle the rest


def _compiled_epoch(flow, trainer, data, order, batch_size, history, context=None):
    _initialize_actnorms(flow, data, order, batch_size, context)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        step_losses = trainer.epoch(data, order, context)
    accepted = np.isfinite(step_losses)
    history.steps += int(accepted.sum())
    history.rejected_steps += int((~accepted).sum())
    history.diverged_steps += int(np.isposinf(step_losses).sum())
    return step_losses[accepted].tolist(), bool(len(step_losses) and np.isposinf(step_losses[0]))


def _safe_nll(flow, data, batch_size, context=None):
    try:
        return _mean_nll(flow, data, batch_size, context)
    except (ValueError, FloatingPointError):
        # a point the current flow cannot map back (outside a bounded support): no valid score
        return np.inf
