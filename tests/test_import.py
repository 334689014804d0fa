"""``import nflow_np`` needs NumPy alone: SciPy and Numba load on first use."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loaded_after(code):
    out = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(' '.join(m for m in ('numba', 'scipy', 'llvmlite', "
                               "'matplotlib') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_needs_numpy_alone():
    assert _loaded_after("import nflow_np") == []


TRAIN = ("import numpy as np, nflow_np; from nflow_np import flows; from nflow_np.train import fit; "
         "f = flows.RealNVP(2, rng=0); fit(f, np.random.default_rng(0).normal(size=(64, 2)), epochs=1, rng=0{})")


def test_building_and_training_a_flow_on_the_numpy_backend_needs_numpy_alone():
    assert _loaded_after(TRAIN.format(", backend='numpy'")) == []


def test_the_default_backend_loads_numba_on_the_first_compiled_call():
    assert "numba" in _loaded_after(TRAIN.format(""))
    assert "numba" not in _loaded_after("import nflow_np; nflow_np.set_backend('numba')")


def test_normal_cdf_loads_scipy_on_first_use():
    assert "scipy" in _loaded_after("import nflow_np; nflow_np.bijectors.NormalCDF().forward(0.5)")


SUBPACKAGES = ("flows", "train", "datasets", "plot", "nn", "bijectors", "distributions", "kernels", "testing", "io",
               "estimator")


def test_every_subpackage_is_an_attribute_loaded_on_first_access():
    code = ("import importlib, nflow_np; "
            f"names = {SUBPACKAGES!r}; "
            "assert all(getattr(nflow_np, n) is importlib.import_module('nflow_np.' + n) for n in names); "
            "assert set(names) <= set(dir(nflow_np)); "
            "assert callable(nflow_np.train.fit) and callable(nflow_np.flows.RealNVP)")
    assert "matplotlib" not in _loaded_after(code)
    lazy = _loaded_after("import sys, nflow_np; assert 'nflow_np.flows' not in sys.modules; "
                         "assert 'nflow_np.train' not in sys.modules; nflow_np.flows")
    assert lazy == []
