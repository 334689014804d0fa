"""Distributions: base densities and flows (``TransformedDistribution``)."""

from .base import Distribution
from .normal import MultivariateNormalDiag, Normal
from .transformed import TransformedDistribution
from .uniform import Uniform

__all__ = ["Distribution", "Normal", "MultivariateNormalDiag", "Uniform", "TransformedDistribution"]
