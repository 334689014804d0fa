"""Every registered bijector through check_bijector, in float64 and float32."""

import zlib

import numpy as np
import pytest

from bijector_cases import CASES, DTYPES
from nflow_np import bijectors as nb
from nflow_np.testing import check_bijector


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CASES))
def test_check_bijector(name, dtype):
    case = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    bijector = case.build(rng, dtype)
    x = case.draw(bijector, rng, dtype, 9)
    # Edge values come first. A stencil that would leave the domain shrinks the finite-difference
    # step of its whole batch, so the edge rows are checked apart from the bulk.
    for part in (x[:2], x[2:]):
        report = check_bijector(bijector, part)
        assert report["log_det_vs_jacobian"] < (1e-8 if dtype == np.float64 else 1e-2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_shapes(name):
    """One vector, a flat batch and a 2-D batch give the same per-event results."""
    case = CASES[name]
    rng = np.random.default_rng(7)
    bijector = case.build(rng, np.float64)
    x = case.draw(bijector, rng, np.float64, 6)
    y, ld = bijector.forward_and_log_det(x)
    y1, ld1 = bijector.forward_and_log_det(x[0])
    np.testing.assert_allclose(y1, y[0], rtol=1e-13)
    np.testing.assert_allclose(ld1, ld[0], rtol=1e-13, atol=1e-13)
    x2 = x.reshape((2, 3) + x.shape[1:])
    y2, ld2 = bijector.forward_and_log_det(x2)
    np.testing.assert_allclose(y2.reshape(y.shape), y, rtol=1e-13)
    np.testing.assert_allclose(ld2.reshape(ld.shape), ld, rtol=1e-13, atol=1e-13)


def test_check_bijector_names_a_parameter_changed_by_the_passes():
    """A pass with a side effect on the parameters makes the checks compare different maps: the failure says so."""
    class Drifting(nb.Shift):
        def _inv(self, y):
            self.params["shift"] += 0.5   # e.g. a data-dependent re-initialization on every inverse pass
            return super()._inv(y)

    with pytest.raises(AssertionError, match=r"^Drifting: parameter shift changed while the bijector was being "
                                             r"checked .* first failure seen was: Drifting: inverse\(forward"):
        check_bijector(Drifting(np.zeros(3)), np.random.default_rng(0).normal(size=(4, 3)))


def test_check_bijector_checks_the_declared_direction():
    """A scalar map declaring the wrong direction would give a flow the wrong CDF: the checker catches it."""
    class Neg(nb.ElementwiseBijector):
        def _fwd(self, x):
            return -x

        def _inv(self, y):
            return -y

        def _fldj(self, x):
            return np.zeros_like(x)

        def _derivatives(self, x, y):
            return -1.0, 0, {}

    x = np.random.default_rng(0).normal(size=(5, 2))
    check_bijector(Neg(), x)    # detected: decreasing

    class DeclaredIncreasing(Neg):
        increasing = True

    with pytest.raises(AssertionError, match=r"^DeclaredIncreasing: direction failed: declared increasing"):
        check_bijector(DeclaredIncreasing(), x)
    inline = nb.Inline(lambda v: -v, lambda v: -v, forward_log_det_jacobian_fn=lambda v: np.zeros_like(v),
                       is_increasing=True)
    with pytest.raises(AssertionError, match=r"direction failed"):
        check_bijector(inline, x)
    check_bijector(nb.Scale(np.array([2.0, -3.0])), x)     # per-element directions


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_check_bijector_reports_where_a_scalar_map_overflows(dtype):
    """The interval on which forward and inverse stay finite, to the last float: where samples turn inf."""
    x = np.array([[-1.0, 0.5, 2.0]], dtype=dtype)
    big = float(np.finfo(dtype).max)
    report = check_bijector(nb.Exp(), x)
    low, high = report["forward_finite_range"]
    assert low == -big
    with np.errstate(over="ignore"):
        assert np.isfinite(np.exp(dtype(high))) and np.isinf(np.exp(np.nextafter(dtype(high), dtype(np.inf))))
    assert report["inverse_finite_range"] == (float(np.nextafter(dtype(0), dtype(1))), big)   # log: its domain
    # per parameter element, the narrowest interval
    report = check_bijector(nb.Scale(np.array([2.0, -1e30, 1.0], dtype=dtype)), x)
    np.testing.assert_allclose(report["forward_finite_range"], (-big / 1e30, big / 1e30), rtol=1e-6)
    assert report["inverse_finite_range"] == (-big, big)
    assert check_bijector(nb.Tanh(), x)["forward_finite_range"] == (-big, big)


def _relu_coupling(seed):
    from nflow_np.bijectors.coupling import AffineCoupling
    rng = np.random.default_rng(seed)
    b = AffineCoupling([True, False, True, False], (8,), "relu", rng=rng)
    for _, array in b.parameters():
        array += 0.3 * rng.normal(size=array.shape)
    return b, rng.normal(size=(200, 4))


@pytest.mark.parametrize("seed", range(6))
def test_check_bijector_passes_a_relu_coupling_whose_stencils_cross_kinks(seed):
    """At 200 points some ReLU unit always lies within a stencil's reach of its kink: checked from its clean side."""
    b, x = _relu_coupling(seed)
    report = check_bijector(b, x)
    assert report["forward_vjp grad_x vs finite differences"] < 1e-8
    assert report["kinks_skipped"] <= 2


def test_check_bijector_still_catches_a_slightly_wrong_gradient_among_kinks():
    b, x = _relu_coupling(0)
    original = b._forward_backward

    def broken(ctx, grad_y, grad_log_det):
        grad, grads = original(ctx, grad_y, grad_log_det)
        return grad * np.where(np.arange(4) == 1, 1.0 + 1e-4, 1.0), grads    # one coordinate 0.01% off

    b._forward_backward = broken
    with pytest.raises(AssertionError, match=r"^AffineCoupling: forward_vjp grad_x vs finite differences failed"):
        check_bijector(b, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_check_bijector_at_the_kinks_of_elementwise_maps(dtype):
    """Softsign and LeakyReLU right at and next to their kink at 0; where no side is clean, skipped and counted."""
    near = np.array([0.0, 1e-6, -1e-6, 3e-4, -3e-4, 0.01, -0.01, 0.03, -0.03], dtype=dtype)
    for bijector in (nb.Softsign(), nb.LeakyReLU(np.asarray(0.3, dtype=dtype))):
        report = check_bijector(bijector, near)
        assert 0 < report["kinks_skipped"] <= 12      # only the points at (or within rounding of) the kink
        assert report["kinks_checked"] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_check_bijector_catches_a_wrong_slope_next_to_a_kink(dtype):
    """A LeakyReLU whose log-det below 0 is off: caught at points within a stencil's reach of the kink."""
    class Wrong(nb.LeakyReLU):
        def _fldj(self, x):
            return np.where(x >= 0, 0.0, 1.01 * self.params["log_alpha"]).astype(x.dtype, copy=False)

        def _ildj(self, y):
            return -self._fldj(self._inv(y))

    near = np.array([0.01, -0.01, 0.02, -0.03], dtype=dtype)
    with pytest.raises(AssertionError, match=r"^Wrong: log_det_vs_jacobian failed"):
        check_bijector(Wrong(np.asarray(0.3, dtype=dtype)), near)
