"""Compiling on every core: helper processes share the entries out and a manifest records what was compiled."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from nflow_np.kernels import warm  # noqa: E402


class FakeProcess:
    def __init__(self, keys, started):
        self.keys = keys
        started.append(keys)

    def wait(self, timeout=None):
        return 0


def manifests_under(root):
    """The manifests in the folder Numba caches the kernels in, under ``NUMBA_CACHE_DIR=root``."""
    here = os.path.dirname(os.path.abspath(warm.__file__))
    import hashlib
    folder = os.path.join(str(root), f"{os.path.basename(here)}_{hashlib.sha1(here.encode()).hexdigest()}")
    return [os.path.join(folder, name) for name in os.listdir(folder) if name.startswith("nflow_np-")]


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    path = tmp_path / "nflow_np-test.json"
    monkeypatch.setattr(warm, "_manifest_path", lambda: str(path))
    return path


def test_helpers_take_a_share_and_this_process_loads_everything(manifest, monkeypatch):
    started, here = [], []
    monkeypatch.setattr(warm, "workers", lambda: 1)
    monkeypatch.setattr(warm, "_start", lambda keys: FakeProcess(keys, started))
    keys = [(0, 0, "float32"), (0, 2, "float32"), (2, 0, "float32"), (3, -1, "float32")]
    warm.compile_entries(keys, here.append)
    assert len(started) == 1 and started[0]
    mine = [k for k in keys if k not in started[0]]
    assert mine and set(mine) | set(started[0]) == set(keys)
    # this process compiled its share first, then loaded every key (theirs from the disk cache)
    assert set(here[:len(mine)]) == set(mine) and here[len(mine):] == keys
    assert set(json.loads(manifest.read_text())) == {warm._encode(k) for k in keys}


def test_a_manifest_entry_starts_no_helper(manifest, monkeypatch):
    started = []
    monkeypatch.setattr(warm, "workers", lambda: 3)
    monkeypatch.setattr(warm, "_start", lambda keys: FakeProcess(keys, started))
    keys = [(0, 0, "float64"), (5, 2, "float64")]
    manifest.write_text(json.dumps([warm._encode(k) for k in keys]))
    here = []
    warm.compile_entries(keys, here.append)
    assert started == [] and here == keys
    warm.prefetch(keys)
    assert started == []


def test_no_helpers_when_turned_off_or_unwritable(manifest, monkeypatch):
    started = []
    monkeypatch.setattr(warm, "_start", lambda keys: FakeProcess(keys, started))
    monkeypatch.setenv("NFLOW_NP_COMPILE_WORKERS", "0")
    assert warm.workers() == 0
    warm.compile_entries([(0, 0, "float32"), (0, 1, "float32")], lambda key: None)
    monkeypatch.setenv("NFLOW_NP_COMPILE_WORKERS", "2")
    assert warm.workers() == 2
    for bad in ("two", "-1"):
        monkeypatch.setenv("NFLOW_NP_COMPILE_WORKERS", bad)
        with pytest.warns(RuntimeWarning, match="NFLOW_NP_COMPILE_WORKERS must be a non-negative int"):
            assert warm.workers() == 0
    monkeypatch.setenv("NFLOW_NP_COMPILE_WORKERS", "2")
    monkeypatch.setattr(warm, "_manifest_path", lambda: None)
    warm.compile_entries([(1, 0, "float32"), (1, 1, "float32")], lambda key: None)
    warm.prefetch([(1, 2, "float32")])
    assert started == []


def test_a_failed_helper_costs_only_its_share(manifest, monkeypatch):
    class Failing(FakeProcess):
        def wait(self, timeout=None):
            return 1

    started, here = [], []
    monkeypatch.setattr(warm, "workers", lambda: 1)
    monkeypatch.setattr(warm, "_start", lambda keys: Failing(keys, started))
    keys = [(0, 0, "float32"), (0, 2, "float32")]
    warm.compile_entries(keys, here.append)
    assert set(keys) <= set(here)     # every key compiled (or loaded) here in the end


def test_helper_process_compiles_into_the_cache_and_the_flow_agrees(tmp_path):
    """A real helper: an empty cache, two permutation entries, then a flow that uses them."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NFLOW_NP_COMPILE_WORKERS="1")
    script = """
import numpy as np
from nflow_np.bijectors import Chain, Reverse, Permute
from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
flow = TransformedDistribution(MultivariateNormalDiag(np.zeros(3)), Chain([Reverse(), Permute([1, 2, 0])]))
x = np.random.default_rng(0).standard_normal((5, 3))
np.testing.assert_allclose(flow.log_prob(x, backend="numba"), flow.log_prob(x, backend="numpy"), rtol=1e-12)
"""
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    manifests = manifests_under(tmp_path)
    assert len(manifests) == 1
    with open(manifests[0]) as f:
        recorded = set(json.load(f))
    assert {"permute:0:float64"} <= recorded and any(key.endswith(":-1:float64") for key in recorded)
    # a second process finds everything compiled
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)


