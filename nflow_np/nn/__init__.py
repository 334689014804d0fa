"""Dense networks with hand-written backprop: :class:`MLP` and MADE's :class:`MaskedMLP`."""

from .mlp import ACTIVATIONS, MLP, MaskedMLP, made_degrees

__all__ = ["ACTIVATIONS", "MLP", "MaskedMLP", "made_degrees"]
