"""The registry of bijectors under test: adding a bijector means adding one entry here.

Each case builds a bijector with random parameters for a dtype and draws
points in its forward domain, edge values included (sigmoid and normal-CDF
tails, |x| ~ 30 for Softplus), limited per dtype to what that dtype can
resolve: at float32 a Sigmoid is flat (exactly 1.0) beyond x ~ 17.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from nflow_np import bijectors as nb
from nflow_np.bijectors.autoregressive import InverseAutoregressive, MaskedAutoregressive, SplineAutoregressive
from nflow_np.bijectors.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
from nflow_np.bijectors.coupling import CircularSplineCoupling
from nflow_np.bijectors.autoregressive import CircularSplineAutoregressive


@dataclass(frozen=True)
class Case:
    build: Callable    # (rng, dtype) -> Bijector
    points: Callable   # (rng, dtype, n) -> forward-domain points, shape (n,) + event
    dim: int = 0       # event size for vector bijectors, 0 for elementwise
    adjust: Callable = None   # (bijector, x) -> x moved off points the bijector is not smooth at

    def draw(self, bijector, rng, dtype, n):
        x = self.points(rng, dtype, n)
        return x if self.adjust is None else self.adjust(bijector, x)


def _f32(dtype):
    return np.dtype(dtype) == np.float32


WIDTH = 3  # elementwise cases draw (n, WIDTH) arrays; their parameters have shape (WIDTH,) or ()


def _reals(scale=2.0, edges64=(), edges32=()):
    def points(rng, dtype, n):
        edges = np.array(edges32 if _f32(dtype) else edges64, dtype=np.float64)
        bulk = rng.normal(scale=scale, size=max(n * WIDTH - edges.size, 1))
        return np.concatenate([edges, bulk])[:n * WIDTH].reshape(n, WIDTH).astype(dtype)
    return points


def _away_from_zero(points_fn, margin=0.1):
    # kinks at 0 (LeakyReLU, Softsign) are not differentiable: keep stencils off them
    def points(rng, dtype, n):
        x = points_fn(rng, dtype, n)
        return np.where(np.abs(x) < margin, np.copysign(margin, x) + x, x).astype(dtype)
    return points


def _positive(low=0.2, high=4.0):
    def points(rng, dtype, n):
        return rng.uniform(low, high, size=(n, WIDTH)).astype(dtype)
    return points


def _unit_interval(dtype_edges64=(1e-12, 1 - 1e-9), dtype_edges32=(1e-5, 1 - 1e-2)):
    def points(rng, dtype, n):
        edges = np.array(dtype_edges32 if _f32(dtype) else dtype_edges64)
        bulk = rng.uniform(0.02, 0.98, size=max(n * WIDTH - edges.size, 1))
        return np.concatenate([edges, bulk])[:n * WIDTH].reshape(n, WIDTH).astype(dtype)
    return points


def _vectors(dim, scale=1.5):
    def points(rng, dtype, n):
        return rng.normal(scale=scale, size=(n, dim)).astype(dtype)
    return points


def _angles(dim, bound=np.pi):
    """Points of the torus [-B, B]^dim: the edge rows within a hair of +-B (on them, every central stencil
    would leave the domain), the bulk uniform inside."""
    def points(rng, dtype, n):
        x = rng.uniform(-bound, bound, size=(n, dim))
        hair = 1e-3 if _f32(dtype) else 1e-9
        signs = np.where(np.arange(dim) % 2 == 0, 1.0, -1.0)
        x[0] = signs * (bound - hair)
        x[1] = -signs * (bound - 10 * hair)
        return x.astype(dtype)
    return points


def _circular_shift(rng, dtype):
    # turns of 0.5 to 2.5 either way: the seam (where x + shift crosses +-pi) lies well inside the interval
    turn = rng.uniform(0.5, 2.5, size=WIDTH) * rng.choice([-1.0, 1.0], size=WIDTH)
    return nb.CircularShift(turn.astype(dtype))


def _off_seam(bijector, x, margin=0.2):
    """Points clear of the rotation's seam and of +-B by a stencil's reach; the edge rows move only off the seam."""
    bound, shift = bijector.bound, bijector.params["shift"].astype(np.float64)
    rng = np.random.default_rng(0)
    x = x.astype(np.float64)
    for _ in range(100):
        turned = (x + shift + bound) % (2 * bound) - bound
        bad = np.abs(turned) > bound - margin
        bad[2:] |= np.abs(x[2:]) > bound - margin
        if not bad.any():
            break
        x = np.where(bad, rng.uniform(-bound + margin, bound - margin, size=x.shape), x)
    return x.astype(bijector.dtype)


def _off_kink(inner, x, margin=0.15):
    # keep the LeakyReLU's input (the inner bijector's output) away from its kink at 0
    u = inner.forward(x)
    u = np.where(np.abs(u) < margin, u + np.copysign(margin, u), u).astype(x.dtype)
    return inner.inverse(u)


def _randomized(bijector, rng, scale=0.3):
    # trainable layers start as the identity (last layer zeroed); perturb every weight so the check bites
    for _, array in bijector.parameters():
        array += (scale * rng.normal(size=array.shape)).astype(array.dtype)
    return bijector


def _sigmoid_bounds(rng, dtype):
    low = _param(rng, dtype, 3, loc=-1.0)
    return nb.Sigmoid(low=low, high=low + rng.uniform(1.0, 3.0, size=3).astype(dtype))


def _batch_norm_eval(rng, dtype):
    # check_bijector treats batch members as independent, which holds in evaluation mode only
    b = _randomized(nb.BatchNorm(3, dtype=dtype), rng)
    b.running_mean[...] = rng.normal(size=3)
    b.running_var[...] = rng.uniform(0.5, 2.0, size=3)
    return b.eval()


def _act_norm(rng, dtype):
    b = nb.ActNorm(3, dtype=dtype)
    b.inverse((rng.normal(size=(50, 3)) * [1.0, 2.0, 0.5] + [0.3, -1.0, 2.0]).astype(dtype))  # data-dependent init
    return b


def _param(rng, dtype, *shape, scale=1.0, loc=0.0):
    return (loc + scale * rng.normal(size=shape)).astype(dtype)


def _nonzero(rng, dtype, *shape):
    v = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return v.astype(dtype)


def _tril(rng, dtype, d):
    m = np.tril(rng.normal(scale=0.5, size=(d, d)))
    m[np.diag_indices(d)] = _nonzero(rng, np.float64, d)
    return m.astype(dtype)


def _seed000_shift_and_cube(a):
    """seed 000's f3(z) = (z_a, z_b + a z_a^3), corrected: its log-det is 0, not 1."""
    def forward(x):
        y = x.copy()
        y[..., 1] = y[..., 1] + a * x[..., 0] ** 3
        return y

    def inverse(y):
        x = y.copy()
        x[..., 1] = x[..., 1] - a * y[..., 0] ** 3
        return x

    return nb.Inline(forward, inverse, forward_log_det_jacobian_fn=lambda x: 0.0, event_ndims=1,
                     name="ShiftAndCube")


