"""Solver states: ``step()``, ``converged``, ``result()``, ``state_dict()`` and
``load_state_dict()``; a state saved mid-run and loaded into a fresh one continues to the
uninterrupted numbers bit for bit, and the drivers are loops over them."""

import numpy as np
import pytest

from conftest import spectrum_matrix
from lanczos_hessian import adaptive_slq, deflated_slq, lanczos_eigsh, slq
from lanczos_hessian.errors import ResumeError
from lanczos_hessian.linalg.basis import copy_vectors
from lanczos_hessian.linalg.eigsh import EigshState
from lanczos_hessian.linalg.linop import as_block_matvec
from lanczos_hessian.linalg.slq import AdaptiveSLQState, SLQState

A = spectrum_matrix(np.linspace(-1.0, 4.0, 50), seed=1)


def restored(state, make):
    """A fresh state loaded with ``state``'s saved state and a copy of its bases (what a
    checkpoint restores)."""
    small, vectors = state.state_dict()
    fresh = make()
    fresh.load_state_dict(small, np.stack([v.cpu().numpy() for v in vectors]))
    for old, new in zip(state.bases(), fresh.bases()):
        copy_vectors(old, new)
    return fresh


def run_to_end(state, stop_at=None):
    while not state.converged and (stop_at is None or state_steps(state) < stop_at):
        state.step()
    return state


def state_steps(state):
    return state.steps if hasattr(state, "steps") else state.process.num_steps


def test_the_eigensolver_driver_is_a_loop_over_its_state():
    make = lambda: EigshState(as_block_matvec(A), k=3, which="BE", tol=1e-10, ncv=12,
                              budget=600, rng=4)
    whole = run_to_end(make()).result()
    reference = lanczos_eigsh(A, k=3, which="BE", tol=1e-10, ncv=12, max_matvecs=600, rng=4)
    np.testing.assert_array_equal(whole.eigenvalues, reference.eigenvalues)
    assert whole.num_restarts == reference.num_restarts >= 2


def test_a_saved_slq_state_continues_bit_for_bit():
    make = lambda: SLQState(as_block_matvec(A), 4, 20, rng=2)
    reference = run_to_end(make()).result()
    result = run_to_end(restored(run_to_end(make(), stop_at=7), make)).result()
    np.testing.assert_array_equal(result.nodes, reference.nodes)
    assert result.num_passes == reference.num_passes == 20


def test_the_adaptive_state_resumes_across_rounds():
    """Saved after its first round and inside its second, it continues to the same probes."""
    make = lambda: AdaptiveSLQState(as_block_matvec(A), 0.05, probes_per_round=3,
                                    max_probes=9, num_steps=6, rng=5, reorthogonalize=False)
    reference = run_to_end(make()).result()
    assert reference.num_probes == 9  # the target is out of reach: every round runs
    for stop in (6, 8):
        state = make()
        for _ in range(stop):
            state.step()
        result = run_to_end(restored(state, make)).result()
        np.testing.assert_array_equal(result.nodes, reference.nodes)
        np.testing.assert_array_equal(result.weights, reference.weights)
        assert result.num_passes == reference.num_passes


def test_adaptive_slq_is_a_loop_over_its_state():
    with pytest.warns(Warning, match="max_probes=9"):
        direct = adaptive_slq(A, 0.05, probes_per_round=3, max_probes=9, num_steps=6, rng=5,
                              reorthogonalize=False)
    state = run_to_end(AdaptiveSLQState(as_block_matvec(A), 0.05, probes_per_round=3,
                                        max_probes=9, num_steps=6, rng=5,
                                        reorthogonalize=False))
    np.testing.assert_array_equal(direct.nodes, state.result().nodes)


def test_a_state_of_a_later_format_is_refused_naming_the_version():
    state = SLQState(as_block_matvec(A), 2, 5, rng=0)
    state.step()
    small, vectors = state.state_dict()
    small["state_format"] = 99
    with pytest.raises(ResumeError, match="format version 99"):
        SLQState(as_block_matvec(A), 2, 5, rng=0).load_state_dict(
            small, np.stack([v.cpu().numpy() for v in vectors]))


def test_a_state_saved_before_the_format_existed_still_loads():
    """The saved keys of files written before the solver states (no ``state_format``)."""
    state = EigshState(as_block_matvec(A), k=2, ncv=10, budget=300, rng=0)
    for _ in range(4):
        state.step()
    small, vectors = state.state_dict()
    del small["state_format"]
    fresh = EigshState(as_block_matvec(A), k=2, ncv=10, budget=300, rng=0)
    fresh.load_state_dict(small, np.stack([v.cpu().numpy() for v in vectors]))
    assert fresh.num_restarts == state.num_restarts and fresh.matvec.num_passes == 4


def test_deflated_adaptive_slq_keeps_its_callback():
    seen = []
    result = deflated_slq(A, 2, num_probes=3, num_steps=5, rng=0, target_error=1e3,
                          callback=lambda step, state: seen.append(step))
    assert result.num_probes == 3 and seen == [1, 2, 3, 4, 5]
    fixed = []
    deflated_slq(A, 2, num_probes=3, num_steps=5, rng=0,
                 callback=lambda step, state: fixed.append(step))
    assert fixed == seen


def test_slq_and_its_state_agree():
    direct = slq(A, 3, 8, rng=1)
    state = run_to_end(SLQState(as_block_matvec(A), 3, 8, rng=1))
    np.testing.assert_array_equal(direct.nodes, state.result().nodes)
