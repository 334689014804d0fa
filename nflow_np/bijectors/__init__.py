"""Bijectors: invertible maps with analytic log-determinants and hand-written VJPs."""

from .base import Bijector
from .chain import Chain, Invert
from .elementwise import (
    ElementwiseBijector,
    Exp,
    Identity,
    LeakyReLU,
    NormalCDF,
    Power,
    Scale,
    Shift,
    Sigmoid,
    Softplus,
    Softsign,
    Tanh,
)
from .inline import Inline
from .affine import Affine
from .linear import Permute, Reverse, Rotation, ScaleMatvecTriL

__all__ = [
    "Bijector", "ElementwiseBijector", "Chain", "Invert", "Inline",
    "Identity", "Shift", "Scale", "Exp", "Sigmoid", "Tanh", "Softsign", "Softplus", "LeakyReLU",
    "NormalCDF", "Power",
    "Permute", "Reverse", "Rotation", "ScaleMatvecTriL", "Affine",
]
