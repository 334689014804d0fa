"""Optimizers, exact gradients of flows, and the training loops."""

import numpy as np
import pytest

from nflow_np import bijectors as nb
from nflow_np import datasets, flows
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
from nflow_np.testing import check_gradients
from nflow_np.train import SGD, Adam, fit, fit_to_target, value_and_grad
from nflow_np.train import loops as fit_module


def _perturbed(flow, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, array in flow.parameters():
        array += scale * rng.normal(size=array.shape)
    return flow


READY_MADE = {
    "RealNVP": lambda act: flows.RealNVP(2, n_layers=4, hidden=(8, 8), activation=act, rng=0),
    "RealNVP(permute)": lambda act: flows.RealNVP(4, n_layers=3, hidden=(5,), activation=act, permute="random",
                                                  rng=1),
    "NICE": lambda act: flows.NICE(3, n_layers=3, hidden=(6,), activation=act, act_norm=False, rng=2),
    "MAF": lambda act: flows.MAF(3, n_layers=2, hidden=(6,), activation=act, rng=3),
    "MAF(1-D)": lambda act: flows.MAF(1, n_layers=2, hidden=(4,), activation=act, rng=4),
    "IAF": lambda act: flows.IAF(3, n_layers=2, hidden=(5,), activation=act, rng=5),
    "RealNVP(batch_norm)": lambda act: flows.RealNVP(2, n_layers=3, hidden=(6,), activation=act, batch_norm=True,
                                                     rng=6),
    "RealNVP(act_norm,lu)": lambda act: flows.RealNVP(3, n_layers=3, hidden=(6,), activation=act, act_norm=True,
                                                      lu_linear=True, rng=7),
    "NICE(act_norm)": lambda act: flows.NICE(2, n_layers=2, hidden=(6,), activation=act, rng=8),
    "MAF(batch_norm)": lambda act: flows.MAF(2, n_layers=2, hidden=(6,), activation=act, batch_norm=True, rng=9),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", sorted(READY_MADE))
def test_check_gradients_ready_made(name, backend):
    flow = _perturbed(READY_MADE[name]("tanh"))
    x = np.random.default_rng(1).normal(size=(16, flow.event_shape[0]))
    report = check_gradients(flow, x, backend=backend)
    assert report["nll"] < 1e-5 and report["reverse_kl"] < 1e-5


@pytest.mark.parametrize("name", ["RealNVP", "MAF"])
def test_check_gradients_with_relu(name):
    # differences whose stencil straddles a ReLU kink are taken from the kink's clean side
    flow = _perturbed(READY_MADE[name]("relu"), seed=3)
    check_gradients(flow, np.random.default_rng(2).normal(size=(16, flow.event_shape[0])))


@pytest.mark.parametrize("seed", range(6))
def test_check_gradients_after_training_relu_couplings(seed):
    """ReLU is the default activation: after a little training some unit sits within a stencil's reach of its kink.

    The check takes those differences from the kink's clean side (and says how many it did), so the exact
    gradients pass, and tightly.
    """
    # the tanh clamp: smooth, so the ReLU kinks are the only ones (the rational clamp's is the next test's)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=seed, clamp_shape="tanh")
    data = datasets.two_moons(256, rng=seed)
    fit(flow, data, epochs=5, rng=seed, backend="numpy")
    report = check_gradients(flow, data[:32], backend="numpy")
    assert report["nll"] < 1e-6 and report["reverse_kl"] < 1e-6
    assert report["kinks_skipped"] <= 2


@pytest.mark.parametrize("seed", range(6))
def test_check_gradients_passes_on_the_default_rational_clamp_after_training(seed):
    """The default rational clamp s = a / (1 + |a| / c) has a continuous slope but a curvature that jumps at a = 0:
    a central difference whose stencil straddles it is off by O(h), about 1e-6 relative here (the tanh clamp:
    1e-10). The exact gradients still pass check_gradients at its default tolerance, with room to spare."""
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=seed)
    assert flow.bijector.bijectors[0].transform.clamp_shape == "rational"
    data = datasets.two_moons(256, rng=seed)
    fit(flow, data, epochs=5, rng=seed, backend="numpy")
    report = check_gradients(flow, data[:32], backend="numpy")
    assert report["nll"] < 1e-5 / 3 and report["reverse_kl"] < 1e-5 / 3


def test_check_gradients_catches_a_slightly_wrong_gradient_of_a_relu_flow():
    """Handling kinks does not blunt the check: one entry 0.1% off fails, kinks or not."""
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=4)
    data = datasets.two_moons(256, rng=4)
    fit(flow, data, epochs=5, rng=4, backend="numpy")
    coupling = flow.bijector.bijectors[0]
    original = coupling._inverse_backward

    def broken(ctx, grad_x, grad_log_det):
        grad, grads = original(ctx, grad_x, grad_log_det)
        grads["net.w1"] = grads["net.w1"].copy()
        grads["net.w1"][7, 0] *= 1.001
        return grad, grads

    coupling._inverse_backward = broken
    with pytest.raises(AssertionError, match=r"nll gradient of bijector\.\d\.net\.w1\[7, 0\]"):
        check_gradients(flow, data[:32], reverse_kl=False, backend="numpy")


