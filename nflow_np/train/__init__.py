"""Training: optimizers, losses with exact gradients, and fitting loops."""

from .diagnostics import ImportanceDiagnostics, diagnose_log_weights, fit_generalized_pareto, importance_diagnostics
from .loops import History, fit, set_training
from .losses import mixed_kl_and_grad, nll_and_grad, reverse_kl_and_grad, value_and_grad
from .optim import SGD, Adam, Optimizer, global_norm
from .schedules import CosineDecay, ReduceOnPlateau, Schedule
from .variational import fit_to_target

__all__ = ["Adam", "SGD", "Optimizer", "global_norm", "History", "fit", "fit_to_target", "set_training",
           "value_and_grad", "nll_and_grad", "reverse_kl_and_grad", "mixed_kl_and_grad", "Schedule", "CosineDecay",
           "ReduceOnPlateau", "ImportanceDiagnostics", "importance_diagnostics", "diagnose_log_weights",
           "fit_generalized_pareto"]

from ._stream import Stream  # noqa: E402  (streamed data for fit)

__all__ += ["Stream"]
