"""``fit(average=...)``: a moving average of the trainable parameters, scored beside them at every validation.

After every accepted step the average moves towards the parameters
(:func:`nflow_np.kernels.scalar.average_decay` and ``average_update``: one
formula, run by the NumPy path here and by the compiled trainers in their
epoch loops). A step that the divergence rule undid starts the average again at
the restored parameters, so a blown-up update never enters it. At each
validation the epoch's parameters and their average are both scored, and the
better one is the epoch's candidate for the state that ``fit`` keeps.
"""

from contextlib import contextmanager

import numpy as np

from ..kernels.scalar import average_decay, average_update
from ._guard import plain


def check_average(average, where):
    """``average`` as a float in [0, 1), 0.0 for None (off)."""
    if average is None:
        return 0.0
    if isinstance(average, (bool, np.bool_)) or not isinstance(average, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: average must be a float in [0, 1) or None; got {type(average).__name__} "
                        f"{average!r}")
    value = float(average)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{where}: average must lie in [0, 1) (the moving average's decay; 0 or None: off); got "
                         f"{average!r}")
    return value


class ParameterAverage:
    """The moving average of ``flow``'s trainable parameters during one fit.

    On the NumPy path it is a dict of arrays in the parameters' dtype, moved by :meth:`update`; a compiled trainer
    keeps it flat beside its parameters (``start_average`` / ``averaged``) and moves it inside its epochs.
    """

    def __init__(self, beta, flow, trainer):
        self.beta = beta
        self.trainer = trainer
        self.params = dict(flow.parameters())
        if trainer is None:
            self.avg = {k: v.copy() for k, v in self.params.items()}
            self.count = 0
        else:
            trainer.start_average(beta)

    def update(self):
        """After an accepted step of the NumPy path."""
        decay = plain(average_decay)(float(self.count), self.beta)
        for key, value in self.params.items():
            avg = self.avg[key]
            np.copyto(avg, plain(average_update)(avg.astype(np.float64), value.astype(np.float64), decay),
                      casting="unsafe")
        self.count += 1

    def restart(self):
        """After a step of the NumPy path that the divergence rule undid."""
        for key, value in self.params.items():
            np.copyto(self.avg[key], value)
        self.count = 0

    @contextmanager
    def swapped_in(self):
        """The flow holds the average inside the block, its own parameters again after it."""
        if self.trainer is None:
            current = {k: v.copy() for k, v in self.params.items()}
            try:
                for key, value in self.params.items():
                    np.copyto(value, self.avg[key])
                yield
            finally:
                for key, value in self.params.items():
                    np.copyto(value, current[key])
            return
        program = self.trainer.program
        current = program.theta()
        state = current.copy()
        averaged = self.trainer.averaged()
        state[:averaged.size] = averaged
        try:
            program.write_back(state)
            yield
        finally:
            program.write_back(current)
