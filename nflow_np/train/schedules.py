"""Learning-rate schedules for :func:`nflow_np.train.fit`: cosine decay with warm-up, and reduce-on-plateau.

A schedule sets the optimizer's learning rate at the start of every epoch (as
Keras's ``LearningRateScheduler`` and PyTorch's per-epoch schedulers do), so
it works alike on every backend, the compiled whole-epoch trainers included:
an epoch runs at one rate. The rate a schedule sets is ``lr`` (the rate the
fit starts with) times the schedule's factor for that epoch, times whatever
the divergence guard has taken off since (a rejected step halves the rate, and
a schedule never undoes that).

``fit(..., lr_schedule="cosine")`` and ``lr_schedule="plateau"`` use the
defaults below; pass :class:`CosineDecay` or :class:`ReduceOnPlateau` to set
their parameters.
"""

import math

import numpy as np

__all__ = ["Schedule", "CosineDecay", "ReduceOnPlateau", "as_schedule"]


class Schedule:
    """The interface :func:`~nflow_np.train.fit` drives: ``begin`` once, then ``before_epoch`` and
    ``after_epoch`` around every epoch. Subclasses define :meth:`factor` (this base keeps the rate
    constant) and may react to each epoch's score in :meth:`after_epoch`."""

    def begin(self, optimizer, epochs):
        self.optimizer = optimizer
        self.base = float(optimizer.lr)
        self.epochs = int(epochs)
        self.penalty = 1.0         # the divergence guard's halvings since the fit began
        self._set = None
        self._reset()

    def _reset(self):
        pass

    def before_epoch(self, epoch):
        if self._set is not None and self._set > 0:
            # whatever the guard halved during the last epoch stays halved
            self.penalty *= float(self.optimizer.lr) / self._set
        self._set = self.base * self.factor(epoch) * self.penalty
        self.optimizer.lr = self._set

    def after_epoch(self, epoch, score):
        """``score``: the epoch's validation loss (its training loss without validation data)."""

    def factor(self, epoch):
        """The rate of epoch ``epoch`` (from 0) as a fraction of the fit's starting ``lr``."""
        return 1.0


class CosineDecay(Schedule):
    """Linear warm-up over ``warmup`` epochs, then a half cosine from ``lr`` down to ``final * lr`` at the end.

    Epoch ``e`` (from 0) of ``E`` runs at ``lr * (e + 1) / (warmup + 1)`` while ``e < warmup``, then at
    ``lr * (final + (1 - final) (1 + cos(pi (e - warmup) / (E - warmup))) / 2)``.

    Parameters
    ----------
    warmup : int, default 0
        Epochs of linear warm-up, at least 0 and fewer than the fit's epochs.
    final : float, default 0.0
        The last rate as a fraction of ``lr``, in [0, 1].

    References: Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    def __init__(self, warmup=0, final=0.0):
        if isinstance(warmup, (bool, np.bool_)) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ValueError(f"CosineDecay: warmup must be an int >= 0 (epochs); got {warmup!r}")
        if isinstance(final, (bool, np.bool_)) or not isinstance(final, (int, float, np.number)) or \
                not 0.0 <= float(final) <= 1.0:
            raise ValueError(f"CosineDecay: final must be a number in [0, 1]; got {final!r}")
        self.warmup = int(warmup)
        self.final = float(final)

    def begin(self, optimizer, epochs):
        if epochs > 1 and self.warmup >= epochs:
            raise ValueError(f"fit: CosineDecay(warmup={self.warmup}) needs more epochs than its warm-up; "
                             f"got epochs={epochs}")
        super().begin(optimizer, epochs)

    def factor(self, epoch):
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        span = max(self.epochs - self.warmup, 1)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup) / span))

    def __repr__(self):
        return f"CosineDecay(warmup={self.warmup}, final={self.final})"


class ReduceOnPlateau(Schedule):
    """Multiply the rate by ``factor`` when the score has not improved by ``threshold`` for ``patience`` epochs.

    The score is the validation loss (the training loss without validation data). The rate never goes
    below ``min_lr``.

    Parameters
    ----------
    factor : float, default 0.5
        In (0, 1).
    patience : int, default 3
        Epochs without improvement before a reduction, at least 1.
    threshold : float, default 1e-3
        An improvement smaller than this (nats) does not count, at least 0.
    min_lr : float, default 0.0
    """

    def __init__(self, factor=0.5, patience=3, threshold=1e-3, min_lr=0.0):
        if not isinstance(factor, (int, float, np.number)) or not 0.0 < float(factor) < 1.0:
            raise ValueError(f"ReduceOnPlateau: factor must lie in (0, 1); got {factor!r}")
        if isinstance(patience, (bool, np.bool_)) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"ReduceOnPlateau: patience must be an int >= 1; got {patience!r}")
        if not isinstance(threshold, (int, float, np.number)) or not float(threshold) >= 0.0:
            raise ValueError(f"ReduceOnPlateau: threshold must be a number >= 0; got {threshold!r}")
        if not isinstance(min_lr, (int, float, np.number)) or not float(min_lr) >= 0.0:
            raise ValueError(f"ReduceOnPlateau: min_lr must be a number >= 0; got {min_lr!r}")
        self.factor_ = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.min_lr = float(min_lr)

    def _reset(self):
        self.scale = 1.0
        self.best = np.inf
        self.waited = 0
        self.reductions = 0

    def factor(self, epoch):
        return self.scale

    def before_epoch(self, epoch):
        super().before_epoch(epoch)
        if self.optimizer.lr < self.min_lr:
            self.optimizer.lr = self._set = max(self.min_lr, 0.0)

    def after_epoch(self, epoch, score):
        if np.isfinite(score) and score < self.best - self.threshold:
            self.best, self.waited = float(score), 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.scale *= self.factor_
            self.reductions += 1
            self.waited = 0

    def __repr__(self):
        return (f"ReduceOnPlateau(factor={self.factor_}, patience={self.patience}, threshold={self.threshold}, "
                f"min_lr={self.min_lr})")


_NAMED = {"cosine": CosineDecay, "plateau": ReduceOnPlateau}


def as_schedule(value, where="fit"):
    """``None``, a name (``"cosine"``, ``"plateau"``) or a :class:`Schedule`, as a Schedule or None."""
    if value is None or isinstance(value, Schedule):
        return value
    if isinstance(value, str) and value in _NAMED:
        return _NAMED[value]()
    raise ValueError(f"{where}: lr_schedule must be None, 'cosine', 'plateau' or a nflow_np.train.schedules."
                     f"Schedule (CosineDecay, ReduceOnPlateau); got {value!r}")
