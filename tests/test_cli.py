"""The ``nflow-np`` command line, called in-process through ``main`` (plus one real subprocess)."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import nflow_np
from nflow_np import cli, datasets, io
from nflow_np.estimator import FlowDensity


@pytest.fixture(autouse=True)
def numpy_backend():
    # The compiled backend spends seconds in Numba's JIT on its first call per flow and dtype; these tests are
    # about the command line, not kernels (test_kernels holds the compiled twins to the NumPy reference).
    with nflow_np.backend("numpy"):
        yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs", "2", "--layers", "2", "--hidden", "8", "--batch-size", "64", "--seed", "0"]


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_clean_error(status, err, *fragments):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nflow-np: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "data.csv"
    np.savetxt(path, datasets.load("two-moons", 300, rng=0), delimiter=",", header="x,y", comments="")
    return path


@pytest.fixture
def model(tmp_path, data_csv, capsys):
    path = tmp_path / "model.npz"
    status, _, _ = run(capsys, "fit", data_csv, *TINY, "--out", path)
    assert status == 0
    return path


def test_fit_writes_a_model_and_reports_each_epoch(tmp_path, data_csv, capsys):
    out_path = tmp_path / "m.npz"
    status, out, err = run(capsys, "fit", data_csv, *TINY, "--out", out_path)
    assert status == 0 and out_path.exists()
    lines = [line for line in err.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "epoch 2/2" in lines[1]
    assert all("train NLL" in line and "val NLL" in line and "steps/s" in line for line in lines)
    assert f"saved {out_path}" in out and "best epoch" in out
    est = io.load(out_path)
    assert isinstance(est, FlowDensity) and est.n_layers == 2 and est.hidden == (8,)


def test_fit_reads_npy_and_resumes(tmp_path, capsys):
    data = tmp_path / "data.npy"
    np.save(data, datasets.load("8gaussians", 200, rng=1))
    out_path = tmp_path / "m.npz"
    assert run(capsys, "fit", data, *TINY, "--flow", "maf", "--out", out_path)[0] == 0
    status, out, _ = run(capsys, "fit", data, "--epochs", "3", "--out", out_path, "--resume", "--quiet")
    assert status == 0
    est = io.load(out_path)
    assert est.flow == "maf" and est.history_.epochs == 5 and "of 5" in out
    assert est.optimizer_state_["steps"] == est.history_.steps   # one Adam across both runs


def _flow_params(path):
    return {name: array for name, array in io.load(path).flow_.parameters()}


def test_resume_continues_adam_as_one_uninterrupted_fit(tmp_path, data_csv, capsys):
    # 2 epochs, then 2 more with --resume == 4 epochs at once: same seed, same data, Adam's state carried over
    settings = ["--layers", "2", "--hidden", "8", "--batch-size", "64", "--seed", "7", "--quiet"]
    resumed, whole = tmp_path / "resumed.npz", tmp_path / "whole.npz"
    assert run(capsys, "fit", data_csv, *settings, "--epochs", "2", "--out", resumed)[0] == 0
    assert run(capsys, "fit", data_csv, *settings, "--epochs", "2", "--resume", "--out", resumed)[0] == 0
    assert run(capsys, "fit", data_csv, *settings, "--epochs", "4", "--out", whole)[0] == 0
    a, b = io.load(resumed), io.load(whole)
    assert a.history_.best_epoch == b.history_.best_epoch == 3   # both keep their last epoch
    assert a.history_.val_loss == b.history_.val_loss
    pa, pb = _flow_params(resumed), _flow_params(whole)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert a.optimizer_state_["steps"] == b.optimizer_state_["steps"] == b.history_.steps
    status, out, _ = run(capsys, "info", resumed)
    assert status == 0 and f"optimizer: Adam, {b.history_.steps} steps, lr 0.001" in out


def test_resume_keeps_the_saved_learning_rate_unless_lr_is_given(tmp_path, data_csv, capsys):
    path = tmp_path / "m.npz"
    assert run(capsys, "fit", data_csv, *TINY, "--lr", "0.004", "--out", path)[0] == 0
    assert run(capsys, "fit", data_csv, *TINY, "--resume", "--quiet", "--out", path)[0] == 0
    est = io.load(path)
    assert est.lr == 0.004 and est.optimizer_state_["lr"] == 0.004 and est.history_.lr == [0.004] * 4
    assert run(capsys, "fit", data_csv, *TINY, "--resume", "--quiet", "--lr", "0.002", "--out", path)[0] == 0
    est = io.load(path)
    assert est.lr == 0.002 and est.optimizer_state_["lr"] == 0.002 and est.history_.lr[-2:] == [0.002] * 2


def test_info_on_a_file_without_optimizer_state(tmp_path, model, data_csv, capsys):
    est = io.load(model)
    est.optimizer_state_ = None   # as loaded from a file written before optimizer state was saved
    io.save(est, model)
    status, out, _ = run(capsys, "info", model)
    assert status == 0 and "model format 1" in out and "optimizer: not stored" in out
    assert run(capsys, "fit", data_csv, *TINY, "--resume", "--quiet", "--out", model)[0] == 0
    assert io.load(model).optimizer_state_["steps"] > 0


def test_ctrl_c_keeps_the_best_model(tmp_path, data_csv, capsys, monkeypatch):
    calls = []

    def interrupt_at_third(stream, line):
        calls.append(line)
        if len(calls) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(cli, "report_epoch", interrupt_at_third)
    out_path = tmp_path / "m.npz"
    status, out, err = run(capsys, "fit", data_csv, "--epochs", "50", "--layers", "2", "--hidden", "8",
                           "--seed", "0", "--out", out_path)
    assert status == 130 and "interrupted: keeping the best model so far" in err
    est = io.load(out_path)
    assert est.history_.epochs == 3 and est.history_.stopped_early
    assert 0 <= est.history_.best_epoch < 3 and "saved" in out
    assert np.all(np.isfinite(est.score_samples(datasets.load("two-moons", 10, rng=3))))


def test_sample_logprob_and_info(tmp_path, model, data_csv, capsys):
    samples = tmp_path / "s.csv"
    assert run(capsys, "sample", model, "-n", "50", "--out", samples, "--seed", "3")[0] == 0
    drawn = np.loadtxt(samples, delimiter=",")
    est = io.load(model)
    assert drawn.shape == (50, 2) and np.array_equal(drawn, est.sample(50, random_state=3))

    status, out, _ = run(capsys, "sample", model, "-n", "5", "--seed", "3")
    assert status == 0 and np.array_equal(np.loadtxt(out.splitlines(), delimiter=","), drawn[:5])

    scores = tmp_path / "scores.csv"
    assert run(capsys, "logprob", model, data_csv, "--out", scores)[0] == 0
    data = np.loadtxt(data_csv, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(np.loadtxt(scores), est.score_samples(data))

    status, out, _ = run(capsys, "info", model)
    assert status == 0
    for fragment in ("FlowDensity", "flow: realnvp, 2 layers", "features: 2", "dtype: float64", "parameters: ",
                     "AffineCoupling", "training: 2 epochs", "standardization"):
        assert fragment in out


def test_info_and_sample_on_a_bare_flow(tmp_path, capsys):
    from nflow_np import flows
    path = tmp_path / "flow.npz"
    io.save(flows.MAF(3, n_layers=1, hidden=(4,), rng=0), path)
    status, out, _ = run(capsys, "info", path)
    assert status == 0 and "TransformedDistribution" in out and "event shape: (3,)" in out
    status, out, _ = run(capsys, "sample", path, "-n", "4", "--seed", "0")
    assert status == 0 and np.loadtxt(out.splitlines(), delimiter=",").shape == (4, 3)


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, fragments", [
    ("1,2\n3,4,5\n", ["line 2: 3 values, but line 1 has 2"]),
    ("x,y\n1,2\n3,abc\n", ["line 3, column 2: 'abc' is not a number"]),
    ("1,2\n,4\n", ["line 2, column 1: an empty field is not a number"]),
    ("1,2\nnan,4\n5,6\n", ["line 2: nan in column 1", "NaN or infinity"]),
    ("1,2\n3,inf\n", ["line 2: inf in column 2"]),
    ("# only a comment\n\n", ["no data rows"]),
], ids=["ragged", "non-numeric", "empty-field", "nan-row", "inf", "empty"])
def test_bad_csv(tmp_path, capsys, content, fragments):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    status, _, err = run(capsys, "fit", path, *TINY, "--out", tmp_path / "m.npz")
    assert_clean_error(status, err, *fragments)
    assert not (tmp_path / "m.npz").exists()


def test_missing_files(tmp_path, model, data_csv, capsys):
    assert_clean_error(*run(capsys, "fit", tmp_path / "absent.csv")[::2], "absent.csv: no such file")
    assert_clean_error(*run(capsys, "info", tmp_path / "absent.npz")[::2], "absent.npz: no such file")
    assert_clean_error(*run(capsys, "logprob", model, tmp_path / "absent.csv")[::2], "no such file")
    assert_clean_error(*run(capsys, "fit", data_csv, "--resume", "--out", tmp_path / "none.npz")[::2],
                       "none.npz: no such file")
    assert_clean_error(*run(capsys, "fit", model)[::2], "not a text file")


def test_column_count_mismatch(tmp_path, model, capsys):
    three = tmp_path / "three.csv"
    three.write_text("1,2,3\n4,5,6\n")
    assert_clean_error(*run(capsys, "logprob", model, three)[::2], "3 column(s)", "takes 2 feature(s)")
    assert_clean_error(*run(capsys, "fit", three, "--resume", "--out", model)[::2], "takes 2 feature(s)")


def test_corrupt_model(tmp_path, model, data_csv, capsys):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(model.read_bytes()[:500])
    for argv in (["info", broken], ["sample", broken, "-n", "3"], ["logprob", broken, data_csv]):
        assert_clean_error(*run(capsys, *argv)[::2], "broken.npz")
    assert_clean_error(*run(capsys, "info", data_csv)[::2], "not an nflow_np model file")


def test_one_column_data_needs_maf(tmp_path, capsys):
    path = tmp_path / "one.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(100, 1)))
    assert_clean_error(*run(capsys, "fit", path, *TINY, "--out", tmp_path / "m.npz")[::2], "at least 2 features")
    assert run(capsys, "fit", path, *TINY, "--flow", "maf", "--out", tmp_path / "m.npz")[0] == 0


def test_usage_errors(tmp_path, data_csv, capsys):
    status, _, err = run(capsys, "fit", data_csv, "--hidden", "64,x")
    assert status == 2 and "nflow-np fit: error: argument --hidden" in err
    assert run(capsys)[0] == 2
    assert run(capsys, "--help")[0] == 0
    assert_clean_error(*run(capsys, "fit", data_csv, "--lr", "-1", "--out", tmp_path / "m.npz")[::2], "lr must be")
    assert_clean_error(*run(capsys, "demo", "--dataset", "nope", "--out", tmp_path)[::2], "unknown dataset 'nope'")


# ---------------------------------------------------------------------------- demo and entry point

def test_demo(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    status, out, err = run(capsys, "demo", "--epochs", "2", "--n", "300", "--out", out_dir)
    assert status == 0 and "held-out NLL:" in out and "epoch 2/2" in err
    assert isinstance(io.load(out_dir / "model.npz"), FlowDensity)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "figure skipped: matplotlib is not installed" in out
    else:
        assert (out_dir / "two-moons.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # makes `import matplotlib` raise ImportError
    status, out, _ = run(capsys, "demo", "--epochs", "1", "--n", "200", "--dataset", "8gaussians",
                         "--out", tmp_path)
    assert status == 0 and (tmp_path / "model.npz").exists()
    assert "drawn without matplotlib; pip install nflow_np[plot] for the full figure" in out
    png = (tmp_path / "8gaussians.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    # the plain figure decodes: three panels of 320 pixels and their margins
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (3 * 320 + 4 * 12, 320 + 2 * 12)
    assert "matplotlib" not in sys.modules or sys.modules["matplotlib"] is None


def test_python_dash_m_entry_point(model):
    ok = subprocess.run([sys.executable, "-m", "nflow_np", "info", str(model)], cwd=ROOT, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "FlowDensity" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "nflow_np", "info", str(model) + ".missing"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("nflow-np: error:") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------- sample: any -n in bounded memory

def test_sample_draws_in_chunks_the_same_points(tmp_path, model, capsys, monkeypatch):
    sizes = []
    est = io.load(model)
    original = FlowDensity.sample

    def spy(self, n, random_state=None):
        sizes.append(n)
        return original(self, n, random_state=random_state)
    monkeypatch.setattr(FlowDensity, "sample", spy)
    monkeypatch.setattr(cli, "_SAMPLE_CHUNK", 7)
    out = tmp_path / "s.csv"
    assert run(capsys, "sample", model, "-n", "20", "--seed", "3", "--out", out)[0] == 0
    assert sizes == [7, 7, 6]
    monkeypatch.undo()
    np.testing.assert_array_equal(np.loadtxt(out, delimiter=","), est.sample(20, random_state=3))


def test_sample_zero_points_writes_an_empty_file(tmp_path, model, capsys):
    out = tmp_path / "s.csv"
    status, _, err = run(capsys, "sample", model, "-n", "0", "--out", out)
    assert status == 0 and err == "" and out.read_text() == ""
    status, stdout, err = run(capsys, "sample", model, "-n", "0")
    assert status == 0 and stdout == "" and err == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_sample_huge_n_streams_instead_of_allocating(model, capsys):
    # the first chunk is drawn and written (where /dev/full fails the write) without allocating all 10**13 points
    status, _, err = run(capsys, "sample", model, "-n", str(10 ** 13), "--out", "/dev/full")
    assert_clean_error(status, err, "/dev/full: cannot write")


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f4"])
def test_npy_input_of_any_byte_order(tmp_path, model, capsys, dtype):
    X = datasets.load("two-moons", 40, rng=1)
    path = tmp_path / "x.npy"
    np.save(path, X.astype(dtype))
    out = tmp_path / "lp.csv"
    assert run(capsys, "logprob", model, path, "--out", out)[0] == 0
    np.testing.assert_array_equal(np.loadtxt(out), io.load(model).score_samples(X.astype(dtype).astype(np.float64)))


def test_info_on_a_member_declaring_a_huge_shape(tmp_path, model, capsys):
    import zipfile
    header = {"descr": "<f8", "fortran_order": False, "shape": (10 ** 13,)}
    with zipfile.ZipFile(model, "a") as zf, zf.open("smuggled.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(bytes(32))
    assert_clean_error(*run(capsys, "info", model)[::2], "smuggled.npy", "declares shape (10000000000000,)")


@pytest.mark.parametrize("content", [
    "\ufeff1.5,2\n3,4\n5,6\n",
    "\ufeffx,y\n1.5,2\n3,4\n5,6\n",
    '"1.5","2.0"\n"3","4"\n"5","6"\n',
    '"x","y"\n"1.5","2.0"\n"3","4"\n"5","6"\n',
], ids=["bom-no-header", "bom-header", "quoted", "quoted-header"])
def test_csv_with_a_byte_order_mark_or_quoted_numbers(tmp_path, model, capsys, content):
    path = tmp_path / "x.csv"
    path.write_bytes(content.encode("utf-8"))
    out = tmp_path / "lp.csv"
    assert run(capsys, "logprob", model, path, "--out", out)[0] == 0
    expected = io.load(model).score_samples(np.array([[1.5, 2.0], [3, 4], [5, 6]]))
    np.testing.assert_array_equal(np.loadtxt(out), expected)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fit_with_a_batch_size_beyond_the_data(tmp_path, data_csv, capsys, backend):
    # a batch is at most the training rows: one step per epoch, no workspace sized by 10**9 rows
    out_path = tmp_path / "m.npz"
    with nflow_np.backend(backend):
        status, out, err = run(capsys, "fit", data_csv, "--epochs", "2", "--layers", "2", "--hidden", "8",
                               "--batch-size", "1000000000", "--seed", "0", "--out", out_path)
    assert status == 0 and "Traceback" not in err and "error" not in err, err
    est = io.load(out_path)
    assert est.history_.steps == 2 and est.batch_size == 10 ** 9 and f"saved {out_path}" in out


def test_fit_on_a_column_of_huge_values(tmp_path, capsys):
    # x * 1e200: its standard deviation overflowed to inf, every density was -inf, and saving failed
    x = np.random.default_rng(0).normal(size=200)
    data = tmp_path / "wide.csv"
    np.savetxt(data, np.c_[x, x * 1e200], delimiter=",", header="x,y", comments="")
    out_path = tmp_path / "m.npz"
    status, out, err = run(capsys, "fit", data, *TINY, "--out", out_path)
    assert status == 0 and "diverge" not in err and "Warning" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and all("nan" not in line and "inf" not in line for line in lines)
    status, out, _ = run(capsys, "logprob", out_path, data)
    values = np.array([float(v) for v in out.split()])
    assert status == 0 and values.size == 200 and np.all(np.isfinite(values))


def test_fit_on_a_column_too_wide_to_standardize(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=50)
    data = tmp_path / "wide.csv"
    np.savetxt(data, np.c_[x, np.where(x > -1, 1.7e308, -1.7e308)], delimiter=",", header="x,y", comments="")
    status, _, err = run(capsys, "fit", data, *TINY, "--out", tmp_path / "m.npz")
    assert_clean_error(status, err, "column 1 cannot be standardized")
    assert not (tmp_path / "m.npz").exists()


def test_running_out_of_memory_is_a_clean_error(tmp_path, data_csv, capsys, monkeypatch):
    def too_big(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 395. GiB for an array")
    monkeypatch.setattr(FlowDensity, "_fit", too_big)
    status, _, err = run(capsys, "fit", data_csv, *TINY, "--out", tmp_path / "m.npz")
    assert_clean_error(status, err, "out of memory (Unable to allocate 395. GiB", "--batch-size")


# ---------------------------------------------------------------------------- streamed files

@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_logprob_streams_a_file_in_chunks_into_any_format(tmp_path, model, data_csv, capsys, monkeypatch, suffix):
    from nflow_np import _cli_stream
    X = np.loadtxt(data_csv, delimiter=",", skiprows=1)
    expected = io.load(model).score_samples(X)
    if suffix == ".npy":
        source = tmp_path / "in.npy"
        np.save(source, X)
    elif suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq
        source = tmp_path / "in.parquet"
        pq.write_table(pa.table({"x": X[:, 0], "label": np.array(["a"] * len(X)), "y": X[:, 1]}), source,
                       row_group_size=50)
    else:
        source = data_csv
    monkeypatch.setattr(_cli_stream, "CHUNK_ROWS", 7)       # 300 rows: 43 chunks
    out = tmp_path / f"lp{suffix}"
    status, _, err = run(capsys, "logprob", model, source, "--out", out)
    assert status == 0, err
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(out)
        assert table.column_names == ["log_prob"]
        got = table.column("log_prob").to_numpy()
    else:
        got = np.loadtxt(out, delimiter=",")
    np.testing.assert_array_equal(got, expected)


def test_sample_writes_npy_and_parquet_as_it_draws(tmp_path, model, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_SAMPLE_CHUNK", 9)
    run(capsys, "sample", model, "-n", 50, "--seed", 3, "--out", tmp_path / "s.csv")
    expected = np.loadtxt(tmp_path / "s.csv", delimiter=",")
    status, _, err = run(capsys, "sample", model, "-n", 50, "--seed", 3, "--out", tmp_path / "s.npy")
    assert status == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected)
    pq = pytest.importorskip("pyarrow.parquet")
    run(capsys, "sample", model, "-n", 50, "--seed", 3, "--out", tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == ["x0", "x1"]
    np.testing.assert_array_equal(np.column_stack([c.to_numpy() for c in table.columns]), expected)


def test_streamed_files_report_bad_rows_by_position(tmp_path, model, capsys, monkeypatch):
    from nflow_np import _cli_stream
    monkeypatch.setattr(_cli_stream, "CHUNK_ROWS", 4)
    bad = np.ones((10, 2))
    bad[6, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    status, _, err = run(capsys, "logprob", model, tmp_path / "bad.npy")
    assert_clean_error(status, err, "bad.npy: row 6 holds nan in column 2")
    (tmp_path / "bad.csv").write_text("1,2\n3,4\n5,6\n7,x\n")
    status, _, err = run(capsys, "logprob", model, tmp_path / "bad.csv")
    assert_clean_error(status, err, "bad.csv, line 4, column 2: 'x' is not a number")
    np.save(tmp_path / "wide.npy", np.ones((5, 3)))
    status, _, err = run(capsys, "logprob", model, tmp_path / "wide.npy")
    assert_clean_error(status, err, "has 3 column(s)", "takes 2 feature(s)")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, model, capsys, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    status, _, err = run(capsys, "logprob", model, tmp_path / "x.parquet")
    assert_clean_error(status, err, "Parquet needs pyarrow", "pip install pyarrow")
