"""The transforms' compiled scalar math (nflow_np.kernels.transforms) against the bijectors' NumPy passes.

Each transform's ``density``, ``sampling`` and ``density_vjp`` run compiled, one
element at a time, on random parameters and values (edge values included:
zero, the spline's bound and beyond, large magnitudes), read from a network-like
output at the frames' two layouts, and must match the NumPy reference of
``nflow_np.bijectors.transforms`` in both dtypes. Whole flows of every frame and
transform are compared across backends in test_kernels.py (CPU) and test_cuda.py.
"""

import numpy as np
import pytest

from nflow_np.bijectors.transforms import TRANSFORMS
from nflow_np.kernels import specs, transforms
from nflow_np.kernels.backend import load_numba

DTYPES = [np.float64, np.float32]
EDGES = np.array([0.0, 2.0, -2.0, 2.5, -7.0, 1e3, -1e-7, 1.9999])
# a circular spline has no value outside [-B, B]: its edges are the ends and points next to them
CIRCULAR_EDGES = np.array([0.0, 2.0, -2.0, 1.9999, -1.9999, 1e-7, -1e-7, 2.0 - 1e-12])


@pytest.fixture(scope="module", autouse=True)
def compiled():
    load_numba()


# other settings of a transform, tested as cases of their own: name -> (transform, keywords)
VARIANTS = {"spline(softplus)": ("spline", dict(bins=4, bound=2.0, parameterization="softplus")),
            "affine(rational)": ("affine", dict(clamp_shape="rational", log_scale_clamp=2.5)),
            "affine(rational, data shift)": ("affine", dict(clamp_shape="rational", shift="data")),
            "affine(tanh)": ("affine", dict(clamp_shape="tanh"))}


def reference(name):
    if name in VARIANTS:
        base, keywords = VARIANTS[name]
        return TRANSFORMS[base](**keywords)
    made = TRANSFORMS[name]()
    if name in ("spline", "circular_spline"):
        made = TRANSFORMS[name](bins=4, bound=2.0)
    return made


def draw_values(name, rng, n, dtype):
    """Edge values in the first row, the bulk after: inside a circular spline's interval, anywhere otherwise."""
    if name == "circular_spline":
        return np.concatenate([CIRCULAR_EDGES[None], rng.uniform(-2.0, 2.0, (n - 1, EDGES.size))]).astype(dtype)
    return np.concatenate([EDGES[None], 1.5 * rng.standard_normal((n - 1, EDGES.size))]).astype(dtype)


def tol(dtype):
    return dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def test_every_transform_is_registered_once_and_lowers_to_its_module():
    assert set(transforms.MODULES) == set(TRANSFORMS)
    assert {m.SPEC for m in transforms.MODULES.values()} == set(specs.TRANSFORMS)
    for name, cls in TRANSFORMS.items():
        spec = reference(name).lower()
        assert transforms.name_for(spec) == name
        assert spec.outputs_per_coordinate == reference(name).params_per_coordinate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("by_coordinate", [True, False])
