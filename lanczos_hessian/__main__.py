"""``python -m lanczos_hessian``: the command line (see :mod:`lanczos_hessian.cli`)."""

from .cli import run

run()