def test_check_gradients_hand_built_chain():
    flow = TransformedDistribution(
        MultivariateNormalDiag(np.zeros(2)),
        nb.Chain([nb.LeakyReLU(0.4), nb.Affine(shift=[0.1, -0.2], scale_tril=[[1.2, 0.0], [0.3, 0.8]],
                                               scale_perturb_factor=[[0.2, 0.1], [0.0, 0.3]])]))
    x = np.random.default_rng(0).normal(size=(32, 2)) * 2 + 0.37
    report = check_gradients(flow, x)
    assert report["nll"] < 1e-5


def test_check_gradients_catches_a_wrong_gradient():
    flow = _perturbed(flows.RealNVP(2, n_layers=2, hidden=(4,), activation="tanh", rng=0))
    coupling = flow.bijector.bijectors[0]
    original = coupling._inverse_backward

    def broken(ctx, grad_x, grad_log_det):
        grad, grads = original(ctx, grad_x, grad_log_det)
        grads["net.b0"] = grads["net.b0"] * 1.01
        return grad, grads

    coupling._inverse_backward = broken
    with pytest.raises(AssertionError, match="net.b0"):
        check_gradients(flow, np.random.default_rng(0).normal(size=(8, 2)), reverse_kl=False, backend="numpy")


def test_value_and_grad_names_match_parameters():
    flow = flows.RealNVP(3, n_layers=2, hidden=(4,), rng=0)
    loss, grads = value_and_grad(flow, np.random.default_rng(0).normal(size=(10, 3)))
    names = dict(flow.parameters())
    assert set(grads) == set(names)
    assert all(grads[k].shape == names[k].shape and grads[k].dtype == names[k].dtype for k in names)
    assert np.isclose(loss, -flow.log_prob(np.random.default_rng(0).normal(size=(10, 3))).mean())


def test_identity_initialization():
    flow = flows.RealNVP(4, rng=0, init="identity")
    x = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_allclose(flow.bijector.forward(x), x, atol=0)
    flow = flows.MAF(3, rng=0, init="identity")
    np.testing.assert_allclose(flow.log_prob(x[:, :3]), MultivariateNormalDiag(np.zeros(3)).log_prob(x[:, :3]))


def test_coupling_needs_two_dimensions():
    with pytest.raises(ValueError, match="MAF"):
        flows.RealNVP(1)
    with pytest.raises(ValueError, match="coupling needs"):
        nb.AffineCoupling([True, True])


def test_adam_minimizes_a_quadratic():
    w = np.array([3.0, -2.0])
    opt = Adam([("w", w)], lr=0.1)
    for _ in range(500):
        opt.step({"w": 2 * (w - 1.0)})
    np.testing.assert_allclose(w, [1.0, 1.0], atol=1e-3)


def test_sgd_momentum_weight_decay_and_clipping():
    w = np.array([5.0])
    opt = SGD([("w", w)], lr=0.05, momentum=0.9, weight_decay=0.1, clip_norm=1.0)
    norm = opt.step({"w": np.array([100.0])})
    assert norm == 100.0
    np.testing.assert_allclose(w, 5.0 - 0.05 * (1.0 + 0.1 * 5.0))
    for _ in range(300):
        opt.step({"w": 2 * (w - 1.0)})
    # minimum of (w - 1)^2 + 0.05 w^2
    np.testing.assert_allclose(w, 2.0 / 2.1, atol=1e-3)


def test_optimizer_rejects_bad_gradients():
    w = np.zeros(3)
    opt = Adam([("w", w)])
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(2)})
    with pytest.raises(KeyError):
        opt.step({"v": np.zeros(3)})
    with pytest.raises(FloatingPointError):
        opt.step({"w": np.array([np.nan, 0.0, 0.0])})
    assert np.all(w == 0)


def _two_params(dtype=np.float64):
    return [("w", np.array([[3.0, -2.0, 0.5], [1.0, 0.0, -1.0]], dtype=dtype)),
            ("b", np.array([0.3, -0.7], dtype=dtype))]


def _grads(params, k):
    # a different gradient every step, and a different one per parameter
    return {name: (np.cos(np.arange(p.size) + 3.0 * k + len(name)) * (k + 1)).reshape(p.shape).astype(p.dtype)
            for name, p in params.items()}


ADAM_KEYS = {"lr", "steps", "betas", "eps", "weight_decay", "clip_norm", "m", "v"}


@pytest.mark.parametrize("make", [
    lambda p: Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, clip_norm=2.0),
    lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, clip_norm=2.0),
], ids=["Adam", "SGD"])
def test_state_dict_restores_an_optimizer_that_continues_bit_for_bit(make):
    first = dict(_two_params())
    opt = make(first.items())
    for k in range(4):
        opt.step(_grads(first, k))
    state = opt.state_dict()
    twin_params = {name: p.copy() for name, p in first.items()}
    twin = make(twin_params.items())
    twin.lr, twin.steps = 1.0, 99   # overwritten by the load
    twin.load_state_dict(state)
    assert twin.state_dict().keys() == state.keys() and twin.steps == 4 and twin.lr == 0.05
    for k in range(4, 9):
        opt.step(_grads(first, k))
        twin.step(_grads(twin_params, k))
    for name in first:
        assert np.array_equal(first[name], twin_params[name])
    after, twin_after = opt.state_dict(), twin.state_dict()
    for key in ("m", "v", "velocity"):
        for name in after.get(key, {}):
            assert np.array_equal(after[key][name], twin_after[key][name])


