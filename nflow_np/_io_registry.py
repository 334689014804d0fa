"""The registry behind :mod:`nflow_np.io`: how each built-in type is written to and rebuilt from a model file.

Each entry is ``name -> (to_spec, from_spec)``: ``to_spec`` records exactly the
constructor arguments that rebuild an object (masks, hidden widths,
activation, order, clamp, dtype, name...) and the arrays it holds;
``from_spec`` calls the constructor and copies the stored arrays in, refusing
any array whose name, shape or dtype the rebuilt object does not have.
"""

import numpy as np

from .bijectors import (
    ActNorm, AdditiveCoupling, Affine, AffineCoupling, Autoregressive, BatchNorm, Chain, Coupling, Exp, Identity,
    InverseAutoregressive,
    Invert, LeakyReLU, LULinear, MaskedAutoregressive, NormalCDF, Permute, Power, RationalQuadraticSpline, Reverse,
    Rotation, Scale, ScaleMatvecTriL, Shift, Sigmoid, Softplus, Softsign, SplineAutoregressive, SplineCoupling, Tanh,
)
from .bijectors.block_autoregressive import BlockNeuralAutoregressive
from .bijectors import Householder, Planar, Radial, RandomRotation
from .bijectors import CircularShift, CircularSplineAutoregressive, CircularSplineCoupling
from .bijectors.transforms import CLAMP_SHAPES, TRANSFORMS
from .distributions import (
    GaussianMixture, MultivariateNormalDiag, Normal, StudentT, TransformedDistribution, Uniform,
)
from .nn import MLP, ResidualMLP

REGISTRY = {}
"""Type name -> ``(to_spec, from_spec)``; see :func:`register`."""

_NAMES = {}   # class -> registered name (exact types only: a subclass may add state we do not know)


def register(name, cls, to_spec, from_spec):
    """Make a bijector or distribution type savable.

    Parameters
    ----------
    name : str
        The type's name in model files; unique.
    cls : type
        The class; only objects of exactly this type use the entry.
    to_spec : callable
        ``to_spec(obj, encode) -> (config, arrays)``: a JSON-serializable dict
        of constructor arguments and a dict of float arrays to store.
        ``encode(child, local_name)`` returns the spec of a contained object.
    from_spec : callable
        ``from_spec(config, arrays, decode) -> obj``: rebuild the object;
        ``decode(child_spec, local_name)`` rebuilds a contained one. Arrays
        arrive checked against the spec (shape, dtype, finite).

    Returns
    -------
    None
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register: name must be a non-empty str; got {name!r}")
    REGISTRY[name] = (to_spec, from_spec)
    _NAMES[cls] = name


# ---------------------------------------------------------------------------- helpers for entries

def _dtype_name(dtype):
    return None if dtype is None else np.dtype(dtype).name


def _live_arrays(obj):
    """The arrays a built object holds (parameters and buffers), by local name; the load target."""
    arrays = dict(obj.parameters())
    buffers = getattr(obj, "buffers", None)
    if callable(buffers):
        for key, value in buffers():
            arrays[key] = value
    return arrays


def _restore(obj, arrays):
    """Copy stored arrays into a freshly built object, refusing any mismatch with its architecture."""
    live = _live_arrays(obj)
    missing = sorted(set(live) - set(arrays))
    extra = sorted(set(arrays) - set(live))
    if missing or extra:
        raise ValueError(f"the spec lists arrays {sorted(arrays)} but this architecture holds {sorted(live)}"
                         + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
    for key, target in live.items():
        value = arrays[key]
        if value.shape != target.shape:
            raise ValueError(f"array {key!r} has shape {value.shape} but the architecture in the spec needs "
                             f"{target.shape}")
        if value.dtype != target.dtype:
            raise ValueError(f"array {key!r} has dtype {value.dtype} but the layer computes in {target.dtype}")
        # in place, so that objects sharing the array (none today, optimizers later) see the values
        np.copyto(target, value)
    return obj


def _leaf(build, config_of):
    """An entry for a leaf (no children): ``config_of(obj)`` -> config, ``build(config, arrays)`` -> obj."""
    def to_spec(obj, encode):
        return config_of(obj), _live_arrays(obj)

    def from_spec(config, arrays, decode):
        return _restore(build(config, arrays), arrays)
    return to_spec, from_spec


def _named(obj):
    return {"name": obj.name, "dtype": _dtype_name(obj.dtype)}


def _plain(cls):
    """Parameter-free elementwise bijectors."""
    return _leaf(lambda c, a: cls(dtype=c["dtype"], name=c["name"]), _named)


def _with_params(cls, *keys):
    """Elementwise and linear bijectors whose constructor takes their parameter arrays by name."""
    return _leaf(lambda c, a: cls(*(a[k] for k in keys), dtype=c["dtype"], name=c["name"]), _named)


def _sigmoid_build(config, arrays):
    if config["bounded"]:
        return Sigmoid(arrays["low"], arrays["high"], dtype=config["dtype"], name=config["name"])
    return Sigmoid(dtype=config["dtype"], name=config["name"])


def _leaky_build(config, arrays):
    # alpha goes in as log(alpha) would come back with a rounding error: build with ones, copy log_alpha in
    shape = arrays["log_alpha"].shape
    return LeakyReLU(np.ones(shape, dtype=config["dtype"]), dtype=config["dtype"], name=config["name"])


def _affine_build(config, arrays):
    return Affine(**arrays, dtype=config["dtype"], name=config["name"])


def _clamp(value):
    return None if value is None else float(value)


def _layer_spline_config(layer):
    """A spline layer's bins, bound, minima and parameterization (``SplineSettings``), as constructor keywords."""
    sp = layer.spline
    return dict(bins=sp.bins, bound=sp.bound, min_bin_width=sp.min_bin_width, min_bin_height=sp.min_bin_height,
                min_derivative=sp.min_derivative, parameterization=sp.parameterization)


