"""Special functions behind NormalCDF and Normal: accuracy against 60-digit references (mpmath, by bisection)."""

import numpy as np
import pytest

from nflow_np import bijectors as nb
from nflow_np._special import log_ndtr, log_sigmoid, ndtri, sigmoid, softplus
from nflow_np.distributions import Normal

NDTRI_REFERENCE = [
    (1e-300, -37.047096299361199237),
    (1e-100, -21.273453560965324294),
    (1e-20, -9.2623400897984075796),
    (1e-10, -6.3613409024040561991),
    (1e-05, -4.2648907939228246102),
    (0.01, -2.3263478740408410931),
    (0.3, -0.52440051270804081597),
    (0.7, 0.52440051270804065631),
    (0.975, 1.9599639845400538556),
    (1 - 1e-10, 6.3613408896974218642),   # the float nearest 1 - 1e-10
]


@pytest.mark.parametrize("p, expected", NDTRI_REFERENCE)
def test_normal_cdf_inverse_is_accurate_to_1e_14(p, expected):
    got = nb.NormalCDF().inverse(np.array([p]))[0]
    assert abs(got - expected) <= 1e-14 * abs(expected)
    assert ndtri(np.array(p)) == got


def test_ndtri_at_half_is_zero():
    assert nb.NormalCDF().inverse(0.5) == 0.0


def test_normal_cdf_log_det_is_finite_far_in_the_tails():
    b = nb.NormalCDF()
    x = np.array([-30.0, -38.0, 30.0])
    ld = b.forward_log_det_jacobian(x)
    np.testing.assert_allclose(ld, -0.5 * x * x - 0.5 * np.log(2 * np.pi), rtol=1e-15)
    assert np.all(np.isfinite(ld))


def test_log_ndtr_far_lower_tail():
    assert abs(log_ndtr(np.array(-30.0)) - (-454.32124395634319711)) < 1e-12 * 454.3
    assert np.isfinite(Normal(0.0, 1.0).log_cdf(-30.0))


def test_stable_sigmoid_softplus():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
        sp = softplus(x)
        ls = log_sigmoid(x)
    # references from mpmath at 40 digits
    e30 = 9.3576229688392989538e-14          # sigmoid(-30)
    sp30 = 9.3576229688397367794e-14         # softplus(-30)
    np.testing.assert_allclose(s, [0.0, e30, 0.5, 0.99999999999990642377, 1.0], rtol=1e-14)
    np.testing.assert_allclose(sp, [0.0, sp30, np.log(2.0), 30.0, 800.0], rtol=1e-14)
    np.testing.assert_allclose(ls, [-800.0, -30.0 - sp30, -np.log(2.0), -sp30, 0.0], rtol=1e-14)


def test_sigmoid_log_det_finite_in_the_tails():
    ld = nb.Sigmoid().forward_log_det_jacobian(np.array([-700.0, 700.0]))
    np.testing.assert_allclose(ld, [-700.0, -700.0], rtol=1e-14)