def test_adam_state_dict_holds_everything_as_a_snapshot():
    params = dict(_two_params())
    opt = Adam(params.items(), lr=0.1, betas=(0.5, 0.9), eps=1e-7, weight_decay=0.2, clip_norm=3.0)
    opt.step(_grads(params, 0))
    state = opt.state_dict()
    assert set(state) == ADAM_KEYS
    assert (state["lr"], state["steps"], state["betas"], state["eps"], state["weight_decay"], state["clip_norm"]) == \
        (0.1, 1, (0.5, 0.9), 1e-7, 0.2, 3.0)
    assert set(state["m"]) == set(state["v"]) == {"w", "b"}
    # the moments of one step: m = (1 - b1) g, v = (1 - b2) g^2, of the clipped gradient
    g = _grads(params, 0)
    scale = min(1.0, 3.0 / np.sqrt(sum(float(np.vdot(x, x)) for x in g.values())))
    np.testing.assert_allclose(state["m"]["w"], 0.5 * scale * g["w"], rtol=1e-12)
    np.testing.assert_allclose(state["v"]["b"], 0.1 * (scale * g["b"]) ** 2, rtol=1e-12)
    # a snapshot: later steps leave it alone, and changing it leaves the optimizer alone
    m_w = state["m"]["w"].copy()
    opt.step(_grads(params, 1))
    assert np.array_equal(state["m"]["w"], m_w) and state["steps"] == 1 and opt.steps == 2
    state["m"]["w"][...] = 7.0
    assert not np.any(opt.m["w"] == 7.0)


def test_adam_moments_are_readable_live_arrays():
    params = dict(_two_params(np.float32))
    opt = Adam(params.items(), lr=0.1)
    m_w = opt.m["w"]
    opt.step(_grads(params, 0))
    assert m_w is opt.m["w"] and np.any(m_w != 0) and m_w.dtype == np.float32
    assert set(opt.m) == set(opt.v) == {"w", "b"} and np.all(opt.v["b"] > 0)
    with pytest.raises(TypeError):
        opt.m["w"] = np.zeros((2, 3), np.float32)   # the mapping is read-only; load_state_dict replaces state
    sgd = SGD(params.items(), momentum=0.5)
    sgd.step(_grads(params, 0))
    assert set(sgd.velocity) == {"w", "b"} and np.any(sgd.velocity["b"] != 0)
    assert set(sgd.state_dict()) == {"lr", "steps", "clip_norm", "momentum", "nesterov", "weight_decay", "velocity"}


def test_a_loaded_state_is_copied_into_the_optimizers_own_arrays():
    # code holding the moment arrays (a compiled trainer) sees what load_state_dict writes
    params = dict(_two_params())
    source = Adam({name: p.copy() for name, p in params.items()}.items())
    source.step(_grads(params, 0))
    opt = Adam(params.items())
    held = opt.m["b"]
    state = source.state_dict()
    opt.load_state_dict(state)
    assert opt.m["b"] is held and np.array_equal(held, state["m"]["b"]) and held is not state["m"]["b"]


def _bad_states():
    params = dict(_two_params())
    opt = Adam(params.items(), lr=0.1)
    opt.step(_grads(params, 0))
    good = opt.state_dict()

    def edit(**changes):
        return {**good, **changes}
    m32 = {**good["m"], "w": good["m"]["w"].astype(np.float32)}
    nan_v = {**good["v"], "b": np.array([np.nan, 1.0])}
    return [
        ("list", [good], TypeError, "state must be a dict"),
        ("missing-key", {k: v for k, v in good.items() if k != "v"}, ValueError, r"missing \['v'\]"),
        ("unknown-key", edit(momentum=0.9), ValueError, r"unknown \['momentum'\]"),
        ("missing-name", edit(m={"w": good["m"]["w"]}), ValueError, r"'m' names parameters \['w'\]; this optimizer "
                                                                    r"has \['b', 'w'\] \(missing \['b'\]\)"),
        ("unknown-name", edit(v={**good["v"], "c": np.zeros(2)}), ValueError, r"\(unknown \['c'\]\)"),
        ("shape", edit(m={**good["m"], "b": np.zeros(3)}), ValueError, r"m\['b'\] has shape \(3,\); the parameter "
                                                                       r"has \(2,\)"),
        ("dtype", edit(m=m32), ValueError, r"m\['w'\] has dtype float32; the parameter has float64"),
        ("not-array", edit(m={**good["m"], "b": [0.0, 0.0]}), TypeError, r"m\['b'\] must be an ndarray; got list"),
        ("not-dict", edit(v=np.zeros(2)), TypeError, "'v' must be a dict"),
        ("nan", edit(v=nan_v), ValueError, r"v\['b'\] holds NaN or infinity"),
        ("inf-lr", edit(lr=np.inf), ValueError, "'lr' must be a finite number >= 0; got inf"),
        ("str-lr", edit(lr="0.1"), TypeError, "'lr' must be a real number; got str"),
        ("float-steps", edit(steps=2.0), TypeError, "'steps' must be an int; got float"),
        ("bool-steps", edit(steps=True), TypeError, "'steps' must be an int; got bool"),
        ("negative-steps", edit(steps=-1), ValueError, "'steps' must be >= 0"),
        ("betas", edit(betas=(0.9, 1.0)), ValueError, r"'betas' must lie in \[0, 1\)"),
        ("one-beta", edit(betas=0.9), TypeError, "'betas' must be a pair of numbers"),
        ("eps", edit(eps=-1e-8), ValueError, "'eps' must be a finite number >= 0"),
        ("weight-decay", edit(weight_decay=np.nan), ValueError, "'weight_decay' must be a finite number >= 0"),
        ("clip-norm", edit(clip_norm=0.0), ValueError, "'clip_norm' must be positive or None"),
    ]


