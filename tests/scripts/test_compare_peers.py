"""The quick core of scripts/compare_peers.py on its smallest problem (612 parameters).

Runs our package always, and each peer (PyHessian, curvlinops, hessian-eigenthings) only when
it is importable: CI does not install the peers (scripts/install_peers.sh does), so their
checks are skipped there, each with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_peers.py"
pytestmark = pytest.mark.slow  # a benchmark script's run (about 2 s), not the package


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare_peers = _load_script()


def _skip_reason(module: str) -> str | None:
    ok, info = compare_peers.peer_available(module)
    if ok:
        return None
    return (f"{compare_peers.PEERS[module]} is not installed here ({info}); "
            "bash scripts/install_peers.sh installs it")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "tiny.json"
    threads = torch.get_num_threads()
    report = compare_peers.main(["--quick", "--problems", "tiny", "--ks", "1", "5",
                                 "--budgets", "100", "--sections", "operator", "topk",
                                 "density", "--json", str(path)])
    assert torch.get_num_threads() == threads  # the script restores the thread count
    return report, path


def _rows(report, tool, section="topk"):
    return [r for r in report["problems"]["tiny"][section] if r["tool"] == tool]


def test_json_is_written_and_valid(run):
    report, path = run
    loaded = json.loads(path.read_text())
    assert loaded["versions"]["torch"] == torch.__version__
    problem = loaded["problems"]["tiny"]
    assert problem["params"] == 612
    assert {"operator_check", "topk", "density", "density_summary", "targets"} <= set(problem)
    for row in problem["topk"]:
        assert row["hvps"] >= row["passes"] >= 1
        assert math.isfinite(row["seconds"])


def test_reference_is_exact(run):
    report, _ = run
    reference = report["problems"]["tiny"]["reference"]
    assert reference["max_rel_error_vs_full_batch_hvp"] < 1e-10
    assert reference["lambda_max"] > 0 > reference["lambda_min"]


def test_our_top_eigenvalues_match_the_dense_spectrum(run):
    report, _ = run
    top = np.array(report["problems"]["tiny"]["reference"]["top20"])
    rows = _rows(report, "ours")
    assert [r["k"] for r in rows] == [1, 5]
    for row in rows:
        assert row["reached_tol"], row
        np.testing.assert_allclose(row["eigenvalues"], top[:row["k"]], rtol=1e-9)
        assert row["max_rel_residual"] <= compare_peers.TOL * 1.0001
        assert row["passes"] == row["hvps"]  # one vector a pass in lanczos_eigsh
    checks = _rows(report, "ours", "operator_check")
    assert {c["batches"] for c in checks} == {"even", "ragged"}
    assert all(c["rel_error"] < 1e-12 for c in checks)


def test_arpack_row_uses_the_same_operator(run):
    report, _ = run
    top = np.array(report["problems"]["tiny"]["reference"]["top20"])
    for row in _rows(report, "ARPACK"):
        np.testing.assert_allclose(row["eigenvalues"], top[:row["k"]], rtol=1e-9)


def test_our_density_rows(run):
    report, _ = run
    ours = _rows(report, "ours", "density")
    assert len(ours) == 2
    for row in ours:
        assert row["hvps"] <= 100
        assert 0 < row["w1_over_range"] < 0.05


def test_pyhessian_part(run):
    reason = _skip_reason("pyhessian")
    if reason:
        pytest.skip(reason)
    report, _ = run
    top = np.array(report["problems"]["tiny"]["reference"]["top20"])
    rows = _rows(report, "PyHessian")
    assert [r["k"] for r in rows] == [1, 5]
    # power iteration to its default relative change 1e-3: the top value to ~1e-2
    assert abs(rows[0]["eigenvalues"][0] - top[0]) / top[0] < 1e-2
    assert rows[1]["hvps"] > rows[0]["hvps"]
    assert _rows(report, "PyHessian", "density")
    assert all(c["rel_error"] < 1e-12 for c in _rows(report, "PyHessian", "operator_check"))


def test_curvlinops_part(run):
    reason = _skip_reason("curvlinops")
    if reason:
        pytest.skip(reason)
    report, _ = run
    top = np.array(report["problems"]["tiny"]["reference"]["top20"])
    for row in _rows(report, "curvlinops"):
        np.testing.assert_allclose(row["eigenvalues"], top[:row["k"]], rtol=1e-9)
    assert all(c["rel_error"] < 1e-12 for c in _rows(report, "curvlinops", "operator_check"))


def test_hessian_eigenthings_part(run):
    reason = _skip_reason("hessian_eigenthings")
    if reason:
        pytest.skip(reason)
    report, _ = run
    rows = _rows(report, "hessian-eigenthings")
    assert {r["setting"].split()[0] for r in rows} == {"lanczos", "deflated_power_iteration"}
    checks = {c["batches"]: c["rel_error"]
              for c in _rows(report, "hessian-eigenthings", "operator_check")}
    assert checks["even"] < 1e-12  # equal batches: the same matrix as everyone's
