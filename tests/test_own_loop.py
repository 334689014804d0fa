"""A user's own training loop, ``value_and_grad`` then ``Adam.step``: the flat Adam step, the flat gradient dict of
the compiled passes, and what the compiled program keeps between calls (packed meta, workspaces) against the
arrays a user changes between calls."""

import copy
import pickle
import threading

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.kernels import plan
from nflow_np.kernels.backend import load_numba
from nflow_np.train import Adam, Optimizer, global_norm, set_training, value_and_grad


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w": (3, 4), "b": (4,), "s": (), "u": (2, 1, 3)}
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in shapes.items()}


def _grads(params, seed, scale=1.0, order=None):
    rng = np.random.default_rng(100 + seed)
    names = order or list(params)
    return {k: (scale * rng.standard_normal(params[k].shape)).astype(params[k].dtype) for k in names}


def _twins(dtype, **kwargs):
    """Two Adams on equal copies of the same parameters: the first steps through Adam.step (flat when it can), the
    second is driven through the per-parameter Optimizer.step."""
    params = _params(dtype)
    a = Adam({k: p.copy() for k, p in params.items()}.items(), **kwargs)
    b = Adam({k: p.copy() for k, p in params.items()}.items(), **kwargs)
    return a, b


def _assert_same(a, b):
    assert a.steps == b.steps
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        np.testing.assert_array_equal(a.m[name], b.m[name], err_msg=name)
        np.testing.assert_array_equal(a.v[name], b.v[name], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [{}, dict(lr=0.05, weight_decay=0.1), dict(lr=0.02, clip_norm=1.5),
                                    dict(lr=0.1, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.01, clip_norm=0.3)])
def test_flat_adam_step_is_the_per_parameter_step_bit_for_bit(dtype, kwargs):
    a, b = _twins(dtype, **kwargs)
    assert a._flat is not None
    for k in range(6):
        # a dict in another order than the parameters: the norm adds the dots in the dict's order
        order = ["u", "s", "w", "b"] if k % 2 else None
        grads = _grads(a.params, k, scale=3.0 if k == 2 else 1.0, order=order)
        norm = a.step(grads)
        norm_ref = Optimizer.step(b, {n: g.copy() for n, g in grads.items()})
        assert norm == norm_ref == global_norm(grads)
        _assert_same(a, b)
    # the moments stay live views: one array per parameter, updated in place
    m_w = a.m["w"]
    a.step(_grads(a.params, 9))
    assert a.m["w"] is m_w and np.shares_memory(m_w, a._flat["m"])


def test_adam_falls_back_to_the_per_parameter_step():
    # mixed dtypes: no flat buffers
    params = {"w": np.ones((2, 2), np.float32), "b": np.ones(3, np.float64)}
    mixed = Adam({k: p.copy() for k, p in params.items()}.items(), lr=0.1)
    ref = Adam({k: p.copy() for k, p in params.items()}.items(), lr=0.1)
    assert mixed._flat is None
    for k in range(3):
        grads = _grads(params, k)
        assert mixed.step(grads) == Optimizer.step(ref, grads)
    _assert_same(mixed, ref)
    # a partial dict, and a float64 gradient of a float32 parameter, step exactly as before
    a, b = _twins(np.float32, lr=0.1)
    partial = {"w": _grads(a.params, 0)["w"]}
    assert a.step(partial) == Optimizer.step(b, partial)
    wide = {k: g.astype(np.float64) for k, g in _grads(a.params, 1).items()}
    assert a.step(wide) == Optimizer.step(b, wide)
    _assert_same(a, b)
    # bad gradients are still refused, and change nothing
    before = {k: p.copy() for k, p in a.params.items()}
    with pytest.raises(ValueError, match="shape"):
        a.step({**_grads(a.params, 2), "w": np.zeros((4, 3), np.float32)})
    with pytest.raises(KeyError):
        a.step({**_grads(a.params, 2), "nope": np.zeros(1, np.float32)})
    bad = _grads(a.params, 3)
    bad["b"][1] = np.nan
    with pytest.raises(FloatingPointError):
        a.step(bad)
    for k, p in a.params.items():
        np.testing.assert_array_equal(p, before[k])


def test_a_parameter_replaced_in_the_optimizer_is_the_one_stepped():
    a, b = _twins(np.float64, lr=0.1)
    for opt in (a, b):
        opt.params["w"] = opt.params["w"] + 1.0
    assert a.step(_grads(a.params, 0)) == Optimizer.step(b, _grads(b.params, 0))
    _assert_same(a, b)


