"""The quality suite: data sets with known densities, nflow_np's models and zuko's, one protocol.

``benchmarks/quality.py`` is the command; ``asv`` tracks a few small cases (``suites/quality.py``).
"""
