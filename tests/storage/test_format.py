"""The file format (docs/FORMAT.md): lean finished files, self-describing datasets, numbers
stored as numbers, one seed story, and a plain-h5py reader that rebuilds the package's
numbers from the stored arrays.

Every test but the import check writes files with the package (about one second per run on
one core), hence marked slow: about 12 s in all."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, ResumeError, run
from lanczos_hessian.analysis.spectrum import read_spectrum, summarize
from lanczos_hessian.cli import main
from lanczos_hessian.linalg.slq import split_seed
from lanczos_hessian.storage.hdf5 import read_file

SCRIPT = Path(__file__).parents[2] / "scripts" / "read_plain_h5.py"
LOSS = torch.nn.CrossEntropyLoss()
SLQ = dict(num_probes=3, num_steps=12, k_top=2, seed=4, progress=False)


def make_op():
    """An MLP of 2,164 parameters on 64 samples: its SLQ state (3 bases of 24 vectors) is
    ~1.2 MB, its results a few kB."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 40), torch.nn.Tanh(), torch.nn.Linear(40, 40),
                                torch.nn.Tanh(), torch.nn.Linear(40, 4)).double()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(64, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (64,), generator=g))
    return HessianOperator(model, LOSS, data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished SLQ file as written by default (state dropped) and one with its state kept."""
    root = tmp_path_factory.mktemp("format")
    lean, kept = root / "lean.h5", root / "kept.h5"
    eigs, result = run.slq(make_op(), lean, **SLQ)
    run.slq(make_op(), kept, keep_state=True, **SLQ)
    return {"lean": lean, "kept": kept, "eigs": eigs, "slq": result}


def datasets(path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, node: found.__setitem__(name, node)
                     if isinstance(node, h5py.Dataset) else None)
        return {name: (node.nbytes, dict(node.attrs)) for name, node in found.items()}


# ---- 1. a finished file holds results and provenance only ---------------------------------
@pytest.mark.slow
def test_a_finished_file_is_no_larger_than_its_results_and_provenance(files):
    lean, kept = files["lean"], files["kept"]
    with h5py.File(lean, "r") as f:
        groups = []
        f.visit(groups.append)
    assert not [name for name in groups if name.endswith("state") or "/state/" in name]
    stored = datasets(lean)
    payload = sum(nbytes for nbytes, _ in stored.values())  # results and step records
    # the bound: the arrays themselves, plus 64 KiB for attributes, object headers and
    # chunk indexes (about 40 datasets and groups), plus the steps' chunks of 64 rows
    bound = payload + (64 << 10) + 64 * 8 * 3 * 4
    size = lean.stat().st_size
    assert size <= bound, (size, payload)
    state_bytes = 3 * (2 * 12) * 2164 * 8  # three probes' bases: 2 slots per vector
    assert kept.stat().st_size >= size + state_bytes
    assert size < kept.stat().st_size / 5


@pytest.mark.slow
def test_a_kept_state_still_resumes_and_a_dropped_one_returns_the_stored_result(files):
    again = run.slq(make_op(), files["kept"], resume=True, keep_state=True, **SLQ).slq
    np.testing.assert_array_equal(again.nodes, files["slq"].nodes)
    with h5py.File(files["kept"], "r") as f:
        assert "state" in f["slq"] and "basis_0" in f["slq/state"]
    eigs, stored = run.slq(make_op(), files["lean"], resume=True, **SLQ)
    for name in ("nodes", "weights", "alphas", "betas", "num_nodes", "outliers"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(files["slq"], name))
    assert (stored.num_passes, stored.num_matvecs, stored.seed, stored.deflation_passes) == (
        files["slq"].num_passes, files["slq"].num_matvecs, files["slq"].seed,
        files["slq"].deflation_passes)
    np.testing.assert_array_equal(eigs.eigenvalues, files["eigs"].eigenvalues)
    assert stored.timings["total"] == pytest.approx(files["slq"].timings["total"])
    with pytest.raises(ResumeError, match=r"num_probes: file has 3, this run has 4.*dropped.*"
                                          r"--keep-state"):
        run.slq(make_op(), files["lean"], resume=True, **{**SLQ, "num_probes": 4})


@pytest.mark.slow
def test_a_finished_eigs_file_resumes_to_its_stored_result_or_names_keep_state(tmp_path):
    path = tmp_path / "eigs.h5"
    first = run.eigs(make_op(), path, k=3, tol=1e-8, seed=2, progress=False)
    again = run.eigs(make_op(), path, k=3, tol=1e-8, seed=2, progress=False, resume=True)
    for name in ("eigenvalues", "residual_bounds", "error_bounds", "residuals", "alphas"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.eigenvectors is None and again.converged.dtype == bool
    assert (again.num_matvecs, again.num_passes, again.which) == (
        first.num_matvecs, first.num_passes, first.which)
    with pytest.raises(ResumeError, match=r"saved no eigenvectors.*--keep-state"):
        run.eigs(make_op(), path, k=3, tol=1e-8, seed=2, progress=False, resume=True,
                 save_vectors=True)
    with pytest.raises(ResumeError, match=r"different run.*k: file has 3, this run has 4.*"
                                          r"--keep-state"):
        run.eigs(make_op(), path, k=4, tol=1e-8, seed=2, progress=False, resume=True)


# ---- 2. num_samples ---------------------------------------------------------------------
@pytest.mark.slow
def test_num_samples_is_written_for_a_data_loader_and_analyze_prints_it(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (50,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 4)).double()
    path = tmp_path / "loader.h5"
    run.eigs(HessianOperator(model, LOSS, loader), path, k=2, seed=0, progress=False)
    assert read_file(path)["attrs"]["num_samples"] == 50
    assert "50 samples" in summarize(read_spectrum(path))


# ---- 3. every dataset describes itself -----------------------------------------------------
@pytest.mark.slow
def test_every_dataset_carries_description_units_and_order(files):
    for path in (files["lean"], files["kept"]):  # the kept one has the state's datasets too
        for name, (_, attrs) in datasets(path).items():
            assert {"description", "units", "order"} <= set(attrs), name
            assert attrs["description"] and "not declared" not in attrs["description"], name
    lean = datasets(files["lean"])
    assert lean["slq/nodes"][1]["units"] == "loss / param^2"
    assert lean["slq/weights"][1]["units"] == "1"
    assert lean["slq/nodes"][1]["order"].startswith("probe-major")
    assert lean["eigs/eigenvalues"][1]["order"] == "ascending"
    assert lean["eigs/converged"][1]["units"] == ""
    with h5py.File(files["lean"], "r") as f:
        for group in ("/", "eigs", "slq", "slq/steps"):
            assert f[group].attrs["description"], group


# ---- 4. numbers stored as numbers -----------------------------------------------------------
def all_attributes(path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        for name, node in [("/", f)] + [(n, f[n]) for n in _names(f)]:
            for key, value in node.attrs.items():
                found[f"{name}@{key}"] = value
    return found


def _names(f):
    names = []
    f.visit(names.append)
    return names


@pytest.mark.slow
def test_attributes_hold_numbers_not_json_or_none_strings(files, tmp_path):
    for path in (files["lean"], files["kept"]):
        for where, value in all_attributes(path).items():
            if isinstance(value, (str, bytes)):
                text = value.decode() if isinstance(value, bytes) else value
                assert text != "None" and not text.startswith(("[", "{")), where
    attrs = all_attributes(files["lean"])
    assert attrs["slq@seconds_total"] > 0 and "slq@timings" not in attrs
    assert list(attrs["/@param_names"]) == ["0.weight", "0.bias", "2.weight", "2.bias",
                                            "4.weight", "4.bias"]
    saved = read_file(files["lean"])
    assert saved["slq"].attrs["timings"]["total"] == attrs["slq@seconds_total"]
    capped, free = tmp_path / "capped.h5", tmp_path / "free.h5"
    op = make_op()
    run.eigs(op, capped, k=2, seed=0, max_matvecs=60, progress=False)
    run.eigs(op, free, k=2, seed=0, progress=False)
    assert read_file(capped)["eigs"].attrs["max_matvecs"] == 60
    assert "max_matvecs" not in read_file(free)["eigs"].attrs  # absent: no cap


@pytest.mark.slow
def test_files_written_before_still_read_and_resume(tmp_path):
    """Older files hold "None" strings and JSON strings where numbers now are."""
    kept, lean = tmp_path / "kept.h5", tmp_path / "lean.h5"
    settings = dict(k=2, seed=0, progress=False)
    first = run.eigs(make_op(), kept, keep_state=True, **settings)
    run.eigs(make_op(), lean, **settings)
    for path in (kept, lean):
        with h5py.File(path, "r+") as f:
            eigs = f["eigs"]
            seconds = {k[len("seconds_"):]: float(v) for k, v in eigs.attrs.items()
                       if k.startswith("seconds_")}
            for key in [k for k in eigs.attrs if k.startswith("seconds_")]:
                del eigs.attrs[key]
            eigs.attrs["timings"] = json.dumps(seconds)
            eigs.attrs["max_matvecs"] = "None"
            f.attrs["param_names"] = json.dumps(["0.weight", "0.bias"])
            if "state" in eigs:
                eigs["state"].attrs["run_max_matvecs"] = "None"
        saved = read_file(path)
        assert saved["eigs"].attrs["timings"]["total"] == seconds["total"]
        assert saved["eigs"].attrs["max_matvecs"] is None
        assert saved["attrs"]["param_names"] == ["0.weight", "0.bias"]
        again = run.eigs(make_op(), path, resume=True, keep_state=True, **settings)
        np.testing.assert_array_equal(again.eigenvalues, first.eigenvalues)
    assert again.timings["total"] == seconds["total"]


# ---- 5. one seed story ---------------------------------------------------------------------
@pytest.mark.slow
def test_the_root_seed_is_the_runs_and_the_groups_record_the_split_seeds(files):
    saved = read_file(files["lean"])
    start_seed, probe_seed = split_seed(SLQ["seed"])
    assert saved["attrs"]["seed"] == saved["slq"].attrs["seed"] == SLQ["seed"]
    assert saved["slq"].attrs["probe_seed"] == probe_seed == files["slq"].seed
    assert saved["eigs"].attrs["start_seed"] == start_seed
    assert "probe_seed" in saved["slq"].attrs["description"]
    assert "split_seed" in saved["attrs"]["description"]


# ---- the command line ---------------------------------------------------------------------
PROBLEM = """
import torch
def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 30), torch.nn.Tanh(),
                                torch.nn.Linear(30, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    return model, torch.nn.CrossEntropyLoss(), (x, torch.randint(0, 3, (40,), generator=g))
"""


@pytest.mark.slow
def test_the_command_line_drops_the_state_unless_kept(tmp_path, monkeypatch, capsys, caplog):
    (tmp_path / "format_problem.py").write_text(PROBLEM)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["slq", "--problem", "format_problem:build", "--num-probes", "2", "--num-steps",
            "8", "--deflate-top", "1", "--no-progress"]
    paths = {name: tmp_path / f"{name}.h5" for name in ("lean", "kept", "old")}
    assert main(base + ["--out", str(paths["lean"])]) == 0
    assert main(base + ["--out", str(paths["kept"]), "--keep-state"]) == 0
    assert main(base + ["--out", str(paths["old"]), "--drop-state"]) == 0
    assert "--drop-state is the default now" in caplog.text
    for name, has_state in (("lean", False), ("kept", True), ("old", False)):
        with h5py.File(paths[name], "r") as f:
            assert ("state" in f["slq"]) == has_state, name
    assert main(base + ["--out", str(paths["lean"]), "--resume"]) == 0  # nothing to compute
    printed = capsys.readouterr().out
    assert "trace" in printed and f"written to {paths['lean']}" in printed
    assert main(base + ["--out", str(paths["lean"]), "--resume", "--num-steps", "9"]) == 2
    assert "--keep-state" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.h5"), "--keep-state", "--drop-state"]) == 2
    assert "contradict" in capsys.readouterr().err


# ---- 7. the plain-h5py reader ----------------------------------------------------------
def load_script():
    spec = importlib.util.spec_from_file_location("read_plain_h5", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_reader_imports_only_h5py_numpy_and_the_standard_library():
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"h5py", "numpy", "argparse", "json", "math", "sys", "__future__"}


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.slow
def test_the_plain_reader_reproduces_the_packages_trace_moments_and_density(files, capsys):
    reader = load_script()
    q = read_spectrum(files["lean"]).quadrature
    for width in (None, 3e-4):  # the default rule, and a width given
        out = reader.report(files["lean"], width=width, order=4)
        grid, phi = q.density(width=width)
        assert _relative(out["grid"], grid) <= 1e-12 and _relative(out["density"], phi) <= 1e-12
    trace = q.trace()
    assert _relative(out["trace"][0], trace.value) <= 1e-12
    assert _relative(out["trace"][1], trace.stderr) <= 1e-12
    normalized, traces = q.moments(4), q.moments(4, normalized=False)
    for k in range(5):
        assert _relative(out["moments"][k][0], normalized[k].value) <= 1e-12
        assert _relative(out["traces"][k][0], traces[k].value) <= 1e-12
        if k:
            assert _relative(out["traces"][k][1], traces[k].stderr) <= 1e-12
    assert f"{trace.value:.6e}" in summarize(read_spectrum(files["lean"]))  # analyze's line
    capsys.readouterr()


@pytest.mark.slow
def test_the_plain_reader_rebuilds_a_cut_off_run_from_its_step_records(files, tmp_path):
    """A run killed in its SLQ phase holds no nodes: both readers rebuild the Gauss rules from
    the committed tridiagonal coefficients (same numbers up to the eigensolver's rounding)."""
    cut = tmp_path / "cut.h5"
    cut.write_bytes(files["lean"].read_bytes())
    with h5py.File(cut, "r+") as f:
        for name in ("nodes", "weights", "alphas", "betas", "num_nodes", "outliers",
                     "outlier_residuals"):
            del f["slq"][name]
        f["slq"].attrs["complete"] = False
    q = read_spectrum(cut).quadrature
    assert not q.complete
    out = load_script().report(cut, width=3e-4)
    assert _relative(out["trace"][0], q.trace().value) <= 1e-10
    assert _relative(out["density"], q.density(width=3e-4)[1]) <= 1e-9


@pytest.mark.slow
def test_the_plain_reader_runs_alone_and_writes_its_numbers(files, tmp_path):
    out = tmp_path / "numbers.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(files["lean"]), "--json", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "trace" in done.stdout and "density: 4001 points" in done.stdout
    numbers = json.loads(out.read_text())
    trace = read_spectrum(files["lean"]).quadrature.trace()
    assert _relative(numbers["trace"][0], trace.value) <= 1e-12
