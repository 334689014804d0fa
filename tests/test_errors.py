"""Bad input gets a clear error naming the culprit, never a silent NaN.

Every public entry point validates dtype, shape, finiteness and domain and
raises ``ValueError`` or ``TypeError`` whose message names the bijector or
distribution, the method, the argument and what was expected. These tests
match on those names.
"""

import re

import numpy as np
import pytest

import nflow_np.bijectors as nb
from bijector_cases import CASES
from nflow_np.bijectors import (
    Chain, Exp, Identity, Inline, Invert, LeakyReLU, NormalCDF, Power, Scale, Shift, Sigmoid, Softplus,
    Softsign, Tanh,
)
from nflow_np.distributions import MultivariateNormalDiag, Normal, TransformedDistribution, Uniform

VECTOR_NAMES = ("Affine", "Rotation", "Permute", "ScaleMatvecTriL", "Reverse")
HAS_LINEAR = all(hasattr(nb, n) for n in VECTOR_NAMES)
needs_linear = pytest.mark.skipif(not HAS_LINEAR, reason="vector bijectors (nflow_np/bijectors/linear.py) "
                                                         "not available yet")

NAMES = sorted(CASES)
DTYPES = [np.float64, np.float32]

METHODS = [  # (method, the argument's name in messages, which space its points live in)
    ("forward", "x", "x"),
    ("inverse", "y", "y"),
    ("forward_log_det_jacobian", "x", "x"),
    ("inverse_log_det_jacobian", "y", "y"),
    ("forward_and_log_det", "x", "x"),
    ("inverse_and_log_det", "y", "y"),
    ("forward_vjp", "x", "x"),
    ("inverse_vjp", "y", "y"),
]
METHOD_IDS = [m for m, _, _ in METHODS]


def _vector_inline(name="VectorInline"):
    """A volume-preserving map of vectors (reversal) written as an Inline bijector: a stand-in vector bijector."""
    return Inline(lambda x: x[..., ::-1].copy(), lambda y: y[..., ::-1].copy(),
                  forward_log_det_jacobian_fn=lambda x: 0.0, event_ndims=1, name=name)


def _vector_bijectors():
    out = [pytest.param(lambda: _vector_inline(), id="Inline(event_ndims=1)")]
    out += [pytest.param(lambda: nb.Reverse(), id="Reverse", marks=needs_linear),
            pytest.param(lambda: nb.Affine(shift=np.zeros(3)), id="Affine", marks=needs_linear),
            pytest.param(lambda: nb.ScaleMatvecTriL(np.eye(3)), id="ScaleMatvecTriL", marks=needs_linear)]
    return out


def _build(name, dtype, n=4):
    case = CASES[name]
    rng = np.random.default_rng(7)
    try:
        bijector = case.build(rng, dtype)
    except AttributeError:
        if HAS_LINEAR:
            raise
        pytest.skip("vector bijectors not available yet")
    x = case.draw(bijector, rng, dtype, n)
    return bijector, x, bijector.forward(x)


def _ids(entries):
    """Test ids from (callable, message) pairs: the position and the name the message starts with."""
    return [f"{i}-{re.match(r'[A-Za-z_.]*', m.lstrip('^').replace(chr(92), '')).group()}"
            for i, (_, m) in enumerate(entries)]


def _call(bijector, method, point):
    return getattr(bijector, method)(point)


