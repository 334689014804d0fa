"""Ready-made flows: RealNVP, NICE, MAF, IAF, NSF, NAF, BNAF, Planar and Radial over a standard normal base;
NCSF, a flow of angles over the uniform distribution on a torus.

Each constructor returns a ``TransformedDistribution`` whose bijector is a
``Chain``; every trainable array is reachable through ``flow.parameters()``.
``context=c`` makes every coupling or autoregressive layer conditional on a
``c``-wide input: the flow is then a conditional density p(x | context),
``flow.log_prob(x, context=y)``, ``flow.sample(n, context=y)``,
``fit(flow, x, context=y)``. ``embedding=net`` (an :class:`~nflow_np.nn.MLP`
or any layer following :mod:`nflow_np.nn.embedding`) maps the raw context to
the features every layer sees, trained with the flow; ``context`` then
defaults to ``net.out_features`` (see
:class:`~nflow_np.distributions.TransformedDistribution`).

``conditioner="resnet"`` swaps every coupling's MLP for a
:class:`~nflow_np.nn.ResidualMLP` and every MADE for a
:class:`~nflow_np.nn.ResidualMADE`, with ``hidden=(width,) * blocks``
(Durkan et al.'s residual conditioners, compiled like the MLPs).

``init="random"`` (the default) starts every conditioner as PyTorch's
``nn.Linear`` does, uniform in +-1/sqrt(fan_in) with the last layer
included, so each layer starts near the identity; ``init="identity"``
starts every layer exactly as the identity (He/Glorot-normal hidden layers,
a zero last layer). See :func:`nflow_np.bijectors.coupling.network_init`.
"""

import numpy as np

from ._validation import as_generator, resolve_dtype
from .bijectors import Chain, Permute, Reverse
from .bijectors.autoregressive import InverseAutoregressive, MaskedAutoregressive
from .bijectors.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling, alternating_mask
from .bijectors.autoregressive import SplineAutoregressive
from .distributions import MultivariateNormalDiag, TransformedDistribution
from .bijectors.autoregressive import CircularSplineAutoregressive
from .bijectors.circular import CircularShift
from .bijectors.coupling import CircularSplineCoupling


def _check_dim(dim, where, minimum=1):
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < minimum:
        if minimum == 2 and isinstance(dim, (int, np.integer)) and dim == 1:
            raise ValueError(f"{where}: a coupling flow needs dim >= 2 (one part conditions the other); for "
                             f"1-D data use nflow_np.flows.MAF(1) or an elementwise Chain (Shift, Scale, Sigmoid...)")
        raise ValueError(f"{where}: dim must be an int >= {minimum}; got {dim!r}")
    return int(dim)


def _standard_normal(dim, dtype):
    return MultivariateNormalDiag(np.zeros(dim, dtype=dtype), np.ones(dim, dtype=dtype))


def _between(dim, *, batch_norm, act_norm, lu_linear, rng, dtype):
    """Optional normalization / linear mixing layers, placed before a transform."""
    extra = []
    if batch_norm:
        from .bijectors.normalization import BatchNorm
        extra.append(BatchNorm(dim, dtype=dtype))
    if act_norm:
        from .bijectors.normalization import ActNorm
        extra.append(ActNorm(dim, dtype=dtype))
    if lu_linear:
        from .bijectors.lu import LULinear
        extra.append(LULinear(dim, rng=rng, dtype=dtype))
    return extra


def _context_width(context, embedding, where):
    """The layers' ``context``: the embedding's output width when only an embedding is given."""
    if embedding is None or context:
        return context
    width = getattr(embedding, "out_features", None)
    if not isinstance(width, (int, np.integer)) or isinstance(width, bool):
        from .nn.embedding import check_embedding
        check_embedding(embedding, 0, None, where)     # raises, naming what the object lacks
    return int(width)


