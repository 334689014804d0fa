"""Compile every CUDA kernel the runner launches to PTX, without a GPU: a check for machines that have none.

    pip install ".[cuda]" && python benchmarks/gpu/compile_check.py [--cc 8.0]

The simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the kernels as Python, so it never
types or lowers them for a GPU. This script does: it runs the runner's calls
(``log_prob``, ``sample``, draws, ``nll_and_grad``, a training epoch) on small
RealNVP / NICE / MAF / NSF (coupling and autoregressive) flows, both dtypes, with three stand-ins for a device —
device arrays are the simulator's NumPy-backed arrays, the current device reports
compute capability ``--cc``, and a launch compiles the kernel for its argument types
with ``numba.cuda.compile_ptx`` instead of running it. Then it scans the PTX: the
float32 product and row kernels must hold no double-precision arithmetic and no
local-memory traffic (the register tiles must stay in registers). The float64
sums, BatchNorm's per-feature constants and Adam's update are double on purpose.

Needs numba-cuda with NVVM (the ``cuda`` extra); exits 1 when a check fails.
A development tool: it patches numba-cuda internals, and may need updating with them.
"""

import argparse
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# kernels computing in double precision on purpose (sums, per-feature constants, the optimizer's update)
DOUBLE_BY_DESIGN = {"column_partials", "vector_partials", "reduce_partials", "finish_moments", "finish_grads",
                    "moments_and_candidates", "commit", "normals"}


def patch(cc):
    """Device stand-ins: NumPy-backed arrays, a fake current device, launches that compile instead of running."""
    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)

    def to_device(a, stream=0, copy=True, to=None):
        if to is not None:
            np.copyto(to._ary, a)
            return to
        return FakeCUDAArray(np.array(a, copy=True))

    cuda.to_device = to_device
    cuda.device_array = lambda shape, dtype=np.float64, **kw: FakeCUDAArray(np.zeros(shape, dtype))
    cuda.is_cuda_array = lambda x: isinstance(x, FakeCUDAArray)
    cuda.as_cuda_array = lambda x: x
    compiled = {}

    def configure(kernel, config):
        def launch(*args):
            signature = tuple(numba.typeof(a._ary if isinstance(a, FakeCUDAArray) else a) for a in args)
            if (kernel.py_func, signature) not in compiled:
                compiled[kernel.py_func, signature] = cuda.compile_ptx(kernel.py_func, signature, cc=cc)[0]
        return launch

    dispatcher.CUDADispatcher.__getitem__ = configure
    return compiled


def exercise():
    from nflow_np import flows
    from nflow_np.kernels.cuda import mlp, runner
    from nflow_np.kernels.plan import program_for
    from nflow_np.train import Adam, set_training
    mlp._sm_count.append(132)
    for dtype in (np.float32, np.float64):
        for make in (lambda: flows.RealNVP(4, n_layers=2, hidden=(8,), batch_norm=True, permute="random", rng=0,
                                           dtype=dtype),
                     lambda: flows.NICE(4, n_layers=2, hidden=(8, 8), activation="tanh", rng=0, dtype=dtype),
                     lambda: flows.MAF(3, n_layers=2, hidden=(8,), activation="elu", rng=0, dtype=dtype),
                     lambda: flows.NSF(4, n_layers=2, bins=4, hidden=(8,), rng=0, dtype=dtype),
                     lambda: flows.NSF(3, n_layers=2, bins=4, hidden=(8,), autoregressive=True, rng=0, dtype=dtype),
                     lambda: frames_flow(dtype)):
            flow = make()
            x = np.random.default_rng(0).standard_normal((70, flow.event_shape[0])).astype(dtype)
            flow.log_prob(x, backend="numpy")      # ActNorm's first batch
            set_training(flow, False)
            device = runner.runner_for(program_for(flow))
            device.log_prob(x)
            device.sample(x)
            device.draw(9, np.random.default_rng(0))
            set_training(flow, True)
            device.nll_and_grad(x)
            runner.DeviceTrainer(device, Adam(dict(flow.parameters())), 32).epoch(x, np.arange(len(x)))


def frames_flow(dtype):
    """Both frames with the transforms no ready-made flow uses."""
    from nflow_np import bijectors as nb
    from nflow_np.distributions import MultivariateNormalDiag, TransformedDistribution
    layers = [nb.Coupling([True, False, True, False], nb.SinhArcsinhTransform(), (8,), rng=0, dtype=dtype),
              nb.Autoregressive(4, nb.SinhArcsinhTransform(), (8,), rng=1, dtype=dtype),
              nb.Autoregressive(4, nb.AdditiveTransform(), (8,), rng=2, dtype=dtype)]
    return TransformedDistribution(MultivariateNormalDiag(np.zeros(4, dtype), np.ones(4, dtype)), nb.Chain(layers))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cc", default="8.0", help="compute capability to compile for (default 8.0)")
    args = parser.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("compile_check: unset NUMBA_ENABLE_CUDASIM; the simulator compiles nothing")
    cc = tuple(int(v) for v in args.cc.split("."))
    compiled = patch(cc)
    exercise()
    failures = []
    for (fn, signature), ptx in compiled.items():
        name = fn.__name__
        single = any(str(getattr(t, "dtype", "")) == "float32" for t in signature)
        lines = ptx.splitlines()
        double = [l for l in lines if ".f64" in l and not l.strip().startswith(("cvt", "ld.", "st.", ".reg"))]
        local = [l for l in lines if "ld.local" in l or "st.local" in l]
        if single and name not in DOUBLE_BY_DESIGN and (double or local):
            failures.append(f"{name}{tuple(str(t) for t in signature)}: {len(double)} double-precision "
                            f"instructions, {len(local)} local-memory accesses")
    print(f"compiled {len(compiled)} kernel specializations for sm_{cc[0]}{cc[1]}")
    for failure in failures:
        print("FAIL", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
