"""Makes ``benchmarks/workloads.py`` importable from the asv suite (asv imports only this folder)."""

import os
import sys

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import workloads  # noqa: E402,F401