def _spline_parameterization(c):
    # spline layers saved before the parameterization was an option use the softplus one
    return c.get("parameterization", "softplus")


def _layer_spline_kwargs(c):
    return dict(bins=int(c["bins"]), bound=float(c["bound"]), min_bin_width=float(c["min_bin_width"]),
                min_bin_height=float(c["min_bin_height"]), min_derivative=float(c["min_derivative"]),
                parameterization=_spline_parameterization(c))


def _coupling_config(obj):
    config = _named(obj)
    config.update(mask=obj.mask.tolist(), hidden=list(obj.net.hidden), activation=obj.net.activation,
                  context=obj.context_size, conditioner=obj.conditioner)
    if isinstance(obj, AffineCoupling):
        config.update(_affine_config(obj.transform))
    if isinstance(obj, SplineCoupling):
        config.update(_layer_spline_config(obj))
    return config


def _agree(arrays, key, axis, value, what):
    """Refuse a size in the spec that the stored arrays contradict, before a constructor allocates it
    (a hand-edited width of 10**9 must fail here, not exhaust memory)."""
    shape = arrays[key].shape
    if not isinstance(value, int) or isinstance(value, bool) or len(shape) <= axis or shape[axis] != value:
        raise ValueError(f"the spec's {what} {value!r} does not match array {key!r} of shape {shape}")


def _check_net(arrays, prefix, hidden, n_inputs, conditioner="mlp"):
    if conditioner == "resnet":
        _agree(arrays, f"{prefix}in_w", 0, n_inputs, "network input size")
        for i, width in enumerate(hidden):
            _agree(arrays, f"{prefix}block{i}_w0", 1, width, f"residual block width {i}")
        return
    _agree(arrays, f"{prefix}w0", 0, n_inputs, "network input size")
    for i, width in enumerate(hidden):
        _agree(arrays, f"{prefix}w{i}", 1, width, f"hidden width {i}")


def _conditioner(c):
    # files written before residual conditioners existed have none: their networks were MLPs
    kind = c.get("conditioner", "mlp")
    if kind not in ("mlp", "resnet"):
        raise ValueError(f"a layer's conditioner must be 'mlp' or 'resnet'; got {kind!r}")
    return kind


def _context(c):
    # files written before conditional layers existed have no "context": those layers were unconditional
    return int(c.get("context", 0))


def _coupling_build(cls):
    def build(c, a):
        _check_net(a, "net.", c["hidden"], int(np.count_nonzero(c["mask"])) + _context(c), _conditioner(c))
        extra = _affine_kwargs(c) if cls is AffineCoupling else {}
        if cls is SplineCoupling:
            extra = _layer_spline_kwargs(c)
        # rng=0: the initial weights are overwritten, a fixed seed just skips drawing OS entropy
        return cls(np.array(c["mask"], dtype=bool), tuple(c["hidden"]), c["activation"], context=_context(c), rng=0,
                   dtype=c["dtype"], name=c["name"], conditioner=_conditioner(c), **extra)
    return build