@pytest.mark.parametrize("case", _bad_states(), ids=lambda case: case[0])
def test_load_state_dict_refuses_a_bad_state_and_changes_nothing(case):
    _, state, error, message = case
    params = dict(_two_params())
    opt = Adam(params.items(), lr=0.3)
    opt.step(_grads(params, 5))
    before = opt.state_dict()
    with pytest.raises(error, match=message):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert {k: after[k] for k in ADAM_KEYS - {"m", "v"}} == {k: before[k] for k in ADAM_KEYS - {"m", "v"}}
    assert all(np.array_equal(after[key][name], before[key][name]) for key in ("m", "v") for name in params)


def test_sgd_state_refuses_an_adam_state():
    params = dict(_two_params())
    state = Adam(params.items()).state_dict()
    with pytest.raises(ValueError, match=r"missing \['momentum', 'nesterov', 'velocity'\].*unknown \['betas'"):
        SGD(params.items()).load_state_dict(state)


def test_adam_constructor_refuses_what_load_state_dict_would():
    with pytest.raises(ValueError, match="eps must be"):
        Adam(_two_params(), eps=np.nan)
    with pytest.raises(ValueError, match="weight_decay must be"):
        Adam(_two_params(), weight_decay=-0.1)


def test_state_dict_round_trip_through_flat_buffers_as_a_compiled_trainer_does():
    # An engine that steps on one flat vector: read the state at the start of its epoch, write it back at the end.
    params = dict(_two_params())
    reference = Adam({name: p.copy() for name, p in params.items()}.items(), lr=0.05)
    reference_params = reference.params
    opt = Adam(params.items(), lr=0.05)
    for k in range(3):
        reference.step(_grads(reference_params, k))
        opt.step(_grads(params, k))
    names = list(params)

    def flat(arrays):
        return np.concatenate([arrays[name].reshape(-1) for name in names])

    def unflat(vector, into):
        offset = 0
        for name in names:
            size = into[name].size
            into[name][...] = vector[offset:offset + size].reshape(into[name].shape)
            offset += size

    state = opt.state_dict()                                     # the start of the engine's epoch
    theta = flat(params)
    engine = Adam([("theta", theta)], lr=1.0)
    engine.load_state_dict({**state, "m": {"theta": flat(state["m"])}, "v": {"theta": flat(state["v"])}})
    for k in range(3, 7):
        grads = _grads(params, k)
        engine.step({"theta": flat(grads)})
        reference.step(grads)
    unflat(theta, params)                                        # the end of the engine's epoch
    unflat(engine.m["theta"], state["m"])
    unflat(engine.v["theta"], state["v"])
    state["lr"], state["steps"] = engine.lr, engine.steps
    opt.load_state_dict(state)
    assert opt.steps == reference.steps == 7
    for name in names:
        assert np.array_equal(params[name], reference_params[name])
        assert np.array_equal(opt.m[name], reference.m[name]) and np.array_equal(opt.v[name], reference.v[name])


def test_fit_learns_a_gaussian_and_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    data = rng.multivariate_normal([1.0, -1.0], cov, size=1000)
    flow = flows.RealNVP(2, n_layers=4, hidden=(16, 16), rng=1)
    history = fit(flow, data, epochs=30, batch_size=100, lr=5e-3, validation_split=0.2, rng=2)
    assert history.epochs == 30 and len(history.val_loss) == 30 and history.steps > 0
    assert history.train_loss[-1] < history.train_loss[0] - 0.3
    best = int(np.argmin(history.val_loss))
    assert history.best_epoch == best
    true_entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    held_out = rng.multivariate_normal([1.0, -1.0], cov, size=5000)
    assert -flow.log_prob(held_out).mean() < true_entropy + 0.1


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.slow)])
def test_fit_continues_a_restored_adam_bit_for_bit(backend):
    # 2 epochs, a checkpoint (a copy of the flow and Adam's state_dict), 3 more epochs on a new flow object and a new
    # Adam that loaded the state == 5 epochs at once. The compiled trainer reads and writes the same state.
    if backend == "numba":
        pytest.importorskip("numba")
    import copy
    data = np.random.default_rng(0).multivariate_normal([1.0, -1.0], [[1.0, 0.8], [0.8, 1.0]], size=300)

    def make():
        return flows.RealNVP(2, n_layers=2, hidden=(8,), rng=1)
    settings = dict(batch_size=64, validation_split=0.0, backend=backend)
    whole = make()
    history = fit(whole, data, epochs=5, lr=5e-3, rng=np.random.default_rng(2), **settings)
    part, rng = make(), np.random.default_rng(2)
    opt = Adam(part.parameters(), lr=5e-3)
    first = fit(part, data, epochs=2, optimizer=opt, rng=rng, **settings)
    state = opt.state_dict()
    flow, restarted, rng_copy = copy.deepcopy(part), copy.deepcopy(part), copy.deepcopy(rng)
    resumed = Adam(flow.parameters(), lr=1.0)
    resumed.load_state_dict(state)
    second = fit(flow, data, epochs=3, optimizer=resumed, rng=rng, **settings)
    # the comparison holds when each fit keeps its last epoch (fit restores the best one)
    assert (history.best_epoch, first.best_epoch, second.best_epoch) == (4, 1, 2)
    assert resumed.steps == opt.steps + second.steps == history.steps
    for (name, a), (_, b) in zip(flow.parameters(), whole.parameters()):
        assert np.array_equal(a, b), name
    # a fresh Adam from the same checkpoint ends elsewhere
    fit(restarted, data, epochs=3, lr=5e-3, rng=rng_copy, **settings)
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(restarted.parameters(), whole.parameters()))


