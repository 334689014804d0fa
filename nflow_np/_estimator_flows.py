"""The flows :class:`nflow_np.estimator.FlowDensity` can fit, by name (``FlowDensity(flow=name)``, ``nflow-np fit
--flow name``).

:data:`FLOWS` is the one table: a flow family added to :mod:`nflow_np.flows` becomes available to the estimator
and the command line by one line here, ``"name": _Entry("Constructor", min_features, one_feature_kwargs)``. Each
constructor is called as ``Constructor(n_features, n_layers=..., hidden=..., context=..., rng=..., dtype=...)``;
an entry with ``networks=False`` (layers without conditioner networks) is called without ``hidden`` and
``context``, and refuses ``conditional=True``.
"""

from collections import namedtuple

_Entry = namedtuple("_Entry", "constructor min_features one_feature networks standardize", defaults=(True, True))
_Entry.__doc__ = """A ready-made flow: its constructor's name in :mod:`nflow_np.flows`, the fewest features it
takes (2 for a coupling flow, whose one half conditions the other), extra keyword arguments used for 1-D data
(None: none), whether its layers have conditioner networks (``hidden``, and a context when conditional), and
whether the estimator standardizes the data for it (False for a flow on a fixed domain, such as angles)."""

FLOWS = {
    "realnvp": _Entry("RealNVP", 2, None),
    "nice": _Entry("NICE", 2, None),
    "maf": _Entry("MAF", 1, None),
    "iaf": _Entry("IAF", 1, None),
    # spline couplings, or a stack of autoregressive spline layers for 1-D data
    "nsf": _Entry("NSF", 1, {"autoregressive": True}),
    # residual layers of a few parameters each, no networks: hidden is not used, and they take no context
    "planar": _Entry("Planar", 1, None, networks=False),
    "radial": _Entry("Radial", 1, None, networks=False),
    # angles on the torus [-pi, pi]^d, taken as they are: standardizing would move them off the circle
    "ncsf": _Entry("NCSF", 1, None, standardize=False),
}
"""Name -> :class:`_Entry`, in the order the names are listed in messages and ``--help``."""


def flow_names():
    """The names :data:`FLOWS` knows, as a tuple."""
    return tuple(FLOWS)


def check_flow_name(flow, where):
    """``flow`` lower-cased, or ``ValueError`` listing the names."""
    if not isinstance(flow, str) or flow.lower() not in FLOWS:
        raise ValueError(f"{where}: flow must be one of {', '.join(map(repr, FLOWS))}; got {flow!r}")
    return flow.lower()


def build_flow(name, n_features, *, n_layers, hidden, context, rng, dtype, where):
    """The flow ``name`` over ``n_features`` features, conditional on ``context`` columns (0: unconditional)."""
    from . import flows
    entry = FLOWS[name]
    if n_features < entry.min_features:
        raise ValueError(f"{where}: flow={name!r} is a coupling flow (one half of the features conditions the other) "
                         f"and needs at least {entry.min_features} features; got {n_features} feature(s) "
                         f"(n_features = {n_features}). Use flow='maf' for 1-D data.")
    extra = dict(entry.one_feature) if entry.one_feature and n_features < 2 else {}
    if entry.networks:
        extra["hidden"] = hidden
        if context:
            extra["context"] = int(context)
    elif context:
        conditional = ", ".join(repr(n) for n, e in FLOWS.items() if e.networks)
        raise ValueError(f"{where}: flow={name!r} has no conditional layers, so it cannot learn p(x | y) "
                         f"(conditional=True); use one of {conditional}")
    return getattr(flows, entry.constructor)(n_features, n_layers=n_layers, rng=rng, dtype=dtype, **extra)
