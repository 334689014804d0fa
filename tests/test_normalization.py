"""BatchNorm, ActNorm (nflow_np.bijectors.normalization) and LULinear (nflow_np.bijectors.lu)."""

import numpy as np
import pytest

from nflow_np.bijectors.chain import Chain
from nflow_np.bijectors.lu import LULinear
from nflow_np.bijectors.normalization import ActNorm, BatchNorm
from nflow_np.testing import check_bijector

DTYPES = [np.float64, np.float32]
DIMS = [1, 3, 5]


def _batch_norm(rng, d, dtype, **kwargs):
    """A BatchNorm with non-trivial parameters and running statistics."""
    b = BatchNorm(d, dtype=dtype, **kwargs)
    b.params["log_gamma"][...] = rng.normal(scale=0.5, size=d)
    b.params["beta"][...] = rng.normal(size=d)
    b.running_mean[...] = rng.normal(size=d)
    b.running_var[...] = rng.uniform(0.3, 3.0, size=d)
    return b


def _lu_linear(rng, d, dtype):
    b = LULinear(d, rng=rng, sign=rng.choice([-1.0, 1.0], size=d), dtype=dtype)
    b.params["log_diag"][...] = rng.normal(scale=0.3, size=d)
    b.params["bias"][...] = rng.normal(size=d)
    return b


def _dense_weight(b):
    """W = L U built from the parameters by hand."""
    d = b.features
    lower = np.tril(b.params["lower"].astype(np.float64), -1) + np.eye(d)
    upper = np.triu(b.params["upper"].astype(np.float64), 1) + np.diag(b.sign * np.exp(b.params["log_diag"]))
    return lower @ upper


def _points(rng, dtype, shape):
    return rng.normal(scale=1.5, size=shape).astype(dtype)


