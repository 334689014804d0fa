"""asv benchmarks of nflow_np; the workloads themselves are defined in ``benchmarks/workloads.py``."""
