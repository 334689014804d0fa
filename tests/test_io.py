"""Model files: bit-exact round trips of every flow and bijector, and a clear ValueError for every damaged file."""

import json
import os
import stat
import zipfile

import numpy as np
import pytest

import nflow_np
from nflow_np import bijectors as nb
from nflow_np import flows, io
from nflow_np.distributions import MultivariateNormalDiag, Normal, TransformedDistribution, Uniform
from nflow_np.train import set_training

from bijector_cases import CASES, DTYPES


@pytest.fixture(autouse=True)
def numpy_backend():
    # The compiled backend spends seconds in Numba's JIT on its first call per flow and dtype; these tests are
    # about model files, not kernels (test_kernels holds the compiled twins to the NumPy reference).
    with nflow_np.backend("numpy"):
        yield


FLOWS = {
    "RealNVP(all extras)": lambda dt: flows.RealNVP(3, n_layers=3, hidden=(5, 4), activation="tanh", batch_norm=True,
                                                    act_norm=True, lu_linear=True, permute="random", rng=0,
                                                    dtype=dt),
    "RealNVP(unclamped)": lambda dt: flows.RealNVP(2, n_layers=2, hidden=(4,), log_scale_clamp=None, rng=1, dtype=dt),
    "RealNVP(rational clamp)": lambda dt: flows.RealNVP(2, n_layers=2, hidden=(4,), clamp_shape="rational", rng=1,
                                                        dtype=dt),
    "MAF(rational clamp)": lambda dt: flows.MAF(3, n_layers=2, hidden=(5,), clamp_shape="rational", rng=3, dtype=dt),
    "NICE": lambda dt: flows.NICE(4, n_layers=3, hidden=(6,), activation="elu", rng=2, dtype=dt),
    "MAF": lambda dt: flows.MAF(3, n_layers=2, hidden=(6, 6), activation="silu", batch_norm=True, rng=3, dtype=dt),
    "MAF(1-D)": lambda dt: flows.MAF(1, n_layers=2, hidden=(4,), rng=4, dtype=dt),
    "IAF": lambda dt: flows.IAF(2, n_layers=2, hidden=(5,), rng=5, dtype=dt),
    "NAF": lambda dt: flows.NAF(3, n_layers=2, hidden=(5,), sigmoid_units=3, act_norm=True, rng=6, dtype=dt),
    "BNAF": lambda dt: flows.BNAF(3, n_layers=2, hidden_factor=3, hidden_layers=1, rng=7, dtype=dt),
    "NSF(softplus)": lambda dt: flows.NSF(3, n_layers=2, bins=4, hidden=(5,), parameterization="softplus", rng=6,
                                          dtype=dt),
    "NSF-AR(softplus)": lambda dt: flows.NSF(2, n_layers=2, bins=3, hidden=(4,), autoregressive=True,
                                             parameterization="softplus", rng=7, dtype=dt),
}


def _trained_like(flow, seed=0):
    """Perturb every weight (fresh flows start near the identity) and run the data-dependent layers once."""
    rng = np.random.default_rng(seed)
    for _, array in flow.parameters():
        array += (0.2 * rng.normal(size=array.shape)).astype(array.dtype)
    x = rng.normal(size=(64,) + flow.event_shape).astype(flow.dtype)
    set_training(flow, True)
    flow.log_prob(x)   # initializes ActNorm, moves BatchNorm's running statistics
    set_training(flow, False)
    return flow, x


def _round_trip(obj, tmp_path, name="model.npz"):
    path = tmp_path / name
    io.save(obj, path)
    return io.load(path), path


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_flow_round_trip_is_bit_exact(kind, dtype, tmp_path):
    flow, x = _trained_like(FLOWS[kind](dtype))
    loaded, _ = _round_trip(flow, tmp_path)
    assert loaded.dtype == flow.dtype and loaded.event_shape == flow.event_shape
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(7, rng=11), flow.sample(7, rng=11))
    names = [k for k, _ in flow.parameters()]
    assert [k for k, _ in loaded.parameters()] == names
    for (_, a), (_, b) in zip(flow.parameters(), loaded.parameters()):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["RealNVP(all extras)", "MAF"])
def test_round_trip_under_the_compiled_backend(kind, tmp_path):
    pytest.importorskip("numba")
    flow, x = _trained_like(FLOWS[kind](np.float64))
    with nflow_np.backend("numba"):
        loaded, _ = _round_trip(flow, tmp_path)
        assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
        assert np.array_equal(loaded.sample(7, rng=11), flow.sample(7, rng=11))