# ---------------------------------------------------------------------------- NaN and infinity
@pytest.mark.parametrize("method,argname,space", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_bijector_refuses_non_finite_input(name, method, argname, space):
    for dtype in DTYPES:
        b, x, y = _build(name, dtype)
        for bad in (np.nan, np.inf, -np.inf):
            point = (x if space == "x" else y).copy()
            last = point.shape[-1] - 1
            point[1, last] = bad
            expected = f"{b.name}.{method}: {argname} must be finite; got {bad} at index (1, {last})"
            with pytest.raises(ValueError, match=re.escape(expected)):
                _call(b, method, point)


@pytest.mark.parametrize("name", NAMES)
def test_every_bijector_refuses_non_finite_upstream_gradients(name):
    b, x, y = _build(name, np.float64)
    ld = b.forward_log_det_jacobian(x)
    for method, point, grad_name, like in (("forward_vjp", x, "grad_y", y), ("inverse_vjp", y, "grad_x", x)):
        grad = np.ones_like(like)
        grad[0, 0] = np.nan
        with pytest.raises(ValueError, match=re.escape(f"{b.name}.{method}: {grad_name} must be finite; got nan")):
            getattr(b, method)(point, grad)
        grad_ld = np.ones_like(ld)
        grad_ld.flat[-1] = np.inf
        with pytest.raises(ValueError, match=re.escape(f"{b.name}.{method}: grad_log_det must be finite; got inf")):
            getattr(b, method)(point, None, grad_ld)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("make", [Exp, Identity, lambda: Scale(2.0), lambda: Invert(Sigmoid())],
                         ids=["Exp", "Identity", "Scale", "Invert(Sigmoid)"])
def test_scalars_and_lists_with_non_finite_values(make, bad):
    b = make()
    with pytest.raises(ValueError, match=re.escape(f"{b.name}.forward: x must be finite; got {bad}")):
        b.forward(bad)
    with pytest.raises(ValueError, match=re.escape(f"{b.name}.inverse: y must be finite; got {bad} at index 2")):
        b.inverse([0.5, 0.25, bad])


def test_distributions_refuse_non_finite_input():
    for dist in (Normal(), MultivariateNormalDiag(np.zeros(2)), Uniform(),
                 TransformedDistribution(Normal(), Exp())):
        point = np.full((3,) + dist.event_shape, 0.5)
        point[(2,) + (0,) * len(dist.event_shape)] = np.nan
        with pytest.raises(ValueError, match=re.escape(f"{dist.name}.log_prob: x must be finite; got nan")):
            dist.log_prob(point)


def test_inline_outputs_that_are_not_finite_are_refused():
    with np.errstate(invalid="ignore", divide="ignore"):
        nan_forward = Inline(lambda x: x * np.nan, lambda y: y, forward_log_det_jacobian_fn=lambda x: 0.0,
                             name="NaNForward")
        with pytest.raises(ValueError, match=r"NaNForward\.forward: the output of forward_fn must be finite"):
            nan_forward.forward(1.0)
        with pytest.raises(ValueError, match=r"NaNForward\.forward: the output of forward_fn must be finite"):
            nan_forward.forward_and_log_det(np.ones(3))
        bad_inverse = Inline(lambda x: x, lambda y: np.sqrt(y - 2.0), forward_log_det_jacobian_fn=lambda x: 0.0,
                             name="SqrtInverse")
        with pytest.raises(ValueError, match=r"SqrtInverse\.inverse: the output of inverse_fn must be finite"):
            bad_inverse.inverse([3.0, 1.0])
        bad_log_det = Inline(lambda x: x, lambda y: y, forward_log_det_jacobian_fn=lambda x: np.log(x - 10.0),
                             name="LogLogDet")
        with pytest.raises(ValueError, match=r"LogLogDet\.forward_log_det_jacobian: the output of "
                                             r"forward_log_det_jacobian_fn must be finite"):
            bad_log_det.forward_log_det_jacobian(1.0)


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("method,argname,space", METHODS, ids=METHOD_IDS)
def test_float32_bijector_refuses_float64_input(method, argname, space):
    b = Shift(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    point = np.full((4, 3), 0.5)
    message = rf"^Shift\.{method}: {argname} has dtype float64 but this object computes in float32; cast the input"
    with pytest.raises(TypeError, match=message):
        _call(b, method, point)


@pytest.mark.parametrize("method,argname,space", METHODS, ids=METHOD_IDS)
def test_float64_bijector_refuses_float32_input(method, argname, space):
    b = Scale(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match=rf"^Scale\.{method}: {argname} has dtype float32 .* float64"):
        _call(b, method, np.full((4, 3), 0.5, dtype=np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_every_float32_bijector_refuses_float64_input(name):
    b, x, y = _build(name, np.float32)
    if b.dtype is None:
        # parameter-free: it computes in the input's dtype, either one
        for dtype in DTYPES:
            assert b.forward(x.astype(dtype)).dtype == dtype
            assert b.inverse(y.astype(dtype)).dtype == dtype
        return
    assert b.dtype == np.float32
    for method, argname, space in METHODS:
        point = (x if space == "x" else y).astype(np.float64)
        with pytest.raises(TypeError, match=re.escape(f"{b.name}.{method}: {argname} has dtype float64 but this "
                                                      f"object computes in float32")):
            _call(b, method, point)


def test_upstream_gradients_must_match_the_input_dtype():
    b = Shift(np.zeros(3, dtype=np.float32))
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match=r"Shift\.forward_vjp: grad_y has dtype float64 .* float32"):
        b.forward_vjp(x, grad_y=np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"Shift\.inverse_vjp: grad_x has dtype float64 .* float32"):
        b.inverse_vjp(x, grad_x=np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"Shift\.forward_vjp: grad_log_det has dtype float64 .* float32"):
        b.forward_vjp(x, grad_log_det=np.ones((2, 3)))
    # a parameter-free bijector computes in its input's dtype, so that dtype rules its upstream gradients too
    with pytest.raises(TypeError, match=r"Exp\.forward_vjp: grad_y has dtype float64 .* float32"):
        Exp().forward_vjp(x, grad_y=np.ones((2, 3)))


@pytest.mark.parametrize("method", ["forward_vjp", "inverse_vjp"])
def test_parameter_free_bijector_refuses_grad_log_det_of_another_dtype(method):
    # a parameter-free bijector computes in its input's dtype: a float64 grad_log_det would promote the gradient
    x = np.full((2, 3), 0.5, dtype=np.float32)
    with pytest.raises(TypeError, match=rf"Exp\.{method}: grad_log_det has dtype float64 .* float32"):
        getattr(Exp(), method)(x, None, np.ones((2, 3)))


@pytest.mark.parametrize("bad,kind", [
    (np.zeros(3, dtype=np.float16), "float16"),
    (np.float16(1.0), "float16"),
    (np.zeros(3, dtype=np.complex128), "complex128"),
    (1 + 2j, "complex128"),
    (np.zeros(3, dtype=np.complex64), "complex64"),
], ids=["float16-array", "float16-scalar", "complex128-array", "complex-number", "complex64-array"])
@pytest.mark.parametrize("make", [Exp, lambda: Shift(1.0), lambda: Shift(np.float32(1.0))],
                         ids=["Exp", "Shift", "Shift(float32)"])
def test_float16_and_complex_input_is_refused(make, bad, kind):
    b = make()
    with pytest.raises(TypeError, match=rf"^{b.name}\.forward: x has dtype {kind}"):
        b.forward(bad)
    with pytest.raises(TypeError, match=rf"^{b.name}\.inverse_log_det_jacobian: y has dtype {kind}"):
        b.inverse_log_det_jacobian(bad)
    with pytest.raises(TypeError, match=rf"^Normal\.log_prob: x has dtype {kind}"):
        Normal().log_prob(bad)


@pytest.mark.parametrize("bad", ["abc", ["1", "2"], [[1.0, 2.0], [3.0]], None, object(), {"a": 1.0}],
                         ids=["string", "string-list", "ragged", "None", "object", "dict"])
def test_non_numeric_input_is_refused(bad):
    for b in (Exp(), Shift(np.zeros(2)), Chain([Tanh(), Scale(2.0)])):
        with pytest.raises(TypeError, match=re.escape(f"{b.name}.forward: x ")):
            b.forward(bad)
        with pytest.raises(TypeError, match=re.escape(f"{b.name}.inverse_vjp: y ")):
            b.inverse_vjp(bad)
    with pytest.raises(TypeError, match=r"^Normal\.log_prob: x "):
        Normal().log_prob(bad)


def test_integer_and_bool_input_is_converted():
    y = Shift(1.0).forward(np.arange(3))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [1.0, 2.0, 3.0])
    y32 = Shift(np.float32(1.0)).forward(np.arange(3, dtype=np.int16))
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(y32, [1.0, 2.0, 3.0])
    assert Exp().forward(2).dtype == np.float64
    np.testing.assert_allclose(Exp().forward(2), np.exp(2.0), rtol=1e-15)
    np.testing.assert_array_equal(Scale(2.0).forward([True, False]), [2.0, 0.0])
    grad_x, grads = Scale(2.0).forward_vjp(np.arange(3), grad_y=np.ones(3, dtype=int), grad_log_det=[1, 1, 1])
    assert grad_x.dtype == np.float64 and grads["scale"].dtype == np.float64
    np.testing.assert_allclose(grad_x, [2.0, 2.0, 2.0])
    # d/dscale of sum(scale * x) + 3 log|scale| at x = 0, 1, 2 and scale 2: 3 + 3/2
    np.testing.assert_allclose(grads["scale"], 4.5)
    assert Normal().log_prob(0).dtype == np.float64


def test_python_numbers_take_the_bijector_dtype():
    b = Shift(np.float32(0.5))
    assert b.forward(1.0).dtype == np.float32
    assert b.forward([1.0, 2.0]).dtype == np.float32
    assert Normal(np.float32(0.0), np.float32(1.0)).log_prob([0.5, 1.5]).dtype == np.float32


def test_mixed_dtypes_are_refused_when_composing():
    with pytest.raises(TypeError, match=r"^Chain: bijectors mix dtypes \(Shift: float32, Scale: float64\)"):
        Chain([Shift(np.float32(1.0)), Scale(2.0)])
    with pytest.raises(TypeError, match=r"TransformedDistribution: the base distribution is float64 but the "
                                        r"bijector is float32"):
        TransformedDistribution(Normal(0.0, 1.0), Shift(np.float32(1.0)))
    with pytest.raises(TypeError, match=r"TransformedDistribution: the base distribution is float32 but the "
                                        r"bijector is float64"):
        TransformedDistribution(Normal(np.float32(0.0), np.float32(1.0)), Scale(2.0))
    with pytest.raises(TypeError, match=r"parameters mix dtypes float32 and float64"):
        Normal(np.float32(0.0), np.float64(1.0))
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64; got int32"):
        Shift(1.0, dtype=np.int32)


# ---------------------------------------------------------------------------- domains
DOMAIN_ERRORS = [
    (lambda: Sigmoid().inverse(1.5), r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 1\.5"),
    (lambda: Sigmoid().inverse(0.0), r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 0\.0"),
    (lambda: Sigmoid(low=-1.0, high=2.0).inverse(2.5), r"^Sigmoid\.inverse: y must lie in \(-1, 2\); got 2\.5"),
    (lambda: NormalCDF().inverse(-0.1), r"^NormalCDF\.inverse: y must lie in \(0, 1\); got -0\.1"),
    (lambda: NormalCDF().inverse(1.0), r"^NormalCDF\.inverse: y must lie in \(0, 1\); got 1\.0"),
    (lambda: Exp().inverse(0.0), r"^Exp\.inverse: y must lie in \(0, inf\); got 0\.0"),
    (lambda: Exp().inverse(-0.0), r"^Exp\.inverse: y must lie in \(0, inf\)"),
    # Invert(Exp()).forward is Exp's inverse: the error names the bijector that has the domain
    (lambda: Invert(Exp()).forward(-1.0), r"Exp\.inverse: y must lie in \(0, inf\); got -1\.0"),
    (lambda: Tanh().inverse(1.0), r"^Tanh\.inverse: y must lie in \(-1, 1\); got 1\.0"),
    (lambda: Softsign().inverse(-1.0), r"^Softsign\.inverse: y must lie in \(-1, 1\); got -1\.0"),
    (lambda: Softplus().inverse(0.0), r"^Softplus\.inverse: y must lie in \(0, inf\); got 0\.0"),
    (lambda: Power(2.0).forward(-1.0), r"^Power\.forward: x must lie in \(0, inf\); got -1\.0"),
    (lambda: Power(2.0).inverse(-1.0), r"^Power\.inverse: y must lie in \(0, inf\); got -1\.0"),
    (lambda: Power(0.5).forward(0.0), r"^Power\.forward: x must lie in \(0, inf\); got 0\.0"),
    # per-element bounds, and the first offending element reported
    (lambda: Sigmoid(low=[0.0, 2.0], high=[1.0, 3.0]).inverse([0.5, 3.5]),
     r"^Sigmoid\.inverse: y must lie in \(low, high\) of its parameters; got 3\.5 at index 1"),
    (lambda: Sigmoid().inverse([[0.5, 0.2], [0.3, 1.5]]),
     r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 1\.5 at index \(1, 1\)"),
    (lambda: Sigmoid().inverse(np.float32(1.0)), r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 1\.0"),
]


@pytest.mark.parametrize("call,message", DOMAIN_ERRORS, ids=_ids(DOMAIN_ERRORS))
def test_out_of_domain_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("method", ["inverse", "inverse_log_det_jacobian", "inverse_and_log_det", "inverse_vjp"])
@pytest.mark.parametrize("make,bad,domain", [
    (Sigmoid, 1.5, r"\(0, 1\)"), (NormalCDF, 0.0, r"\(0, 1\)"), (Exp, -2.0, r"\(0, inf\)"),
    (Tanh, -1.0, r"\(-1, 1\)"), (Softsign, 1.0, r"\(-1, 1\)"), (Softplus, -3.0, r"\(0, inf\)"),
    (lambda: Power(3.0), 0.0, r"\(0, inf\)"),
], ids=["Sigmoid", "NormalCDF", "Exp", "Tanh", "Softsign", "Softplus", "Power"])
def test_every_inverse_entry_point_checks_the_domain(make, bad, domain, method):
    b = make()
    with pytest.raises(ValueError, match=rf"^{b.name}\.\w+: y must lie in {domain}"):
        getattr(b, method)(np.array([0.5, bad, 0.5]))


@pytest.mark.parametrize("method", ["forward", "forward_log_det_jacobian", "forward_and_log_det", "forward_vjp"])
def test_every_forward_entry_point_checks_the_domain(method):
    with pytest.raises(ValueError, match=r"^Power\.\w+: x must lie in \(0, inf\); got -1\.0 at index 1"):
        getattr(Power(2.0), method)(np.array([0.5, -1.0]))
    with pytest.raises(ValueError, match=r"^Exp\.\w+: y must lie in \(0, inf\); got -1\.0 at index 1"):
        getattr(Invert(Exp()), method)(np.array([0.5, -1.0]))


@pytest.mark.parametrize("method", ["inverse", "inverse_log_det_jacobian", "inverse_and_log_det", "inverse_vjp"])
def test_chain_domain_errors_name_the_inner_bijector(method):
    # Chain([f, g]).inverse(y) = g^-1(f^-1(y)): Sigmoid's inverse sees 5 directly
    with pytest.raises(ValueError, match=r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 5\.0"):
        getattr(Chain([Sigmoid(), Exp()]), method)(5.0)
    # ...and here the intermediate log(5) = 1.609 > 1, after Exp's inverse
    with pytest.raises(ValueError, match=r"^Sigmoid\.inverse: y must lie in \(0, 1\); got 1\.609"):
        getattr(Chain([Exp(), Sigmoid()]), method)(5.0)


@pytest.mark.parametrize("method", ["forward", "forward_log_det_jacobian", "forward_and_log_det", "forward_vjp"])
def test_chain_forward_domain_errors_name_the_inner_bijector(method):
    # the Shift first moves 1 to -2, outside Power's domain
    with pytest.raises(ValueError, match=r"^Power\.forward\w*: x must lie in \(0, inf\); got -2\.0"):
        getattr(Chain([Power(2.0), Shift(-3.0)]), method)(1.0)


def test_flow_log_prob_outside_the_support_is_an_error():
    flow = TransformedDistribution(Normal(), Chain([Exp(), Sigmoid()]))
    with pytest.raises(ValueError, match=r"^Sigmoid\.inverse: y must lie in \(0, 1\)"):
        flow.log_prob(5.0)
    with pytest.raises(ValueError, match=r"^Exp\.inverse: y must lie in \(0, inf\)"):
        TransformedDistribution(Normal(), Exp()).log_prob([1.0, -1.0])


# ---------------------------------------------------------------------------- parameters
BAD_PARAMETERS = [
    (lambda: Scale(0.0), r"^Scale: scale must be non-zero"),
    (lambda: Scale([1.0, 0.0]), r"^Scale: scale must be non-zero"),
    (lambda: Scale([1.0, np.inf]), r"^Scale\.__init__: scale must be finite"),
    (lambda: Power(0.0), r"^Power: power must be non-zero"),
    (lambda: Power(np.nan), r"^Power\.__init__: power must be finite"),
    (lambda: LeakyReLU(0.0), r"^LeakyReLU: alpha must be positive"),
    (lambda: LeakyReLU(-1.0), r"^LeakyReLU: alpha must be positive"),
    (lambda: LeakyReLU([0.5, -0.5]), r"^LeakyReLU: alpha must be positive"),
    (lambda: Sigmoid(low=1.0, high=1.0), r"^Sigmoid: high must exceed low"),
    (lambda: Sigmoid(low=[0.0, 2.0], high=[1.0, 1.0]), r"^Sigmoid: high must exceed low"),
    (lambda: Sigmoid(low=0.0), r"^Sigmoid: give both low and high, or neither"),
    (lambda: Sigmoid(high=1.0), r"^Sigmoid: give both low and high, or neither"),
    (lambda: Sigmoid(low=np.nan, high=1.0), r"^Sigmoid\.__init__: low must be finite"),
    (lambda: Shift([np.nan]), r"^Shift\.__init__: shift must be finite; got nan"),
    (lambda: Shift(np.inf), r"^Shift\.__init__: shift must be finite; got inf"),
    (lambda: Normal(0.0, 0.0), r"^Normal: scale must be positive"),
    (lambda: Normal(0.0, -1.0), r"^Normal: scale must be positive"),
    (lambda: Normal(np.inf, 1.0), r"^Normal: loc must be finite"),
    (lambda: Normal(0.0, [1.0, np.nan]), r"^Normal: scale must be finite"),
    (lambda: Uniform(1.0, 0.0), r"^Uniform: high must exceed low"),
    (lambda: Uniform(0.0, 0.0), r"^Uniform: high must exceed low"),
    (lambda: Uniform(0.0, np.nan), r"^Uniform: high must be finite"),
    (lambda: MultivariateNormalDiag(), r"^MultivariateNormalDiag: give loc, scale_diag or both"),
    (lambda: MultivariateNormalDiag(scale_diag=[1.0, 0.0]), r"^MultivariateNormalDiag: scale_diag must be positive"),
    (lambda: MultivariateNormalDiag([0.0, np.nan]), r"^MultivariateNormalDiag: loc must be finite"),
    (lambda: MultivariateNormalDiag(0.0), r"^MultivariateNormalDiag: loc and scale_diag must be vectors"),
    (lambda: Chain([]), r"^Chain needs at least one bijector"),
    (lambda: Inline(np.sinh, np.arcsinh), r"^Inline: give forward_log_det_jacobian_fn or "
                                          r"inverse_log_det_jacobian_fn"),
    (lambda: Inline(np.sinh, np.arcsinh, lambda x: 0.0, event_ndims=-1), r"^Inline: event_ndims must be a "
                                                                        r"non-negative int"),
]


@pytest.mark.parametrize("make,message", BAD_PARAMETERS, ids=_ids(BAD_PARAMETERS))
def test_bad_parameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


BAD_PARAMETER_TYPES = [
    (lambda: Chain([1]), r"^Chain: element 0 is a int, not a Bijector"),
    (lambda: Chain([Exp(), "Sigmoid"]), r"^Chain: element 1 is a str, not a Bijector"),
    (lambda: Invert(1), r"^Invert: expected a Bijector; got int"),
    (lambda: Shift("a"), r"^Shift\.__init__: shift has dtype <U1; expected real numbers"),
    (lambda: Shift(1j), r"^Shift\.__init__: shift has dtype complex128"),
    (lambda: Normal(np.float16(0.0), 1.0), r"float32 or float64; got float16"),
    (lambda: Inline(1, np.arcsinh, lambda x: 0.0), r"^Inline: forward_fn must be callable"),
    (lambda: TransformedDistribution(1, Exp()), r"^TransformedDistribution: distribution must be a Distribution"),
    (lambda: TransformedDistribution(Normal(), 1), r"^TransformedDistribution: bijector must be a Bijector"),
]


@pytest.mark.parametrize("make,message", BAD_PARAMETER_TYPES, ids=_ids(BAD_PARAMETER_TYPES))
def test_parameters_of_the_wrong_type_are_refused(make, message):
    with pytest.raises(TypeError, match=message):
        make()


@pytest.mark.parametrize("make,message", [
    (lambda: Normal(np.float16(0.0), 1.0), r"^Normal\b.*float16"),
    (lambda: Normal(np.float32(0.0), np.float64(1.0)), r"^Normal\b.*mix dtypes float32 and float64"),
    (lambda: Shift(1.0, dtype=np.int32), r"^Shift\b.*int32"),
    (lambda: Uniform(0.0, 1.0, dtype=np.float16), r"^Uniform\b.*float16"),
], ids=["Normal-float16", "Normal-mixed", "Shift-int32", "Uniform-float16"])
def test_dtype_errors_from_constructors_name_the_object(make, message):
    with pytest.raises(TypeError) as info:
        make()
    if not re.search(message, str(info.value)):
        pytest.fail(f"message {str(info.value)!r} does not match {message!r}")


@needs_linear
@pytest.mark.parametrize("make,message", [
    (lambda: nb.ScaleMatvecTriL(np.zeros((2, 2))), r"^ScaleMatvecTriL: the diagonal of scale_tril must be non-zero"),
    (lambda: nb.Affine(scale_diag=[1.0, 0.0]), r"^Affine: .*non-zero diagonal"),
    (lambda: nb.Affine(), r"^Affine: give at least one of"),
    (lambda: nb.Rotation([0.1, 0.2]), r"^Rotation: theta must be a scalar angle"),
    (lambda: nb.Permute([0, 0, 1]), r"^Permute: permutation must hold each of 0\.\.2 exactly once"),
], ids=["ScaleMatvecTriL-zero-diag", "Affine-zero-diag", "Affine-nothing", "Rotation-vector", "Permute-repeat"])
def test_bad_vector_bijector_parameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@needs_linear
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("diagonal", [[1e-300, 1.0], [1.0, 1e-300], [1.0, 1e-17], [5e-324, 5e-324]],
                         ids=["tiny-first", "tiny-last", "below-eps", "subnormal"])
def test_scale_tril_singular_at_working_precision_is_refused(diagonal, dtype):
    """A diagonal entry lost in the rounding of the matrix would make inverse() overflow into inf and NaN."""
    m = np.diag(diagonal) + np.array([[0.0, 0.0], [0.5, 0.0]])
    if np.dtype(dtype) == np.float32 and np.any(np.asarray(diagonal) < np.finfo(np.float64).tiny):
        pytest.skip("already zero in float32")
    with pytest.raises(ValueError, match=r"^ScaleMatvecTriL: the diagonal of scale_tril must be non-zero and not "
                                         r"negligible .* at index \d"):
        nb.ScaleMatvecTriL(m.astype(dtype))
    # and at every call, once an optimizer has driven the diagonal there
    b = nb.ScaleMatvecTriL(np.eye(2, dtype=dtype))
    b.params["scale_tril"][1, 1] = np.asarray(m[1, 1] if m[1, 1] < 1e-10 else 1e-30, dtype=dtype)
    with pytest.raises(ValueError, match=r"^ScaleMatvecTriL\.inverse: the diagonal of scale_tril"):
        b.inverse(np.ones((3, 2), dtype=dtype))


@needs_linear
def test_scale_tril_with_a_small_but_resolved_diagonal_is_accepted():
    # what counts is the size relative to the other entries: a uniformly tiny matrix is fine
    b = nb.ScaleMatvecTriL([[1e-300, 0.0], [2e-300, 3e-300]])
    y = np.array([[1e-300, 2e-300]])
    np.testing.assert_allclose(b.forward(b.inverse(y)), y, rtol=1e-15)
    assert np.all(np.isfinite(b.inverse_log_det_jacobian(y)))


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("method,argname,space", METHODS, ids=METHOD_IDS)
def test_parameters_that_do_not_broadcast_are_refused(method, argname, space):
    with pytest.raises(ValueError, match=r"^Shift\.\w+: \w+ of shape \(5, 3\) does not broadcast against the "
                                         r"parameters \(shift \(2,\)\)"):
        _call(Shift([1.0, 2.0]), method, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"^Sigmoid\.\w+: \w+ of shape \(4,\) does not broadcast"):
        _call(Sigmoid(low=[0.0, 0.0], high=[1.0, 2.0]), method, np.full(4, 0.5))


@pytest.mark.parametrize("method", ["forward_log_det_jacobian", "inverse_log_det_jacobian", "forward_and_log_det",
                                    "inverse_and_log_det", "forward_vjp", "inverse_vjp"])
def test_event_ndims_out_of_range_is_refused(method):
    x = np.full((5, 3), 0.5)
    with pytest.raises(ValueError, match=rf"^Exp\.{method}: event_ndims=3 exceeds the rank of the input "
                                         r"\(shape \(5, 3\)\)"):
        getattr(Exp(), method)(x, event_ndims=3)
    with pytest.raises(ValueError, match=rf"^Exp\.{method}: event_ndims must be at least 0 .*got -1"):
        getattr(Exp(), method)(x, event_ndims=-1)
    vector = _vector_inline()
    with pytest.raises(ValueError, match=rf"^VectorInline\.{method}: event_ndims must be at least 1 .*got 0"):
        getattr(vector, method)(x, event_ndims=0)
    with pytest.raises(TypeError, match=rf"^Exp\.{method}: event_ndims must be an int; got 1\.5"):
        getattr(Exp(), method)(x, event_ndims=1.5)
    with pytest.raises(TypeError, match=rf"^Exp\.{method}: event_ndims must be an int; got True"):
        getattr(Exp(), method)(x, event_ndims=True)


@needs_linear
@pytest.mark.parametrize("method", ["forward_log_det_jacobian", "inverse_vjp"])
def test_event_ndims_below_a_vector_bijectors_rank_is_refused(method):
    with pytest.raises(ValueError, match=rf"^Affine\.{method}: event_ndims must be at least 1 .*got 0"):
        getattr(nb.Affine(shift=np.zeros(3)), method)(np.zeros((5, 3)), event_ndims=0)


@pytest.mark.parametrize("make", _vector_bijectors())
def test_vector_bijectors_refuse_scalars(make):
    b = make()
    with pytest.raises(ValueError, match=rf"^{re.escape(b.name)}\.forward: x must have at least 1 dimension"):
        b.forward(1.0)
    with pytest.raises(ValueError, match=rf"^{re.escape(b.name)}\.inverse_and_log_det: y must have at least 1 "
                                         rf"dimension"):
        b.inverse_and_log_det(1.0)


@needs_linear
def test_vector_bijectors_of_fixed_size_refuse_other_sizes():
    with pytest.raises(ValueError, match=r"^Affine\.forward: x must have shape \(\.\.\., 3\); got \(5, 2\)"):
        nb.Affine(shift=np.zeros(3)).forward(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"^Rotation\.inverse: y must have shape \(\.\.\., 2\); got \(3,\)"):
        nb.Rotation(0.3).inverse(np.zeros(3))
    with pytest.raises(ValueError, match=r"^Permute\.forward_vjp: x must have shape \(\.\.\., 4\)"):
        nb.Permute([1, 0, 3, 2]).forward_vjp(np.zeros((2, 3)))
    # inside a Chain the error names the member that does not fit
    with pytest.raises(ValueError, match=r"^Affine\.forward: x must have shape \(\.\.\., 3\); got \(5, 2\)"):
        Chain([Exp(), nb.Affine(shift=np.zeros(3))]).forward(np.zeros((5, 2)))


def test_upstream_gradients_of_the_wrong_shape_are_refused():
    x = np.full((5, 3), 0.5)
    with pytest.raises(ValueError, match=r"^Exp\.forward_vjp: grad_y must have shape \(5, 3\); got \(5, 2\)"):
        Exp().forward_vjp(x, grad_y=np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"^Exp\.forward_vjp: grad_y must have shape \(5, 3\); got \(3,\)"):
        Exp().forward_vjp(x, grad_y=np.zeros(3))   # no silent broadcasting
    with pytest.raises(ValueError, match=r"^Exp\.inverse_vjp: grad_x must have shape \(5, 3\); got \(5, 3, 1\)"):
        Exp().inverse_vjp(x, grad_x=np.zeros((5, 3, 1)))
    with pytest.raises(ValueError, match=r"^Exp\.forward_vjp: grad_log_det must have the log-det's shape "
                                         r"\(5, 3\); got \(5, 2\)"):
        Exp().forward_vjp(x, grad_log_det=np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"^Exp\.inverse_vjp: grad_log_det must have the log-det's shape "
                                         r"\(5,\); got \(5, 3\)"):
        Exp().inverse_vjp(x, grad_log_det=np.zeros((5, 3)), event_ndims=1)
    with pytest.raises(ValueError, match=r"^VectorInline\.forward_vjp: grad_y must have shape \(5, 3\)"):
        _vector_inline().forward_vjp(x, grad_y=np.zeros((5, 4)))


@pytest.mark.parametrize("make", _vector_bijectors())
def test_flow_with_a_vector_bijector_needs_a_vector_base(make):
    b = make()
    with pytest.raises(ValueError, match=rf"^TransformedDistribution: {re.escape(b.name)} acts on events of rank 1, "
                                         r"but the base distribution draws shape \(\)"):
        TransformedDistribution(Normal(0.0, 1.0), b)
    # a batch of scalars is fine: it becomes one event
    flow = TransformedDistribution(Normal(np.zeros(3), 1.0), make())
    assert flow.event_shape == (3,) and flow.batch_shape == ()


def test_distribution_inputs_of_the_wrong_event_shape_are_refused():
    with pytest.raises(ValueError, match=r"^MultivariateNormalDiag\.log_prob: x must have shape \(\.\.\., 2\) for "
                                         r"event shape \(2,\); got \(4, 3\)"):
        MultivariateNormalDiag(np.zeros(2)).log_prob(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"^MultivariateNormalDiag\.log_prob: x must have shape"):
        MultivariateNormalDiag(np.zeros(2)).log_prob(0.0)
    with pytest.raises(ValueError, match=r"^Normal\.log_prob: x of shape \(4, 3\) does not broadcast against the "
                                         r"batch and event shape \(2,\)"):
        Normal(np.zeros(2), 1.0).log_prob(np.zeros((4, 3)))
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(3)), _vector_inline())
    with pytest.raises(ValueError, match=r"^TransformedDistribution\.log_prob: x must have shape \(\.\.\., 3\)"):
        flow.log_prob(np.zeros((4, 2)))


def test_inline_functions_that_break_the_contract_are_refused():
    shrinking = Inline(lambda x: x[..., :1], lambda y: y, forward_log_det_jacobian_fn=lambda x: 0.0,
                       event_ndims=1, name="Shrinking")
    with pytest.raises(ValueError, match=r"^Shrinking\.forward: forward_fn returned shape \(2, 1\) for input shape "
                                         r"\(2, 3\); a bijector keeps the shape"):
        shrinking.forward(np.ones((2, 3)))
    growing = Inline(lambda x: x, lambda y: np.stack([y, y]), forward_log_det_jacobian_fn=lambda x: 0.0,
                     name="Growing")
    with pytest.raises(ValueError, match=r"^Growing\.inverse: inverse_fn returned shape \(2, 3\)"):
        growing.inverse_and_log_det(np.ones(3))
    wrong_log_det = Inline(lambda x: x, lambda y: y, forward_log_det_jacobian_fn=lambda x: np.zeros(7),
                           event_ndims=1, name="WrongLogDet")
    with pytest.raises(ValueError, match=r"^WrongLogDet\.forward_log_det_jacobian: forward_log_det_jacobian_fn "
                                         r"returned shape \(7,\); expected one value per event, shape \(2,\)"):
        wrong_log_det.forward_log_det_jacobian(np.ones((2, 3)))


# ---------------------------------------------------------------------------- sampling
DISTRIBUTIONS = [
    pytest.param(lambda: Normal(), id="Normal"),
    pytest.param(lambda: Normal(np.zeros(2), np.float64(2.0)), id="Normal(batch)"),
    pytest.param(lambda: MultivariateNormalDiag(np.zeros(2)), id="MultivariateNormalDiag"),
    pytest.param(lambda: Uniform(-1.0, 2.0), id="Uniform"),
    pytest.param(lambda: TransformedDistribution(Normal(), Exp()), id="TransformedDistribution(Exp)"),
    pytest.param(lambda: TransformedDistribution(MultivariateNormalDiag(np.zeros(3)), _vector_inline()),
                 id="TransformedDistribution(vector)"),
]


@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_bad_sample_sizes_are_refused(make):
    dist = make()
    where = re.escape(f"{dist.name}.sample")
    with pytest.raises(ValueError, match=rf"^{where}: the sample size must be non-negative; got -1"):
        dist.sample(-1)
    with pytest.raises(ValueError, match=rf"^{where}: the sample size must be non-negative; got \(2, -1\)"):
        dist.sample((2, -1))
    for bad in ("a", 2.5, True, None, (2, "a"), (2.0,)):
        with pytest.raises(TypeError, match=rf"^{where}: the sample size must be an int or a tuple of ints"):
            dist.sample(bad)
    with pytest.raises(ValueError, match=r"the sample size must be non-negative"):
        dist.sample_and_log_prob(-3)


@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_bad_rngs_are_refused(make):
    dist = make()
    for bad in ("x", 1.5, True, np.random.RandomState(0), [1, 2]):
        with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator, an int seed or None"):
            dist.sample(3, rng=bad)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator, an int seed or None; got str"):
        dist.sample_and_log_prob(3, rng="x")


@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_sampling_with_an_int_seed_is_reproducible(make):
    dist = make()
    a = dist.sample(4, rng=123)
    b = dist.sample(4, rng=123)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dist.sample(4, rng=np.random.default_rng(123)), a)
    assert not np.array_equal(dist.sample(4, rng=124), a)
    assert a.shape == (4,) + dist.batch_shape + dist.event_shape
    x, lp = dist.sample_and_log_prob(4, rng=123)
    np.testing.assert_array_equal(x, a)
    np.testing.assert_allclose(lp, dist.log_prob(a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_sampling_without_rng_leaves_the_global_state_alone(make):
    dist = make()
    np.random.seed(2024)
    before = np.random.get_state()
    first = dist.sample(5)
    second = dist.sample_and_log_prob(5)[0]
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    # and it draws fresh randomness each time rather than a fixed seed
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("make", DISTRIBUTIONS)
def test_numpy_integer_sample_sizes_are_accepted(make):
    dist = make()
    assert dist.sample(np.int64(3), rng=0).shape == (3,) + dist.batch_shape + dist.event_shape
    assert dist.sample_and_log_prob(np.int32(2), rng=0)[0].shape == (2,) + dist.batch_shape + dist.event_shape


# ---------------------------------------------------------------------------- CDFs
@pytest.mark.parametrize("method", ["cdf", "log_cdf", "survival_function"])
def test_cdf_of_a_vector_flow_is_refused(method):
    flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(2)), Exp())
    assert flow.event_shape == (2,)
    with pytest.raises(ValueError, match=r"^TransformedDistribution\.\w+: the CDF is defined for scalar flows only; "
                                         r"this flow has event shape \(2,\)"):
        getattr(flow, method)(np.full(2, 0.5))
    vector = TransformedDistribution(Normal(np.zeros(2), 1.0), _vector_inline())
    with pytest.raises(ValueError, match=r"scalar flows only; this flow has event shape \(2,\)"):
        getattr(vector, method)(np.full(2, 0.5))
    # a batch of scalar flows has a CDF
    batch = TransformedDistribution(Normal(np.zeros(2), 1.0), Exp())
    np.testing.assert_allclose(batch.cdf(np.ones(2)), [0.5, 0.5], rtol=1e-14)


@pytest.mark.parametrize("make", [lambda: Shift([1.0, 2.0]), lambda: Scale(2.0), lambda: LeakyReLU(0.3),
                                  lambda: Sigmoid(low=0.0, high=2.0), lambda: Power(1.5)],
                         ids=["Shift", "Scale", "LeakyReLU", "Sigmoid", "Power"])
def test_a_parameter_made_nan_after_construction_is_refused(make):
    b = make()
    name, array = next(iter(b.parameters()))
    array[...] = np.nan   # what a diverging optimizer would leave behind
    with pytest.raises(ValueError, match=rf"{b.name}\.forward: parameter {name} must be finite"):
        b.forward(np.array([0.5, 1.5]))


# ---------------------------------------------------------------- fit's arguments

def _fit_case():
    from nflow_np import flows
    return flows.RealNVP(2, n_layers=2, hidden=(4,), rng=0), np.random.default_rng(0).normal(size=(40, 2))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fit_refuses_empty_validation_data(backend):
    from nflow_np.train import fit
    flow, data = _fit_case()
    with pytest.raises(ValueError, match="fit: validation_data has no rows"):
        fit(flow, data, epochs=2, validation_data=np.zeros((0, 2)), backend=backend, rng=0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("shape", [(10, 3), (10, 1), (10,), (10, 2, 1), ()])
def test_fit_refuses_validation_data_of_the_wrong_shape_before_training(backend, shape):
    from nflow_np.train import fit
    flow, data = _fit_case()
    before = {k: v.copy() for k, v in flow.parameters()}
    with pytest.raises(ValueError, match=r"fit: validation_data must have shape \(m, 2\)"):
        fit(flow, data, epochs=2, validation_data=np.zeros(shape), backend=backend, rng=0)
    assert all(np.array_equal(v, before[k]) for k, v in flow.parameters())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": 2.5}, TypeError, "fit: epochs must be an int >= 1; got float 2.5"),
    ({"epochs": True}, TypeError, "fit: epochs must be an int >= 1"),
    ({"epochs": -1}, ValueError, "fit: epochs must be an int >= 1; got -1"),
    ({"epochs": 0}, ValueError, "fit: epochs must be an int >= 1; got 0"),
    ({"lr": "a"}, TypeError, "fit: 'lr' must be a real number; got str"),
    ({"lr": -0.1}, ValueError, "fit: 'lr' must be a finite number > 0"),
    ({"lr": np.nan}, ValueError, "fit: 'lr' must be a finite number > 0"),
    ({"callback": 3}, TypeError, "fit: callback must be callable"),
    ({"clip_norm": "a"}, TypeError, "fit: 'clip_norm' must be a real number; got str"),
    ({"clip_norm": -1.0}, ValueError, "fit: 'clip_norm' must be positive or None"),
])
def test_fit_names_a_bad_argument_and_what_it_expects(kwargs, error, message):
    from nflow_np.train import fit
    flow, data = _fit_case()
    with pytest.raises(error, match=re.escape(message)):
        fit(flow, data, **kwargs)
