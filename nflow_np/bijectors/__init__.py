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
from .autoregressive import Autoregressive, InverseAutoregressive, MaskedAutoregressive, SplineAutoregressive
from .block_autoregressive import BlockNeuralAutoregressive
from .autoregressive import CircularSplineAutoregressive
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
from .coupling import CircularSplineCoupling
from .transforms import AdditiveTransform, AffineTransform, SinhArcsinhTransform, SplineTransform, Transform
from .transforms import CircularSplineTransform
from .transforms import SigmoidalTransform
from .circular import CircularShift
from .linear import Permute, Reverse, Rotation, ScaleMatvecTriL
from .lu import LULinear
from .orthogonal import Householder, RandomRotation
from .planar import Planar
from .radial import Radial
from .normalization import ActNorm, BatchNorm
from .spline import RationalQuadraticSpline

__all__ = [
    "Bijector", "ElementwiseBijector", "Chain", "Invert", "Inline",
    "Identity", "Shift", "Scale", "Exp", "Sigmoid", "Tanh", "Softsign", "Softplus", "LeakyReLU",
    "NormalCDF", "Power",
    "Permute", "Reverse", "Rotation", "ScaleMatvecTriL", "Affine",
    "Coupling", "Autoregressive", "Transform", "AffineTransform", "AdditiveTransform", "SplineTransform",
    "SinhArcsinhTransform",
    "SigmoidalTransform",
    "AdditiveCoupling", "AffineCoupling", "SplineCoupling", "MaskedAutoregressive", "InverseAutoregressive",
    "SplineAutoregressive", "BlockNeuralAutoregressive",
    "BatchNorm", "ActNorm", "LULinear", "RationalQuadraticSpline",
    "Planar", "Radial", "Householder", "RandomRotation",
    "CircularSplineTransform", "CircularSplineCoupling", "CircularSplineAutoregressive", "CircularShift",
]
