"""``python -m nflow_np``: the ``nflow-np`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
