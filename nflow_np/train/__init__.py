"""Training: optimizers, losses with exact gradients, and fitting loops."""

from .loops import History, fit, fit_to_target, set_training
from .losses import nll_and_grad, reverse_kl_and_grad, value_and_grad
from .optim import SGD, Adam, Optimizer, global_norm
from .schedules import CosineDecay, ReduceOnPlateau, Schedule

__all__ = ["Adam", "SGD", "Optimizer", "global_norm", "History", "fit", "fit_to_target", "set_training",
           "value_and_grad", "nll_and_grad", "reverse_kl_and_grad", "Schedule", "CosineDecay", "ReduceOnPlateau"]

from ._stream import Stream  # noqa: E402  (streamed data for fit)

__all__ += ["Stream"]