# ---------------------------------------------------------------------- check_bijector
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("batch", [(6,), ()])
def test_check_bijector_batch_norm_eval(dtype, d, batch):
    rng = np.random.default_rng(d)
    b = _batch_norm(rng, d, dtype).eval()
    check_bijector(b, _points(rng, dtype, batch + (d,)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("batch", [(6,), ()])
def test_check_bijector_act_norm(dtype, d, batch):
    rng = np.random.default_rng(10 + d)
    b = ActNorm(d, dtype=dtype)
    b.inverse((rng.normal(size=(40, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)).astype(dtype))
    assert b.initialized
    check_bijector(b, _points(rng, dtype, batch + (d,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_bijector_initializes_an_act_norm_first(dtype):
    """An ActNorm that has seen no data would initialize partway through the check: the checker runs it first."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(20, 3)) * [1.0, 2.0, 0.5] + [0.3, -1.0, 2.0]).astype(dtype)
    b = ActNorm(3, dtype=dtype)
    check_bijector(b, x)
    assert b.initialized
    # initialized from the points given, as a flow's first data batch would do
    np.testing.assert_allclose(b.params["shift"], x.mean(axis=0), rtol=1e-5)
    chain = Chain([ActNorm(3, dtype=dtype), _lu_linear(rng, 3, dtype)])
    check_bijector(chain, x)
    assert chain.bijectors[0].initialized


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("batch", [(6,), ()])
def test_check_bijector_lu_linear(dtype, d, batch):
    rng = np.random.default_rng(20 + d)
    check_bijector(_lu_linear(rng, d, dtype), _points(rng, dtype, batch + (d,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_bijector_chain_of_normalizations(dtype):
    rng = np.random.default_rng(5)
    act = ActNorm(3, dtype=dtype)
    act.initialize((2.0 * rng.normal(size=(30, 3)) + 1.0).astype(dtype))
    chain = Chain([_lu_linear(rng, 3, dtype), act, _batch_norm(rng, 3, dtype).eval()])
    check_bijector(chain, _points(rng, dtype, (5, 3)))


# ---------------------------------------------------------------------- BatchNorm, training mode
def _fd_derivative(fn, array, index, h):
    original = array[index].copy()
    values = []
    for mult in (2, 1, -1, -2):
        array[index] = original + mult * h
        values.append(fn())
    array[index] = original
    return (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)


@pytest.mark.parametrize("batch", [(7,), (2, 3), (2,)])
def test_batch_norm_training_gradients_vs_finite_differences(batch):
    rng = np.random.default_rng(1)
    d = 3
    b = _batch_norm(rng, d, np.float64, momentum=0.0)   # momentum 0 freezes the buffers
    y = rng.normal(size=batch + (d,)) * [0.5, 2.0, 1.0] + [1.0, -2.0, 0.0]
    grad_x = rng.normal(size=y.shape)
    grad_ld = rng.normal(size=batch)
    buffers = (b.running_mean.copy(), b.running_var.copy())

    grad_y, grads = b.inverse_vjp(y, grad_x, grad_ld)

    def loss():
        x, ld = b.inverse_and_log_det(y)
        return float((grad_x * x).sum() + (grad_ld * ld).sum())

    fd_y = np.empty_like(y)
    for index in np.ndindex(y.shape):
        fd_y[index] = _fd_derivative(loss, y, index, 1e-3)
    np.testing.assert_allclose(grad_y, fd_y, rtol=1e-7, atol=1e-9)
    for name, array in b.params.items():
        fd = np.array([_fd_derivative(loss, array, (j,), 1e-3) for j in range(d)])
        np.testing.assert_allclose(grads[name], fd, rtol=1e-7, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(b.running_mean, buffers[0])
    np.testing.assert_array_equal(b.running_var, buffers[1])
    # the batch couples the rows: the gradient differs from the eval-mode one
    eval_grad_y, _ = b.eval().inverse_vjp(y, grad_x, grad_ld)
    assert not np.allclose(eval_grad_y, grad_y)


def test_batch_norm_training_gradients_float32_match_float64():
    rng = np.random.default_rng(2)
    d = 4
    b64 = _batch_norm(rng, d, np.float64, momentum=0.0)
    b32 = BatchNorm(d, momentum=0.0, dtype=np.float32)
    for name in b64.params:
        b32.params[name][...] = b64.params[name]
    y = rng.normal(size=(16, d))
    gx, gld = rng.normal(size=y.shape), rng.normal(size=16)
    ref_y, ref = b64.inverse_vjp(y, gx, gld)
    got_y, got = b32.inverse_vjp(y.astype(np.float32), gx.astype(np.float32), gld.astype(np.float32))
    assert got_y.dtype == np.float32 and all(g.dtype == np.float32 for g in got.values())
    np.testing.assert_allclose(got_y, ref_y, rtol=1e-4, atol=1e-4)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_batch_norm_forward_uses_running_statistics_in_both_modes():
    rng = np.random.default_rng(3)
    b = _batch_norm(rng, 3, np.float64, momentum=0.0)
    x = rng.normal(size=(5, 3))
    gy, gld = rng.normal(size=x.shape), rng.normal(size=5)
    train_out = b.forward_and_log_det(x)
    train_vjp = b.forward_vjp(x, gy, gld)
    b.eval()
    np.testing.assert_array_equal(b.forward_and_log_det(x)[0], train_out[0])
    np.testing.assert_array_equal(b.forward_vjp(x, gy, gld)[0], train_vjp[0])


def test_batch_norm_training_normalizes_the_batch():
    rng = np.random.default_rng(4)
    d = 3
    b = BatchNorm(d)
    log_gamma = np.array([0.0, 0.7, -0.4])
    b.params["log_gamma"][...] = log_gamma
    y = rng.normal(size=(500, d)) * [3.0, 0.5, 2.0] + [10.0, -1.0, 0.5]
    x, ld = b.inverse_and_log_det(y)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-12)
    var = y.var(axis=0)
    np.testing.assert_allclose(x.var(axis=0), np.exp(2 * log_gamma) * var / (var + b.eps), rtol=1e-12)
    np.testing.assert_allclose(x.var(axis=0), np.exp(2 * log_gamma), rtol=1e-4)   # eps / var ~ 4e-5
    np.testing.assert_allclose(ld, np.sum(log_gamma - 0.5 * np.log(var + b.eps)), rtol=1e-12)
    assert ld.shape == (500,)


def test_batch_norm_running_statistics():
    rng = np.random.default_rng(5)
    d = 2
    b = BatchNorm(d, momentum=0.1)
    y = rng.normal(size=(20, d)) * [2.0, 0.5] + [1.0, -3.0]
    b.inverse(y)
    # one update from zeros / ones, with the unbiased variance
    np.testing.assert_allclose(b.running_mean, 0.1 * y.mean(axis=0))
    np.testing.assert_allclose(b.running_var, 0.9 + 0.1 * y.var(axis=0, ddof=1))
    # repeated on one batch: the batch's moments
    for _ in range(400):
        b.inverse_and_log_det(y)
    np.testing.assert_allclose(b.running_mean, y.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(b.running_var, y.var(axis=0, ddof=1), rtol=1e-12)
    # fresh batches: the data's moments
    b = BatchNorm(d, momentum=0.05)
    for _ in range(400):
        b.inverse_vjp(rng.normal(size=(200, d)) * [2.0, 0.5] + [1.0, -3.0])
    np.testing.assert_allclose(b.running_mean, [1.0, -3.0], atol=0.1)
    np.testing.assert_allclose(b.running_var, [4.0, 0.25], rtol=0.1)


def test_batch_norm_updates_only_on_training_data_to_base_passes():
    rng = np.random.default_rng(6)
    b = _batch_norm(rng, 3, np.float64)
    y = rng.normal(size=(8, 3))
    before = [a.copy() for _, a in b.buffers()]

    def unchanged():
        return all(np.array_equal(a, c) for (_, a), c in zip(b.buffers(), before))

    b.forward(y)
    b.forward_vjp(y, np.ones_like(y), np.ones(8))
    b.inverse_log_det_jacobian(y)
    b.inverse(y[0])                      # a single vector: running statistics, no update
    b.inverse(y[:1])
    assert unchanged()
    _, _, ctx = b._inverse_pass(y)       # one update ...
    after_pass = [a.copy() for _, a in b.buffers()]
    assert not unchanged()
    b._inverse_backward(ctx, np.ones_like(y), np.ones(8))   # ... and none in the backward
    assert all(np.array_equal(a, c) for (_, a), c in zip(b.buffers(), after_pass))
    b.eval()
    before = after_pass
    b.inverse_and_log_det(y)
    b.inverse_vjp(y, np.ones_like(y))
    assert unchanged()


def test_batch_norm_single_vector_in_training_uses_running_statistics():
    rng = np.random.default_rng(7)
    b = _batch_norm(rng, 3, np.float64)
    y = rng.normal(size=3)
    x_train, ld_train = b.inverse_and_log_det(y)
    x_eval, ld_eval = b.eval().inverse_and_log_det(y)
    np.testing.assert_array_equal(x_train, x_eval)
    np.testing.assert_array_equal(ld_train, ld_eval)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_round_trip(dtype):
    rng = np.random.default_rng(8)
    b = BatchNorm(4, dtype=dtype)
    b.params["log_gamma"][...] = rng.normal(size=4)
    b.params["beta"][...] = rng.normal(size=4)
    for _ in range(5):
        b.inverse((3.0 * rng.normal(size=(32, 4)) + 2.0).astype(dtype))
    assert b.running_mean.dtype == dtype and b.running_var.dtype == dtype
    b.eval()
    y = (3.0 * rng.normal(size=(10, 4)) + 2.0).astype(dtype)
    x, ild = b.inverse_and_log_det(y)
    assert x.dtype == dtype and ild.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(b.forward(x), y, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.forward_log_det_jacobian(x), -ild, rtol=tol, atol=tol)


def test_batch_norm_train_eval_return_self():
    b = BatchNorm(2)
    assert b.training and b.eval() is b and not b.training and b.train() is b and b.training
    assert dict(b.parameters()).keys() == {"log_gamma", "beta"}


# ---------------------------------------------------------------------- ActNorm
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_norm_data_dependent_initialization(dtype):
    rng = np.random.default_rng(9)
    b = ActNorm(3, dtype=dtype)
    log_scale, shift = b.params["log_scale"], b.params["shift"]
    x0 = rng.normal(size=(4, 3)).astype(dtype)
    np.testing.assert_array_equal(b.forward(x0), x0)           # before data: the identity
    assert not b.initialized
    y = (rng.normal(size=(2, 100, 3)) * [5.0, 0.1, 1.0] + [-2.0, 7.0, 0.0]).astype(dtype)
    x, ld = b.inverse_and_log_det(y)
    assert b.initialized
    assert b.params["log_scale"] is log_scale and b.params["shift"] is shift
    assert x.dtype == dtype and log_scale.dtype == dtype
    tol = 1e-9 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(x.reshape(-1, 3).mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(x.reshape(-1, 3).std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(ld, np.full((2, 100), -log_scale.sum()), rtol=1e-6)
    # initialized once: a later batch does not move it
    saved = log_scale.copy(), shift.copy()
    b.inverse(rng.normal(size=(10, 3)).astype(dtype))
    np.testing.assert_array_equal(log_scale, saved[0])
    np.testing.assert_array_equal(shift, saved[1])


def test_act_norm_initializes_on_every_data_to_base_entry_point():
    y = np.random.default_rng(10).normal(size=(20, 2)) * 3.0 + 1.0
    for call in (lambda b: b.inverse_log_det_jacobian(y), lambda b: b.inverse_vjp(y, np.ones_like(y)),
                 lambda b: Chain([b]).inverse(y), lambda b: b.initialize(y)):
        b = ActNorm(2)
        call(b)
        assert b.initialized
        np.testing.assert_allclose(b.params["shift"], y.mean(axis=0))


def test_act_norm_single_vector_sets_shift_only():
    b = ActNorm(3)
    y = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(b.inverse(y), 0.0)
    assert b.initialized
    np.testing.assert_array_equal(b.params["shift"], y)
    np.testing.assert_array_equal(b.params["log_scale"], 0.0)


def test_act_norm_constant_feature_stays_finite():
    b = ActNorm(2)
    y = np.stack([np.full(10, 4.0), np.arange(10.0)], axis=1)
    x = b.inverse(y)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(b.params["log_scale"]))
    np.testing.assert_allclose(x[:, 0], 0.0)


# ---------------------------------------------------------------------- LULinear
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_lu_linear_matches_dense_matrix(dtype, d):
    rng = np.random.default_rng(30 + d)
    b = _lu_linear(rng, d, dtype)
    # entries outside the strict triangles are ignored
    b.params["lower"][...] += np.triu(rng.normal(size=(d, d))).astype(dtype)
    b.params["upper"][...] += np.tril(rng.normal(size=(d, d))).astype(dtype)
    w = _dense_weight(b)
    x = _points(rng, dtype, (7, d))
    y, ld = b.forward_and_log_det(x)
    assert y.dtype == dtype and ld.dtype == dtype and ld.shape == (7,)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T + b.params["bias"], rtol=tol, atol=tol)
    np.testing.assert_allclose(b.weight, w, rtol=tol, atol=tol)
    np.testing.assert_allclose(ld, np.linalg.slogdet(w)[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(b.inverse(y), x, rtol=10 * tol, atol=10 * tol)
    _, grads = b.forward_vjp(x, rng.normal(size=y.shape).astype(dtype))
    assert np.all(np.triu(grads["lower"]) == 0) and np.all(np.tril(grads["upper"]) == 0)
    _, grads = b.inverse_vjp(y, rng.normal(size=y.shape).astype(dtype))
    assert np.all(np.triu(grads["lower"]) == 0) and np.all(np.tril(grads["upper"]) == 0)


def test_lu_linear_initialization():
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(LULinear(3).forward(x), x)
    b = LULinear(3, rng=0)
    assert not np.allclose(b.forward(x), x)
    np.testing.assert_array_equal(b.forward_log_det_jacobian(x), 0.0)
    np.testing.assert_array_equal(LULinear(3, rng=0).params["lower"], b.params["lower"])
    assert dict(b.parameters()).keys() == {"lower", "upper", "log_diag", "bias"}
    with pytest.raises(ValueError, match="sign"):
        LULinear(3, sign=[1.0, 0.5, 1.0])


# ---------------------------------------------------------------------- bad input
def _all(d=3):
    return [BatchNorm(d), BatchNorm(d).eval(), ActNorm(d), LULinear(d, rng=0)]


@pytest.mark.parametrize("index", range(4))
def test_wrong_trailing_size_names_the_class(index):
    b = _all()[index]
    name = type(b).__name__
    bad = np.zeros((5, 2))
    for method in (b.forward, b.inverse, b.forward_and_log_det, b.inverse_and_log_det,
                   b.inverse_log_det_jacobian, b.inverse_vjp, b.forward_vjp):
        with pytest.raises(ValueError, match=name):
            method(bad)
    with pytest.raises(ValueError, match=name):      # through a Chain, which checks only the rank
        Chain([b]).inverse(bad)
    with pytest.raises(ValueError, match=name):
        b.forward(np.float64(1.0))


@pytest.mark.parametrize("index", range(4))
def test_non_finite_input_is_refused(index):
    b = _all()[index]
    y = np.ones((4, 3))
    y[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        b.inverse(y)
    with pytest.raises(ValueError, match="finite"):
        b.forward(np.where(np.isnan(y), np.inf, y))
    if isinstance(b, BatchNorm):
        np.testing.assert_array_equal(b.running_mean, 0.0)
    if isinstance(b, ActNorm):
        assert not b.initialized


def test_dtype_mixing_is_refused():
    for b in (BatchNorm(3, dtype=np.float32), ActNorm(3, dtype=np.float32), LULinear(3, dtype=np.float32)):
        with pytest.raises(TypeError):
            b.forward(np.zeros((2, 3)))


def test_constructor_validation():
    for cls in (BatchNorm, ActNorm, LULinear):
        with pytest.raises(ValueError, match=cls.__name__):
            cls(0)
        with pytest.raises(TypeError):
            cls(2.5)
        with pytest.raises(TypeError):
            cls(3, dtype=np.int32)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(3, eps=0.0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fit_starts_actnorm_from_many_rows_not_one_batch(backend):
    """fit initializes ActNorm from up to ACTNORM_INIT_ROWS rows of its first epoch's order (here all 3000), on
    every backend, so the start does not carry one small batch's sampling error; a learning rate of 1e-12 leaves
    the start in place."""
    from nflow_np import flows
    from nflow_np.train import fit
    from nflow_np.train.loops import ACTNORM_INIT_ROWS
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 3)) * [1.0, 3.0, 0.2] + [0.5, -2.0, 7.0]
    assert len(x) <= ACTNORM_INIT_ROWS
    flow = flows.NICE(3, n_layers=2, hidden=(8,), rng=0)
    actnorm = flow.bijector.bijectors[0]
    assert isinstance(actnorm, ActNorm) and not actnorm.initialized
    fit(flow, x, epochs=1, batch_size=50, lr=1e-12, rng=0, backend=backend, average=None)
    np.testing.assert_allclose(actnorm.params["shift"], x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(actnorm.params["log_scale"], np.log(x.std(0) + 1e-6), rtol=1e-9, atol=1e-9)