SAVABLE_CASES = sorted(name for name in CASES if not name.startswith("Inline") and name != "Chain(seed000)")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", SAVABLE_CASES)
def test_bijector_round_trip_is_bit_exact(name, dtype, tmp_path):
    rng = np.random.default_rng(3)
    case = CASES[name]
    bijector = case.build(rng, dtype)
    x = case.draw(bijector, rng, dtype, 6)
    loaded, _ = _round_trip(bijector, tmp_path)
    assert type(loaded) is type(bijector) and loaded.name == bijector.name and loaded.dtype == bijector.dtype
    y, ld = bijector.forward_and_log_det(x)
    y2, ld2 = loaded.forward_and_log_det(x)
    assert np.array_equal(y, y2) and np.array_equal(ld, ld2)
    assert np.array_equal(bijector.inverse_and_log_det(y)[1], loaded.inverse_and_log_det(y)[1])


def test_every_public_bijector_and_distribution_is_registered():
    skip = {"Bijector", "ElementwiseBijector", "Inline"} | set(nb.transforms.__all__)  # transforms: inside frames
    assert {name for name in nb.__all__ if name not in skip} <= set(io.REGISTRY)
    assert {"Normal", "MultivariateNormalDiag", "Uniform", "TransformedDistribution"} <= set(io.REGISTRY)


def test_state_and_names_survive(tmp_path):
    bn = nb.BatchNorm(2, momentum=0.3, eps=1e-3, name="bn")
    bn.running_mean[...] = [0.5, -1.0]
    lu = nb.LULinear(2, sign=[1.0, -1.0], rng=0, name="mix")
    chain = nb.Chain([nb.ActNorm(2, name="an"), lu, bn, nb.Invert(nb.Sigmoid(low=[-1.0, 0.0], high=[2.0, 3.0]))],
                     name="stack")
    loaded, _ = _round_trip(chain, tmp_path)
    lbn, llu = loaded.bijectors[2], loaded.bijectors[1]
    assert loaded.name == "stack" and [b.name for b in loaded.bijectors] == [b.name for b in chain.bijectors]
    assert (lbn.momentum, lbn.eps, lbn.training) == (0.3, 1e-3, True)
    assert np.array_equal(lbn.running_mean, bn.running_mean)
    assert np.array_equal(llu.sign, [1.0, -1.0]) and loaded.bijectors[0].initialized is False
    chain.bijectors[0].initialize(np.random.default_rng(0).normal(size=(10, 2)))
    assert _round_trip(chain, tmp_path, "b.npz")[0].bijectors[0].initialized is True


@pytest.mark.parametrize("base", [Normal(np.array([0.5, -1.0]), np.array([1.0, 2.0])),
                                  Uniform(np.zeros(2, np.float32), np.ones(2, np.float32)),
                                  MultivariateNormalDiag(np.ones(3), np.full(3, 0.5))],
                         ids=["Normal", "Uniform(float32)", "MultivariateNormalDiag"])
def test_distributions_round_trip(base, tmp_path):
    loaded, _ = _round_trip(base, tmp_path)
    assert type(loaded) is type(base) and loaded.dtype == base.dtype
    assert np.array_equal(loaded.sample(5, rng=2), base.sample(5, rng=2))


def test_scalar_flow_round_trip(tmp_path):
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Chain([nb.Shift(1.0), nb.Power(2.0), nb.NormalCDF(),
                                                               nb.Invert(nb.Softplus())]))
    # Softplus^-1 maps (0, inf) -> R, NormalCDF R -> (0, 1), Power keeps (0, 1), Shift moves it
    loaded, _ = _round_trip(flow, tmp_path)
    x = np.linspace(1.1, 1.9, 9)
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))