def test_a_subclass_with_its_own_update_keeps_it():
    calls = []

    class Logged(Adam):
        def _update(self, name, param, grad):
            calls.append(name)
            super()._update(name, param, grad)

    opt = Logged(_params(np.float32).items())
    opt.step(_grads(opt.params, 0))
    assert sorted(calls) == sorted(opt.params)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_adam_has_its_own_flat_state(how):
    a, b = _twins(np.float32, lr=0.05, clip_norm=2.0)
    for k in range(2):
        a.step(_grads(a.params, k))
        b.step(_grads(b.params, k))
    twin = copy.deepcopy(a) if how == "deepcopy" else pickle.loads(pickle.dumps(a))
    _assert_same(twin, a)
    assert twin._flat is not None and np.shares_memory(twin.m["w"], twin._flat["m"])
    assert not np.shares_memory(twin._flat["m"], a._flat["m"])
    for k in range(2, 5):
        twin.step(_grads(twin.params, k))
        b.step(_grads(b.params, k))
    _assert_same(twin, b)
    # the original did not move
    assert a.steps == 2


def test_a_shallow_copy_shares_the_state_as_before():
    a = Adam(_params(np.float32).items(), lr=0.05)
    twin = copy.copy(a)
    assert twin.m["w"] is a.m["w"] and twin.params["w"] is a.params["w"]
    twin.step(_grads(a.params, 0))
    assert np.any(a.m["w"] != 0)


def test_load_state_dict_reaches_the_flat_moments():
    a, b = _twins(np.float64, lr=0.05)
    a.step(_grads(a.params, 0))
    state = a.state_dict()
    for k in range(1, 3):
        a.step(_grads(a.params, k))
    b.load_state_dict(state)
    for name in b.params:
        b.params[name][...] = a.params[name]
    a.load_state_dict(state)
    for k in range(3, 5):
        a.step(_grads(a.params, k))
        Optimizer.step(b, _grads(b.params, k))
    _assert_same(a, b)


# ---------------------------------------------------------------------------------------------- compiled gradients

def _flow(dtype=np.float64, **kwargs):
    flow = flows.RealNVP(4, n_layers=4, hidden=(16, 16), rng=0, dtype=dtype, **kwargs)
    rng = np.random.default_rng(1)
    for _, p in flow.parameters():
        p += (0.2 * rng.standard_normal(p.shape)).astype(p.dtype)
    return flow


def _data(n=64, seed=2, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal((n, 4)) * 1.5 + 0.3).astype(dtype)


def _close(got, ref):
    loss, grads = got
    loss_ref, grads_ref = ref
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-10)
    assert set(grads) == set(grads_ref)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_compiled_gradients_are_disjoint_views_of_one_vector():
    flow = _flow()
    loss, grads = value_and_grad(flow, _data(), backend="numba")
    assert isinstance(grads, plan.FlatGradients) and isinstance(grads, dict)
    assert set(grads) == {name for name, _ in flow.parameters()}
    for name, p in flow.parameters():
        assert grads[name].shape == p.shape and grads[name].dtype == p.dtype
    vector, names, views = grads.flat_source
    assert list(names) == list(grads)
    assert all(np.shares_memory(v, vector) for v in views)
    arrays = list(grads.values())
    assert not any(np.shares_memory(arrays[i], arrays[j]) for i in range(len(arrays)) for j in range(i))
    # a copy or a pickle is a plain dict with its own arrays
    for twin in (copy.deepcopy(grads), pickle.loads(pickle.dumps(grads))):
        assert type(twin) is dict and not np.shares_memory(twin[names[0]], vector)
        _close((loss, twin), (loss, grads))


def test_user_changes_to_parameters_between_calls_are_seen():
    flow, twin = _flow(), _flow()
    x = _data()
    value_and_grad(flow, x, backend="numba")            # program, meta and workspace now kept
    for _, p in flow.parameters():                      # in place
        p *= 1.05
    for _, p in twin.parameters():
        p *= 1.05
    _close(value_and_grad(flow, x, backend="numba"), value_and_grad(twin, x, backend="numpy"))
    # a parameter array replaced by another of its size
    owner, key, _, _ = plan.program_for(flow).slots[2]     # the dict a layer keeps that array in
    twin_owner = plan.program_for(twin).slots[2][0]
    owner[key] = owner[key] + 0.5
    twin_owner[key] = twin_owner[key] + 0.5
    _close(value_and_grad(flow, x, backend="numba"), value_and_grad(twin, x, backend="numpy"))
    # one of another size is refused, not read past
    owner[key] = np.zeros(owner[key].size + 1)
    with pytest.raises(ValueError, match="changed size"):
        value_and_grad(flow, x, backend="numba")


