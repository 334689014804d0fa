"""Planar and radial flows, Householder reflections and the random rotation: what check_bijector does not cover.

check_bijector runs them through tests/bijector_cases.py (round trips, log-dets, VJPs, float64 and float32) and
test_io round-trips each case; here: the invertibility constraints at extreme parameters, the inverse solvers at
extreme inputs, orthogonality, argument errors, model files of whole flows, and training on the default backend.
"""

import re

import numpy as np
import pytest

import nflow_np
from nflow_np import bijectors as nb
from nflow_np import flows, io
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
from nflow_np.train import fit, fit_to_target

DTYPES = [np.float64, np.float32]
DT_IDS = ["float64", "float32"]


def _round_trip_error(b, x):
    y = b.forward(x)
    scale = np.maximum(1.0, np.abs(x))
    return float(np.max(np.abs(b.inverse(y) - x) / scale)), y


# ---------------------------------------------------------------------------- Planar
def _check_inverse(b, x, dtype, lipschitz):
    """The inverse returns a preimage to rounding (``forward(inverse(y)) == y`` up to the forward map's Lipschitz
    constant), and recovers ``x`` to rounding amplified by the forward map's contraction (the inverse's condition
    number, bounded by exp(-min log-det) as the other eigenvalues of the Jacobian are at least 1 here)."""
    eps = float(np.finfo(dtype).eps)
    y, log_det = b.forward_and_log_det(x)
    assert np.all(np.isfinite(log_det))
    xr, inv_log_det = b.inverse_and_log_det(y)
    residual = np.abs(b.forward(xr) - y) / np.maximum(1.0, np.abs(y))
    assert residual.max() < 64 * eps * lipschitz
    condition = np.exp(-np.minimum(log_det.astype(np.float64), 0.0))[:, None]
    err = np.abs(xr - x) / np.maximum(1.0, np.abs(x))
    assert np.all(err < 64 * eps * condition)
    np.testing.assert_allclose(inv_log_det, -log_det, rtol=1e-5, atol=64 * eps * condition.max())


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("w_dot_u", [-60.0, -8.0, 0.0, 3.0, 40.0])
def test_planar_stays_invertible_whatever_u(w_dot_u, dtype):
    """w . u_hat = softplus(w . u) - 1 > -1: the log-det stays finite and the inverse exact, even near folding."""
    rng = np.random.default_rng(0)
    b = nb.Planar(3, rng=1, dtype=dtype)
    w = b.params["w"]
    b.params["u"] += ((w_dot_u - w @ b.params["u"]) * w / (w @ w)).astype(dtype)
    m_plus_one = np.logaddexp(0.0, float(w @ b.params["u"]))
    assert m_plus_one > 0.0 and np.isclose(float(w @ b.u_hat) + 1.0, m_plus_one, rtol=1e-5, atol=1e-5)
    # points at the fold (w . x + b = 0, where 1 + h' m is smallest), bulk and far out
    x = rng.normal(size=(200, 3))
    x[:50] -= ((x[:50] @ w + b.params["b"]) / (w @ w))[:, None] * w
    x[-10:] *= 1e3
    _check_inverse(b, x.astype(dtype), dtype, 1.0 + float(np.linalg.norm(b.u_hat) * np.linalg.norm(w)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_planar_inverse_at_extreme_inputs(dtype):
    b = nb.Planar(4, rng=3, dtype=dtype)
    y = np.random.default_rng(1).normal(size=(50, 4)) * np.logspace(-8, 6, 50)[:, None]
    y = y.astype(dtype)
    x = b.inverse(y)
    scale = np.maximum(1.0, np.abs(y))
    assert np.max(np.abs(b.forward(x) - y) / scale) < (1e-13 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("m", [-1.0 + 1e-12, -0.98, -0.5, 0.0, 0.3, 2.0, 4.0, 40.0, 1e4])
def test_planar_scalar_solver(m):
    """a + m tanh(a) = c to a few ulps for every c, Newton cycles included (m = 4 cycles without the safeguard)."""
    from nflow_np.bijectors.planar import _solve_monotone

    rng = np.random.default_rng(0)
    c = np.concatenate([rng.normal(size=3000) * 5, rng.normal(size=300) * 1e-3, [0.0, 1e-300, -1e10, 1e300]])
    a = _solve_monotone(c, m, max_iter=80)
    assert np.max(np.abs(a + m * np.tanh(a) - c) / np.maximum(1.0, np.abs(c))) < 8 * np.finfo(float).eps


def test_planar_solver_converges_per_point():
    """The inverse of a point does not depend on the rest of its batch (each point stops on its own)."""
    b = nb.Planar(3, rng=4)
    y = np.random.default_rng(2).normal(size=(30, 3)) * 5.0
    batch = b.inverse(y)
    assert all(np.array_equal(b.inverse(y[i:i + 1])[0], batch[i]) for i in range(0, 30, 7))
    # a single point (no batch axis) goes through the same solve
    assert all(np.array_equal(b.inverse(y[i]), batch[i]) for i in range(0, 30, 7))


def test_planar_refuses_a_zero_w():
    b = nb.Planar(2, rng=0)
    b.params["w"][...] = 0.0
    with pytest.raises(ValueError, match=re.escape("Planar.forward: w must be a non-zero vector")):
        b.forward(np.ones((3, 2)))
    with pytest.raises(ValueError, match=re.escape("Planar.inverse: w must be a non-zero vector")):
        b.inverse_vjp(np.ones((3, 2)), np.ones((3, 2)))


def test_planar_refuses_non_finite_parameters():
    b = nb.Planar(2, rng=0)
    b.params["u"][1] = np.nan
    with pytest.raises(ValueError, match=re.escape("Planar.inverse: u must be finite; got nan at index 1")):
        b.inverse(np.ones((3, 2)))


# ---------------------------------------------------------------------------- Radial
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("raw_beta", [-12.0, -3.0, 0.0, 4.0])
def test_radial_inverse_from_the_centre_to_far_away(raw_beta, dtype):
    b = nb.Radial(3, rng=2, dtype=dtype)
    b.params["raw_beta"][...] = raw_beta
    z0 = b.params["z0"]
    directions = np.random.default_rng(0).normal(size=(40, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = (z0 + directions * np.logspace(-6, 4, 40)[:, None]).astype(dtype)
    # |y - z0| never decreases with |x - z0| along a ray (it increases, up to rounding)
    assert np.all(np.diff(np.linalg.norm(b.forward(x) - z0, axis=1)) >= 0)
    alpha = np.logaddexp(0.0, float(b.params["raw_alpha"]))
    beta_hat = np.logaddexp(0.0, float(b.params["raw_beta"])) - alpha
    _check_inverse(b, x, dtype, 1.0 + abs(beta_hat) / alpha)
    assert np.array_equal(b.inverse(z0[None]), z0[None])    # the centre stays put


def test_radial_refuses_a_collapsed_alpha():
    b = nb.Radial(2, rng=0)
    b.params["raw_alpha"][...] = -1e4
    with pytest.raises(ValueError, match=re.escape("Radial.forward: softplus(raw_alpha) and softplus(raw_beta) must "
                                                   "be positive")):
        b.forward(np.ones((3, 2)))


# ---------------------------------------------------------------------------- orthogonal maps
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_householder_is_orthogonal_and_inverts_in_reverse_order(dtype):
    b = nb.Householder(5, rng=0, dtype=dtype)
    assert b.params["vectors"].shape == (5, 5) and b.n_reflections == 5
    q = b.matrix
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert q.dtype == dtype and np.abs(q.T @ q - np.eye(5)).max() < tol
    assert np.isclose(np.linalg.det(q.astype(np.float64)), (-1.0) ** 5, atol=tol)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(dtype)
    np.testing.assert_allclose(b.forward(x), x @ q.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.inverse(x), x @ q, rtol=tol, atol=tol)
    assert np.all(b.forward_log_det_jacobian(x) == 0)


def test_householder_refuses_a_zero_vector():
    b = nb.Householder(3, n_reflections=2, rng=0)
    b.params["vectors"][1] = 0.0
    with pytest.raises(ValueError, match=re.escape("Householder.forward: every row of vectors must be non-zero "
                                                   "(a reflection divides by |v|^2); row 1 has |v|^2 = 0.0")):
        b.forward_vjp(np.ones((2, 3)), np.ones((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_random_rotation_is_a_fixed_haar_rotation(dtype):
    b = nb.RandomRotation(4, rng=7, dtype=dtype)
    q = b.matrix
    assert q.dtype == dtype and not q.flags.writeable and dict(b.params) == {}
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert np.abs(q.T @ q - np.eye(4)).max() < tol and np.isclose(np.linalg.det(q.astype(np.float64)), 1.0)
    assert np.array_equal(nb.RandomRotation(4, rng=7, dtype=dtype).matrix, q)
    assert not np.array_equal(nb.RandomRotation(4, rng=8, dtype=dtype).matrix, q)
    # the matrix may be given, as model files do
    assert np.array_equal(nb.RandomRotation(4, matrix=q, dtype=dtype).matrix, q)


def test_random_rotation_is_uniform():
    """Haar on SO(3): every entry has mean 0 and variance 1/3; a rotated fixed vector is uniform on the sphere."""
    qs = np.stack([nb.RandomRotation(3, rng=i).matrix for i in range(3000)])
    assert np.abs(qs.mean(axis=0)).max() < 0.05
    assert np.abs(qs.var(axis=0) - 1.0 / 3.0).max() < 0.04
    assert np.all(np.linalg.det(qs) > 0)


def test_random_rotation_refuses_a_bad_matrix():
    with pytest.raises(ValueError, match=re.escape("RandomRotation.__init__: matrix must have shape (3, 3)")):
        nb.RandomRotation(3, matrix=np.eye(2))
    with pytest.raises(ValueError, match=re.escape("RandomRotation.__init__: matrix must be orthogonal")):
        nb.RandomRotation(2, matrix=[[1.0, 0.1], [0.0, 1.0]])
    with pytest.raises(ValueError, match=re.escape("RandomRotation.__init__: matrix must be a rotation (det +1)")):
        nb.RandomRotation(2, matrix=[[1.0, 0.0], [0.0, -1.0]])


def test_rotation_points_to_the_n_dimensional_maps():
    assert "RandomRotation" in nb.Rotation.__doc__ and "Householder" in nb.Rotation.__doc__


# ---------------------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize("make", [nb.Planar, nb.Radial, nb.Householder, nb.RandomRotation],
                         ids=["Planar", "Radial", "Householder", "RandomRotation"])
def test_constructors_refuse_bad_sizes_and_dtypes(make):
    name = make.__name__
    for bad in (0, -2):
        with pytest.raises(ValueError, match=re.escape(f"{name}.__init__: dim must be a positive int; got {bad}")):
            make(bad)
    for bad in (2.0, True, "3", None):
        with pytest.raises(TypeError, match=re.escape(f"{name}.__init__: dim must be a positive int; got {bad!r}")):
            make(bad)
    with pytest.raises(TypeError, match=f"{name}: dtype must be float32 or float64"):
        make(2, dtype=np.int32)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        make(2, rng="seed")
    b = make(3, rng=0, dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape(f"{name}.forward: x must have shape (..., 3); got (4, 2)")):
        b.forward(np.ones((4, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=re.escape(f"{name}.inverse: y has dtype float64 but this object computes "
                                                  f"in float32")):
        b.inverse(np.ones((4, 3)))


def test_householder_refuses_a_bad_reflection_count():
    with pytest.raises(ValueError, match=re.escape("Householder.__init__: n_reflections must be a positive int; "
                                                   "got 0")):
        nb.Householder(3, n_reflections=0)
    with pytest.raises(TypeError, match=re.escape("Householder.__init__: n_reflections must be a positive int; "
                                                  "got 1.5")):
        nb.Householder(3, n_reflections=1.5)


def test_a_chain_member_names_itself_when_the_size_is_wrong():
    chain = nb.Chain([nb.Planar(3, rng=0), nb.Shift(np.zeros(2))])
    with pytest.raises(ValueError, match=re.escape("Planar.forward: x must have shape (..., 3); got (5, 2)")):
        chain.forward(np.ones((5, 2)))


# ---------------------------------------------------------------------------- flows: files and training
def _mixed_flow(dtype=np.float64):
    layers = [nb.Planar(3, rng=0, dtype=dtype), nb.Householder(3, n_reflections=2, rng=1, dtype=dtype),
              nb.Radial(3, rng=2, dtype=dtype), nb.RandomRotation(3, rng=3, dtype=dtype)]
    return TransformedDistribution(MultivariateNormalDiag(np.zeros(3, dtype=dtype), np.ones(3, dtype=dtype)),
                                   nb.Chain(layers))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("make", [lambda dt: flows.Planar(2, n_layers=3, rng=0, dtype=dt),
                                  lambda dt: flows.Radial(3, n_layers=2, rng=1, dtype=dt), _mixed_flow],
                         ids=["flows.Planar", "flows.Radial", "mixed"])
def test_flow_model_file_round_trip(make, dtype, tmp_path):
    flow = make(dtype)
    x = flow.sample(7, rng=5)
    path = tmp_path / "model.npz"
    io.save(flow, path)
    loaded = io.load(path)
    assert loaded.dtype == flow.dtype
    assert np.array_equal(loaded.log_prob(x), flow.log_prob(x))
    assert np.array_equal(loaded.sample(7, rng=11), flow.sample(7, rng=11))
    assert [k for k, _ in loaded.parameters()] == [k for k, _ in flow.parameters()]


def test_model_file_refuses_a_random_rotation_that_is_not_a_rotation(tmp_path):
    path = tmp_path / "model.npz"
    io.save(nb.RandomRotation(3, rng=0), path)
    with np.load(path) as f:
        arrays = dict(f)
    key = next(k for k in arrays if arrays[k].shape == (3, 3))
    arrays[key] = arrays[key] * np.array([1.0, 1.0, -1.0])
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="cannot rebuild RandomRotation: .*matrix must be a rotation"):
        io.load(path)


def test_flow_constructors_validate_their_arguments():
    with pytest.raises(ValueError, match=re.escape("Planar: dim must be an int >= 1; got 0")):
        flows.Planar(0)
    with pytest.raises(ValueError, match=re.escape("Radial: n_layers must be at least 1; got 0")):
        flows.Radial(2, n_layers=0)
    flow = flows.Planar(2, n_layers=3, rng=0)
    assert [type(b).__name__ for b in flow.bijector.bijectors] == ["Planar"] * 3


def test_fit_runs_the_numpy_passes_on_the_default_backend():
    """No compiled lowering: the engine says why and fit trains through the bijectors' own passes."""
    pytest.importorskip("numba")
    from nflow_np.kernels.plan import supports

    flow = _mixed_flow()
    ok, reason = supports(flow)
    assert not ok and "Planar" in reason
    data = np.random.default_rng(0).normal(size=(400, 3)) * [2.0, 0.5, 1.0] + [1.0, -1.0, 0.5]
    with nflow_np.backend("numba"):
        history = fit(flow, data, epochs=15, batch_size=100, lr=2e-2, rng=0)
    assert history.train_loss[-1] < history.train_loss[0] - 0.5


def _banana(x):
    # p(x) ~ N(x0; 0, 1) N(x1; x0^2 / 2, 0.5^2), normalizer log Z = log(2 pi * 0.5)
    return -0.5 * x[..., 0] ** 2 - 0.5 * ((x[..., 1] - 0.5 * x[..., 0] ** 2) / 0.5) ** 2


def _banana_grad(x):
    r = (x[..., 1] - 0.5 * x[..., 0] ** 2) / 0.25
    return np.stack([-x[..., 0] + r * x[..., 0], -r], axis=-1)


@pytest.mark.parametrize("make, gap", [(flows.Planar, 0.12), (flows.Radial, 0.3)], ids=["Planar", "Radial"])
def test_variational_fit_lowers_the_reverse_kl(make, gap):
    """Planar and radial flows fitted to an unnormalized banana by reverse KL (about 2 s each)."""
    flow = make(2, n_layers=8, rng=0)
    history = fit_to_target(flow, _banana, grad_fn=_banana_grad, steps=600, n_samples=128, lr=1e-2, rng=1)
    log_z = np.log(2 * np.pi * 0.5)
    # the loss is KL(q || p) - log Z: at least 0.2 nats gained, and within `gap` of the optimum
    assert history.train_loss[-1] < history.train_loss[0] - 0.2
    assert history.train_loss[-1] + log_z < gap


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("make", [nb.Planar, nb.Radial], ids=["Planar", "Radial"])
def test_huge_inputs_neither_overflow_nor_lose_the_round_trip(make, dtype):
    """|x| near the dtype's square root of its largest value: the radius is taken without squaring it."""
    big = 1e200 if dtype == np.float64 else 1e30
    b = make(3, rng=0, dtype=dtype)
    x = np.array([[big, 0.0, 0.0], [big, -big, 1.0], [0.5, big, -big]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, log_det = b.forward_and_log_det(x)
        assert np.all(np.isfinite(log_det))
        np.testing.assert_allclose(b.inverse(y), x, rtol=1e-6)
        for grads in (b.forward_vjp(x, np.ones_like(x), np.ones_like(log_det)),
                      b.inverse_vjp(y, np.ones_like(x), np.ones_like(log_det))):
            assert np.all(np.isfinite(grads[0])) and all(np.all(np.isfinite(g)) for g in grads[1].values())
