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

__all__ = ["Unsupported", "NetworkSpec", "AffineSpec", "AdditiveSpec", "SplineSpec", "CircularSplineSpec",
           "SinhArcsinhSpec", "SigmoidalSpec", "CouplingSpec", "AutoregressiveSpec", "PermutationSpec", "ActNormSpec",
           "BatchNormSpec", "CircularShiftSpec", "StandardNormalSpec", "UniformSpec", "TRANSFORMS"]


class Unsupported(ValueError):
    """The flow holds a layer the compiled program does not cover; the NumPy passes run it instead."""


# ---------------------------------------------------------------- conditioners

@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """A dense conditioner (MLP) or a masked one (MADE) with its parameters ``w0, b0, w1, b1, ...`` in ``params``.

    ``widths`` runs from the network's input (coordinates, then ``context``
    inputs) to its output; ``masks`` (MADE only) multiply ``w0, w1, ...``;
    ``degrees`` are MADE's per-layer unit degrees (input first).

    A residual network (``residual``: :class:`~nflow_np.nn.ResidualMLP`, masked
    :class:`~nflow_np.nn.ResidualMADE`) of ``B`` blocks of width ``H`` has
    ``widths = (inputs,) + (H,) * (2 B + 1) + (outputs,)``, one entry per weight
    matrix as an MLP's, and ``names`` lists its parameters in that order (weight,
    bias, weight, ...: ``in_w, in_b, block0_w0, ..., out_b``); ``masks`` follow the
    weights of ``names``. See :mod:`nflow_np.kernels.residual` for its passes.
    """
    params: dict
    widths: Tuple[int, ...]
    activation: str
    context: int = 0
    masks: Optional[Tuple[np.ndarray, ...]] = None
    degrees: Optional[Tuple[np.ndarray, ...]] = None
    residual: bool = False
    names: Optional[Tuple[str, ...]] = None

    @property
    def keys(self):
        """The parameter names in storage order: ``names``, or an MLP's ``w0, b0, w1, b1, ...``."""
        if self.names is not None:
            return tuple(self.names)
        return tuple(f"{kind}{i}" for i in range(len(self.widths) - 1) for kind in ("w", "b"))

    @property
    def hidden(self):
        return self.widths[1:-1]


# ---------------------------------------------------------------- elementwise transforms of the frames

@dataclass(frozen=True)
class AffineSpec:
    """``s = clamp tanh(raw / clamp)``, or ``raw / (1 + |raw| / clamp)`` with ``rational`` (``clamp`` 0:
    ``s = raw``); 2 outputs per coordinate. Sampling is ``y = (x + t) exp(s)`` with ``base_shift`` (the shift in
    the base space), else ``y = x exp(s) + t``."""
    clamp: float = 0.0
    base_shift: bool = False
    rational: bool = False
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
    circular = False

    @property
    def outputs_per_coordinate(self):
        return 3 * self.bins - 1

    @property
    def constants(self):
        return (self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative)


@dataclass(frozen=True)
class CircularSplineSpec(SplineSpec):
    """A circular rational-quadratic spline on ``[-bound, bound]`` (no value outside): the ends fixed, one shared
    end slope; ``3 bins`` outputs per coordinate."""
    circular = True

    @property
    def outputs_per_coordinate(self):
        return 3 * self.bins


@dataclass(frozen=True)
class SinhArcsinhSpec:
    """``y = sinh((asinh(x) + a) exp(s))``, ``s = clamp tanh(raw / clamp)`` (``clamp`` 0: ``s = raw``); 2 outputs
    per coordinate, ``(a, raw)``."""
    clamp: float = 0.0
    outputs_per_coordinate = 2


@dataclass(frozen=True)
class SigmoidalSpec:
    """NAF's deep sigmoidal transform with ``units`` sigmoids; ``3 units`` outputs per coordinate (raw slopes,
    offsets, raw weights), slopes at least ``min_slope``."""
    units: int
    min_slope: float

    @property
    def outputs_per_coordinate(self):
        return 3 * self.units


TRANSFORMS = (AffineSpec, AdditiveSpec, SplineSpec, SinhArcsinhSpec, CircularSplineSpec, SigmoidalSpec)


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


@dataclass(frozen=True, eq=False)
class CircularShiftSpec:
    """A rotation of the circle ``[-bound, bound]``: ``y = wrap(x + shift)``, log-det 0; ``params["shift"]`` holds
    one angle per coordinate or one for all."""
    params: dict
    bound: float


@dataclass(frozen=True)
class StandardNormalSpec:
    """The base distribution the engine evaluates itself: a standard normal over ``d`` coordinates."""
    d: int


@dataclass(frozen=True, eq=False)
class UniformSpec:
    """The other base the engine evaluates itself: uniform on the box ``[low, high]`` over ``d`` coordinates.

    ``log p(z) = -sum_j log(high_j - low_j)`` where ``low <= z <= high`` (edges included), ``-inf`` elsewhere;
    ``low``, ``high`` and ``log_widths`` (``log(high - low)`` per coordinate, exact where the width overflows)
    are ``(d,)`` arrays in the base's dtype, and ``span``/``half`` the width as the sampler scales by it (``half``
    0.5 where the width overflows and is kept halved, else 1).
    """
    d: int
    low: np.ndarray
    high: np.ndarray
    log_widths: np.ndarray
    span: np.ndarray
    half: np.ndarray