def _made_config(obj):
    made = obj if isinstance(obj, (MaskedAutoregressive, SplineAutoregressive)) else obj.bijector
    config = _named(obj)
    config.update(features=made.features, hidden=list(made.net.hidden), activation=made.net.activation,
                  order=made.net.order.tolist(), context=made.context_size, conditioner=made.conditioner)
    if isinstance(made, SplineAutoregressive):
        config.update(_layer_spline_config(made))
    else:
        config.update(_affine_config(made.transform))
    return config


def _made_build(cls):
    def build(c, a):
        prefix = "bijector.net." if cls is InverseAutoregressive else "net."
        _check_net(a, prefix, c["hidden"], c["features"] + _context(c), _conditioner(c))
        extra = _layer_spline_kwargs(c) if cls is SplineAutoregressive else _affine_kwargs(c)
        return cls(int(c["features"]), tuple(c["hidden"]), c["activation"], order=np.array(c["order"], dtype=np.int64),
                   context=_context(c), rng=0, dtype=c["dtype"], name=c["name"], conditioner=_conditioner(c), **extra)
    return build


def _transform_config(transform):
    """A frame's transform as ``{"kind": name, "by_coordinate": ..., **constructor keywords}``."""
    names = {cls: name for name, cls in TRANSFORMS.items()}
    kind = names.get(type(transform))
    if kind is None:
        raise TypeError(f"transform {type(transform).__name__} cannot be saved: model files hold the transforms of "
                        f"nflow_np.bijectors.transforms ({', '.join(sorted(TRANSFORMS))})")
    return dict(transform.config(), kind=kind, by_coordinate=bool(transform.by_coordinate))


def _shift(c):
    # affine layers saved before the shift's placement was an option shift in the data space
    shift = c.get("shift", "data")
    if shift not in ("base", "data"):
        raise ValueError(f"an affine layer's shift must be 'base' or 'data'; got {shift!r}")
    return shift


def _clamp_shape(c):
    # affine layers saved before the clamp's shape was an option clamp with a tanh
    shape = c.get("clamp_shape", "tanh")
    if shape not in CLAMP_SHAPES:
        raise ValueError(f"an affine layer's clamp_shape must be one of {CLAMP_SHAPES}; got {shape!r}")
    return shape


def _affine_config(transform):
    """An affine layer's clamp, its shape and the shift's placement, as constructor keywords."""
    return dict(log_scale_clamp=transform.clamp, shift=transform.shift, clamp_shape=transform.clamp_shape)


def _affine_kwargs(c):
    return {"log_scale_clamp": _clamp(c["log_scale_clamp"]), "shift": _shift(c), "clamp_shape": _clamp_shape(c)}


def _transform_build(c):
    c = dict(c)
    kind = c.pop("kind", None)
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {sorted(TRANSFORMS)}")
    if kind == "affine":
        c["shift"], c["clamp_shape"] = _shift(c), _clamp_shape(c)
    elif kind == "spline":
        c["parameterization"] = _spline_parameterization(c)
    by_coordinate = c.pop("by_coordinate", TRANSFORMS[kind].by_coordinate)
    transform = TRANSFORMS[kind](**c)
    transform.by_coordinate = bool(by_coordinate)
    return transform


def _frame_config(obj):
    config = _named(obj)
    config.update(hidden=list(obj.net.hidden), activation=obj.net.activation, context=obj.context_size,
                  transform=_transform_config(obj.transform), conditioner=obj.conditioner)
    if isinstance(obj, Coupling):
        config["mask"] = obj.mask.tolist()
    else:
        config.update(features=obj.features, order=obj.net.order.tolist())
    return config


def _frame_build(cls):
    def build(c, a):
        transform = _transform_build(c["transform"])
        common = dict(context=_context(c), rng=0, dtype=c["dtype"], name=c["name"], conditioner=_conditioner(c))
        if cls is Coupling:
            _check_net(a, "net.", c["hidden"], int(np.count_nonzero(c["mask"])) + _context(c), _conditioner(c))
            return Coupling(np.array(c["mask"], dtype=bool), transform, tuple(c["hidden"]), c["activation"],
                            **common)
        _check_net(a, "net.", c["hidden"], c["features"] + _context(c), _conditioner(c))
        return Autoregressive(int(c["features"]), transform, tuple(c["hidden"]), c["activation"],
                              order=np.array(c["order"], dtype=np.int64), **common)
    return build


def _batch_norm_config(obj):
    config = _named(obj)
    config.update(features=obj.features, momentum=obj.momentum, eps=obj.eps, training=obj.training)
    return config


