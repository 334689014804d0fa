"""Layers describe themselves to the compiled engine through specs; the engine imports no layer."""

import ast
import os

import numpy as np
import pytest

import nflow_np
from nflow_np import flows
from nflow_np.bijectors import Chain, Inline, Reverse, Shift
from nflow_np.distributions import MultivariateNormalDiag, Normal, TransformedDistribution
from nflow_np.kernels import specs

KERNELS = os.path.join(os.path.dirname(nflow_np.__file__), "kernels")
OUTSIDE_THE_ENGINE = ("bijectors", "distributions", "train", "nn", "flows", "estimator", "io", "cli")


def _imported_modules(path):
    """Every module a file imports, at any depth (lazy imports inside functions included), as dotted names."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}" if node.module is None else base


def test_the_engine_imports_no_layer_distribution_or_trainer():
    offending = []
    for root, _, files in os.walk(KERNELS):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            depth = os.path.relpath(path, KERNELS).count(os.sep) + 1    # dots that climb out of kernels/
            for module in _imported_modules(path):
                dots = len(module) - len(module.lstrip("."))
                parts = module.lstrip(".").split(".")
                outside = (dots > depth and parts[0] in OUTSIDE_THE_ENGINE) or \
                    (module.startswith("nflow_np.") and parts[1] in OUTSIDE_THE_ENGINE)
                if outside:
                    offending.append(f"{os.path.relpath(path, KERNELS)}: {module}")
    assert offending == []


def _kinds(flow):
    return [type(b.lower(flow.event_shape[0])).__name__ for b in flow.bijector.flatten()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ready_made_flows_lower_to_frames_and_transforms(dtype):
    nvp = flows.RealNVP(3, n_layers=2, hidden=(5,), act_norm=True, rng=0, dtype=dtype)
    lowered = [b.lower(3) for b in nvp.bijector.flatten()]
    couplings = [s for s in lowered if isinstance(s, specs.CouplingSpec)]
    assert couplings and all(isinstance(s.transform, specs.AffineSpec) for s in couplings)
    assert any(isinstance(s, specs.ActNormSpec) for s in lowered)
    net = couplings[0].net
    assert isinstance(net, specs.NetworkSpec) and net.masks is None
    assert net.widths[-1] == 2 * couplings[0].transformed.size
    # specs hold the layer's own arrays, so optimizers keep updating what the engine reads
    layer = next(b for b in nvp.bijector.flatten() if isinstance(b.lower(3), specs.CouplingSpec))
    assert couplings[0].net.params is layer.net.params

    nice = flows.NICE(2, rng=0, dtype=dtype)
    assert {type(s.transform) for b in nice.bijector.flatten()
            for s in [b.lower(2)] if isinstance(s, specs.CouplingSpec)} == {specs.AdditiveSpec}

    maf = flows.MAF(3, n_layers=2, hidden=(6,), batch_norm=True, rng=0, dtype=dtype)
    lowered = [b.lower(3) for b in maf.bijector.flatten()]
    made = [s for s in lowered if isinstance(s, specs.AutoregressiveSpec)]
    assert made and all(s.net.masks is not None and isinstance(s.transform, specs.AffineSpec) for s in made)
    assert any(isinstance(s, specs.BatchNormSpec) for s in lowered)

    for autoregressive, frame in ((False, specs.CouplingSpec), (True, specs.AutoregressiveSpec)):
        nsf = flows.NSF(3, n_layers=2, bins=5, bound=2.5, hidden=(4,), autoregressive=autoregressive, rng=0,
                        dtype=dtype)
        splines = [s for b in nsf.bijector.flatten() for s in [b.lower(3)] if isinstance(s, frame)]
        assert splines and all(isinstance(s.transform, specs.SplineSpec) and s.transform.bins == 5
                               and s.transform.bound == 2.5 for s in splines)
        assert splines[0].transform.outputs_per_coordinate == 14


def test_a_layer_without_a_lowering_names_itself():
    inline = Inline(forward_fn=lambda x: x + 1.0, inverse_fn=lambda y: y - 1.0,
                    forward_log_det_jacobian_fn=lambda x: np.zeros(np.shape(x)[:-1]), event_ndims=1,
                    name="my_shift")
    with pytest.raises(specs.Unsupported, match="my_shift"):
        inline.lower(2)
    with pytest.raises(specs.Unsupported, match="Normal"):
        Normal(0.0, 1.0).lower()
    with pytest.raises(specs.Unsupported, match="standard"):
        MultivariateNormalDiag(loc=np.ones(2)).lower()
    assert MultivariateNormalDiag(loc=np.zeros(4)).lower() == specs.StandardNormalSpec(4)
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), Chain([Reverse(), Chain([Shift(1.0)])]))
    assert [type(b).__name__ for b in flow.bijector.flatten()] == ["Reverse", "Shift"]
    from nflow_np.kernels.plan import supports
    ok, reason = supports(flow)
    assert not ok and "Shift" in reason