def test_fit_survives_nan_steps(monkeypatch):
    calls = {"n": 0}
    real = fit_module.nll_and_grad

    def sometimes_nan(flow, batch, **kwargs):
        calls["n"] += 1
        loss, grads = real(flow, batch, **kwargs)
        if calls["n"] % 3 == 0:
            grads = {k: np.full_like(v, np.nan) for k, v in grads.items()}
        return loss, grads

    monkeypatch.setattr(fit_module, "nll_and_grad", sometimes_nan)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    data = np.random.default_rng(0).normal(size=(300, 2)) * [1.0, 3.0]
    history = fit(flow, data, epochs=5, batch_size=50, lr=1e-2, rng=0, backend="numpy")
    assert history.rejected_steps == calls["n"] // 3 > 0
    assert history.lr[-1] < 1e-2
    assert all(np.isfinite(v).all() for _, v in flow.parameters())
    assert np.isfinite(flow.log_prob(data)).all()


def test_fit_never_leaves_non_finite_parameters():
    # a learning rate so large that SGD overflows the parameters: the guard restores them
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), log_scale_clamp=None, init="identity", rng=0)
    data = np.random.default_rng(0).normal(size=(200, 2)) * 50
    opt = SGD(flow.parameters(), lr=1e300)
    history = fit(flow, data, epochs=2, batch_size=50, optimizer=opt, rng=0)
    assert history.rejected_steps > 0
    assert all(np.isfinite(v).all() for _, v in flow.parameters())


def test_fit_patience_stops_early():
    data = np.random.default_rng(0).normal(size=(200, 2))
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    history = fit(flow, data, epochs=200, batch_size=50, lr=0.05, validation_split=0.25, patience=3, rng=0)
    assert history.stopped_early and history.epochs < 200


def test_fit_to_target_learns_a_banana():
    # p(x) ~ N(x0; 0, 1) N(x1; x0^2 / 2, 0.5^2)
    def log_p(x):
        return -0.5 * x[..., 0] ** 2 - 0.5 * ((x[..., 1] - 0.5 * x[..., 0] ** 2) / 0.5) ** 2

    def grad_log_p(x):
        r = (x[..., 1] - 0.5 * x[..., 0] ** 2) / 0.25
        return np.stack([-x[..., 0] + r * x[..., 0], -r], axis=-1)

    flow = flows.IAF(2, n_layers=3, hidden=(16, 16), activation="tanh", rng=0)
    history = fit_to_target(flow, log_p, grad_fn=grad_log_p, steps=600, n_samples=128, lr=5e-3, rng=1)
    assert history.train_loss[-1] < history.train_loss[0]
    samples = flow.sample(20000, rng=2)
    assert abs(samples[:, 0].mean()) < 0.15 and abs(samples[:, 0].std() - 1.0) < 0.2
    assert abs(samples[:, 1].mean() - 0.5) < 0.2   # E[x0^2 / 2] = 0.5
    # the reverse KL is the gap to the normalizer log Z = log(2 pi * 0.5)
    log_z = np.log(2 * np.pi * 0.5)
    assert history.train_loss[-1] + log_z < 0.15


def test_fit_to_target_finite_difference_gradient_matches_exact():
    from nflow_np.train.losses import reverse_kl_and_grad

    flow = _perturbed(flows.RealNVP(2, n_layers=2, hidden=(4,), activation="tanh", rng=0))
    z = flow.distribution.sample(64, rng=0)

    def log_p(x):
        return -0.5 * (x ** 2).sum(-1) - 0.1 * x[..., 0] ** 4

    def grad(x):
        return -x - np.stack([0.4 * x[..., 0] ** 3, np.zeros_like(x[..., 0])], axis=-1)

    _, exact = reverse_kl_and_grad(flow, log_p, None, z=z, target_grad=grad)
    _, numeric = reverse_kl_and_grad(flow, log_p, None, z=z)
    for k in exact:
        np.testing.assert_allclose(numeric[k], exact[k], rtol=1e-6, atol=1e-9)