def _stack(dim, n_layers, where, make_layer, mixer, *, batch_norm, act_norm, lu_linear, rng, dtype, min_dim=1,
           embedding=None):
    """Stack ``make_layer(i, rng, dtype)`` n_layers times, with optional layers and ``mixer()`` between them."""
    dim = _check_dim(dim, where, minimum=min_dim)
    if isinstance(n_layers, (bool, np.bool_)) or not isinstance(n_layers, (int, np.integer)):
        raise TypeError(f"{where}: n_layers must be an int >= 1; got {type(n_layers).__name__} {n_layers!r}")
    if n_layers < 1:
        raise ValueError(f"{where}: n_layers must be at least 1; got {n_layers}")
    rng = as_generator(rng)
    dtype = resolve_dtype(dtype, where=where)
    # Listed in sampling order (base first); Chain wants the last-applied first, so reverse at the end.
    stages = []
    for i in range(n_layers):
        if i > 0:
            stages.extend(_between(dim, batch_norm=batch_norm, act_norm=act_norm, lu_linear=lu_linear,
                                   rng=rng, dtype=dtype))
            mixing = mixer(dim, rng)
            if mixing is not None:
                stages.append(mixing)
        stages.append(make_layer(i, rng, dtype))
    return TransformedDistribution(_standard_normal(dim, dtype), Chain(list(reversed(stages))), embedding=embedding)


def _check_permute(permute, where):
    if not (permute is None or (isinstance(permute, str) and permute == "random")):
        raise ValueError(f"{where}: permute must be None or 'random'; got {permute!r}")


def _coupling_flow(layer_cls, dim, n_layers, hidden, activation, where, *, batch_norm, act_norm, lu_linear,
                   permute, rng, dtype, embedding=None, **layer_kwargs):
    _check_permute(permute, where)
    layer_kwargs["context"] = _context_width(layer_kwargs.get("context", 0), embedding, where)
    def make_layer(i, rng, dtype):
        return layer_cls(alternating_mask(dim, parity=i % 2), hidden, activation, rng=rng, dtype=dtype,
                         **layer_kwargs)

    def mixer(d, rng):
        return Permute(rng.permutation(d)) if permute == "random" else None

    return _stack(dim, n_layers, where, make_layer, mixer, batch_norm=batch_norm, act_norm=act_norm,
                  lu_linear=lu_linear, rng=rng, dtype=dtype, min_dim=2, embedding=embedding)


def RealNVP(dim, n_layers=4, hidden=(8, 8), activation="relu", *, batch_norm=False, act_norm=False,
            lu_linear=False, permute=None, log_scale_clamp=3.0, context=0, init="random", rng=None, dtype=np.float64,
            conditioner="mlp", embedding=None, clamp_shape="rational"):
    """RealNVP: affine couplings with alternating masks over a standard normal.

    ``batch_norm`` / ``act_norm`` / ``lu_linear`` insert those layers between
    couplings; ``permute="random"`` adds a fixed random permutation there.
    ``context=c``: a conditional flow (see the module docstring).

    References: Dinh, Sohl-Dickstein and Bengio, "Density estimation using Real NVP", ICLR 2017.
    """
    return _coupling_flow(AffineCoupling, dim, n_layers, hidden, activation, "RealNVP", batch_norm=batch_norm,
                          act_norm=act_norm, lu_linear=lu_linear, permute=permute, rng=rng, dtype=dtype,
                          log_scale_clamp=log_scale_clamp, context=context, init=init, conditioner=conditioner,
                          embedding=embedding, clamp_shape=clamp_shape)


def NICE(dim, n_layers=4, hidden=(64, 64), activation="relu", *, batch_norm=False, act_norm=True,
         lu_linear=False, permute=None, context=0, init="random", rng=None, dtype=np.float64, conditioner="mlp",
         embedding=None):
    """NICE: additive (volume-preserving) couplings; ``act_norm`` (default on) supplies the scaling
    that NICE's final diagonal layer provides.

    References: Dinh, Krueger and Bengio, "NICE: Non-linear Independent Components Estimation", 2015.
    """
    flow = _coupling_flow(AdditiveCoupling, dim, n_layers, hidden, activation, "NICE", batch_norm=batch_norm,
                          act_norm=False, lu_linear=lu_linear, permute=permute, rng=rng, dtype=dtype,
                          context=context, init=init, conditioner=conditioner, embedding=embedding)
    if act_norm:
        from .bijectors.normalization import ActNorm
        # a trainable diagonal scaling on the data side, as NICE's last layer
        chain = Chain([ActNorm(flow.event_shape[0], dtype=dtype)] + flow.bijector.bijectors)
        flow = TransformedDistribution(flow.distribution, chain, embedding=flow.embedding)
    return flow


