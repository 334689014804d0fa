"""Distributions: base densities and flows (``TransformedDistribution``)."""

from .base import Distribution
from .mixture import GaussianMixture
from .normal import MultivariateNormalDiag, Normal
from .student_t import StudentT
from .transformed import TransformedDistribution
from .uniform import Uniform

__all__ = ["Distribution", "Normal", "MultivariateNormalDiag", "Uniform", "GaussianMixture", "StudentT",
           "TransformedDistribution"]