def test_own_loop_matches_numpy_and_sees_gradient_edits():
    data = _data(96)
    results = []
    for backend in ("numpy", "numba"):
        flow = _flow()
        opt = Adam(flow.parameters(), lr=1e-2, clip_norm=5.0)
        for k in range(6):
            batch = data[16 * k:16 * (k + 1)]
            _, grads = value_and_grad(flow, batch, backend=backend)
            if k == 2:      # an entry edited in place, one replaced: both must reach the step
                first, second = sorted(grads)[:2]
                grads[first] *= 3.0
                grads[second] = grads[second] * -1.0
            if k == 4:      # an entry dropped: only the others step
                del grads[sorted(grads)[0]]
            opt.step(grads)
        results.append(np.concatenate([p.ravel() for _, p in flow.parameters()]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_source_step_equals_the_gathered_step(dtype):
    flow = _flow(dtype)
    x = _data(dtype=dtype)
    params = dict(flow.parameters())
    a = Adam({k: p.copy() for k, p in params.items()}.items(), lr=1e-2, clip_norm=0.5, weight_decay=0.01)
    b = Adam({k: p.copy() for k, p in params.items()}.items(), lr=1e-2, clip_norm=0.5, weight_decay=0.01)
    for _ in range(3):
        _, grads = value_and_grad(flow, x, backend="numba")
        kept = {k: g.copy() for k, g in grads.items()}
        assert a._from_source(grads) is not None
        assert a.step(grads) == Optimizer.step(b, dict(grads))
        for k in grads:     # the step read the caller's vector and left it alone (clipping included)
            np.testing.assert_array_equal(grads[k], kept[k])
        x = x * 1.1
    _assert_same(a, b)


def test_batchnorm_mode_changes_between_calls_are_seen():
    flow, twin = _flow(batch_norm=True), _flow(batch_norm=True)
    x = _data(128)
    for training in (True, False, True):
        for f in (flow, twin):
            set_training(f, training)
        _close(value_and_grad(flow, x, backend="numba"), value_and_grad(twin, x, backend="numpy"))


def test_kept_workspaces_serve_batches_of_any_size_and_threads():
    flow, twin = _flow(), _flow()
    for n in (64, 17, 64, 1, 300, 17, 5, 64):
        x = _data(n, seed=n)
        _close(value_and_grad(flow, x, backend="numba"), value_and_grad(twin, x, backend="numpy"))
    program = plan.program_for(flow)
    assert len(program._spare) <= plan.SPARE_SIZES
    # calls on several threads at once each borrow their own workspace
    batches = [_data(48, seed=s) for s in range(8)]
    expected = [value_and_grad(twin, x, backend="numpy") for x in batches]
    got = [None] * len(batches)

    def work(k):
        for _ in range(5):
            got[k] = value_and_grad(flow, batches[k], backend="numba")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected):
        _close(g, e)


def test_meta_is_packed_once_and_again_when_the_networks_change():
    from nflow_np.kernels.compiled import pack_meta

    flow = _flow()
    program = plan.program_for(flow)
    value_and_grad(flow, _data(), backend="numba")
    meta, _ = program._arrays()
    assert program._arrays()[0] is meta
    np.testing.assert_array_equal(meta, pack_meta(program.fields, program.idata, program.layout, program.size,
                                                  program._networks))
    saved = program._networks.copy()
    try:
        program._networks[:] = saved + 8      # other addresses: packed again, with them
        repacked, _ = program._arrays()
        assert repacked is not meta
        np.testing.assert_array_equal(repacked, pack_meta(program.fields, program.idata, program.layout, program.size,
                                                          saved + 8))
    finally:
        program._networks[:] = saved
    np.testing.assert_array_equal(program._arrays()[0], meta)
    _close(value_and_grad(flow, _data(), backend="numba"), value_and_grad(_flow(), _data(), backend="numpy"))