def MAF(dim, n_layers=5, hidden=(64, 64), activation="relu", *, batch_norm=False, act_norm=False,
        lu_linear=False, log_scale_clamp=3.0, context=0, init="random", rng=None, dtype=np.float64, conditioner="mlp",
        embedding=None, clamp_shape="rational"):
    """MAF: masked autoregressive layers with the order reversed between layers.

    Density evaluation takes one network call per layer; sampling ``dim`` calls per layer.

    References: Papamakarios, Pavlakou and Murray, "Masked Autoregressive Flow for Density Estimation", 2017.
    """
    return _autoregressive_flow(MaskedAutoregressive, dim, n_layers, hidden, activation, "MAF",
                                batch_norm=batch_norm, act_norm=act_norm, lu_linear=lu_linear, rng=rng, dtype=dtype,
                                log_scale_clamp=log_scale_clamp, context=context, init=init,
                                conditioner=conditioner, embedding=embedding, clamp_shape=clamp_shape)


def IAF(dim, n_layers=5, hidden=(64, 64), activation="relu", *, log_scale_clamp=3.0, context=0, init="random",
        rng=None, dtype=np.float64, conditioner="mlp", embedding=None, clamp_shape="rational"):
    """IAF: inverse autoregressive layers; sampling takes one network call per layer (variational inference).

    References: Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", 2016.
    """
    return _autoregressive_flow(InverseAutoregressive, dim, n_layers, hidden, activation, "IAF",
                                batch_norm=False, act_norm=False, lu_linear=False, rng=rng, dtype=dtype,
                                log_scale_clamp=log_scale_clamp, context=context, init=init,
                                conditioner=conditioner, embedding=embedding, clamp_shape=clamp_shape)


def NSF(dim, n_layers=5, bins=8, bound=5.0, hidden=(64, 64), activation="relu", *, autoregressive=False,
        batch_norm=False, act_norm=False, lu_linear=False, permute=None, context=0, init="random", rng=None,
        dtype=np.float64, conditioner="mlp", embedding=None, parameterization="bounded"):
    """Neural spline flow: rational-quadratic spline layers over a standard normal.

    Each layer transforms half of the coordinates (``autoregressive=False``:
    :class:`~nflow_np.bijectors.SplineCoupling`, alternating masks, ``dim >= 2``)
    or every coordinate given the earlier ones (``autoregressive=True``:
    :class:`~nflow_np.bijectors.SplineAutoregressive`, order reversed between
    layers) with a monotone spline of ``bins`` bins on ``[-bound, bound]``,
    the identity outside. Data should be standardized so that it lies mostly
    inside the bound. ``context=c``: a conditional flow. ``parameterization``:
    how the conditioners' outputs map to bins and slopes, ``"bounded"`` (the
    default: soft-clipped logits and log-slopes) or ``"softplus"`` (a floor plus
    softmax widths, softplus slopes: the earlier default); formulas in
    :class:`~nflow_np.bijectors.RationalQuadraticSpline`.

    References: Durkan, Bekasov, Murray and Papamakarios, "Neural Spline Flows", NeurIPS 2019.
    """
    _check_permute(permute, "NSF")
    if autoregressive:
        return _autoregressive_flow(SplineAutoregressive, dim, n_layers, hidden, activation, "NSF",
                                    batch_norm=batch_norm, act_norm=act_norm, lu_linear=lu_linear, rng=rng,
                                    dtype=dtype, bins=bins, bound=bound, context=context, init=init,
                                    conditioner=conditioner, embedding=embedding,
                                    parameterization=parameterization)
    return _coupling_flow(SplineCoupling, dim, n_layers, hidden, activation, "NSF", batch_norm=batch_norm,
                          act_norm=act_norm, lu_linear=lu_linear, permute=permute, rng=rng, dtype=dtype,
                          bins=bins, bound=bound, context=context, init=init, conditioner=conditioner,
                          embedding=embedding, parameterization=parameterization)


