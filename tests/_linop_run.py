"""``run.eigs`` / ``run.slq`` on a plain scipy ``LinearOperator``, SIGKILLed at its N-th product.

    python tests/_linop_run.py KIND OUT KILL_AT [--resume] [--identity]

KIND is ``eigs`` or ``slq``; KILL_AT 0 runs to the end. ``--identity`` gives the operator an
``identity()`` of its own (a plain dict with a fingerprint of its matrix). The operator is a
fixed symmetric 60 x 60 matrix with a known spectrum; the result's eigenvalues (or quadrature
nodes) are saved beside OUT as ``OUT.npy``.
"""

import hashlib
import os
import signal
import sys

import numpy as np
from scipy.sparse.linalg import LinearOperator

from lanczos_hessian import run


def matrix(n=60):
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    return (Q * np.linspace(-1.0, 10.0, n)) @ Q.T


class Killed(LinearOperator):
    """``A`` that SIGKILLs its process at the ``kill_at``-th product (0: never)."""

    def __init__(self, A, kill_at, identity=False):
        super().__init__(dtype=np.float64, shape=A.shape)
        self.A, self.kill_at, self.calls, self.with_identity = A, kill_at, 0, identity

    def _matmat(self, X):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.A @ X

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).reshape(-1)

    def __getattr__(self, name):
        if name == "identity" and self.__dict__.get("with_identity"):
            return lambda: {"provenance": {"operator": "test-matrix",
                                           "num_params": self.shape[0]},
                            "fingerprints": {"model": hashlib.sha256(
                                self.A.tobytes()).hexdigest()[:16]}}
        raise AttributeError(name)


def run_once(kind, out, kill_at, *flags):
    """The run this script makes (also called in-process, for an uninterrupted reference)."""
    out = str(out)
    op = Killed(matrix(), int(kill_at), "--identity" in flags)
    if kind == "eigs":
        result = run.eigs(op, out, k=4, ncv=10, tol=1e-10, seed=3, progress=False,
                          resume="--resume" in flags, keep_state="--keep" in flags)
        values = result.eigenvalues
    else:
        _, result = run.slq(op, out, num_probes=3, num_steps=12, k_top=2, seed=3,
                            progress=False, resume="--resume" in flags)
        values = result.nodes
    np.save(out + ".npy", values)


if __name__ == "__main__":
    run_once(*sys.argv[1:])
