"""Context embeddings: a network on the raw context, shared by every layer of a conditional flow, trained jointly."""

import numpy as np
import pytest

from nflow_np import flows, io
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
from nflow_np.bijectors import AffineCoupling, Chain
from nflow_np.nn import MLP, ResidualMLP
from nflow_np.testing import check_gradients
from nflow_np.train import fit, value_and_grad

RAW = 3     # raw context width in these tests


class Projection:
    """A hand-written embedding: ``h = tanh(c A) * s`` (the protocol of :mod:`nflow_np.nn.embedding`)."""

    def __init__(self, in_features, out_features, rng):
        self.in_features, self.out_features, self.dtype = in_features, out_features, np.dtype(np.float64)
        self.params = {"A": rng.normal(size=(in_features, out_features)), "s": rng.uniform(0.5, 1.5, out_features)}

    def parameters(self):
        yield from self.params.items()

    def forward_with_cache(self, c):
        t = np.tanh(c @ self.params["A"])
        return t * self.params["s"], (c, t)

    def backward(self, cache, grad):
        c, t = cache
        gpre = grad * self.params["s"] * (1.0 - t * t)
        g2, c2 = gpre.reshape(-1, self.out_features), c.reshape(-1, self.in_features)
        grads = {"A": c2.T @ g2, "s": (grad * t).reshape(-1, self.out_features).sum(axis=0)}
        return gpre @ self.params["A"].T, grads


def _perturbed(flow, rng, scale=0.2):
    for _, p in flow.parameters():
        p += (scale * rng.normal(size=p.shape)).astype(p.dtype)
    return flow