def test_file_holds_json_spec_and_plain_arrays(tmp_path):
    flow, _ = _trained_like(FLOWS["MAF"](np.float64))
    path = tmp_path / "m.npz"
    io.save(flow, path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    spec = json.loads(arrays.pop("__spec__").tobytes().decode("utf-8"))
    # a flow needs nothing of version 2 (optimizer state): it is written as version 1, which older releases read
    assert spec["format_version"] == 1 and spec["kind"] == "flow"
    assert set(dict(flow.parameters())) <= set(arrays)
    assert all(a.dtype.kind == "f" for a in arrays.values())
    assert io.read_spec(path)["root"]["type"] == "TransformedDistribution"


def test_save_writes_the_given_name_and_replaces_atomically(tmp_path):
    path = tmp_path / "model.bin"
    flow = FLOWS["IAF"](np.float64)
    io.save(flow, path)
    io.save(flow, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


@pytest.fixture
def umask():
    """Sets the process umask for one test (``umask(0o077)``) and restores it after."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask-022", "umask-077", "umask-002"])
def test_save_gives_a_new_file_the_mode_the_umask_leaves(tmp_path, umask, mask, expected):
    umask(mask)
    path = tmp_path / "m.npz"
    io.save(FLOWS["IAF"](np.float64), path)
    assert stat.S_IMODE(path.stat().st_mode) == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    path.chmod(0o644)
    io.save(FLOWS["IAF"](np.float64), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o640)
    io.save(FLOWS["IAF"](np.float64), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
@pytest.mark.parametrize("existing", [True, False], ids=["existing-target", "dangling"])
def test_save_writes_through_a_symlink(tmp_path, existing):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v1.npz"
    if existing:
        target.write_bytes(b"old")
        target.chmod(0o640)
    link = tmp_path / "current.npz"
    link.symlink_to(os.path.join("models", "v1.npz"))
    flow = FLOWS["IAF"](np.float64)
    io.save(flow, link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("models", "v1.npz")
    assert isinstance(io.load(target), TransformedDistribution)
    if existing:
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v1.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.npz", "models"]


def test_inline_is_refused():
    inline = nb.Inline(np.sinh, np.arcsinh, forward_log_det_jacobian_fn=lambda x: np.log(np.cosh(x)))
    flow = TransformedDistribution(Normal(0.0, 1.0), nb.Chain([nb.Shift(1.0), inline]))
    with pytest.raises(ValueError, match=r"Inline.*bijector\.1.*user code"):
        io.save(flow, "never-written.npz")


def test_unregistered_type_is_refused(tmp_path):
    class MyShift(nb.Shift):
        pass
    with pytest.raises(ValueError, match="cannot store a MyShift.*register"):
        io.save(MyShift(1.0), tmp_path / "x.npz")


def test_non_finite_weights_are_refused_at_save(tmp_path):
    flow = FLOWS["MAF"](np.float64)
    dict(flow.parameters())["bijector.0.net.w0"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"bijector\.0\.net\.w0.*NaN"):
        io.save(flow, tmp_path / "x.npz")


# ---------------------------------------------------------------------------- damaged files

@pytest.fixture
def saved(tmp_path):
    flow, x = _trained_like(FLOWS["RealNVP(all extras)"](np.float64))
    path = tmp_path / "good.npz"
    io.save(flow, path)
    return path, flow


def _contents(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__spec__").tobytes().decode("utf-8")), arrays


def _write(path, spec, arrays):
    arrays = dict(arrays)
    if spec is not None:
        arrays["__spec__"] = np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _first_coupling(spec):
    return next(n for n in spec["root"]["config"]["bijector"]["config"]["bijectors"] if n["type"] == "AffineCoupling")


def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="damaged|not an nflow_np model"):
            io.load(path)


def test_corrupted_array_bytes(saved):
    path, flow = saved
    data = bytearray(path.read_bytes())
    weights = dict(flow.parameters())["bijector.0.net.w0"]
    at = bytes(data).find(weights.tobytes())
    assert at > 0
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        io.load(path)


def test_unknown_compression_method(saved):
    # a damaged central directory entry naming a compression method no model file uses
    path, _ = saved
    data = bytearray(path.read_bytes())
    at = bytes(data).find(b"PK\x01\x02")
    assert at >= 0
    data[at + 10:at + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.*compression method"):
        io.load(path)


def test_corrupted_spec_bytes(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    at = bytes(data).find(b'"format_version"')
    data[at + 2] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        io.load(path)


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_wrong_format_version(saved, version):
    path, _ = saved
    spec, arrays = _contents(path)
    spec["format_version"] = version
    with pytest.raises(ValueError, match=f"format version {version!r}; this nflow_np reads versions 1 and 2"
                                         + (r" \(upgrade nflow_np\)" if version == 3 else "$")):
        io.load(_write(path, spec, arrays))


def test_unknown_bijector_name(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    _first_coupling(spec)["type"] = "FancyCoupling"
    with pytest.raises(ValueError, match=r"unknown type 'FancyCoupling'.*at bijector\.\d"):
        io.load(_write(path, spec, arrays))


def test_array_shape_differs_from_spec(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["bijector.0.net.w0"] = arrays["bijector.0.net.w0"][:, :-1]
    with pytest.raises(ValueError, match=r"'bijector\.0\.net\.w0' has shape \(\d, 4\) in the file but \(\d, 5\)"):
        io.load(_write(path, spec, arrays))


def test_spec_architecture_differs_from_arrays(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    _first_coupling(spec)["config"]["hidden"] = [7, 4]
    with pytest.raises(ValueError, match=r"cannot rebuild AffineCoupling: the spec's hidden width 0 7 does not match"):
        io.load(_write(path, spec, arrays))


@pytest.mark.parametrize("field, value", [("hidden", [10 ** 9, 4]), ("mask", [True] * 3 + [False] * 5)])
def test_sizes_are_checked_before_anything_is_allocated(saved, field, value):
    path, _ = saved
    spec, arrays = _contents(path)
    _first_coupling(spec)["config"][field] = value
    with pytest.raises(ValueError, match=r"cannot rebuild AffineCoupling: the spec's .* does not match array"):
        io.load(_write(path, spec, arrays))


def test_output_size_differs_from_arrays(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    _first_coupling(spec)["config"]["mask"].append(False)   # one more transformed feature: a wider last layer
    with pytest.raises(ValueError, match=r"cannot rebuild AffineCoupling: array 'net\.w2' has shape .* needs"):
        io.load(_write(path, spec, arrays))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights(saved, value):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["bijector.0.net.b0"][1] = value
    with pytest.raises(ValueError, match=r"'bijector\.0\.net\.b0' holds NaN or infinity"):
        io.load(_write(path, spec, arrays))


def test_missing_array(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    del arrays["bijector.0.net.b1"]
    with pytest.raises(ValueError, match=r"missing array 'bijector\.0\.net\.b1'"):
        io.load(_write(path, spec, arrays))


def test_extra_array(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["smuggled"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"\['smuggled'\] are in the file but not in the spec"):
        io.load(_write(path, spec, arrays))


def test_dtype_differs_from_spec(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["bijector.0.net.w0"] = arrays["bijector.0.net.w0"].astype(np.float32)
    with pytest.raises(ValueError, match="dtype float32 in the file but float64 in the spec"):
        io.load(_write(path, spec, arrays))


def test_dtype_differs_from_layer(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["bijector.0.net.w0"] = arrays["bijector.0.net.w0"].astype(np.float32)
    _first_coupling(spec)["arrays"]["net.w0"]["dtype"] = "float32"
    with pytest.raises(ValueError, match="dtype float32 but the layer computes in float64"):
        io.load(_write(path, spec, arrays))


def test_malformed_config_is_located(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    _first_coupling(spec)["config"]["activation"] = "sine"
    with pytest.raises(ValueError, match=r"cannot rebuild AffineCoupling: .*unknown activation 'sine'.*at bijector"):
        io.load(_write(path, spec, arrays))


def test_no_spec(saved):
    path, _ = saved
    _, arrays = _contents(path)
    with pytest.raises(ValueError, match="no __spec__ array"):
        io.load(_write(path, None, arrays))


def test_spec_is_not_json(saved):
    path, _ = saved
    _, arrays = _contents(path)
    arrays["__spec__"] = np.frombuffer(b"{not json", dtype=np.uint8)
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        io.load(_write(path, None, arrays))


def test_pickled_object_array_is_not_loaded(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays["bijector.0.net.w0"] = np.array([{"x": 1}], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, __spec__=np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8), **arrays)
    with pytest.raises(ValueError, match="pickled object array.*refused"):
        io.load(path)


@pytest.mark.parametrize("content", [b"", b"x,y\n1,2\n", b"PK\x03\x04garbage"], ids=["empty", "csv", "bad-zip"])
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not an nflow_np model|damaged"):
        io.load(path)


def test_npy_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match=r"a \.npy file"):
        io.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        io.load(tmp_path / "absent.npz")


def test_zip_without_npy_members(tmp_path):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError):
        io.load(path)


# ---------------------------------------------------------------------------- estimators and their optimizer state

def _fitted_estimator():
    from nflow_np.estimator import FlowDensity
    from nflow_np import datasets
    return FlowDensity(n_layers=2, hidden=(4,), epochs=2, batch_size=64, random_state=0).fit(
        datasets.load("two-moons", 200, rng=0))


@pytest.fixture
def saved_estimator(tmp_path):
    est = _fitted_estimator()
    path = tmp_path / "est.npz"
    io.save(est, path)
    return path, est


def test_estimator_file_holds_adam_state(saved_estimator):
    path, est = saved_estimator
    spec, arrays = _contents(path)
    assert spec["format_version"] == 2 == io.FORMAT_VERSION
    node = spec["estimator"]["optimizer"]
    names = [name for name, _ in est.flow_.parameters()]
    assert node["type"] == "Adam" and node["state"] == {"lr": 1e-3, "steps": est.optimizer_state_["steps"],
                                                        "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                                        "clip_norm": None}
    assert node["state"]["steps"] == est.history_.steps > 0
    for moment in ("m", "v"):
        assert list(node["arrays"][moment]) == names
        for name in names:
            stored = arrays[f"optimizer.{moment}.{name}"]
            assert np.array_equal(stored, est.optimizer_state_[moment][name])
            assert node["arrays"][moment][name] == {"key": f"optimizer.{moment}.{name}", "shape": list(stored.shape),
                                                    "dtype": "float64"}
    loaded = io.load(path)
    state = loaded.optimizer_state_
    assert {k: state[k] for k in ("lr", "steps", "betas", "eps", "weight_decay", "clip_norm")} == \
        {k: est.optimizer_state_[k] for k in ("lr", "steps", "betas", "eps", "weight_decay", "clip_norm")}
    assert all(np.array_equal(state[m][n], est.optimizer_state_[m][n]) and state[m][n].dtype == np.float64
               for m in ("m", "v") for n in names)


def test_estimator_file_without_optimizer_state_still_loads(saved_estimator):
    # a file as written before optimizer state was saved: version 1, no "optimizer" entry, no moment arrays
    path, est = saved_estimator
    spec, arrays = _contents(path)
    spec["format_version"] = 1
    del spec["estimator"]["optimizer"]
    arrays = {k: v for k, v in arrays.items() if not k.startswith("optimizer.")}
    loaded = io.load(_write(path, spec, arrays))
    assert loaded.optimizer_state_ is None
    x = np.array([[0.1, 0.2], [1.0, -0.5]])
    assert np.array_equal(loaded.score_samples(x), est.score_samples(x))
    # and saving it again writes version 1 still
    io.save(loaded, path)
    assert io.read_spec(path)["format_version"] == 1 and io.read_spec(path)["estimator"]["optimizer"] is None


def _edit_optimizer(saved, edit):
    path, _ = saved
    spec, arrays = _contents(path)
    edit(spec["estimator"]["optimizer"], arrays, spec)
    return _write(path, spec, arrays)


FIRST = "bijector.0.net.w0"


def _set(mapping, key, value):
    mapping[key] = value


@pytest.mark.parametrize("edit, message", [
    (lambda node, arrays, spec: arrays.pop(f"optimizer.v.{FIRST}"),
     rf"missing array 'optimizer\.v\.{FIRST}', listed in the spec but absent from the file \(at optimizer\)"),
    (lambda node, arrays, spec: node["arrays"]["m"].pop(FIRST),
     rf"does not fit the flow \(.*'m' names parameters .*\(missing \['{FIRST}'\]\)"),
    (lambda node, arrays, spec: _set(arrays, "optimizer.m.smuggled", np.zeros(2)),
     r"arrays \['optimizer\.m\.smuggled'\] are in the file but not in the spec"),
    (lambda node, arrays, spec: _set(arrays, f"optimizer.m.{FIRST}", arrays[f"optimizer.m.{FIRST}"][:, :-1]),
     rf"array 'optimizer\.m\.{FIRST}' has shape \(1, 3\) in the file but \(1, 4\) in the spec"),
    (lambda node, arrays, spec: _set(arrays, f"optimizer.v.{FIRST}", arrays[f"optimizer.v.{FIRST}"].astype(np.float32)),
     "dtype float32 in the file but float64 in the spec"),
    (lambda node, arrays, spec: arrays[f"optimizer.v.{FIRST}"].__setitem__((0, 1), np.inf),
     rf"array 'optimizer\.v\.{FIRST}' holds NaN or infinity"),
    (lambda node, arrays, spec: arrays[f"optimizer.m.{FIRST}"].__setitem__((0, 0), np.nan),
     rf"array 'optimizer\.m\.{FIRST}' holds NaN or infinity"),
    # a spec that agrees with the file but not with the flow: moments of another shape or dtype than the parameter
    (lambda node, arrays, spec: (_set(arrays, f"optimizer.m.{FIRST}", np.zeros((1, 3))),
                                 _set(node["arrays"]["m"][FIRST], "shape", [1, 3])),
     rf"optimizer state does not fit the flow \(.*m\['{FIRST}'\] has shape \(1, 3\); the parameter has \(1, 4\)"),
    (lambda node, arrays, spec: (_set(arrays, f"optimizer.m.{FIRST}", arrays[f"optimizer.m.{FIRST}"].astype("f4")),
                                 _set(node["arrays"]["m"][FIRST], "dtype", "float32")),
     rf"does not fit the flow \(.*m\['{FIRST}'\] has dtype float32; the parameter has float64"),
    (lambda node, arrays, spec: (_set(arrays, "optimizer.m.extra", np.zeros(2)),
                                 _set(node["arrays"]["m"], "extra", {"key": "optimizer.m.extra", "shape": [2],
                                                                     "dtype": "float64"})),
     r"does not fit the flow \(.*'m' names parameters .*\(unknown \['extra'\]\)"),
    (lambda node, arrays, spec: (arrays.pop(f"optimizer.v.{FIRST}"), node["arrays"]["v"].pop(FIRST)),
     rf"does not fit the flow \(.*'v' names parameters .*\(missing \['{FIRST}'\]\)"),
    (lambda node, arrays, spec: _set(node["arrays"]["m"][FIRST], "key", f"flow.{FIRST}"),
     rf"the record of moment m\['{FIRST}'\] must name array 'optimizer\.m\.{FIRST}'"),
    (lambda node, arrays, spec: _set(node["arrays"]["m"][FIRST], "dtype", "int64"),
     r"declared 'int64'; expected float32 or float64"),
    (lambda node, arrays, spec: _set(node["state"], "steps", 2.5),
     r"does not fit the flow \(.*'steps' must be an int; got float"),
    (lambda node, arrays, spec: _set(node["state"], "steps", -3), r"'steps' must be >= 0"),
    (lambda node, arrays, spec: _set(node["state"], "lr", "fast"), r"'lr' must be a real number; got str"),
    (lambda node, arrays, spec: _set(node["state"], "betas", [0.9, 1.5]), r"'betas' must lie in \[0, 1\)"),
    (lambda node, arrays, spec: _set(node["state"], "eps", None), r"'eps' must be a real number; got NoneType"),
    (lambda node, arrays, spec: node["state"].pop("weight_decay"), r"missing \['weight_decay'\]"),
    (lambda node, arrays, spec: _set(node["state"], "momentum", 0.9), r"unknown \['momentum'\]"),
    (lambda node, arrays, spec: _set(node["state"], "m", 0.0), "the optimizer spec needs an object 'state'"),
    (lambda node, arrays, spec: node["arrays"].pop("v"), "the optimizer spec needs an object 'state'"),
    (lambda node, arrays, spec: _set(node, "type", "SGD"), "the stored optimizer must be an object of type 'Adam'"),
    (lambda node, arrays, spec: _set(spec, "format_version", 1),
     "holds an optimizer state, which model format version 1 does not have"),
], ids=["missing-member", "unlisted-member", "extra-member", "shape-vs-spec", "dtype-vs-spec", "inf", "nan",
        "shape-vs-flow", "dtype-vs-flow", "unknown-parameter", "missing-parameter", "foreign-key", "int-dtype",
        "float-steps", "negative-steps", "str-lr", "betas", "eps-null", "missing-scalar", "unknown-scalar",
        "moment-in-scalars", "no-v", "not-adam", "version-1"])
def test_damaged_optimizer_state(saved_estimator, edit, message):
    with pytest.raises(ValueError, match=message):
        io.load(_edit_optimizer(saved_estimator, edit))


def test_corrupted_moment_bytes(saved_estimator):
    path, est = saved_estimator
    data = bytearray(path.read_bytes())
    at = bytes(data).find(est.optimizer_state_["v"][FIRST].tobytes())
    assert at > 0
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        io.load(path)


def test_save_refuses_an_optimizer_state_that_does_not_fit(tmp_path):
    est = _fitted_estimator()
    est.optimizer_state_["m"][FIRST] = est.optimizer_state_["m"][FIRST][:, :2].copy()
    with pytest.raises(ValueError, match=rf"optimizer_state_ does not fit its flow .*m\['{FIRST}'\] has shape"):
        io.save(est, tmp_path / "x.npz")
    est = _fitted_estimator()
    est.optimizer_state_["v"][FIRST][0, 0] = np.nan
    with pytest.raises(ValueError, match=rf"v\['{FIRST}'\] holds NaN"):
        io.save(est, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------- hostile files: nothing big is allocated

def _add_member(path, name, header_shape, payload_chunks=(), compress=zipfile.ZIP_STORED):
    """Append a .npy member whose header declares ``header_shape`` (float64) and whose data is ``payload_chunks``."""
    header = {"descr": "<f8", "fortran_order": False, "shape": header_shape}
    with zipfile.ZipFile(path, "a", compression=compress) as zf, zf.open(name, "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for chunk in payload_chunks:
            fh.write(chunk)


def _peak_allocation(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_member_declaring_a_huge_shape_is_refused_before_allocation(saved):
    path, _ = saved
    _add_member(path, "smuggled.npy", (10 ** 13,), [np.zeros(4).tobytes()])
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"member 'smuggled\.npy' declares shape \(10000000000000,\)"):
        io.load(path)
    with pytest.raises(ValueError, match="declares shape"):
        io.read_spec(path)


def test_listed_member_declaring_a_huge_shape_is_refused(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    arrays.pop("bijector.0.net.w0")
    _write(path, spec, arrays)
    _add_member(path, "bijector.0.net.w0.npy", (10 ** 13,), [np.zeros(4).tobytes()])
    with pytest.raises(ValueError, match="damaged.*declares shape"):
        io.load(path)


def test_spec_nested_too_deeply(saved):
    path, _ = saved
    spec, arrays = _contents(path)
    text = json.dumps(spec).replace('"root":', '"root":' + "[" * 100_000 + "]" * 100_000 + ',"was_root":', 1)
    arrays["__spec__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _write(path, None, arrays)
    for reader in (io.load, io.read_spec):
        with pytest.raises(ValueError, match="nests too deeply"):
            reader(path)


def test_unlisted_deflated_member_is_refused_unread(saved):
    path, _ = saved
    size = 64 * 2 ** 20
    chunk = bytes(2 ** 20)
    _add_member(path, "bomb.npy", (size // 8,), [chunk] * (size // len(chunk)), compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 ** 20

    def load():
        with pytest.raises(ValueError, match=r"\['bomb'\] are in the file but not in the spec"):
            io.load(path)
    assert _peak_allocation(load) < 16 * 2 ** 20


def test_big_endian_arrays_load_in_native_byte_order(saved, tmp_path):
    path, flow = saved
    spec, arrays = _contents(path)
    swapped = {key: value.astype(value.dtype.newbyteorder(">")) for key, value in arrays.items()}
    loaded = io.load(_write(tmp_path / "big-endian.npz", spec, swapped))
    x = np.random.default_rng(0).normal(size=(8, 3))
    np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert all(array.dtype.isnative for _, array in loaded.parameters())


@pytest.mark.parametrize("make", [
    lambda: flows.RealNVP(3, n_layers=2, hidden=(5,), rng=0),
    lambda: flows.MAF(3, n_layers=2, hidden=(5,), rng=0),
    lambda: flows.IAF(3, n_layers=2, hidden=(5,), rng=0)])
def test_affine_layers_saved_before_the_shift_option_load_with_a_data_shift(tmp_path, make):
    """A file whose affine layers have no "shift" entry (written before it existed) loads them with the shift in
    the data space, as they were trained; a new file records the placement and round-trips it."""
    import io as io_module
    import zipfile

    flow = make()
    x = np.random.default_rng(1).normal(size=(6, 3))
    path = str(tmp_path / "new.npz")
    io.save(flow, path)
    assert np.array_equal(io.load(path).log_prob(x), flow.log_prob(x))
    # the same parameters in data-shift layers, saved as an old file would be: without "shift"
    for b in flow.bijector.bijectors:
        layer = getattr(b, "bijector", b)
        if hasattr(layer, "transform"):
            layer.transform.shift = "data"
    expected = flow.log_prob(x)
    old = str(tmp_path / "old.npz")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "__spec__.npy":
                text = bytes(np.lib.format.read_array(io_module.BytesIO(data))).decode("utf-8")
                assert text.count('"shift":"base"') == 2
                text = text.replace(',"shift":"base"', "")
                buffer = io_module.BytesIO()
                np.lib.format.write_array(buffer, np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
                data = buffer.getvalue()
            dst.writestr(item, data)
    loaded = io.load(old)
    np.testing.assert_array_equal(loaded.log_prob(x), expected)
    assert not np.allclose(expected, make().log_prob(x))


def _spline_chain():
    """Every kind of spline layer: a coupling, an autoregressive layer, a frame holding a spline transform and
    the elementwise spline, over a standard normal."""
    from nflow_np.bijectors import Coupling
    from nflow_np.bijectors.coupling import SplineCoupling
    from nflow_np.bijectors.autoregressive import SplineAutoregressive
    from nflow_np.bijectors.transforms import SplineTransform
    rng = np.random.default_rng(2)
    old = dict(parameterization="softplus")     # what files written before the option held
    layers = [SplineCoupling([True, False, True], (5,), bins=4, bound=2.0, rng=0, **old),
              SplineAutoregressive(3, (5,), bins=3, rng=1, **old),
              Coupling([False, True, True], SplineTransform(bins=5, bound=2.5, **old), (4,), rng=2),
              nb.RationalQuadraticSpline(*(rng.normal(size=(3, n)) for n in (4, 4, 3)), bound=2.0)]
    return TransformedDistribution(MultivariateNormalDiag(np.zeros(3), np.ones(3)), nb.Chain(layers))


@pytest.mark.parametrize("make", [lambda: flows.NSF(3, n_layers=2, bins=4, bound=2.0, hidden=(5,), rng=0,
                                                    parameterization="softplus"),
                                  lambda: flows.NSF(3, n_layers=2, bins=4, hidden=(5,), autoregressive=True, rng=1,
                                                    parameterization="softplus"),
                                  _spline_chain], ids=["NSF", "NSF-AR", "every spline layer"])
def test_spline_layers_saved_before_the_parameterization_option_load_as_softplus(tmp_path, make):
    """A file whose spline layers have no "parameterization" entry (written before it existed) loads them with the
    softplus parameterization, bit for bit; a bounded layer records its parameterization and round-trips it."""
    flow, x = _trained_like(make())
    path = tmp_path / "new.npz"
    io.save(flow, path)
    spec, arrays = _contents(path)
    removed = []

    def strip(node):
        if isinstance(node, dict):
            if "parameterization" in node:
                removed.append(node.pop("parameterization"))
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(spec)
    assert removed and set(removed) == {"softplus"}
    loaded = io.load(_write(tmp_path / "old.npz", spec, arrays))
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(5, rng=3), flow.sample(5, rng=3))
    assert {getattr(b, "spline", b).parameterization for b in loaded.bijector.flatten()
            if hasattr(b, "spline") or isinstance(b, nb.RationalQuadraticSpline)} == {"softplus"}
    # the same weights in bounded layers: recorded, round-tripped, and a different density
    for b in flow.bijector.flatten():
        if hasattr(b, "spline"):
            b.spline.parameterization = "bounded"
        elif isinstance(b, nb.RationalQuadraticSpline):
            b.parameterization = "bounded"
    io.save(flow, tmp_path / "bounded.npz")
    bounded = io.load(tmp_path / "bounded.npz")
    assert np.array_equal(bounded.log_prob(x), flow.log_prob(x))
    assert not np.allclose(bounded.log_prob(x), loaded.log_prob(x))


def _affine_chain(clamp_shape):
    """Every kind of affine layer: a coupling, a MAF and an IAF layer, and a frame holding an affine transform."""
    from nflow_np.bijectors import Coupling
    from nflow_np.bijectors.transforms import AffineTransform
    layers = [nb.AffineCoupling([True, False, True], (5,), log_scale_clamp=1.0, clamp_shape=clamp_shape, rng=0),
              nb.MaskedAutoregressive(3, (5,), log_scale_clamp=1.0, clamp_shape=clamp_shape, rng=1),
              nb.InverseAutoregressive(3, (4,), log_scale_clamp=1.0, clamp_shape=clamp_shape, rng=2),
              Coupling([False, True, True], AffineTransform(1.0, clamp_shape=clamp_shape), (4,), rng=3)]
    return TransformedDistribution(MultivariateNormalDiag(np.zeros(3), np.ones(3)), nb.Chain(layers))


def _affine_shapes(flow):
    return [getattr(b, "bijector", b).transform.clamp_shape for b in flow.bijector.bijectors]


def test_affine_layers_saved_before_the_clamp_shape_option_load_with_the_tanh(tmp_path):
    """A file whose affine layers have no "clamp_shape" entry (written before it existed) loads them with the tanh
    clamp they were trained with, bit for bit; a rational layer records its shape and round-trips it."""
    flow, x = _trained_like(_affine_chain("tanh"), seed=4)
    io.save(flow, tmp_path / "new.npz")
    spec, arrays = _contents(tmp_path / "new.npz")
    text = json.dumps(spec)
    assert text.count('"clamp_shape": "tanh"') == 4
    old = json.loads(text.replace(', "clamp_shape": "tanh"', ""))
    assert "clamp_shape" not in json.dumps(old)
    loaded = io.load(_write(tmp_path / "old.npz", old, arrays))
    assert _affine_shapes(loaded) == ["tanh"] * 4
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    # the same weights in layers of the other shapes: recorded, round-tripped, and a different density
    for shape in ("rational",):
        other = _affine_chain(shape)
        for (_, dst), (_, src) in zip(other.parameters(), flow.parameters()):
            dst[...] = src
        io.save(other, tmp_path / f"{shape}.npz")
        back = io.load(tmp_path / f"{shape}.npz")
        assert _affine_shapes(back) == [shape] * 4
        assert np.array_equal(back.log_prob(x), other.log_prob(x))
        assert not np.allclose(back.log_prob(x), loaded.log_prob(x))


def test_a_clamp_shape_the_library_does_not_know_is_refused(tmp_path):
    io.save(flows.RealNVP(3, n_layers=1, hidden=(4,), rng=0), tmp_path / "good.npz")
    spec, arrays = _contents(tmp_path / "good.npz")
    text = json.dumps(spec)
    assert '"clamp_shape": "' in text
    for shape in ("tanh", "rational"):
        text = text.replace(f'"clamp_shape": "{shape}"', '"clamp_shape": "cubic"')
    bad = json.loads(text)
    with pytest.raises(ValueError, match="clamp_shape must be one of"):
        io.load(_write(tmp_path / "bad.npz", bad, arrays))


def test_a_spline_parameterization_the_library_does_not_know_is_refused(tmp_path):
    flow, _ = _trained_like(flows.NSF(3, n_layers=1, bins=3, hidden=(4,), rng=0))
    io.save(flow, tmp_path / "good.npz")
    spec, arrays = _contents(tmp_path / "good.npz")
    text = json.dumps(spec).replace('"parameterization": "bounded"', '"parameterization": "cubic"')
    with pytest.raises(ValueError, match="parameterization must be one of"):
        io.load(_write(tmp_path / "bad.npz", json.loads(text), arrays))
