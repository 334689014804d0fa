"""The GPU twins of the hot loops (``numba.cuda``) and the runner that walks a whole flow on the device.

The CUDA twins live in this package rather than beside their Numba twins in
``kernels/<family>.py`` because importing them imports ``numba.cuda`` (the simulator's
or the GPU's, chosen at import): a separate package keeps that out of every CPU path,
and lets the simulator tests (``NUMBA_ENABLE_CUDASIM=1``) import the twins alone. Their
reference is the same as the Numba twins': the NumPy passes of the bijectors, of
:class:`nflow_np.nn.MLP` and of :class:`nflow_np.train.Adam`.

Each module mirrors its CPU family: ``mlp`` (a tiled shared-memory matrix product with
bias and activation fused, and the backward products), ``frames`` (the coupling and the
autoregressive frame, calling any transform of :mod:`nflow_np.kernels.transforms` per
element), ``elementwise`` (permutations, ActNorm, the normal log-density and base draws),
``torus`` (the uniform box base and its draws, the circular shift),
``normalization`` (BatchNorm), ``optim`` (guarded Adam), ``reduce`` (deterministic
column and vector sums), ``scalar`` (the shared scalar math as device functions), with
``device`` (launch geometry, per-dtype kernel families, device versions of plain-Python
scalar functions, scratch buffers). Their public functions are named ``<kernel>_cuda``
after the Numba twin ``<kernel>_numba`` and take its arguments with device arrays in place of NumPy arrays
(the frames' take the CPU frames' arguments, unpacked from the program). ``flow`` walks
a :class:`nflow_np.kernels.plan.Program`'s layers on the device, and ``runner`` answers a
program's calls there (``log_prob``, ``sample``, ``nll_and_grad``, training epochs).
``benchmarks/gpu/compile_check.py`` compiles every kernel for a GPU without one.

Nothing here is imported by ``import nflow_np``; ``backend="cuda"`` imports it on first use.
"""
