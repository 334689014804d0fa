"""Layer specs: how a bijector describes itself to the compiled engine.

A compilable bijector implements ``lower()`` and returns one of the specs
below; :class:`~nflow_np.kernels.plan.Program` turns a list of them into the
arrays the compiled runners walk. The engine dispatches on these classes
alone and imports no bijector; a bijector without a lowering raises
:class:`Unsupported` from ``lower()`` and its flow runs the NumPy passes.

A layer is a *frame* (coupling, autoregressive, or an elementwise/linear
layer of its own) holding a *transform* (affine, additive, spline) and, for
the frames, a conditioner :class:`Network`. Parameter arrays are referenced,
not copied: the program reads the owner's ``params`` dict on every call, so
optimizers keep updating the arrays they hold.

This module imports NumPy only, so bijectors may import it freely.
"""

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["Unsupported", "NetworkSpec", "AffineSpec", "AdditiveSpec", "SplineSpec", "SinhArcsinhSpec", "CouplingSpec",
           "AutoregressiveSpec", "PermutationSpec", "ActNormSpec", "BatchNormSpec", "StandardNormalSpec", "TRANSFORMS"]


class Unsupported(ValueError):
    """The flow holds a layer the compiled program does not cover; the NumPy passes run it instead."""


# ---------------------------------------------------------------- conditioners

@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """A dense conditioner (MLP) or a masked one (MADE) with its parameters ``w0, b0, w1, b1, ...`` in ``params``.

    ``widths`` runs from the network's input (coordinates, then ``context``
    inputs) to its output; ``masks`` (MADE only) multiply ``w0, w1, ...``;
    ``degrees`` are MADE's per-layer unit degrees (input first).
    """
    params: dict
    widths: Tuple[int, ...]
    activation: str
    context: int = 0
    masks: Optional[Tuple[np.ndarray, ...]] = None
    degrees: Optional[Tuple[np.ndarray, ...]] = None

    @property
    def hidden(self):
        return self.widths[1:-1]


# ---------------------------------------------------------------- elementwise transforms of the frames

@dataclass(frozen=True)
class AffineSpec:
    """``s = clamp tanh(raw / clamp)`` (``clamp`` 0: ``s = raw``); 2 outputs per coordinate. Sampling is
    ``y = (x + t) exp(s)`` with ``base_shift`` (the shift in the base space), else ``y = x exp(s) + t``."""
    clamp: float = 0.0
    base_shift: bool = False
    outputs_per_coordinate = 2


@dataclass(frozen=True)
class AdditiveSpec:
    """``y = x + t``; 1 output per coordinate, no log-det."""
    outputs_per_coordinate = 1


@dataclass(frozen=True)
class SplineSpec:
    """A rational-quadratic spline on ``[-bound, bound]`` (identity outside); ``3 bins - 1`` outputs per coordinate.
    ``parameterization`` is ``"softplus"`` or ``"bounded"`` (:mod:`nflow_np.kernels.spline`)."""
    bins: int
    bound: float
    min_bin_width: float
    min_bin_height: float
    min_derivative: float
    parameterization: str = "softplus"

    @property
    def outputs_per_coordinate(self):
        return 3 * self.bins - 1

    @property
    def constants(self):
        return (self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative)


@dataclass(frozen=True)
class SinhArcsinhSpec:
    """``y = sinh((asinh(x) + a) exp(s))``, ``s = clamp tanh(raw / clamp)`` (``clamp`` 0: ``s = raw``); 2 outputs
    per coordinate, ``(a, raw)``."""
    clamp: float = 0.0
    outputs_per_coordinate = 2


TRANSFORMS = (AffineSpec, AdditiveSpec, SplineSpec, SinhArcsinhSpec)


# ---------------------------------------------------------------- layers

@dataclass(frozen=True, eq=False)
class CouplingSpec:
    """Coordinates ``conditioned`` pass through and feed ``net``; ``transformed`` go through ``transform``.

    ``net`` emits ``P`` parameters per transformed coordinate, ``(parameter, coordinate)``-major (parameter
    ``q`` of coordinate ``j`` at output ``q * nb + j``) unless ``by_coordinate`` (at ``j * P + q``).
    """
    conditioned: np.ndarray
    transformed: np.ndarray
    net: NetworkSpec
    transform: Any
    by_coordinate: bool = False


@dataclass(frozen=True, eq=False)
class AutoregressiveSpec:
    """A MADE ``net`` emitting each coordinate's transform parameters from the coordinates before it.

    ``generation`` is the order in which sampling fills the coordinates.
    """
    net: NetworkSpec
    transform: Any
    generation: np.ndarray


@dataclass(frozen=True, eq=False)
class PermutationSpec:
    """``y = x[..., sampling]`` in the sampling direction; ``density`` is its inverse permutation."""
    density: np.ndarray
    sampling: np.ndarray


@dataclass(frozen=True, eq=False)
class ActNormSpec:
    """``y = x exp(log_scale) + shift``; ``params`` holds both; ``state.initialized`` says whether it has seen data."""
    params: dict
    state: Any


@dataclass(frozen=True, eq=False)
class BatchNormSpec:
    """Batch normalization; ``state`` holds ``training``, ``running_mean`` and ``running_var`` (updated in place)."""
    params: dict
    state: Any
    features: int
    eps: float
    momentum: float


@dataclass(frozen=True)
class StandardNormalSpec:
    """The base distribution the engine evaluates itself: a standard normal over ``d`` coordinates."""
    d: int