def _batch_norm_build(c, a):
    _agree(a, "log_gamma", 0, c["features"], "features")
    b = BatchNorm(int(c["features"]), momentum=float(c["momentum"]), eps=float(c["eps"]), dtype=c["dtype"],
                  name=c["name"])
    return b.train(bool(c["training"]))


def _act_norm_config(obj):
    config = _named(obj)
    config.update(features=obj.features, initialized=bool(obj.initialized))
    return config


def _act_norm_build(c, a):
    _agree(a, "log_scale", 0, c["features"], "features")
    b = ActNorm(int(c["features"]), dtype=c["dtype"], name=c["name"])
    b.initialized = bool(c["initialized"])
    return b


def _lu_config(obj):
    config = _named(obj)
    config.update(features=obj.features, sign=obj.sign.tolist())
    return config


def _lu_build(c, a):
    _agree(a, "log_diag", 0, c["features"], "features")
    return LULinear(int(c["features"]), sign=np.array(c["sign"], dtype=np.float64), dtype=c["dtype"],
                    name=c["name"])


def _sized_config(obj):
    config = _named(obj)
    config["dim"] = obj.event_size
    return config


def _sized_build(cls, key, axis=0):
    """Planar, Radial, Householder: rebuilt from their size (rng=0 skips drawing entropy), parameters copied in."""
    def build(c, a):
        _agree(a, key, axis, c["dim"], "dim")
        extra = {"n_reflections": a[key].shape[0]} if cls is Householder else {}
        return cls(int(c["dim"]), rng=0, dtype=c["dtype"], name=c["name"], **extra)
    return build


def _random_rotation_entry():
    def to_spec(obj, encode):
        return {**_named(obj), "dim": obj.event_size}, {"matrix": obj.matrix}

    def from_spec(c, a, decode):
        if set(a) != {"matrix"}:
            raise ValueError(f"the spec lists arrays {sorted(a)} but a RandomRotation holds ['matrix']")
        _agree(a, "matrix", 0, c["dim"], "dim")
        # the constructor refuses a matrix that is not a rotation, and copies it bit for bit
        return RandomRotation(int(c["dim"]), matrix=a["matrix"], dtype=c["dtype"], name=c["name"])
    return to_spec, from_spec


_SPLINE_SETTINGS = ("bound", "min_bin_width", "min_bin_height", "min_derivative")


def _spline_config(obj):
    config = _named(obj)
    config.update({key: getattr(obj, key) for key in _SPLINE_SETTINGS}, parameterization=obj.parameterization)
    return config


def _spline_build(c, a):
    # the parameters go in as given: the constructor copies them bit for bit
    return RationalQuadraticSpline(a["unnormalized_widths"], a["unnormalized_heights"], a["unnormalized_derivatives"],
                                   dtype=c["dtype"], name=c["name"], parameterization=_spline_parameterization(c),
                                   **{key: c[key] for key in _SPLINE_SETTINGS})


def _circular_layer_config(obj):
    """A circular-spline layer: its frame's settings and its spline's (``SplineSettings``)."""
    config = _named(obj)
    spline = _layer_spline_config(obj)
    del spline["parameterization"]          # circular splines have the softplus one only
    config.update(hidden=list(obj.net.hidden), activation=obj.net.activation, context=obj.context_size,
                  conditioner=obj.conditioner, **spline)
    if isinstance(obj, Coupling):
        config["mask"] = obj.mask.tolist()
    else:
        config.update(features=obj.features, order=obj.net.order.tolist())
    return config


def _circular_layer_build(cls):
    def build(c, a):
        spline = _layer_spline_kwargs(c)
        if spline.pop("parameterization") != "softplus":
            raise ValueError(f"a {cls.__name__} has the softplus spline parameterization only; got "
                             f"{c['parameterization']!r}")
        common = dict(context=_context(c), rng=0, dtype=c["dtype"], name=c["name"], conditioner=_conditioner(c),
                      **spline)
        if cls is CircularSplineCoupling:
            _check_net(a, "net.", c["hidden"], int(np.count_nonzero(c["mask"])) + _context(c), _conditioner(c))
            return cls(np.array(c["mask"], dtype=bool), tuple(c["hidden"]), c["activation"], **common)
        _check_net(a, "net.", c["hidden"], c["features"] + _context(c), _conditioner(c))
        return cls(int(c["features"]), tuple(c["hidden"]), c["activation"], order=np.array(c["order"], dtype=np.int64),
                   **common)
    return build


