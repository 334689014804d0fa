"""A whole flow as one compiled program: log_prob, sampling and training epochs without Python per layer.

:func:`compile_flow` flattens a ``TransformedDistribution`` (a standard normal
base or a uniform box, a ``Chain`` of supported layers) into plain arrays that compiled code
walks with one loop over layers:

``ops``      int64 ``(L,)``: the op of each layer, in density order (data -> base);
``fields``   int64 ``(L, N_FIELDS)``: per-layer offsets and flags (``F_*`` below);
``clamps``   ``(L,)`` in the parameters' dtype: log-scale clamps (0: none);
``idata``    int64: index arrays and network widths, each stored as ``[count, values...]``;
``theta``    the parameters, flat, in ``flow.parameters()``'s shapes; ``pmask``
             multiplies them (MADE masks; ones elsewhere) into ``theta_eff``;
             after them, running statistics and constants, and last the MADE weights packed
             by degree, which a sampling call gathers from ``theta_eff`` (zeros otherwise);
``layout``   int64: per-row offsets of the workspace regions (``W_*`` below).

Supported layers: whatever lowers to a coupling or autoregressive frame with a transform of
:mod:`.transforms`, Permute, Reverse, ActNorm, BatchNorm, CircularShift, and Chains of them, with
relu/tanh/elu networks (MLPs or residual networks, :mod:`.residual`); couplings may be conditional (a context
appended to their network input), autoregressive
layers not. Anything else makes :func:`compile_flow` raise
:class:`Unsupported`, and callers run the bijectors' own NumPy passes.

Workspace: ``ws`` is ``(parts, n * row)``: each part (a thread's
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

OP_COUPLING, OP_AUTOREGRESSIVE, OP_PERMUTE, OP_ACTNORM, OP_BATCHNORM, OP_CIRCULAR_SHIFT = range(6)
# the ops' entry names; a frame's is completed by its transform's (:mod:`.transforms`): "coupling.affine"
OP_NAMES = ("coupling", "autoregressive", "permute", "actnorm", "batchnorm", "circular_shift")
# fields columns: parameter offset, widths, activation, index arrays a / b (an autoregressive layer: none /
# its generation order), cache offset, a flag (a coupling: its network emits parameters by coordinate; a
# BatchNorm: training mode), MADE's degree groups, the offset in theta of the transform's constants, and the
# transform's parameters per coordinate (a circular shift: its number of angles), and the offset in theta of a
# MADE's weights packed by degree for sampling (:func:`~.plan.made_pack_index`)
F_THETA, F_WIDTHS, F_ACT, F_A, F_B, F_CACHE, F_FLAG, F_GROUPS, F_CONSTS, F_PARAMS, F_PACK = range(11)
N_FIELDS = 11
# layout entries (per-row offsets), the row's total, and the number of trainable entries of theta (the
# rest holds BatchNorm's running statistics, which the optimizer leaves alone)
W_Z, W_LD, W_G0, W_G1, W_GLD, W_GNET, W_GCOND, W_D1, W_D2, W_ROW, W_PARAMS = range(11)
# the context block's per-row offset and width
W_CTX, W_CTXW = 11, 12
# the base distribution (BASE_*) and the offset in theta of its constants (a uniform box: the log-density inside,
# then low, high, span and half, d each)
W_BASE, W_BASEC = 13, 14
N_LAYOUT = 15
BASE_NORMAL, BASE_UNIFORM = 0, 1
