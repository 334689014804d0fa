"""nflow_np on Dask: lazy scoring and sampling, out-of-core and data-parallel fits, on a two-process LocalCluster."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import nflow_np  # noqa: E402
import nflow_np.dask as nd  # noqa: E402
from nflow_np import flows  # noqa: E402
from nflow_np.estimator import FlowDensity  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def flow():
    return flows.RealNVP(3, n_layers=2, hidden=(8,), rng=0)


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(1).normal(size=(257, 3))


def test_import_nflow_np_does_not_load_dask():
    code = ("import sys, numpy as np, nflow_np; from nflow_np import flows; f = flows.RealNVP(2, rng=0); "
            "f.log_prob(np.zeros((3, 2)), backend='numpy'); f.sample(3, rng=0, backend='numpy'); "
            "print([m for m in ('dask', 'distributed', 'zarr') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_workers_run_this_checkout(client):
    files = client.run(lambda: __import__("nflow_np").__file__)
    assert set(files.values()) == {nflow_np.__file__}


@pytest.mark.parametrize("chunks", [((1, 100, 156),), 7, 256, ((1,) * 5 + (252,),)])
def test_log_prob_equals_in_memory_exactly_on_odd_chunkings(client, flow, points, chunks):
    x = da.from_array(points, chunks=chunks if isinstance(chunks, int) else chunks + ((3,),))
    lazy = flow.log_prob(x)
    assert isinstance(lazy, da.Array) and lazy.shape == (257,) and lazy.dtype == np.float64
    assert lazy.numblocks == (len(x.chunks[0]),)
    out = lazy.compute()
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, flow.log_prob(points))


def test_log_prob_float32_and_numpy_backend(client, points):
    f32 = flows.RealNVP(3, n_layers=2, hidden=(8,), rng=2, dtype="float32")
    pts = points.astype(np.float32)
    x = da.from_array(pts, chunks=(50, 3))
    np.testing.assert_array_equal(f32.log_prob(x).compute(), f32.log_prob(pts))
    np.testing.assert_array_equal(f32.log_prob(x, backend="numpy").compute(), f32.log_prob(pts, backend="numpy"))
    assert f32.log_prob(x).dtype == np.float32


def test_the_model_is_rebuilt_once_per_worker(client, flow, points):
    x = da.from_array(points, chunks=(10, 3))
    flow.log_prob(x).compute()
    digest = nd.Payload(nflow_np.io.to_bytes(flow)).digest
    held = client.run(nd.cache_info)
    assert all(digest in cache for cache in held.values())


def test_estimator_scores_lazily(client, points):
    est = FlowDensity(n_layers=2, hidden=(8,), epochs=2, batch_size=64, random_state=0).fit(points)
    X = da.from_array(points, chunks=(40, 3))
    lazy = est.score_samples(X)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), est.score_samples(points))
    total = est.score(X)
    assert isinstance(total, da.Array) and total.ndim == 0
    assert float(total) == pytest.approx(est.score(points), rel=1e-12)


def test_conditional_flow_scores_with_an_aligned_context(client):
    rng = np.random.default_rng(3)
    cflow = flows.MAF(2, n_layers=2, hidden=(8,), context=3, rng=0)
    x, c = rng.normal(size=(101, 2)), rng.normal(size=(101, 3))
    ref = cflow.log_prob(x, context=c)
    dx = da.from_array(x, chunks=(17, 2))
    dc = da.from_array(c, chunks=(50, 3))     # other row chunks: rechunked to x's
    np.testing.assert_array_equal(cflow.log_prob(dx, context=dc).compute(), ref)
    np.testing.assert_array_equal(cflow.log_prob(dx, context=c).compute(), ref)
    one = cflow.log_prob(dx, context=c[0]).compute()
    np.testing.assert_array_equal(one, cflow.log_prob(x, context=c[0]))
    with pytest.raises(ValueError, match="context has 100 rows but x has 101"):
        cflow.log_prob(dx, context=da.from_array(c[:100], chunks=(50, 3)))
    with pytest.raises(ValueError, match="conditional on a context of size 3"):
        cflow.log_prob(dx)


def test_chunks_along_the_event_axis_are_refused(flow, points):
    x = da.from_array(points, chunks=(50, 2))
    with pytest.raises(ValueError, match=r"chunked along the event axis 1 .*rechunk\(\{1: -1\}\)"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        flow.log_prob(da.from_array(points[:, :2], chunks=(50, 2)))


def _kill_once(block, marker):
    """Kill this worker process the first time any block runs (the marker file says it has)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return block
    os.close(fd)
    os._exit(1)


def test_a_killed_worker_is_retried_without_a_wrong_result(client, flow, points, tmp_path):
    marker = str(tmp_path / "killed")
    x = da.from_array(points, chunks=(64, 3)).map_blocks(_kill_once, marker, dtype=points.dtype,
                                                          meta=np.empty((0, 3)))
    out = flow.log_prob(x).compute()
    assert os.path.exists(marker)        # a worker did die mid-computation
    np.testing.assert_array_equal(out, flow.log_prob(points))
    client.wait_for_workers(2, timeout=60)