def _permute_entry():
    def to_spec(obj, encode):
        return {"name": obj.name, "permutation": obj.permutation.tolist()}, {}

    def from_spec(c, a, decode):
        return Permute(np.array(c["permutation"], dtype=np.int64), name=c["name"])
    return to_spec, from_spec


def _chain_entry():
    def to_spec(obj, encode):
        return {"name": obj.name, "bijectors": [encode(b, str(i)) for i, b in enumerate(obj.bijectors)]}, {}

    def from_spec(c, a, decode):
        if not isinstance(c["bijectors"], list):
            raise TypeError(f"'bijectors' must be a list of bijector specs; got {type(c['bijectors']).__name__}")
        return Chain([decode(node, str(i)) for i, node in enumerate(c["bijectors"])], name=c["name"])
    return to_spec, from_spec


def _invert_entry():
    def to_spec(obj, encode):
        return {"name": obj.name, "bijector": encode(obj.bijector, "bijector")}, {}

    def from_spec(c, a, decode):
        return Invert(decode(c["bijector"], "bijector"), name=c["name"])
    return to_spec, from_spec


def _distribution_entry(cls, *keys):
    def to_spec(obj, encode):
        return {"dtype": _dtype_name(obj.dtype)}, {k: getattr(obj, k) for k in keys}

    def from_spec(c, a, decode):
        # the constructors copy the arrays as given, so the rebuilt distribution is bit-identical
        return cls(*(a[k] for k in keys), dtype=c["dtype"])
    return to_spec, from_spec


def _mixture_build(c, a):
    # placeholder values of the stored shapes; _restore then copies the unconstrained parameters in, bit-exact
    shape = a["locs"].shape
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"array 'locs' must have shape (k, d); got {shape}")
    k, d = shape
    dtype = np.dtype(c["dtype"])
    return GaussianMixture(np.full(k, 1.0 / k, dtype=dtype), np.zeros((k, d), dtype=dtype),
                           np.ones((k, d), dtype=dtype), dtype=dtype)


def _student_t_build(c, a):
    shape = a["loc"].shape
    if len(shape) != 1 or 0 in shape:
        raise ValueError(f"array 'loc' must have shape (d,); got {shape}")
    dtype = np.dtype(c["dtype"])
    return StudentT(np.ones(shape, dtype=dtype), np.zeros(shape, dtype=dtype), np.ones(shape, dtype=dtype),
                    dtype=dtype)


def _transformed_entry():
    def to_spec(obj, encode):
        config = {"distribution": encode(obj.distribution, "distribution"),
                  "bijector": encode(obj.bijector, "bijector")}
        if getattr(obj, "embedding", None) is not None:
            config["embedding"] = encode(obj.embedding, "embedding")
        return config, {}

    def from_spec(c, a, decode):
        embedding = decode(c["embedding"], "embedding") if c.get("embedding") is not None else None
        return TransformedDistribution(decode(c["distribution"], "distribution"), decode(c["bijector"], "bijector"),
                                       embedding=embedding)
    return to_spec, from_spec


def _bnaf_config(obj):
    config = _named(obj)
    config.update(features=obj.features, hidden_factor=obj.hidden_factor, hidden_layers=obj.hidden_layers,
                  leak=obj.leak)
    return config


def _bnaf_build(c, a):
    return BlockNeuralAutoregressive(int(c["features"]), int(c["hidden_factor"]), int(c["hidden_layers"]),
                                     leak=float(c["leak"]), dtype=c["dtype"], name=c["name"])
def _dense_embedding_config(net):
    config = {"in_features": net.in_features, "out_features": net.out_features, "activation": net.activation,
              "dtype": _dtype_name(net.dtype)}
    if isinstance(net, ResidualMLP):
        config.update(width=net.width, blocks=net.blocks)
    else:
        config["hidden"] = list(net.hidden)
    return config


def _mlp_build(c, a):
    # a flow's context embedding (a network without a context input of its own)
    _check_net(a, "", c["hidden"], c["in_features"])
    return MLP(int(c["in_features"]), int(c["out_features"]), tuple(c["hidden"]), c["activation"], rng=0,
               dtype=c["dtype"])


def _residual_mlp_build(c, a):
    _agree(a, "in_w", 1, c["width"], "residual width")
    _check_net(a, "", [c["width"]] * int(c["blocks"]), c["in_features"], "resnet")
    return ResidualMLP(int(c["in_features"]), int(c["out_features"]), int(c["width"]), int(c["blocks"]),
                       c["activation"], rng=0, dtype=c["dtype"])


