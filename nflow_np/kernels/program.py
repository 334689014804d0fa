"""A whole flow as one compiled program: log_prob, sampling and training epochs without Python per layer.

:func:`compile_flow` flattens a ``TransformedDistribution`` (standard normal
base, a ``Chain`` of supported layers) into plain arrays that compiled code
walks with one loop over layers:

``ops``      int64 ``(L,)``: the op of each layer, in density order (data -> base);
``fields``   int64 ``(L, 8)``: per-layer offsets and flags (``F_*`` below);
``clamps``   ``(L,)`` in the parameters' dtype: log-scale clamps (0: none);
``idata``    int64: index arrays and network widths, each stored as ``[count, values...]``;
``theta``    the parameters, flat, in ``flow.parameters()``'s shapes; ``pmask``
             multiplies them (MADE masks; ones elsewhere) into ``theta_eff``;
``layout``   int64: per-row offsets of the workspace regions (``W_*`` below).

Supported layers: AffineCoupling, AdditiveCoupling, SplineCoupling, MaskedAutoregressive,
SplineAutoregressive, Permute, Reverse, ActNorm, BatchNorm, and Chains of them, with relu/tanh/elu networks;
couplings may be conditional (a context appended to their network input), autoregressive
layers not. Anything else makes :func:`compile_flow` raise
:class:`Unsupported`, and callers run the bijectors' own NumPy passes.

Workspace: ``ws`` is ``(parts, n * row + const)``: each part (a thread's
share of the rows) processes chunks of ``n`` rows; region ``k`` of a chunk
starts at ``n * layout[k]``. ``Z_l`` (the input of density-order layer ``l``,
``Z_0`` the data and ``Z_L`` the base point) are kept for the backward, with
each layer's caches; gradients ping-pong between two ``n x d`` blocks. The
``W_CTX`` block holds the chunk's context rows (``layout[W_CTXW]`` wide, 0
for an unconditional flow); a conditional coupling copies them into its
network input after the gathered coordinates.
"""

from .specs import Unsupported

__all__ = ["Unsupported"]

OP_COUPLING, OP_MAF, OP_PERMUTE, OP_ACTNORM, OP_BATCHNORM, OP_SPLINE, OP_SPLINE_MAF = 0, 1, 2, 3, 4, 5, 6
# fields columns: parameter offset, widths, activation, index arrays a / b, cache offset, affine flag (spline:
# bins), MADE groups (spline: offset in theta of [bound, min_bin_width, min_bin_height, min_derivative])
F_THETA, F_WIDTHS, F_ACT, F_A, F_B, F_CACHE, F_FLAG, F_GROUPS = range(8)
# layout entries (per-row offsets), the two totals, and the number of trainable entries of theta (the
# rest holds BatchNorm's running statistics, which the optimizer leaves alone)
W_Z, W_LD, W_G0, W_G1, W_GLD, W_GNET, W_GCOND, W_D1, W_D2, W_ROW, W_CONST, W_PARAMS = range(12)
# the context block's per-row offset and width
W_CTX, W_CTXW = 12, 13