def _registry_flows():
    from bijector_cases import CASES

    names = []
    for name in sorted(CASES):
        rng = np.random.default_rng(0)
        bijector = CASES[name].build(rng, np.float64)
        if dict(bijector.parameters()):
            names.append(name)
    return names


@pytest.mark.parametrize("name", _registry_flows())
def test_check_gradients_every_trainable_bijector(name):
    """Each bijector with parameters, as the whole bijector of a flow, against finite differences."""
    from bijector_cases import CASES
    from nflow_np.distributions import Normal

    case = CASES[name]
    rng = np.random.default_rng(1)
    bijector = case.build(rng, np.float64)
    z = case.draw(bijector, rng, np.float64, 12)[2:]   # bulk points: edge rows sit at domain bounds
    # an anisotropic base, so that even a rotation changes the likelihood
    if case.dim:
        base = MultivariateNormalDiag(np.zeros(case.dim), np.linspace(0.5, 1.5, case.dim))
    else:
        base = Normal(np.zeros(z.shape[1:]), np.linspace(0.5, 1.5, z.shape[-1]))
    flow = TransformedDistribution(base, bijector)
    x = bijector.forward(z)
    try:   # reverse KL pushes base samples through: only where they lie in the forward domain
        bijector.forward(base.sample(100, rng=0))
        reverse_kl = True
    except ValueError:
        reverse_kl = False
    report = check_gradients(flow, x, reverse_kl=reverse_kl)
    assert report["nll"] < 1e-5


@pytest.mark.parametrize("build", [lambda: flows.RealNVP(2, n_layers=2, hidden=(8,), dtype=np.float32, rng=0),
                                   lambda: flows.MAF(2, n_layers=2, hidden=(8,), dtype=np.float32, rng=0)],
                         ids=["RealNVP", "MAF"])
def test_float32_flows_train_in_float32(build):
    flow = build()
    data = (np.random.default_rng(0).normal(size=(400, 2)) * [2.0, 0.5] + 1.0).astype(np.float32)
    history = fit(flow, data, epochs=5, batch_size=50, lr=1e-2, rng=0)
    assert all(v.dtype == np.float32 for _, v in flow.parameters())
    assert history.train_loss[-1] < history.train_loss[0]
    x, lp = flow.sample_and_log_prob(10, rng=1)
    assert x.dtype == np.float32 and lp.dtype == np.float32
    with pytest.raises(TypeError, match="float64"):
        flow.log_prob(data.astype(np.float64))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fit_clamps_a_huge_batch_size_to_the_training_rows(backend, monkeypatch):
    data = np.random.default_rng(0).normal(size=(40, 2))
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    real = fit_module._compiled_trainer
    sizes = []

    def spy(flow, optimizer, batch_size):
        sizes.append(batch_size)
        # a workspace sized by batch_size=10**9 would need hundreds of GiB: refuse before allocating it
        assert batch_size <= len(data), "the compiled trainer is sized by batch_size, not by the rows"
        return real(flow, optimizer, batch_size)

    monkeypatch.setattr(fit_module, "_compiled_trainer", spy)
    history = fit(flow, data, epochs=3, batch_size=10**9, lr=1e-2, backend=backend, rng=0)
    assert sizes == [40]
    assert history.steps == 3 and history.rejected_steps == 0
    assert np.isfinite(history.train_loss).all()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("validation", [False, True])
def test_fit_raises_and_leaves_the_flow_unchanged_when_every_step_is_rejected(backend, validation):
    data = np.random.default_rng(0).normal(size=(40, 2)) * 1e150
    flow = flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0)
    before = {k: v.copy() for k, v in flow.parameters()}
    kwargs = {"validation_data": data[:10]} if validation else {}
    with pytest.raises(RuntimeError, match=r"fit: every training step was rejected \(\d+ steps, 3 epochs\).*"
                                           r"standardize it first"):
        fit(flow, data, epochs=3, batch_size=16, backend=backend, rng=0, **kwargs)
    assert all(np.array_equal(v, before[k]) for k, v in flow.parameters())


@pytest.mark.parametrize("make", [lambda: flows.RealNVP(2, hidden=(8,), init="identity", rng=0),
                                  lambda: flows.MAF(2, hidden=(8,), init="identity", rng=0)], ids=["realnvp", "maf"])
def test_an_overflowing_row_is_a_rejected_step_on_every_backend(make):
    """One row at 1e154 overflows the loss of its batch: each backend rejects that step and trains on."""
    x = np.vstack([datasets.two_moons(300, rng=0), [[1e154, -1e154]]])
    runs = {}
    for backend in ("numpy", "numba"):
        flow = make()
        history = fit(flow, x, epochs=2, batch_size=64, rng=0, backend=backend)
        assert all(np.isfinite(p).all() for _, p in flow.parameters())
        runs[backend] = (history.steps, history.rejected_steps)
        # the overflowing batch gives an answer, not an exception, and the answer is not finite somewhere
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads = value_and_grad(flow, x[-70:], backend=backend)
        assert not (np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values()))
    assert runs["numpy"] == runs["numba"] and runs["numpy"][1] == 2