def NAF(dim, n_layers=5, hidden=(64, 64), sigmoid_units=8, activation="relu", *, batch_norm=False,
        act_norm=False, lu_linear=False, min_slope=1e-3, context=0, init="random", rng=None, dtype=np.float64,
        conditioner="mlp", embedding=None):
    """Neural autoregressive flow: MADE-conditioned deep sigmoidal transforms, order reversed between layers.

    Each layer maps data to base coordinate by coordinate,
    ``x_i = logit(sum_j w_ij sigmoid(a_ij y_i + b_ij))`` with ``sigmoid_units``
    terms whose parameters come from ``y_<i`` (and the context): an
    :class:`~nflow_np.bijectors.Autoregressive` layer with a
    :class:`~nflow_np.bijectors.SigmoidalTransform`. Density evaluation takes
    one network call per layer; sampling solves each coordinate numerically
    (bracketed Newton), ``dim`` network calls per layer. ``context``,
    ``conditioner`` and ``embedding`` as for :func:`NSF`.

    References: Huang, Krueger, Lacoste and Courville, "Neural Autoregressive Flows", ICML 2018.
    """
    from .bijectors import Autoregressive, SigmoidalTransform
    if isinstance(sigmoid_units, bool) or not isinstance(sigmoid_units, (int, np.integer)) or sigmoid_units < 1:
        raise ValueError(f"NAF: sigmoid_units must be a positive int; got {sigmoid_units!r}")
    SigmoidalTransform(sigmoid_units, min_slope, "NAF")     # validates min_slope before any layer is built

    def layer(features, hidden, activation, **kwargs):
        return Autoregressive(features, SigmoidalTransform(sigmoid_units, min_slope, "NAF"), hidden, activation,
                              **kwargs)

    return _autoregressive_flow(layer, dim, n_layers, hidden, activation, "NAF", batch_norm=batch_norm,
                                act_norm=act_norm, lu_linear=lu_linear, rng=rng, dtype=dtype, context=context,
                                init=init, conditioner=conditioner, embedding=embedding)


def BNAF(dim, n_layers=1, hidden_factor=8, hidden_layers=2, *, leak=0.01, batch_norm=False, act_norm=False,
         lu_linear=False, rng=None, dtype=np.float64):
    """Block neural autoregressive flow: ``n_layers`` BNAF networks, order reversed between them.

    Each layer is a :class:`~nflow_np.bijectors.BlockNeuralAutoregressive`: a
    network with ``hidden_layers`` leaky-tanh layers of ``dim * hidden_factor``
    units and block-triangular weights with positive diagonal blocks, monotone
    in each coordinate given the ones before it. Density evaluation is one
    network pass per layer; sampling solves the coordinates one after the
    other, each by a bracketed Newton iteration.

    References: De Cao, Aziz and Titov, "Block Neural Autoregressive Flow", UAI 2019.
    """
    from .bijectors import BlockNeuralAutoregressive
    BlockNeuralAutoregressive(1, hidden_factor, hidden_layers, leak=leak, name="BNAF")     # validates the settings

    def make_layer(i, rng, dtype):
        return BlockNeuralAutoregressive(dim, hidden_factor, hidden_layers, leak=leak, rng=rng, dtype=dtype)

    def mixer(d, rng):
        return Reverse() if d > 1 else None

    return _stack(dim, n_layers, "BNAF", make_layer, mixer, batch_norm=batch_norm, act_norm=act_norm,
                  lu_linear=lu_linear, rng=rng, dtype=dtype)


def _autoregressive_flow(layer_cls, dim, n_layers, hidden, activation, where, *, batch_norm, act_norm, lu_linear,
                         rng, dtype, embedding=None, **layer_kwargs):
    layer_kwargs["context"] = _context_width(layer_kwargs.get("context", 0), embedding, where)
    def make_layer(i, rng, dtype):
        return layer_cls(dim, hidden, activation, rng=rng, dtype=dtype, **layer_kwargs)

    def mixer(d, rng):
        # reverse the autoregressive order between layers
        return Reverse() if d > 1 else None

    return _stack(dim, n_layers, where, make_layer, mixer, batch_norm=batch_norm, act_norm=act_norm,
                  lu_linear=lu_linear, rng=rng, dtype=dtype, embedding=embedding)


def _residual_flow(layer_cls, dim, n_layers, where, rng, dtype):
    def make_layer(i, rng, dtype):
        return layer_cls(dim, rng=rng, dtype=dtype)

    return _stack(dim, n_layers, where, make_layer, lambda d, rng: None, batch_norm=False, act_norm=False,
                  lu_linear=False, rng=rng, dtype=dtype)


def Planar(dim, n_layers=8, *, rng=None, dtype=np.float64):
    """A chain of ``n_layers`` planar layers (:class:`~nflow_np.bijectors.Planar`) over a standard normal.

    Each layer bends space along one hyperplane, ``y = x + u_hat tanh(w . x + b)``. Sampling and its
    log-density are explicit, so the flow suits variational inference
    (:func:`~nflow_np.train.fit_to_target`); ``log_prob`` of given points solves one scalar equation per
    layer.

    References: Rezende and Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    """
    from .bijectors.planar import Planar as PlanarLayer
    return _residual_flow(PlanarLayer, dim, n_layers, "Planar", rng, dtype)


