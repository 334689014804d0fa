"""The protocol of a context embedding: a network a conditional flow runs on its raw context first.

A conditional flow ``p(x | c)`` whose layers are built with ``context=k`` can
take ``embedding=net``: ``net`` maps the raw context ``c`` (width
``net.in_features``) to ``k`` features, computed once per call and shared by
every layer, and is trained with the flow (its parameters are the flow's
``"embedding.*"``). Any object with the members below qualifies;
:class:`~nflow_np.nn.MLP` and :class:`~nflow_np.nn.ResidualMLP` (built without
``context_features``) do.

``in_features``, ``out_features`` : int
    Widths of the raw context and of the features.
``dtype`` : numpy dtype
    The flow's dtype.
``params`` : dict of str to ndarray, and ``parameters()``
    The trainable arrays, updated in place by optimizers; ``parameters()``
    yields ``(name, array)`` pairs of those same arrays.
``forward_with_cache(c) -> (features, cache)``
    ``c`` of shape ``(..., in_features)``; ``features`` of shape ``(..., out_features)``.
``backward(cache, grad_features) -> (grad_c, grads)``
    The vector-Jacobian product: the gradient of ``sum(grad_features * features)``
    with respect to ``c`` and to every parameter (a dict keyed as ``parameters()``).

References: Durkan, Bekasov, Murray and Papamakarios, ``nflows`` (its
``embedding_net``); Papamakarios et al., "Normalizing Flows for Probabilistic
Modeling and Inference", JMLR 2021, section 7.
"""

import numpy as np

__all__ = ["check_embedding", "EMBEDDING_MEMBERS"]

EMBEDDING_MEMBERS = ("in_features", "out_features", "dtype", "params", "parameters", "forward_with_cache", "backward")


def check_embedding(embedding, features, dtype, where):
    """Validate a flow's ``embedding`` against its layers' context width ``features`` and its ``dtype``.

    Returns the embedding. Raises ``TypeError`` for an object missing a member of
    the protocol (or of another dtype) and ``ValueError`` for widths that do not fit.
    """
    missing = [m for m in EMBEDDING_MEMBERS if not hasattr(embedding, m)]
    if missing:
        raise TypeError(f"{where}: embedding must provide {', '.join(EMBEDDING_MEMBERS)} (see "
                        f"nflow_np.nn.embedding), e.g. nflow_np.nn.MLP(raw_width, {features or 'k'}); "
                        f"{type(embedding).__name__} lacks {', '.join(missing)}")
    for m in ("parameters", "forward_with_cache", "backward"):
        if not callable(getattr(embedding, m)):
            raise TypeError(f"{where}: embedding.{m} must be callable; got {getattr(embedding, m)!r}")
    for m in ("in_features", "out_features"):
        value = getattr(embedding, m)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{where}: embedding.{m} must be an int >= 1; got {value!r}")
    if getattr(embedding, "context_features", 0):
        raise ValueError(f"{where}: the embedding takes the raw context as its only input; build it without "
                         f"context_features (got context_features={embedding.context_features})")
    if not features:
        raise ValueError(f"{where}: an embedding needs conditional layers (built with context=k, k = "
                         f"embedding.out_features = {embedding.out_features}); this flow's layers take no context")
    if embedding.out_features != features:
        raise ValueError(f"{where}: embedding.out_features must equal the layers' context width {features}; "
                         f"got {embedding.out_features}")
    if np.dtype(embedding.dtype) != np.dtype(dtype):
        raise TypeError(f"{where}: the embedding is {np.dtype(embedding.dtype)} but the flow is {np.dtype(dtype)}; "
                        f"build both with one dtype")
    return embedding