def test_the_divergence_rule_fires_only_far_above_the_level():
    from nflow_np.kernels.scalar import DIVERGENCE_FACTOR, loss_diverged, loss_level

    diverged = getattr(loss_diverged, "py_func", loss_diverged)
    level = getattr(loss_level, "py_func", loss_level)
    assert not diverged(1e300, 0.0, 0.0, 0.0)                   # nothing seen yet: no level to compare with
    assert level(5.0, 0.0, 0.0, 0.0) == (5.0, 0.0, 1.0)       # the first loss sets the level
    threshold = 5.0 + DIVERGENCE_FACTOR * (5.0 + 0.0 + 1.0)
    assert not diverged(threshold, 5.0, 0.0, 1.0) and diverged(threshold * 1.001, 5.0, 0.0, 1.0)
    assert not diverged(-50.0 + DIVERGENCE_FACTOR * 50.0, -50.0, 0.0, 3.0)   # a negative level: a margin of |level|
    assert level(7.0, 5.0, 0.0, -1.0) == (5.0, 0.0, -1.0)     # a rule turned off stays off
    lv, spread, seen = level(7.0, 5.0, 1.0, 1.0)
    assert (lv, spread, seen) == pytest.approx((5.2, 1.1, 2.0))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_diverging_fit_is_caught_reverted_and_slowed(backend):
    """lr=1e4 throws the loss up by tens of orders of magnitude at the first update: the next step sees it, puts
    the parameters back, halves the rate and counts the step, until the rate is small enough to train. Three steps
    per epoch and no validation data: epochs end on an update that blew up, which is not the state kept."""
    x = datasets.two_moons(120, rng=0)
    x = (x - x.mean(0)) / x.std(0)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=4)
    initial_nll = -flow.log_prob(x, backend="numpy").mean()
    history = fit(flow, x, epochs=4, batch_size=40, lr=1e4, rng=4, backend=backend)
    assert history.diverged_steps > 0 and history.rejected_steps == history.diverged_steps
    assert history.steps + history.rejected_steps == 4 * 3
    assert history.lr[-1] == 1e4 * 0.5 ** history.rejected_steps
    assert all(np.isfinite(p).all() for _, p in flow.parameters())
    assert -flow.log_prob(x, backend="numpy").mean() < initial_nll + 0.5     # not the 1e20 of a diverged state
    assert np.all(np.array(history.train_loss) < initial_nll + 0.5)


