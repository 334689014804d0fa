"""The training loops' guards: the per-step snapshot, the divergence rule's level, the guarded step, and the
states kept for the end of a fit."""

import numpy as np

from ..kernels.scalar import loss_diverged, loss_level


class Snapshot:
    """A copy of the training state, restorable in place (optimizers hold the arrays themselves)."""

    def __init__(self, params):
        self.params = params
        self.saved = {k: v.copy() for k, v in params.items()}

    def save(self):
        for k, v in self.params.items():
            np.copyto(self.saved[k], v)

    def restore(self):
        for k, v in self.params.items():
            np.copyto(v, self.saved[k])


def all_finite(params):
    return all(np.isfinite(v).all() for v in params.values())


def plain(fn):
    """A scalar twin as plain Python (after :func:`~nflow_np.kernels.backend.load_numba` the module holds its
    compiled dispatcher)."""
    return getattr(fn, "py_func", fn)


class Watch:
    """The divergence rule's state, ``[level, spread, seen]`` (:func:`nflow_np.kernels.scalar.loss_diverged`, the
    rule every backend applies, run here as plain Python)."""

    def __init__(self):
        self.state = np.zeros(3, dtype=np.float64)

    def diverged(self, loss):
        return bool(plain(loss_diverged)(float(loss), *self.state))

    def accept(self, loss):
        self.state[:] = plain(loss_level)(float(loss), *self.state)


def reject(optimizer, history):
    history.rejected_steps += 1
    optimizer.lr *= 0.5
    return False


def guarded_step(optimizer, loss, grads, snapshot, history, watch=None):
    """Apply a step unless it is not finite or its loss has diverged; never leave NaN parameters behind.

    In order: a loss that is not finite rejects the step; a loss that ``watch`` finds diverged rejects it and
    puts the state (parameters and buffers) back to where the last loss that passed was measured, undoing the
    update that blew up; a gradient that is not finite rejects it; so does an update that leaves a parameter
    non-finite (undone). The compiled trainers keep the same order."""
    if not np.isfinite(loss):
        return reject(optimizer, history)
    if watch is not None:
        if watch.diverged(loss):
            snapshot.restore()
            history.diverged_steps += 1
            return reject(optimizer, history)
        watch.accept(loss)
    snapshot.save()
    try:
        optimizer.step(grads)
    except FloatingPointError:
        # a gradient that is not finite, or whose norm overflows (the compiled steps' rule): the optimizer refuses
        # it before changing anything
        return reject(optimizer, history)
    if not all_finite(optimizer.params):
        snapshot.restore()
        return reject(optimizer, history)
    history.steps += 1
    return True


def restore_kept(history, best, initial, initialized):
    """The best state when an epoch was kept, else the state before the fit (ActNorm's initialization too)."""
    if best is not None and history.best_epoch >= 0:
        best.restore()
        return
    initial.restore()
    for m, flag in initialized:
        m.initialized = flag


class State:
    """A copy of a flow's state (parameters and buffers, keyed as a :class:`Snapshot`'s)."""

    def __init__(self, arrays):
        self.arrays = arrays

    def restore_into(self, snapshot):
        for key, value in self.arrays.items():
            np.copyto(snapshot.saved[key], value)


class FlatState:
    """A compiled trainer's flat state, unpacked into a snapshot's arrays only when it is restored (rarely: an
    epoch that ended diverged), so that keeping it costs one copy per epoch."""

    def __init__(self, program, flat, snapshot):
        self.program, self.flat, self.snapshot = program, flat, snapshot

    def restore_into(self, snapshot):
        current = self.program.theta()
        self.program.write_back(self.flat)
        try:
            State(self.snapshot.params).restore_into(snapshot)
        finally:
            self.program.write_back(current)


def verified_state(trainer, snapshot, watch):
    """The state where the last loss that passed the divergence rule was measured; None before any did."""
    if trainer is None:
        if watch.state[2] <= 0:
            return None
        return State({key: value.copy() for key, value in snapshot.saved.items()})
    if trainer.level()[2] <= 0:
        return None
    return FlatState(trainer.program, trainer.kept_state(), snapshot)