for _cls in (Identity, Exp, Tanh, Softsign, Softplus, NormalCDF):
    register(_cls.__name__, _cls, *_plain(_cls))
register("Shift", Shift, *_with_params(Shift, "shift"))
register("Scale", Scale, *_with_params(Scale, "scale"))
register("Power", Power, *_with_params(Power, "power"))
register("Rotation", Rotation, *_with_params(Rotation, "theta"))
register("ScaleMatvecTriL", ScaleMatvecTriL, *_with_params(ScaleMatvecTriL, "scale_tril"))
register("Sigmoid", Sigmoid, *_leaf(_sigmoid_build, lambda b: {**_named(b), "bounded": "low" in b.params}))
register("LeakyReLU", LeakyReLU, *_leaf(_leaky_build, _named))
register("Affine", Affine, *_leaf(_affine_build, _named))
register("Permute", Permute, *_permute_entry())
register("Reverse", Reverse, *_leaf(lambda c, a: Reverse(name=c["name"]), lambda b: {"name": b.name}))
register("Chain", Chain, *_chain_entry())
register("Invert", Invert, *_invert_entry())
register("Coupling", Coupling, *_leaf(_frame_build(Coupling), _frame_config))
register("Autoregressive", Autoregressive, *_leaf(_frame_build(Autoregressive), _frame_config))
register("AdditiveCoupling", AdditiveCoupling, *_leaf(_coupling_build(AdditiveCoupling), _coupling_config))
register("AffineCoupling", AffineCoupling, *_leaf(_coupling_build(AffineCoupling), _coupling_config))
register("SplineCoupling", SplineCoupling, *_leaf(_coupling_build(SplineCoupling), _coupling_config))
register("MaskedAutoregressive", MaskedAutoregressive, *_leaf(_made_build(MaskedAutoregressive), _made_config))
register("InverseAutoregressive", InverseAutoregressive, *_leaf(_made_build(InverseAutoregressive), _made_config))
register("SplineAutoregressive", SplineAutoregressive, *_leaf(_made_build(SplineAutoregressive), _made_config))
register("BatchNorm", BatchNorm, *_leaf(_batch_norm_build, _batch_norm_config))
register("ActNorm", ActNorm, *_leaf(_act_norm_build, _act_norm_config))
register("LULinear", LULinear, *_leaf(_lu_build, _lu_config))
register("BlockNeuralAutoregressive", BlockNeuralAutoregressive, *_leaf(_bnaf_build, _bnaf_config))
register("RationalQuadraticSpline", RationalQuadraticSpline, *_leaf(_spline_build, _spline_config))
register("Planar", Planar, *_leaf(_sized_build(Planar, "w"), _sized_config))
register("Radial", Radial, *_leaf(_sized_build(Radial, "z0"), _sized_config))
register("Householder", Householder, *_leaf(_sized_build(Householder, "vectors", axis=1), _sized_config))
register("RandomRotation", RandomRotation, *_random_rotation_entry())
register("Normal", Normal, *_distribution_entry(Normal, "loc", "scale"))
register("MultivariateNormalDiag", MultivariateNormalDiag,
         *_distribution_entry(MultivariateNormalDiag, "loc", "scale_diag"))
register("Uniform", Uniform, *_distribution_entry(Uniform, "low", "high"))
register("GaussianMixture", GaussianMixture,
         *_leaf(_mixture_build, lambda obj: {"dtype": _dtype_name(obj.dtype)}))
register("StudentT", StudentT, *_leaf(_student_t_build, lambda obj: {"dtype": _dtype_name(obj.dtype)}))
register("TransformedDistribution", TransformedDistribution, *_transformed_entry())
register("CircularSplineCoupling", CircularSplineCoupling,
         *_leaf(_circular_layer_build(CircularSplineCoupling), _circular_layer_config))
register("CircularSplineAutoregressive", CircularSplineAutoregressive,
         *_leaf(_circular_layer_build(CircularSplineAutoregressive), _circular_layer_config))
register("CircularShift", CircularShift,
         *_leaf(lambda c, a: CircularShift(a["shift"], bound=float(c["bound"]), dtype=c["dtype"], name=c["name"]),
                lambda obj: {**_named(obj), "bound": obj.bound}))
register("MLP", MLP, *_leaf(_mlp_build, _dense_embedding_config))
register("ResidualMLP", ResidualMLP, *_leaf(_residual_mlp_build, _dense_embedding_config))
