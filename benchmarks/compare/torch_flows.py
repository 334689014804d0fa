"""RealNVP and MAF in plain PyTorch, built to match nflow_np's ``flows.RealNVP`` / ``flows.MAF`` layer for layer.

Matching means the same work per step, so a time ratio compares
implementations rather than models:

- RealNVP: affine couplings, layer ``i`` (in sampling order) conditioning on the
  coordinates ``j`` with ``j % 2 == i % 2``; conditioner MLP ``a -> hidden ->
  2b`` with ReLU, He-normal weights, zero biases, a zero last layer; output
  ``[shift, raw]``, log-scale ``s = 3 tanh(raw / 3)``; ``y_b = x_b e^s + t``.
- MAF: MADE with cyclic hidden degrees (``k mod (D-1) + 1``), two outputs per
  feature laid out ``[shift..., raw...]``, the same soft clamp, identity order in
  every layer and a reversal of the coordinates between layers.
- Base: the standard normal. Density direction data -> base (``log_prob``),
  sampling base -> data, as nflow_np.
"""

import math

import torch
from torch import nn


def _he_linear(fan_in, fan_out, zero=False):
    layer = nn.Linear(fan_in, fan_out)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            layer.weight.normal_(0.0, math.sqrt(2.0 / max(fan_in, 1)))
        layer.bias.zero_()
    return layer


def _mlp(widths):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(_he_linear(fan_in, fan_out, zero=last))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _soft_clamp(raw, clamp=3.0):
    return clamp * torch.tanh(raw / clamp)


def _standard_normal_log_prob(z):
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2.0 * math.pi)


class AffineCoupling(nn.Module):
    def __init__(self, dim, parity, hidden):
        super().__init__()
        keep = torch.arange(dim) % 2 == parity
        a, b = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        # cat([x_a, x_b])[:, unsort] puts the columns back in place: one gather instead of two scatters
        self.register_buffer("unsort", torch.argsort(torch.cat([a, b])))
        self.nb = len(b)
        self.net = _mlp((len(a),) + tuple(hidden) + (2 * len(b),))

    def _shift_log_scale(self, cond):
        out = self.net(cond)
        return out[:, :self.nb], _soft_clamp(out[:, self.nb:])

    def inverse(self, y):
        """Data -> base, with log|det| of that map."""
        ya = y.index_select(1, self.a)
        shift, s = self._shift_log_scale(ya)
        xb = (y.index_select(1, self.b) - shift) * torch.exp(-s)
        return torch.cat([ya, xb], 1).index_select(1, self.unsort), -s.sum(-1)

    def forward(self, x):
        """Base -> data (sampling)."""
        xa = x.index_select(1, self.a)
        shift, s = self._shift_log_scale(xa)
        yb = x.index_select(1, self.b) * torch.exp(s) + shift
        return torch.cat([xa, yb], 1).index_select(1, self.unsort)


class RealNVP(nn.Module):
    def __init__(self, dim, n_layers, hidden):
        super().__init__()
        self.dim = dim
        # sampling order; log_prob walks them backwards
        self.layers = nn.ModuleList(AffineCoupling(dim, i % 2, hidden) for i in range(n_layers))

    def log_prob(self, x):
        log_det = torch.zeros(x.shape[0], dtype=x.dtype)
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            log_det = log_det + ld
        return _standard_normal_log_prob(x) + log_det

    def sample(self, n, generator=None):
        x = torch.randn(n, self.dim, generator=generator)
        for layer in self.layers:
            x = layer(x)
        return x


class MaskedLinear(nn.Linear):
    def __init__(self, mask, zero=False):
        fan_in, fan_out = mask.shape
        super().__init__(fan_in, fan_out)
        self.register_buffer("mask", mask.T.contiguous().float())
        with torch.no_grad():
            std = 0.0 if zero else math.sqrt(2.0 / fan_in)
            self.weight.normal_(0.0, 1.0).mul_(std).mul_(self.mask)
            self.bias.zero_()

    def forward(self, x):
        # masked every pass, so an optimizer step cannot open a forbidden connection
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def made_masks(dim, hidden):
    """Boolean (fan_in, fan_out) masks of MADE with identity order and cyclic hidden degrees."""
    degrees = [torch.arange(dim) + 1] + [torch.arange(w) % max(dim - 1, 1) + 1 for w in hidden]
    masks = [d_in[:, None] <= d_out[None, :] for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    out_degrees = (torch.arange(dim) + 1).repeat(2)
    masks.append(degrees[-1][:, None] < out_degrees[None, :])
    return masks


class MAFLayer(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        masks = made_masks(dim, hidden)
        layers = []
        for i, mask in enumerate(masks):
            layers.append(MaskedLinear(mask, zero=i == len(masks) - 1))
            if i < len(masks) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def _shift_log_scale(self, y):
        out = self.net(y)
        return out[:, :self.dim], _soft_clamp(out[:, self.dim:])

    def inverse(self, y):
        """Data -> base in one pass."""
        shift, s = self._shift_log_scale(y)
        return (y - shift) * torch.exp(-s), -s.sum(-1)

    def forward(self, x):
        """Base -> data: coordinate i needs coordinates < i, so D sequential passes."""
        y = torch.zeros_like(x)
        for i in range(self.dim):
            shift, s = self._shift_log_scale(y)
            y[:, i] = x[:, i] * torch.exp(s[:, i]) + shift[:, i]
        return y


class MAF(nn.Module):
    def __init__(self, dim, n_layers, hidden):
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(MAFLayer(dim, hidden) for _ in range(n_layers))

    def log_prob(self, x):
        log_det = torch.zeros(x.shape[0], dtype=x.dtype)
        for i, layer in enumerate(reversed(self.layers)):
            if i:
                x = x.flip(1)   # the reversal between layers (log-det 0)
            x, ld = layer.inverse(x)
            log_det = log_det + ld
        return _standard_normal_log_prob(x) + log_det

    def sample(self, n, generator=None):
        x = torch.randn(n, self.dim, generator=generator)
        for i, layer in enumerate(self.layers):
            if i:
                x = x.flip(1)
            x = layer(x)
        return x
