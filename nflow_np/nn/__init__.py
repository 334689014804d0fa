"""Dense networks with hand-written backprop: :class:`MLP` and MADE's :class:`MaskedMLP`, and their residual forms
:class:`ResidualMLP` and :class:`ResidualMADE`; :func:`check_embedding` validates a flow's context embedding."""

from .mlp import ACTIVATIONS, MLP, MaskedMLP, made_degrees
from .embedding import check_embedding
from .resnet import ResidualMADE, ResidualMLP

__all__ = ["ACTIVATIONS", "MLP", "MaskedMLP", "ResidualMLP", "ResidualMADE", "made_degrees", "check_embedding"]
