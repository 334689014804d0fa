"""fit on streamed data: memory maps, zarr arrays and Stream, block by block through a shuffle buffer."""

import numpy as np
import pytest

from nflow_np import flows
from nflow_np.train import Stream, fit
from nflow_np.train._stream import _buffers, _Source, streams


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2)) @ np.array([[1.0, 0.8], [0.0, 0.5]])
    path = str(tmp_path_factory.mktemp("stream") / "x.npy")
    np.save(path, x[1000:])
    return x[1000:], x[:1000], np.load(path, mmap_mode="r")


def _nll(flow, x):
    return -float(flow.log_prob(x).mean())


def test_only_out_of_core_arrays_stream(gaussian):
    x, _, mm = gaussian
    assert isinstance(mm, np.memmap) and streams(mm) and streams(Stream(x))
    assert not streams(x) and not streams(x.tolist())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_memmap_fit_reaches_the_in_memory_nll(gaussian, backend):
    x, test, mm = gaussian
    in_memory = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    fit(in_memory, x, epochs=6, batch_size=100, lr=5e-3, rng=0, backend=backend)
    streamed = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit(streamed, Stream(mm, block_rows=300, buffer_rows=700), epochs=6, batch_size=100, lr=5e-3, rng=0,
                  backend=backend)
    assert history.steps == 6 * 40 and history.epochs == 6
    before = _nll(flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0), test)
    assert _nll(streamed, test) < before - 0.5
    assert abs(_nll(streamed, test) - _nll(in_memory, test)) < 0.05


def test_the_two_backends_stream_the_same_batches(gaussian):
    _, test, mm = gaussian
    results = []
    for backend in ("numba", "numpy"):
        f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=1)
        fit(f, mm, epochs=2, batch_size=64, rng=3, backend=backend)
        results.append(f.log_prob(test))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-9, atol=1e-9)


def test_a_streamed_validation_split_is_held_out_and_scored(gaussian):
    _, _, mm = gaussian
    f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = fit(f, Stream(mm, block_rows=500), epochs=3, batch_size=100, validation_split=0.2, rng=0)
    assert len(history.val_loss) == 3 and np.isfinite(history.val_loss).all()
    # about a fifth of the rows held out: fewer steps than on all of them
    assert 3 * 28 <= history.steps <= 3 * 36


def test_buffers_hold_whole_batches_and_every_row_once():
    data = np.arange(1000, dtype=np.float64)[:, None] * np.ones((1, 2))
    source = _Source(Stream(data, block_rows=70), None, np.dtype(np.float64))
    rows = []
    sizes = []
    for x, _ in _buffers(source, np.random.default_rng(0), buffer_rows=200, batch_size=32):
        sizes.append(len(x))
        rows.append(x[:, 0])
    assert all(s % 32 == 0 for s in sizes[:-1]) and max(sizes) <= 200 + 70
    assert sorted(np.concatenate(rows).astype(int).tolist()) == list(range(1000))
    assert not np.array_equal(np.concatenate(rows), np.arange(1000))    # shuffled


def test_streamed_errors_name_the_rows(tmp_path):
    data = np.random.default_rng(0).normal(size=(300, 2))
    data[250, 1] = np.nan
    path = str(tmp_path / "bad.npy")
    np.save(path, data)
    f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    with pytest.raises(ValueError, match=r"in rows 200\.\.300 of the streamed data"):
        fit(f, Stream(np.load(path, mmap_mode="r"), block_rows=100), epochs=1, rng=0)
    with pytest.raises(TypeError, match="float32 but the flow is float64"):
        fit(f, Stream(data.astype(np.float32)), epochs=1)
    with pytest.raises(ValueError, match="buffer_rows must be a positive int"):
        Stream(data, buffer_rows=0)


def test_a_conditional_flow_streams_its_context(tmp_path):
    rng = np.random.default_rng(2)
    c = rng.normal(size=(2000, 1))
    x = np.hstack([c + 0.1 * rng.normal(size=(2000, 1)), rng.normal(size=(2000, 1))])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "c.npy", c)
    mx, mc = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "c.npy", mmap_mode="r")
    f = flows.MAF(2, n_layers=2, hidden=(16,), context=1, rng=0)
    before = -f.log_prob(x, context=c).mean()
    fit(f, Stream(mx, block_rows=250), context=mc, epochs=5, batch_size=100, lr=5e-3, rng=0)
    assert -f.log_prob(x, context=c).mean() < before - 0.5
    with pytest.raises(ValueError, match="context must have one row per data row"):
        fit(f, mx, context=mc[:10], epochs=1)


def test_a_zarr_array_streams(gaussian, tmp_path):
    zarr = pytest.importorskip("zarr")
    x, test, _ = gaussian
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=x.shape, chunks=(512, 2), dtype="f8")
    z[:] = x
    assert streams(z) and Stream(z).bounds[1] == 512
    f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    fit(f, z, epochs=3, batch_size=100, lr=5e-3, rng=0)
    assert _nll(f, test) < 2.4