def _corrupt_a_weight(path):
    """Overwrite the first value of a stored parameter (its CRC then fails), leaving the zip directory and spec readable."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("bijector."))
        with zf.open(info) as fp:
            np.lib.format.read_magic(fp)
            np.lib.format.read_array_header_1_0(fp)
            header = fp.tell()
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + header)
        fh.write(np.array([np.nan]).tobytes())


def test_a_corrupt_model_file_fails_on_a_worker_as_locally(client, flow, points, tmp_path):
    path = str(tmp_path / "model.npz")
    nflow_np.save(flow, path)
    _corrupt_a_weight(path)
    with pytest.raises(ValueError) as local:
        nflow_np.load(path)
    assert "damaged" in str(local.value)
    lazy = nd.log_prob(path, da.from_array(points, chunks=(100, 3)))
    with pytest.raises(ValueError) as remote:
        lazy.compute()
    assert str(remote.value) == str(local.value)


def test_a_model_file_path_scores_like_the_flow(client, flow, points, tmp_path):
    path = str(tmp_path / "model.npz")
    nflow_np.save(flow, path)
    out = nd.log_prob(path, da.from_array(points, chunks=(100, 3))).compute()
    np.testing.assert_array_equal(out, flow.log_prob(points))


# ---------------------------------------------------------------------------- sampling

def test_sampling_is_reproducible_across_chunkings_and_worker_counts(client, flow):
    n, unit = 1000, 64
    on_two = nd.sample(flow, n, 7, chunks=37, unit=unit).compute()
    on_one = nd.sample(flow, n, 7, chunks=((1,) + (333,) * 3,), unit=unit).compute(scheduler="synchronous")
    threads = nd.sample(flow, n, 7, chunks=n, unit=unit).compute(scheduler="threads")
    np.testing.assert_array_equal(on_two, on_one)
    np.testing.assert_array_equal(on_two, threads)
    assert on_two.shape == (n, 3) and np.isfinite(on_two).all()
    # unit i draws from SeedSequence(seed).spawn(...)[i]
    child = np.random.SeedSequence(7).spawn(3)[2]
    np.testing.assert_array_equal(on_two[2 * unit:3 * unit], flow.sample(unit, rng=np.random.default_rng(child)))
    other = nd.sample(flow, n, 8, chunks=37, unit=unit).compute()
    assert not np.array_equal(on_two, other)


def test_graphs_of_different_models_seeds_and_chunks_never_share_keys(client, flow, points, tmp_path):
    other = flows.RealNVP(3, n_layers=2, hidden=(8,), rng=9)
    x = da.from_array(points, chunks=(100, 3))
    a, b = dask.compute(flow.log_prob(x), other.log_prob(x))
    np.testing.assert_array_equal(a, flow.log_prob(points))
    np.testing.assert_array_equal(b, other.log_prob(points))
    s1, s2 = dask.compute(flow.sample(100, rng=1, chunks=50), flow.sample(100, rng=2, chunks=50))
    assert not np.array_equal(s1, s2)
    path = str(tmp_path / "x.npy")
    np.save(path, points)
    assert nd.from_npy(path, chunks=60).name != nd.from_npy(path, chunks=100).name


def test_flow_sample_with_chunks_is_lazy(client, flow):
    lazy = flow.sample(500, rng=3, chunks=128)
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == (128, 128, 128, 116)
    np.testing.assert_array_equal(lazy.compute(), nd.sample(flow, 500, 3, chunks=500).compute())
    with pytest.raises(TypeError, match="Generator"):
        flow.sample(10, rng=np.random.default_rng(0), chunks=5)


def test_conditional_sampling_with_aligned_context(client):
    cflow = flows.MAF(2, n_layers=2, hidden=(8,), context=3, rng=0)
    c = np.random.default_rng(4).normal(size=(90, 3))
    a = cflow.sample(90, rng=1, chunks=13, context=da.from_array(c, chunks=(45, 3))).compute()
    b = nd.sample(cflow, 90, 1, chunks=90, context=c).compute(scheduler="synchronous")
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(cflow.log_prob(a, context=c)).all()


def test_sample_to_npy_and_zarr(client, flow, tmp_path):
    expected = nd.sample(flow, 300, 5, chunks=300, unit=64).compute()
    npy = nd.sample_to(str(tmp_path / "s.npy"), flow, 300, 5, chunks=70, unit=64)
    np.testing.assert_array_equal(np.load(npy), expected)
    zarr = pytest.importorskip("zarr")
    store = nd.sample_to(str(tmp_path / "s.zarr"), flow, 300, 5, chunks=70, unit=64)
    np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], expected)
    with pytest.raises(ValueError, match=r"\.npy or \.zarr"):
        nd.sample_to(str(tmp_path / "s.csv"), flow, 10, 0)


def test_from_npy_reads_rows_on_the_workers(client, flow, points, tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, points)
    x = nd.from_npy(path, chunks=60)
    assert x.chunks[0] == (60, 60, 60, 60, 17)
    np.testing.assert_array_equal(flow.log_prob(x).compute(), flow.log_prob(points))


# ---------------------------------------------------------------------------- out-of-core fit

def test_fit_streams_a_dask_array_block_by_block(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 2)) @ np.array([[1.0, 0.8], [0.0, 0.5]])
    test = rng.normal(size=(500, 2)) @ np.array([[1.0, 0.8], [0.0, 0.5]])
    in_memory = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    nflow_np.train.fit(in_memory, x, epochs=5, batch_size=100, lr=5e-3, rng=0)
    streamed = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = nflow_np.train.fit(streamed, da.from_array(x, chunks=(700, 2)), epochs=5, batch_size=100, lr=5e-3,
                                 rng=0, validation_data=da.from_array(test, chunks=(250, 2)))
    assert history.epochs == 5 and len(history.val_loss) == 5
    assert abs(-streamed.log_prob(test).mean() + in_memory.log_prob(test).mean()) < 0.05


# ---------------------------------------------------------------------------- data-parallel gradients

def test_shard_gradients_weighted_by_rows_are_the_batch_gradient(flow, points):
    from nflow_np.dask._parallel import _names, _shard_step, flatten
    from nflow_np.train import nll_and_grad
    payload = nd.Payload(nflow_np.io.to_bytes(flow))
    a, b = points[:100], points[100:]
    # every row of a shard drawn once (a permutation): each shard's gradient is that of its mean NLL
    theta = flatten(dict(flow.parameters()), _names(flow))
    parts = [_shard_step(payload, "test-session", theta, shard, 0, rows, "numba")
             for shard, rows in ((a, len(a)), ((b, None), len(b)))]
    rows = np.array([p[0] for p in parts], dtype=float)
    combined = sum(r * p[2] for r, p in zip(rows, parts)) / rows.sum()
    loss, grads = nll_and_grad(flow, points)
    np.testing.assert_allclose(combined, flatten(grads, _names(flow)), rtol=1e-10, atol=1e-12)
    assert np.dot(rows, [p[1] for p in parts]) / rows.sum() == pytest.approx(loss, rel=1e-12)


def test_fit_distributed_learns_like_a_local_fit(client):
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.8], [0.0, 0.5]])
    x, test = rng.normal(size=(4000, 2)) @ mix, rng.normal(size=(1000, 2)) @ mix
    f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    before = -f.log_prob(test).mean()
    timings = {}
    history = nd.fit_distributed(f, x, client=client, steps=120, batch_size=256, lr=5e-3, rng=0, log_every=40,
                                 timings=timings)
    assert history.steps == 120 and len(history.train_loss) == 3
    assert len(timings["step"]) == 120 and all(c <= s for c, s in zip(timings["compute"], timings["step"]))
    local = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    nflow_np.train.fit(local, x, epochs=8, batch_size=256, lr=5e-3, rng=0)      # 120 steps too
    after = -f.log_prob(test).mean()
    assert after < before - 0.5
    assert abs(after + local.log_prob(test).mean()) < 0.1
    # its sessions are dropped from the workers afterwards, and the scoring cache is untouched
    assert client.run(lambda: len(__import__("nflow_np.dask._parallel", fromlist=["x"])._SESSIONS)) == \
        {w: 0 for w in client.scheduler_info()["workers"]}


def test_fit_distributed_takes_a_dask_array_and_refuses_batch_norm(client):
    rng = np.random.default_rng(1)
    x = da.from_array(rng.normal(size=(1200, 2)), chunks=(400, 2))
    f = flows.RealNVP(2, n_layers=2, hidden=(8,), rng=0)
    history = nd.fit_distributed(f, x, client=client, steps=20, batch_size=120, lr=5e-3, rng=0)
    assert history.steps == 20 and np.isfinite(history.train_loss).all()
    with pytest.raises(ValueError, match="BatchNorm"):
        nd.fit_distributed(flows.RealNVP(2, n_layers=2, batch_norm=True, rng=0), x, client=client, steps=1)


# ---------------------------------------------------------------------------- command line on a cluster

def test_cli_scores_and_samples_on_a_scheduler(client, tmp_path, monkeypatch):
    from nflow_np import _cli_stream, cli
    est = FlowDensity(n_layers=2, hidden=(8,), epochs=2, batch_size=64, random_state=0)
    X = np.random.default_rng(5).normal(size=(300, 2))
    est.fit(X)
    model = str(tmp_path / "m.npz")
    nflow_np.save(est, model)
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setattr(_cli_stream, "CHUNK_ROWS", 64)
    address = client.scheduler.address
    assert cli.main(["logprob", model, str(tmp_path / "x.npy"), "--out", str(tmp_path / "lp.npy"),
                     "--scheduler", address]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "lp.npy"), est.score_samples(X))
    monkeypatch.setattr(cli, "_SAMPLE_CHUNK", 70)
    assert cli.main(["sample", model, "-n", "200", "--seed", "4", "--out", str(tmp_path / "s.npy"),
                     "--scheduler", address]) == 0
    expected = nd.sample(model, 200, 4, chunks=33).compute()
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected)