_SPLINE_BINS = 5
_SPLINE_BOUND = 3.0


def _spline(rng, dtype, batch=(WIDTH,), parameterization="softplus"):
    k = _SPLINE_BINS
    return nb.RationalQuadraticSpline(_param(rng, dtype, *batch, k), _param(rng, dtype, *batch, k),
                                      _param(rng, dtype, *batch, k - 1), bound=_SPLINE_BOUND,
                                      parameterization=parameterization)


def _spline_points(bijector, x):
    """Bulk rows cycle through: a point inside each bin, a point next to an interior knot, one outside [-B, B].

    Positions come from the random draw itself; rows 0 and 1 (the edges) keep their values. Then every
    point moves clear of the knots and of +-B by the reach of check_bijector's finite-difference stencils
    at the dtype (in x, and the knots' moves under its parameter stencils): the spline is only C1 there,
    so its log-det has kinks, which symmetric differences average. Points exactly on knots are
    test_spline.py's business.
    """
    from nflow_np.kernels.spline import _spline_numpy

    bins, bound = _SPLINE_BINS, bijector.bound
    u = [np.broadcast_to(bijector.params[key], (WIDTH, n)) for key, n in
         (("unnormalized_widths", bins), ("unnormalized_heights", bins), ("unnormalized_derivatives", bins - 1))]
    knots = _spline_numpy(*u, bound, bijector.min_bin_width, bijector.min_bin_height, bijector.min_derivative,
                          bijector.parameterization)["xs"].astype(np.float64)     # (WIDTH, K + 1)
    reach = 4.0 * float(np.finfo(bijector.dtype).eps) ** 0.2   # twice a stencil's reach (2 steps)
    x = x.astype(np.float64)
    frac = 0.5 * (np.tanh(x) + 1.0)                                                    # in (0, 1), from the draw
    cols = np.arange(WIDTH)
    for r in range(2, x.shape[0]):
        kind = (r - 2) % (bins + 2)
        if kind < bins:              # inside bin `kind`
            x[r] = knots[:, kind] + (knots[:, kind + 1] - knots[:, kind]) * (0.1 + 0.8 * frac[r])
        elif kind == bins:           # just right of an interior knot
            j = 1 + (r // (bins + 2) + cols) % (bins - 1)
            x[r] = knots[cols, j] + 0.05 * (knots[cols, j + 1] - knots[cols, j])
        else:                        # outside, on either side
            x[r] = np.copysign(bound + 0.2 + 2.0 * frac[r], x[r])
    for idx in np.ndindex(x.shape):
        v, kn = x[idx], knots[idx[-1]]
        margin = reach * max(1.0, abs(v))
        if abs(v) > bound:
            x[idx] = np.copysign(max(abs(v), bound + margin), v)
            continue
        k = min(int(np.searchsorted(kn, v, side="right")) - 1, bins - 1)
        if kn[k + 1] - kn[k] <= 2.0 * margin:   # too narrow for a stencil: the middle of the widest bin
            k = int(np.argmax(np.diff(kn)))
            v = 0.5 * (kn[k] + kn[k + 1])
        x[idx] = np.clip(v, kn[k] + margin, kn[k + 1] - margin)
    return x.astype(bijector.dtype)


# edges: just inside and just outside +-B, and far out (_spline_points keeps them clear of +-B by a stencil's reach)
_SPLINE_EDGES = (-2.9, 2.95, 3.1, -3.5, 10.0, -2.98)


CASES = {
    "Identity": Case(lambda rng, dt: nb.Identity(), _reals()),
    "Shift": Case(lambda rng, dt: nb.Shift(_param(rng, dt, 3)), _reals()),
    "Shift(scalar)": Case(lambda rng, dt: nb.Shift(_param(rng, dt)), _reals()),
    "Scale": Case(lambda rng, dt: nb.Scale(_nonzero(rng, dt, 3)), _reals()),
    "Exp": Case(lambda rng, dt: nb.Exp(), _reals(edges64=(-30.0, 30.0), edges32=(-30.0, 30.0))),
    "Sigmoid": Case(lambda rng, dt: nb.Sigmoid(),
                    _reals(edges64=(-30.0, -12.0, 12.0, 30.0), edges32=(-30.0, -9.0, 9.0))),
    "Sigmoid(low,high)": Case(
        lambda rng, dt: _sigmoid_bounds(rng, dt),
        # with low != 0 the far tails sit a rounding error away from low/high: +-15 is as far as f64 resolves
        _reals(edges64=(-15.0, 15.0), edges32=(-9.0, 9.0))),
    "Tanh": Case(lambda rng, dt: nb.Tanh(), _reals(edges64=(-15.0, -6.0, 6.0, 15.0), edges32=(-4.0, 4.0))),
    "Softsign": Case(lambda rng, dt: nb.Softsign(),
                     _away_from_zero(_reals(edges64=(-1e3, -30.0, 30.0, 1e3), edges32=(-30.0, 30.0)))),
    "Softplus": Case(lambda rng, dt: nb.Softplus(), _reals(edges64=(-30.0, 30.0), edges32=(-30.0, 30.0))),
    "LeakyReLU": Case(lambda rng, dt: nb.LeakyReLU(rng.uniform(0.1, 0.9, size=3).astype(dt)),
                      _away_from_zero(_reals())),
    "NormalCDF": Case(lambda rng, dt: nb.NormalCDF(),
                      _reals(scale=1.5, edges64=(-30.0, -8.0, 6.0), edges32=(-12.0, 3.5))),
    "Power": Case(lambda rng, dt: nb.Power(np.asarray(rng.uniform(0.5, 3.0), dtype=dt)), _positive()),
    "Power(negative)": Case(lambda rng, dt: nb.Power(np.asarray(-rng.uniform(0.5, 3.0), dtype=dt)), _positive()),
    "Invert(Exp)": Case(lambda rng, dt: nb.Invert(nb.Exp()), _positive(0.05, 20.0)),
    "Invert(Sigmoid)": Case(lambda rng, dt: nb.Invert(nb.Sigmoid()), _unit_interval()),
    "Invert(NormalCDF)": Case(lambda rng, dt: nb.Invert(nb.NormalCDF()), _unit_interval()),
    "Chain(elementwise)": Case(
        lambda rng, dt: nb.Chain([nb.Shift(_param(rng, dt, 3)), nb.Scale(_nonzero(rng, dt, 3)), nb.Tanh(),
                                  nb.Softplus(), nb.LeakyReLU(np.asarray(0.5, dtype=dt))]),
        _away_from_zero(_reals(scale=0.5), margin=0.1)),
    "Inline(elementwise)": Case(
        lambda rng, dt: nb.Inline(np.sinh, np.arcsinh, forward_log_det_jacobian_fn=lambda x: np.log(np.cosh(x)),
                                  is_increasing=True),
        _reals()),
    "RationalQuadraticSpline": Case(lambda rng, dt: _spline(rng, dt),
                                    _reals(edges64=_SPLINE_EDGES, edges32=_SPLINE_EDGES), adjust=_spline_points),
    "RationalQuadraticSpline(shared)": Case(lambda rng, dt: _spline(rng, dt, batch=()),
                                            _reals(edges64=_SPLINE_EDGES, edges32=_SPLINE_EDGES),
                                            adjust=_spline_points),
    "CircularShift": Case(_circular_shift, _angles(WIDTH), adjust=_off_seam),
    "RationalQuadraticSpline(bounded)": Case(lambda rng, dt: _spline(rng, dt, parameterization="bounded"),
                                             _reals(edges64=_SPLINE_EDGES, edges32=_SPLINE_EDGES),
                                             adjust=_spline_points),
    "Inline(shift-and-cube)": Case(lambda rng, dt: _seed000_shift_and_cube(float(rng.normal(3.0, 1.0))),
                                   _vectors(2, scale=0.7), dim=2),
}

# Vector bijectors.
CASES.update({
    "Permute": Case(lambda rng, dt: nb.Permute(rng.permutation(4)), _vectors(4), dim=4),
    "Reverse": Case(lambda rng, dt: nb.Reverse(), _vectors(3), dim=3),
    "Rotation": Case(lambda rng, dt: nb.Rotation(np.asarray(rng.uniform(0, 2 * np.pi), dtype=dt)),
                     _vectors(2), dim=2),
    "ScaleMatvecTriL": Case(lambda rng, dt: nb.ScaleMatvecTriL(_tril(rng, dt, 3)), _vectors(3), dim=3),
    "Affine(shift,diag)": Case(lambda rng, dt: nb.Affine(shift=_param(rng, dt, 3), scale_diag=_nonzero(rng, dt, 3)),
                               _vectors(3), dim=3),
    "Affine(tril,low-rank)": Case(
        lambda rng, dt: nb.Affine(shift=_param(rng, dt, 4), scale_tril=_tril(rng, dt, 4) + 2 * np.eye(4, dtype=dt),
                                  scale_perturb_factor=_param(rng, dt, 4, 2, scale=0.4),
                                  scale_perturb_diag=rng.uniform(0.5, 1.5, size=2).astype(dt)),
        _vectors(4), dim=4),
    # seed 002's trained flow: tfb_chain(list(lrelu, affine)) applies the affine first
    "Chain(seed002)": Case(
        lambda rng, dt: nb.Chain([nb.LeakyReLU(np.asarray(rng.uniform(0.2, 0.8), dtype=dt)),
                                  nb.Affine(shift=_param(rng, dt, 2), scale_tril=np.abs(_tril(rng, dt, 2)),
                                            scale_perturb_factor=_param(rng, dt, 2, 2, scale=0.3))]),
        _vectors(2), dim=2, adjust=lambda b, x: _off_kink(b.bijectors[1], x)),
    "AffineCoupling": Case(
        lambda rng, dt: _randomized(AffineCoupling([True, False, True, False, False], (6, 5), "tanh",
                                                   rng=rng, dtype=dt), rng),
        _vectors(5), dim=5),
    "AffineCoupling(data shift)": Case(
        lambda rng, dt: _randomized(AffineCoupling([True, False, True], (5,), "tanh", shift="data",
                                                   rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "MaskedAutoregressive(data shift)": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(3, (6,), "tanh", shift="data", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "AffineCoupling(rational clamp)": Case(
        lambda rng, dt: _randomized(AffineCoupling([True, False, False, True], (6,), "tanh", log_scale_clamp=1.5,
                                                   clamp_shape="rational", rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    "MaskedAutoregressive(rational clamp)": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(3, (6,), "tanh", log_scale_clamp=1.5, clamp_shape="rational",
                                                         rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "AffineCoupling(tanh clamp)": Case(
        lambda rng, dt: _randomized(AffineCoupling([False, True, True], (5,), "tanh", log_scale_clamp=1.5,
                                                   clamp_shape="tanh", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "MaskedAutoregressive(tanh clamp)": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(3, (6,), "tanh", log_scale_clamp=1.5, clamp_shape="tanh",
                                                         rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "AffineCoupling(unclamped)": Case(
        lambda rng, dt: _randomized(AffineCoupling([False, True], (4,), "silu", log_scale_clamp=None,
                                                   rng=rng, dtype=dt), rng),
        _vectors(2), dim=2),
    "SplineCoupling": Case(
        lambda rng, dt: _randomized(SplineCoupling([True, False, True, False], (6,), "tanh", bins=5, bound=3.0,
                                                   rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    # small: the parameter checks run its sequential sampling pass once per stencil point
    "SplineAutoregressive": Case(
        lambda rng, dt: _randomized(SplineAutoregressive(3, (4,), "tanh", bins=4, bound=3.0, order=rng.permutation(3),
                                                         rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "SplineCoupling(softplus)": Case(
        lambda rng, dt: _randomized(SplineCoupling([True, False, False, True], (6,), "tanh", bins=4, bound=3.0,
                                                   parameterization="softplus", rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    "SplineAutoregressive(softplus)": Case(
        lambda rng, dt: _randomized(SplineAutoregressive(3, (4,), "tanh", bins=4, bound=3.0, order=rng.permutation(3),
                                                         parameterization="softplus", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "AdditiveCoupling": Case(
        lambda rng, dt: _randomized(AdditiveCoupling([True, True, False], (5,), "elu", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "MaskedAutoregressive": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(4, (7, 7), "tanh", order=rng.permutation(4),
                                                         rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    "MaskedAutoregressive(1-D)": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(1, (3,), "tanh", rng=rng, dtype=dt), rng),
        _vectors(1), dim=1),
    "InverseAutoregressive": Case(
        lambda rng, dt: _randomized(InverseAutoregressive(3, (6,), "silu", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    # the frames with a transform no named layer uses
    "Coupling(SinhArcsinh)": Case(
        lambda rng, dt: _randomized(nb.Coupling([False, True, True, False], nb.SinhArcsinhTransform(), (5,), "tanh",
                                                rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    "Autoregressive(SinhArcsinh)": Case(
        lambda rng, dt: _randomized(nb.Autoregressive(3, nb.SinhArcsinhTransform(log_tail_clamp=None), (5,), "tanh",
                                                      order=rng.permutation(3), rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "Autoregressive(Additive)": Case(
        lambda rng, dt: _randomized(nb.Autoregressive(3, nb.AdditiveTransform(), (4,), "elu", rng=rng, dtype=dt),
                                    rng),
        _vectors(3), dim=3),
    "Coupling(Sigmoidal)": Case(
        lambda rng, dt: _randomized(nb.Coupling([True, False, False], nb.SigmoidalTransform(units=3), (5,), "tanh",
                                                rng=rng, dtype=dt), rng),
        _vectors(3, scale=3.0), dim=3),
    "Autoregressive(Sigmoidal)": Case(
        lambda rng, dt: _randomized(nb.Autoregressive(3, nb.SigmoidalTransform(units=2), (4,), "tanh",
                                                      order=rng.permutation(3), rng=rng, dtype=dt), rng),
        _vectors(3, scale=3.0), dim=3),
    # small: the parameter checks solve its sampling direction (d bracketed Newton solves) once per stencil point
    "BlockNeuralAutoregressive": Case(
        lambda rng, dt: nb.BlockNeuralAutoregressive(3, hidden_factor=2, hidden_layers=1, rng=rng, dtype=dt),
        _vectors(3, scale=2.0), dim=3),
    "CircularSplineCoupling": Case(
        lambda rng, dt: _randomized(CircularSplineCoupling([True, False, False, True], (6,), "tanh", bins=5,
                                                           rng=rng, dtype=dt), rng),
        _angles(4), dim=4),
    "CircularSplineAutoregressive": Case(
        lambda rng, dt: _randomized(CircularSplineAutoregressive(2, (3,), "tanh", bins=3, order=[1, 0], rng=rng,
                                                                 dtype=dt), rng),
        _angles(2), dim=2),
    "CircularSplineAutoregressive(1-D)": Case(
        lambda rng, dt: _randomized(CircularSplineAutoregressive(1, (3,), "tanh", bins=3, rng=rng, dtype=dt), rng),
        _angles(1), dim=1),
    # residual conditioners (ResidualMLP, ResidualMADE) in both frames
    "AffineCoupling(resnet)": Case(
        lambda rng, dt: _randomized(AffineCoupling([True, False, True, False], (5, 5), "tanh", conditioner="resnet",
                                                   rng=rng, dtype=dt), rng),
        _vectors(4), dim=4),
    "SplineCoupling(resnet)": Case(
        lambda rng, dt: _randomized(SplineCoupling([False, True, True], (5,), "silu", bins=4, bound=3.0,
                                                   conditioner="resnet", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "MaskedAutoregressive(resnet)": Case(
        lambda rng, dt: _randomized(MaskedAutoregressive(3, (6, 6), "tanh", order=rng.permutation(3),
                                                         conditioner="resnet", rng=rng, dtype=dt), rng),
        _vectors(3), dim=3),
    "BatchNorm(eval)": Case(lambda rng, dt: _batch_norm_eval(rng, dt), _vectors(3), dim=3),
    "ActNorm": Case(lambda rng, dt: _act_norm(rng, dt), _vectors(3), dim=3),
    "LULinear": Case(lambda rng, dt: _randomized(nb.LULinear(4, rng=rng, dtype=dt), rng, scale=0.2),
                     _vectors(4), dim=4),
    "Chain(seed000)": Case(
        lambda rng, dt: nb.Chain([nb.Sigmoid(), nb.Rotation(np.asarray(rng.uniform(0, 2 * np.pi), dtype=dt)),
                                  _seed000_shift_and_cube(float(rng.normal(3.0, 1.0))),
                                  nb.Scale(np.array([2.0, 1.5], dtype=dt)), nb.Shift(np.array([0.0, -2.0], dtype=dt))]),
        lambda rng, dt, n: (0.2 * rng.normal(size=(n, 2))).astype(dt), dim=2),
})



def _planar(rng, dtype, w_dot_u=None):
    b = nb.Planar(3, rng=rng, dtype=dtype)
    b.params["b"][...] = rng.normal()
    if w_dot_u is not None:   # m(w . u) = softplus(w . u) - 1 near -1: the map nearly folds along w
        w = b.params["w"]
        b.params["u"] += ((w_dot_u - w @ b.params["u"]) * w / (w @ w)).astype(dtype)
    return b


def _radial(rng, dtype, raw_beta=None):
    b = nb.Radial(3, rng=rng, dtype=dtype)
    b.params["raw_alpha"][...] = rng.normal(scale=0.5)
    if raw_beta is not None:  # beta_hat close to -alpha: a strong contraction towards z0
        b.params["raw_beta"][...] = raw_beta
    return b


def _around_z0(bijector, x):
    # edge rows: close to z0 (the map is not smooth at z0 itself) and far from it
    x = x.copy()
    z0 = bijector.params["z0"]
    x[0] = z0 + np.array([0.05, -0.03, 0.02], dtype=x.dtype)
    x[1] = z0 + np.array([20.0, -10.0, 5.0], dtype=x.dtype)
    return x


# Planar and radial flows (inverse solved numerically) and orthogonal maps.
CASES.update({
    "Planar": Case(lambda rng, dt: _planar(rng, dt), _vectors(3), dim=3),
    "Planar(nearly folding)": Case(lambda rng, dt: _planar(rng, dt, w_dot_u=-4.0), _vectors(3), dim=3),
    "Radial": Case(lambda rng, dt: _radial(rng, dt), _vectors(3), dim=3, adjust=_around_z0),
    "Radial(contracting)": Case(lambda rng, dt: _radial(rng, dt, raw_beta=-3.0), _vectors(3), dim=3,
                                adjust=_around_z0),
    "Householder": Case(lambda rng, dt: nb.Householder(4, n_reflections=3, rng=rng, dtype=dt), _vectors(4), dim=4),
    "RandomRotation": Case(lambda rng, dt: nb.RandomRotation(5, rng=rng, dtype=dt), _vectors(5), dim=5),
})

DTYPES = [np.float64, np.float32]
