"""The argument checks of :mod:`lanczos_hessian.validate` and their use at every entry point:
a wrong value is refused before any operator application, with a message naming it."""

import numpy as np
import pytest

from lanczos_hessian import (adaptive_slq, deflated_slq, hutchinson_trace, lanczos_eigsh, run,
                             slq, validate)
from lanczos_hessian.cli import build_parser
from lanczos_hessian.curvature.operators import OPERATORS
from lanczos_hessian.curvature.products import STRATEGIES
from lanczos_hessian.linalg.eigsh import WHICH
from lanczos_hessian.linalg.slq import PROBES


class Counted:
    """A 30 x 30 diagonal operator that counts its applications."""

    def __init__(self):
        self.calls = 0
        self.A = np.diag(np.arange(1.0, 31.0))

    def __call__(self, x):
        self.calls += 1
        return self.A @ x


@pytest.mark.parametrize("kwargs, name", [
    ({"k": True}, "k"), ({"k": 2.0}, "k"), ({"max_matvecs": True}, "max_matvecs"),
    ({"ncv": 12.5}, "ncv"), ({"ncv": True}, "ncv"), ({"k_bottom": True, "which": "BE"},
                                                     "k_bottom"),
    ({"block_size": True}, "block_size"), ({"tol": True}, "tol"), ({"tol": -1.0}, "tol"), ({"tol": float("nan")}, "tol"),
    ({"which": "XX"}, "which"), ({"criterion": "max"}, "criterion"),
])
def test_lanczos_eigsh_refuses_each_bad_argument_by_name(kwargs, name):
    op = Counted()
    args = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=rf"^(unknown )?{name}\b"):
        lanczos_eigsh(op, dim=30, **args)
    assert op.calls == 0


@pytest.mark.parametrize("call, name", [
    (lambda op: slq(op, True, 5, dim=30), "num_probes"),
    (lambda op: slq(op, 3, 5.0, dim=30), "num_steps"),
    (lambda op: slq(op, 3, 5, probe="normal", dim=30), "probe"),
    (lambda op: deflated_slq(op, True, dim=30), "k_top"),
    (lambda op: deflated_slq(op, 2, ncv=12.5, dim=30), "ncv"),
    (lambda op: deflated_slq(op, 2, max_matvecs=True, dim=30), "max_matvecs"),
    (lambda op: adaptive_slq(op, True, dim=30), "target_error"),
    (lambda op: adaptive_slq(op, 1.0, confidence=1.5, dim=30), "confidence"),
    (lambda op: adaptive_slq(op, 1.0, max_probes=20.0, dim=30), "max_probes"),
    (lambda op: hutchinson_trace(op, True, dim=30), "num_probes"),
    (lambda op: hutchinson_trace(op, 10, probes_per_pass=2.5, dim=30), "probes_per_pass"),
])
def test_every_solver_entry_point_refuses_by_name(call, name):
    op = Counted()
    with pytest.raises(ValueError, match=rf"^(unknown )?{name}\b"):
        call(op)
    assert op.calls == 0


@pytest.mark.parametrize("call, name", [
    (lambda A, out: run.eigs(A, out, k=True), "k"),
    (lambda A, out: run.eigs(A, out, k=2, max_matvecs=True), "max_matvecs"),
    (lambda A, out: run.eigs(A, out, k=2, ncv=12.5), "ncv"),
    (lambda A, out: run.eigs(A, out, k=2, seed=True), "seed"),
    (lambda A, out: run.slq(A, out, num_probes=True), "num_probes"),
    (lambda A, out: run.slq(A, out, k_top=1.5), "k_top"),
])
def test_run_entry_points_refuse_before_any_file(tmp_path, call, name):
    from scipy.sparse.linalg import aslinearoperator

    A = aslinearoperator(np.diag(np.arange(1.0, 31.0)))
    out = tmp_path / "run.h5"
    with pytest.raises(ValueError, match=rf"^(unknown )?{name}\b"):
        call(A, out)
    assert not out.exists()


def test_the_command_line_offers_the_library_choices():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    choices = {a.dest: a.choices for name in ("eigs", "slq") for a in sub[name]._actions}
    assert tuple(choices["which"]) == WHICH
    assert tuple(choices["probe"]) == PROBES
    assert tuple(choices["strategy"]) == STRATEGIES
    assert tuple(choices["operator"]) == tuple(OPERATORS)


def test_checkers():
    assert validate.integer("n", np.int64(4), low=1) == 4
    assert validate.optional_integer("n", None) is None
    assert validate.positive_float("x", 2) == 2.0
    assert validate.seed("seed", None) is None
    with pytest.raises(ValueError, match="x must be a positive number"):
        validate.positive_float("x", float("nan"))
    with pytest.raises(ValueError, match=r"n=5 out of range: need 1 <= n <= 4"):
        validate.integer("n", 5, low=1, high=4)
    with pytest.raises(ValueError, match="flag must be True or False"):
        validate.boolean("flag", 1)