@pytest.mark.parametrize("name", sorted(TRANSFORMS) + sorted(VARIANTS))
def test_scalar_math_matches_the_reference(name, by_coordinate, dtype):
    rng = np.random.default_rng(len(name) + 7 * by_coordinate)
    made = reference(name)
    module = transforms.module_for(VARIANTS[name][0] if name in VARIANTS else name)
    per = made.params_per_coordinate
    n, m = 5, EDGES.size
    values = draw_values(name, rng, n, dtype)
    params = (0.8 * rng.standard_normal((n, m, per))).astype(dtype)
    if name == "spline(softplus)":
        # a row of large parameters, where the soft clips saturate (float32: less, its slopes of ~1e3 in bins of
        # ~1e-4 of 2B keep few digits; test_spline.py holds float64 to the reference at full saturation)
        top = 6.0 if dtype == np.float64 else 1.0
        params[1] = rng.choice([-1.0, 1.0], (m, per)) * 10.0 ** rng.uniform(0.0, top, (m, per))
    if name.startswith("affine"):
        # raw log-scales far out, where the clamps saturate: both the tanh's and the rational one's
        params[1, :, 1] = rng.choice([-1.0, 1.0], m) * 10.0 ** rng.uniform(0.0, 3.0, m)
    st = module.settings(np.array(module.constants(made.lower()), dtype=dtype))
    # the network output the frames read: by coordinate (j * P + q) or by parameter (q * m + j)
    net = params.reshape(n, m * per) if by_coordinate else np.ascontiguousarray(params.transpose(0, 2, 1)).reshape(
        n, m * per)

    def place(j):
        return (j * per, 1) if by_coordinate else (j, m)

    g = rng.standard_normal((n, m)).astype(dtype)
    gld = rng.standard_normal((n, m)).astype(dtype)
    for direction in ("density", "sampling"):
        want, want_ld, ctx = getattr(made, direction)(values, params)
        got = np.empty_like(values)
        got_ld = np.empty_like(values)
        work = net.copy()     # a pass may leave its parameters prepared for the VJP, in place
        for r in range(n):
            for j in range(m):
                got[r, j], got_ld[r, j] = getattr(module, direction)(values[r, j], work, r, *place(j), st)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol(dtype), err_msg=direction)
        np.testing.assert_allclose(got_ld, want_ld, **tol(dtype), err_msg=direction)
    want_gv, want_gp = made.density_backward(made.density(values, params)[2], g, gld)
    got_gv = np.empty_like(values)
    gnet = np.full_like(net, np.nan)
    work = net.copy()
    for r in range(n):
        for j in range(m):
            module.density(values[r, j], work, r, *place(j), st)      # the VJP reads what the pass left
            got_gv[r, j] = module.density_vjp(values[r, j], g[r, j], gld[r, j], work, gnet, r, *place(j), st)
    got_gp = gnet.reshape(n, m, per) if by_coordinate else gnet.reshape(n, per, m).transpose(0, 2, 1)
    scale = max(1.0, float(np.abs(want_gp).max()))
    np.testing.assert_allclose(got_gv, want_gv, **tol(dtype))
    np.testing.assert_allclose(got_gp, want_gp, rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoidal_tails_stay_finite_and_invert_in_both_dtypes(dtype):
    """Far out every sigmoid rounds to 0 or 1 (float32 beyond ~17); the log-sigmoid forms keep the map, its
    log-derivative and the numerical inverse finite and accurate there, compiled and in NumPy."""
    made = TRANSFORMS["sigmoidal"](units=3)
    module = transforms.module_for("sigmoidal")
    rng = np.random.default_rng(5)
    values = np.array([-300.0, -40.0, -17.5, -5.0, 0.0, 5.0, 17.5, 40.0, 300.0])
    params = 0.8 * rng.standard_normal((1, values.size, 3 * made.units))
    want, want_ld, _ = made.density(values[None], params)        # float64: the reference
    got, got_ld, _ = made.density(values[None].astype(dtype), params.astype(dtype))
    assert np.isfinite(got).all() and np.isfinite(got_ld).all()
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(got_ld, want_ld, rtol=1e-4, atol=1e-5 if dtype == np.float32 else 1e-12)
    back, back_ld, _ = made.sampling(got, params.astype(dtype))
    np.testing.assert_allclose(back, values[None], rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    np.testing.assert_allclose(back_ld, -got_ld, rtol=1e-4, atol=1e-4 if dtype == np.float32 else 1e-10)
    st = module.settings(np.array(module.constants(made.lower()), dtype=dtype))
    net = params.reshape(1, -1).astype(dtype)
    for j, v in enumerate(values.astype(dtype)):
        x, ld = module.density(v, net.copy(), 0, 3 * made.units * j, 1, st)
        assert np.isfinite(x) and np.isfinite(ld)
        y, _ = module.sampling(x, net.copy(), 0, 3 * made.units * j, 1, st)
        np.testing.assert_allclose(y, v, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_sigmoidal_zero_parameters_are_the_identity():
    made = TRANSFORMS["sigmoidal"](units=4)
    y = np.linspace(-30.0, 30.0, 13)[None]
    x, ld, _ = made.density(y, np.zeros((1, 13, 12)))
    np.testing.assert_allclose(x, y, atol=1e-12)
    np.testing.assert_allclose(ld, 0.0, atol=1e-12)
    np.testing.assert_allclose(made.sampling(y, np.zeros((1, 13, 12)))[0], y, atol=1e-12)


def test_sigmoidal_settings_are_checked():
    with pytest.raises(ValueError, match="units"):
        TRANSFORMS["sigmoidal"](units=0)
    with pytest.raises(ValueError, match="min_slope"):
        TRANSFORMS["sigmoidal"](min_slope=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_circular_spline_outside_its_interval(dtype):
    """The NumPy passes refuse a point outside [-B, B], naming it; the compiled ones return NaN (never a value)."""
    made = reference("circular_spline")
    module = transforms.module_for("circular_spline")
    st = module.settings(np.array(module.constants(made.lower()), dtype=dtype))
    params = np.zeros((1, 1, made.params_per_coordinate), dtype=dtype)
    for direction, argname in (("density", "y"), ("sampling", "x")):
        with pytest.raises(ValueError, match=r"CircularSplineTransform: " + argname + r" must lie in the circular "
                                             r"spline's interval \[-bound, bound\] = \[-2, 2\].*got 2.5 at index "
                                             r"\(0, 0\)"):
            getattr(made, direction)(np.array([[2.5]], dtype=dtype), params)
        for v in (2.5, -2.0001, np.nan):
            out, ld = getattr(module, direction)(dtype(v), params.reshape(1, -1).copy(), 0, 0, 1, st)
            assert np.isnan(out) and np.isnan(ld)
    gp = np.full((1, made.params_per_coordinate), np.nan, dtype=dtype)
    assert np.isnan(module.density_vjp(dtype(3.0), dtype(1.0), dtype(1.0), params.reshape(1, -1).copy(), gp, 0, 0, 1,
                                       st))
    assert np.all(gp == 0)
    # both ends are fixed points of every circular spline, the slopes there equal
    rng = np.random.default_rng(5)
    raw = rng.standard_normal((1, made.params_per_coordinate)).astype(dtype)
    slopes = []
    for v in (-2.0, 2.0):
        out, ld = module.density(dtype(v), raw.copy(), 0, 0, 1, st)
        assert out == dtype(v)
        slopes.append(ld)
    np.testing.assert_allclose(slopes[0], slopes[1], **tol(dtype))