def test_the_divergence_rule_acts_alike_on_every_cpu_backend():
    x = datasets.two_moons(120, rng=0)
    x = (x - x.mean(0)) / x.std(0)
    runs = {}
    for backend in ("numpy", "numba"):
        flow = flows.MAF(2, n_layers=2, hidden=(8,), rng=0)
        history = fit(flow, x, epochs=3, batch_size=20, lr=1e3, validation_data=x[:30], rng=0, backend=backend)
        runs[backend] = (history, {k: v.copy() for k, v in flow.parameters()})
    (ref, ref_params), (got, got_params) = runs["numpy"], runs["numba"]
    assert ref.diverged_steps > 0
    assert (got.steps, got.rejected_steps, got.diverged_steps, got.best_epoch, got.lr) == \
        (ref.steps, ref.rejected_steps, ref.diverged_steps, ref.best_epoch, ref.lr)
    np.testing.assert_allclose(got.train_loss, ref.train_loss, rtol=1e-6)
    for k in ref_params:
        np.testing.assert_allclose(got_params[k], ref_params[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["batch of one", "unscaled data", "batch_norm", "heavy tails"])
def test_normal_training_never_trips_the_divergence_rule(case):
    rng = np.random.default_rng(0)
    x = datasets.two_moons(200, rng=0)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    settings = dict(epochs=3, batch_size=32, lr=1e-2)
    if case == "batch of one":
        x, settings["batch_size"] = x[:60], 1
    elif case == "unscaled data":
        x = x * 300.0 + 1000.0
    elif case == "batch_norm":
        flow = flows.RealNVP(2, n_layers=2, hidden=(8,), batch_norm=True, rng=0)
    else:
        x, settings["batch_size"] = rng.standard_t(1.5, size=(200, 2)), 4
    history = fit(flow, x, rng=0, backend="numpy", **settings)
    assert history.diverged_steps == 0 and history.rejected_steps == 0
    assert history.steps == 3 * -(-len(x) // settings["batch_size"])


def _state(flow):
    return {k: v.copy() for k, v in flow.parameters()}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_exception_from_a_callback_leaves_the_best_epoch(backend):
    x = datasets.two_moons(200, rng=0)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    seen = {}

    def interrupt_after_a_worse_epoch(epoch, history):
        seen[epoch], seen["history"] = _state(flow), history
        if history.best_epoch < epoch:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(flow, x, epochs=200, batch_size=20, lr=0.05, validation_data=x[:50] + 0.3, rng=0, backend=backend,
            callback=interrupt_after_a_worse_epoch)
    history, kept = seen["history"], _state(flow)
    last = history.epochs - 1
    assert 0 <= history.best_epoch < last
    assert all(np.array_equal(kept[k], seen[history.best_epoch][k]) for k in kept)
    assert not all(np.array_equal(kept[k], seen[last][k]) for k in kept)    # not the last epoch's parameters


def test_ctrl_c_mid_epoch_leaves_the_best_epoch_in_evaluation_mode(monkeypatch):
    x = datasets.two_moons(200, rng=0)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), batch_norm=True, rng=0)
    real, calls, kept = fit_module.nll_and_grad, [], {}

    def sigint_in_the_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 5 + 3:
            # what Python's SIGINT handler raises, raised here directly: in one full run a SIGINT sent with
            # os.kill did not arrive before the fit ended (the test passed alone), so the signal is not relied on
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    def remember_the_best(epoch, history):
        if history.best_epoch == epoch:
            kept.update({k: v.copy() for k, v in fit_module._state_arrays(flow, dict(flow.parameters())).items()})
    monkeypatch.setattr(fit_module, "nll_and_grad", sigint_in_the_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(flow, x, epochs=10, batch_size=40, lr=1e-2, rng=0, backend="numpy", callback=remember_the_best)
    assert len(calls) < 3 * 5
    norms = [m for m in fit_module.modules(flow) if hasattr(m, "training")]
    assert norms and not any(m.training for m in norms)
    # evaluation mode: one point's log-density does not depend on the batch it comes in
    np.testing.assert_allclose(flow.log_prob(x[:1]), flow.log_prob(x[:30])[:1], rtol=1e-12)
    state = fit_module._state_arrays(flow, dict(flow.parameters()))
    assert state.keys() == kept.keys() and all(np.array_equal(state[k], kept[k]) for k in kept)


def test_an_interrupt_before_any_epoch_ends_leaves_the_flow_as_it_came(monkeypatch):
    x = datasets.two_moons(100, rng=0)
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), act_norm=True, rng=0)
    before = _state(flow)
    real, calls = fit_module.nll_and_grad, []

    def interrupt_at_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(fit_module, "nll_and_grad", interrupt_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        fit(flow, x, epochs=3, batch_size=20, lr=1e-2, rng=0, backend="numpy")
    after = _state(flow)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    assert not any(m.initialized for m in fit_module.modules(flow) if hasattr(m, "initialized"))


def test_fit_to_target_rejects_steps_with_a_sample_outside_the_support_or_a_nan():
    calls = []

    def target(x):
        calls.append(1)
        out = -0.5 * (x * x).sum(-1)
        if len(calls) % 5 == 0:
            out[3] = -np.inf                     # a sample outside the support
        if len(calls) % 7 == 0:
            out[5] = np.nan                      # a sample where the target is undefined
        return out

    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit_to_target(flow, target, grad_fn=lambda x: -x, steps=20, n_samples=16, lr=1e-2, rng=0,
                            log_every=5)
    assert history.target_rejected_steps == history.rejected_steps == 4 + 2 and history.steps == 20 - 6
    assert history.lr[-1] == 1e-2 * 0.5 ** 6
    assert np.isfinite(history.train_loss).all() and all(np.isfinite(p).all() for _, p in flow.parameters())


def test_fit_to_target_with_finite_differences_survives_a_target_that_is_minus_inf_somewhere():
    def target(x):       # a standard normal cut to x0 > -3: -inf outside its support
        with np.errstate(divide="ignore"):
            return np.where(x[..., 0] > -3.0, -0.5 * (x * x).sum(-1), -np.inf)

    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit_to_target(flow, target, steps=40, n_samples=64, lr=1e-3, rng=0, log_every=10)
    assert 0 < history.target_rejected_steps == history.rejected_steps < 40
    assert history.steps == 40 - history.rejected_steps and all(np.isfinite(p).all() for _, p in flow.parameters())


def test_fit_to_target_raises_when_no_sample_is_ever_in_the_support():
    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    before = {k: v.copy() for k, v in flow.parameters()}
    with pytest.raises(RuntimeError, match=r"fit_to_target: every step was rejected \(5 steps, 5 of them because "
                                           r"log_prob_fn was not finite"):
        fit_to_target(flow, lambda x: np.full(x.shape[0], -np.inf), steps=5, n_samples=8, rng=0)
    assert all(np.array_equal(v, before[k]) for k, v in flow.parameters())


def test_an_exception_in_fit_to_target_leaves_the_best_state():
    seen = {}

    def interrupt_at_the_third_report(step, history):
        seen[history.epochs - 1] = {k: v.copy() for k, v in flow.parameters()}
        seen["history"] = history
        if history.epochs == 3:
            raise KeyboardInterrupt

    flow = flows.RealNVP(2, n_layers=2, hidden=(8,), init="identity", rng=0)
    with pytest.raises(KeyboardInterrupt):
        fit_to_target(flow, lambda x: -0.5 * ((x - 2.0) ** 2).sum(-1), grad_fn=lambda x: 2.0 - x, steps=300,
                      n_samples=32, lr=1.0, rng=0, log_every=10, callback=interrupt_at_the_third_report)
    history = seen["history"]
    assert 0 <= history.best_epoch < 2 and history.train_loss[2] > history.train_loss[history.best_epoch]
    kept = dict(flow.parameters())
    assert all(np.array_equal(kept[k], seen[history.best_epoch][k]) for k in kept)