FLOWS = {
    "RealNVP+MLP": lambda: flows.RealNVP(3, 2, (6,), "tanh", embedding=MLP(RAW, 4, (5,), "tanh", rng=1), rng=0),
    "MAF(resnet)+ResidualMLP": lambda: flows.MAF(3, 2, (5,), "tanh", conditioner="resnet",
                                                 embedding=ResidualMLP(RAW, 2, 4, 1, "tanh", rng=1), rng=0),
    "NSF+Projection": lambda: flows.NSF(3, 2, bins=4, bound=3.0, hidden=(5,), activation="tanh",
                                        embedding=Projection(RAW, 2, np.random.default_rng(1)), rng=0),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_gradients_match_finite_differences(name, backend):
    rng = np.random.default_rng(2)
    flow = _perturbed(FLOWS[name](), rng)
    x = rng.normal(size=(6, 3))
    c = rng.normal(size=(6, RAW))
    report = check_gradients(flow, x, context=c, backend=backend, max_entries=6)
    assert report["nll"] < 1e-5
    _, grads = value_and_grad(flow, x, context=c, backend=backend)
    embedded = [k for k in grads if k.startswith("embedding.")]
    assert embedded and all(np.abs(grads[k]).max() > 0 for k in embedded)
    # one context row for all points: the same as that row repeated
    one = value_and_grad(flow, x, context=c[0], backend="numpy")
    tiled = value_and_grad(flow, x, context=np.tile(c[0], (6, 1)), backend="numpy")
    assert one[0] == pytest.approx(tiled[0], rel=1e-12)
    for k in one[1]:
        np.testing.assert_allclose(one[1][k], tiled[1][k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_numba_and_numpy_backends_agree(name):
    rng = np.random.default_rng(3)
    flow = _perturbed(FLOWS[name](), rng)
    x = rng.normal(size=(9, 3))
    c = rng.normal(size=(9, RAW))
    np.testing.assert_allclose(flow.log_prob(x, context=c, backend="numba"),
                               flow.log_prob(x, context=c, backend="numpy"), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(flow.sample(context=c, rng=4, backend="numba"),
                               flow.sample(context=c, rng=4, backend="numpy"), rtol=1e-10, atol=1e-10)
    l1, g1 = value_and_grad(flow, x, context=c, backend="numba")
    l2, g2 = value_and_grad(flow, x, context=c, backend="numpy")
    assert l1 == pytest.approx(l2, rel=1e-12) and set(g1) == set(g2) == {n for n, _ in flow.parameters()}
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12)


def test_fit_trains_the_embedding_on_every_backend_alike():
    rng = np.random.default_rng(4)
    c = rng.normal(size=(256, RAW))
    x = np.stack([c[:, 0] * c[:, 1], np.sin(c[:, 2])], axis=1) + 0.1 * rng.normal(size=(256, 2))
    trained = {}
    for backend in ("numpy", "numba"):
        flow = flows.RealNVP(2, 2, (8,), "tanh", embedding=MLP(RAW, 4, (8,), "tanh", rng=1), rng=0)
        before = {k: v.copy() for k, v in flow.parameters() if k.startswith("embedding.")}
        fit(flow, x, context=c, epochs=2, batch_size=64, rng=0, backend=backend)
        after = dict(flow.parameters())
        assert all(not np.array_equal(before[k], after[k]) for k in before), "fit must update the embedding"
        trained[backend] = after
    # with an embedding the compiled trainer steps aside: both backends take the same NumPy steps
    for k in trained["numpy"]:
        np.testing.assert_allclose(trained["numba"][k], trained["numpy"][k], rtol=1e-9, atol=1e-12)


def _conditional_problem(rng, n):
    """x | c: a 2-D normal centred at a nonlinear function of the raw context, of small spread."""
    c = rng.uniform(-1.0, 1.0, size=(n, RAW))
    centre = np.stack([2.0 * c[:, 0] * c[:, 1], 1.5 * np.cos(2.0 * c[:, 2])], axis=1)
    return centre + 0.15 * rng.normal(size=(n, 2)), c


def test_fit_with_an_embedding_beats_no_context():
    rng = np.random.default_rng(5)
    x, c = _conditional_problem(rng, 1024)
    xv, cv = _conditional_problem(rng, 512)
    common = dict(epochs=25, batch_size=128, lr=3e-3, rng=0)
    plain = flows.RealNVP(2, 4, (16,), rng=0)
    fit(plain, x, **common)
    embedded = flows.RealNVP(2, 4, (16,), embedding=MLP(RAW, 4, (16,), rng=1), rng=0)
    fit(embedded, x, context=c, **common)
    nll_plain = -plain.log_prob(xv).mean()
    nll_embedded = -embedded.log_prob(xv, context=cv).mean()
    assert nll_embedded < nll_plain - 0.5, (nll_embedded, nll_plain)


@pytest.mark.parametrize("embedding", [lambda: MLP(RAW, 4, (5,), "elu", rng=1),
                                       lambda: ResidualMLP(RAW, 4, 5, 2, "silu", rng=1)], ids=["MLP", "ResidualMLP"])
def test_model_file_round_trip(embedding, tmp_path):
    rng = np.random.default_rng(6)
    flow = _perturbed(flows.NSF(2, 2, bins=4, hidden=(6,), embedding=embedding(), rng=0), rng)
    path = tmp_path / "flow.npz"
    io.save(flow, path)
    back = io.load(path)
    assert type(back.embedding) is type(flow.embedding)
    assert [n for n, _ in back.parameters()] == [n for n, _ in flow.parameters()]
    x, c = rng.normal(size=(5, 2)), rng.normal(size=(5, RAW))
    np.testing.assert_array_equal(back.log_prob(x, context=c), flow.log_prob(x, context=c))
    with pytest.raises(ValueError, match="cannot store a Projection"):
        io.to_bytes(flows.NSF(2, 1, hidden=(4,), embedding=Projection(RAW, 2, rng), rng=0))


def test_bad_embeddings_and_contexts_are_refused():
    layers = Chain([AffineCoupling([True, False], (4,), context=2, rng=0)])
    base = MultivariateNormalDiag(np.zeros(2))
    with pytest.raises(TypeError, match="lacks forward_with_cache, backward"):
        TransformedDistribution(base, layers, embedding=object.__new__(type("Half", (), {
            "in_features": 3, "out_features": 2, "dtype": np.float64, "params": {}, "parameters": lambda s: iter(())})))
    with pytest.raises(ValueError, match="out_features must equal the layers' context width 2"):
        TransformedDistribution(base, layers, embedding=MLP(3, 5, (4,)))
    with pytest.raises(TypeError, match="float32 but the flow is float64"):
        TransformedDistribution(base, layers, embedding=MLP(3, 2, (4,), dtype=np.float32))
    with pytest.raises(ValueError, match="without context_features"):
        TransformedDistribution(base, layers, embedding=MLP(3, 2, (4,), context_features=1))
    with pytest.raises(ValueError, match="needs conditional layers"):
        TransformedDistribution(base, Chain([AffineCoupling([True, False], (4,), rng=0)]), embedding=MLP(3, 2))
    with pytest.raises(ValueError, match="context must be a non-negative int"):
        flows.MAF(2, 1, embedding=MLP(3, 2), context=-1)
    with pytest.raises(ValueError, match="out_features must equal"):
        flows.MAF(2, 1, embedding=MLP(3, 2), context=4)
    flow = TransformedDistribution(base, layers, embedding=MLP(3, 2, (4,)))
    assert flow.context_size == 3
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 3\)"):
        flow.log_prob(x, context=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="conditional on a context of size 3"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="does not broadcast"):
        flow.log_prob(x, context=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not broadcast"):
        fit(flow, x, context=np.zeros((3, 3)), epochs=1)


def _cuda_ready():
    import os
    from nflow_np.kernels.backend import cuda_available
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ready(), reason="needs a GPU or NUMBA_ENABLE_CUDASIM=1")
def test_cuda_backend_matches_numpy_with_embeddings_and_residual_conditioners():
    rng = np.random.default_rng(7)
    x, c = rng.normal(size=(6, 3)), rng.normal(size=(6, RAW))
    for flow, context in ((_perturbed(FLOWS["RealNVP+MLP"](), rng), c),
                          (flows.NSF(3, 2, hidden=(5,), conditioner="resnet", rng=0), None),
                          (flows.MAF(3, 2, (5, 5), conditioner="resnet", rng=0), None)):
        np.testing.assert_allclose(flow.log_prob(x, context=context, backend="cuda"),
                                   flow.log_prob(x, context=context, backend="numpy"), rtol=1e-12, atol=1e-12)
        trained = []
        for backend in ("cuda", "numpy"):
            copy = io.from_bytes(io.to_bytes(flow))
            fit(copy, x, context=context, epochs=2, batch_size=3, rng=0, backend=backend)
            trained.append(dict(copy.parameters()))
        for k in trained[0]:
            np.testing.assert_allclose(trained[0][k], trained[1][k], rtol=1e-10, atol=1e-12)