def Radial(dim, n_layers=8, *, rng=None, dtype=np.float64):
    """A chain of ``n_layers`` radial layers (:class:`~nflow_np.bijectors.Radial`) over a standard normal.

    Each layer contracts or expands space around a point ``z0``; its inverse has a closed form, so
    sampling and density evaluation cost the same.

    References: Rezende and Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    """
    from .bijectors.radial import Radial as RadialLayer
    return _residual_flow(RadialLayer, dim, n_layers, "Radial", rng, dtype)


def NCSF(dim, n_layers=4, bins=8, hidden=(64, 64), activation="relu", *, autoregressive=True, bound=np.pi,
         permute=None, rotate=False, context=0, init="random", rng=None, dtype=np.float64, conditioner="mlp",
         embedding=None):
    """Neural circular spline flow: a density on the torus ``[-bound, bound]^dim`` (angles; ``bound`` pi by default).

    The base is the uniform distribution on the torus, and every layer maps
    the torus onto itself: circular rational-quadratic splines
    (:class:`~nflow_np.bijectors.transforms.CircularSplineTransform`, ``bins``
    bins, both ends fixed, one shared end slope) of every coordinate given the
    earlier ones (``autoregressive=True``, the default:
    :class:`~nflow_np.bijectors.CircularSplineAutoregressive`, the order
    reversed between layers; ``dim = 1`` works, each layer then one learned
    circle map) or of half of the coordinates given the other half
    (``autoregressive=False``: :class:`~nflow_np.bijectors.CircularSplineCoupling`,
    alternating masks, ``dim >= 2``; ``permute="random"`` adds a fixed random
    permutation between layers). ``rotate=True`` puts a trainable
    :class:`~nflow_np.bijectors.CircularShift` between layers, starting at
    random angles, which moves the point ``+-bound`` that every circular
    spline fixes. Data must lie in ``[-bound, bound]`` (wrap angles first);
    ``log_prob`` refuses other points with a ``ValueError``. ``context=c``:
    a conditional flow; ``embedding`` and ``conditioner`` as for :func:`NSF`.
    The conditioners read the angles as they are, as zuko's NCSF does, so a
    layer's parameters jump where a conditioning angle crosses ``+-bound``;
    the map stays a bijection of the torus with exact log-dets.

    The compiled engine runs the whole flow, its uniform base and rotations
    included, on the ``"numba"`` backend (and on ``"cuda"``).

    References: Rezende, Papamakarios, Racanière, Albergo, Kanwar, Shanahan
    and Cranmer, "Normalizing Flows on Tori and Spheres", ICML 2020; Durkan et
    al., "Neural Spline Flows", NeurIPS 2019.
    """
    from .distributions import Uniform

    where = "NCSF"
    _check_permute(permute, where)
    context = _context_width(context, embedding, where)
    dtype = resolve_dtype(dtype, where=where)
    if not isinstance(rotate, (bool, np.bool_)):
        raise TypeError(f"{where}: rotate must be True or False; got {rotate!r}")
    if not autoregressive and isinstance(dim, (int, np.integer)) and dim == 1:
        raise ValueError(f"{where}: autoregressive=False (couplings) needs dim >= 2, one part conditioning the "
                         f"other; for one angle use autoregressive=True (one learned circle map per layer)")
    if autoregressive:
        def make_layer(i, rng, dtype):
            return CircularSplineAutoregressive(dim, hidden, activation, bins=bins, bound=bound, context=context,
                                                rng=rng, dtype=dtype, init=init, conditioner=conditioner)
    else:
        def make_layer(i, rng, dtype):
            return CircularSplineCoupling(alternating_mask(dim, parity=i % 2), hidden, activation, bins=bins,
                                          bound=bound, context=context, rng=rng, dtype=dtype, init=init,
                                          conditioner=conditioner)

    def mixer(d, rng):
        parts = []
        if autoregressive and d > 1:
            parts.append(Reverse())
        elif not autoregressive and permute == "random":
            parts.append(Permute(rng.permutation(d)))
        if rotate:
            parts.append(CircularShift(rng.uniform(-bound, bound, d).astype(dtype), bound=bound, dtype=dtype))
        return Chain(parts) if len(parts) > 1 else (parts[0] if parts else None)

    flow = _stack(dim, n_layers, where, make_layer, mixer, batch_norm=False, act_norm=False, lu_linear=False, rng=rng,
                  dtype=dtype, min_dim=1 if autoregressive else 2)
    d = flow.event_shape[0]
    torus = Uniform(np.full(d, -bound, dtype=dtype), np.full(d, bound, dtype=dtype), dtype=dtype)
    return TransformedDistribution(torus, flow.bijector, embedding=embedding)
