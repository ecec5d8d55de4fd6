"""``python -m lanczos_hessian``: the command line (see :mod:`lanczos_hessian.cli`)."""

import sys

from .cli import main

sys.exit(main())