def test_shares_keep_families_together_and_balance_the_compile_time():
    entries = [("coupling.affine", 2, "float32"), ("coupling.affine", 0, "float32"), ("coupling.affine", 1, "float32")]
    loops = [(3, -1, "float32"), (0, -1, "float32"), (1, -1, "float32")]
    shares = warm._deal(loops[:1] + entries + loops[1:], 2)
    # an entry's passes share their transform's and frame's code, the loops theirs: each family compiles in one
    # process, the costliest here (the helper starts later)
    assert {frozenset(share) for share in shares} == {frozenset(entries), frozenset(loops)}
    assert shares[0] == max(shares, key=lambda share: sum(warm._FIRST[k[1]] for k in share[:1]) +
                            sum(warm._MORE[k[1]] for k in share[1:]))
    # the networks' two passes share almost nothing: they may go to different processes
    networks = [("network", 0, "float32"), ("network", 2, "float32")]
    assert warm._family(networks[0]) != warm._family(networks[1])
    small = [("permute", 0, "float32"), ("permute", 2, "float32")]
    shares = warm._deal(entries + loops + small, 2)
    assert sorted(map(str, shares[0] + shares[1])) == sorted(map(str, entries + loops + small))
    assert all(set(family) <= set(shares[0]) or set(family) <= set(shares[1]) for family in (entries, loops, small))
    assert warm._deal(entries + loops, 1) in ([entries + loops], [loops + entries])


def test_the_helper_command_compiles_and_records(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    keys = [["permute", 0, "float32"], ["permute", 2, "float32"], [0, -1, "float32"]]
    done = subprocess.run([sys.executable, "-m", "nflow_np.kernels.warm", json.dumps(keys)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifests = manifests_under(tmp_path)
    with open(manifests[0]) as f:
        assert set(json.load(f)) == {warm._encode(k) for k in keys}


def test_changed_kernel_sources_drop_the_cached_machine_code(tmp_path, monkeypatch):
    """Numba checks a cached function against its own file only; a change to any kernel drops the whole cache."""
    transforms = tmp_path / "transforms"
    transforms.mkdir()
    monkeypatch.setattr(warm, "_cache_folder", lambda here=None: str(transforms if here else tmp_path))
    monkeypatch.setattr(warm, "_manifest_path_cache", [])
    for name in ("entries.coupling_density-10.py311.nbi", "entries.coupling_density-10.py311.1.nbc",
                 "nflow_np-0123456789abcdef.json", "unrelated.txt"):
        (tmp_path / name).write_text("x")
    (transforms / "affine.density-20.py311.nbi").write_text("x")
    path = warm._manifest_path()
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), "transforms", "unrelated.txt"])
    assert os.listdir(transforms) == []
    # the same sources later: nothing is dropped
    (tmp_path / "entries.coupling_density-10.py311.nbi").write_text("x")
    monkeypatch.setattr(warm, "_manifest_path_cache", [])
    assert warm._manifest_path() == path
    assert "entries.coupling_density-10.py311.nbi" in os.listdir(tmp_path)


def test_numba_cache_folder_is_where_numba_writes(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    script = ("from nflow_np.kernels import warm, compiled; compiled.compile_key(('permute', 0, 'float64')); "
              "import os; print(warm._cache_folder())")
    folder = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True,
                            timeout=300).stdout.strip()
    assert any(name.endswith(".nbi") for name in os.listdir(folder))


def test_compile_loop_runs_no_layer():
    from nflow_np.kernels import compiled
    for index in range(len(compiled.LOOPS)):
        compiled.compile_loop(index, np.float64)
