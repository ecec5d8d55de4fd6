"""scripts/device_check.py on the CPU (``--device cpu``: the GPU check's logic on tiny models),
and the TF32 policy of the operators (lanczos_hessian/curvature/precision.py) as far as a CPU
can check it: the flags inside a pass, their restoration, the operator's setting and the run
file's provenance. What only a GPU can show (TF32's error and speed, NCCL) is the script's."""

import json
import time

import pytest
import torch

from conftest import make_mlp, mlp_data
from lanczos_hessian import HessianOperator, read_file, run
from lanczos_hessian.curvature import precision
from lanczos_hessian.curvature.precision import tf32_flags, tf32_mode


import device_check


def _rows(report, section):
    return [r for r in report["rows"] if r["section"] == section]


@pytest.mark.slow  # about 5-9 s on this machine: in the full suite (CI), not the fast tier
def test_cpu_mode_runs_every_section_and_writes_one_json_and_one_table(tmp_path, capsys):
    out = tmp_path / "device_check.json"
    code = device_check.main(["--device", "cpu", "--json", str(out), "--scratch", str(tmp_path)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, printed
    assert list(report["sections"]) == list(device_check.SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section["error"], printed)
    assert {r["status"] for r in report["rows"]} <= {"ok", "info", "skipped"}, printed
    skipped = [r for r in report["rows"] if r["status"] == "skipped"]
    assert all(r["section"] in ("memory", "distributed") for r in skipped), skipped  # CUDA-only
    checks = {r["check"]: r for r in report["rows"]}
    for model in ("mlp", "cnn"):
        for kind in ("hessian", "ggn", "residual"):
            for dtype in ("float64", "float32"):
                assert checks[f"{model} {kind} {dtype}: product vs CPU float64"]["status"] == "ok"
                assert checks[f"{model} {kind} {dtype}: block of 2 vs single products"][
                    "status"] == "ok"
        for dtype in ("float64", "float32"):
            assert checks[f"{model} hessian {dtype}: top eigenvalues vs CPU"]["status"] == "ok"
            assert checks[f"{model} hessian {dtype}: SLQ nodes vs CPU"]["status"] == "ok"
    for label in ("off", "on"):
        for what in ("flags inside the pass", "flags restored after the pass",
                     "provenance allow_tf32"):
            assert checks[f"TF32 {label}: {what}"]["status"] == "ok"
    assert "cnn HVP time, TF32 on / off" in checks
    for what in ("eigs", "sharded eigs", "SLQ nodes"):
        assert checks[f"direct 2 ranks, gloo: {what} vs single process"]["status"] == "ok"
    speed = [r["check"] for r in _rows(report, "speed")]
    for name in ("cnn", "alexnet"):
        assert f"{name} (tiny stand-in): one full-data HVP / one gradient" in speed
    assert sum("per-vector cost" in c for c in speed) == 3  # CNN 4 and 16, AlexNet 4
    for form in ("per column", "batched backward", "forward-over-reverse"):  # the block forms
        assert f"cnn (tiny stand-in): block of 16 by {form}, per vector / gradient" in speed
    rule = checks["cnn (tiny stand-in): block of 16, the rule's way over the fastest"]
    assert rule["value"] >= 1 and "the rule: batched backward" in rule["note"]  # a tiny CNN
    assert sum("time outside the operator" in c for c in speed) == 4
    assert len(_rows(report, "memory")) == 4  # one per run, read from CUDA's allocator only
    assert checks["W=2 native: H v vs W=1 native, rel. diff"]["status"] == "ok"  # FSDP2 shards
    assert checks["W=2 native: parameters still sharded"]["status"] == "ok"
    # one table: a title, the header, a rule, one line per row, the sections' summary
    lines = printed.strip().splitlines()
    assert lines[0].startswith("device check (cpu) on CPU")
    assert lines[1].split() == ["section", "check", "value", "limit", "status", "note"]
    assert len(lines) == 3 + len(report["rows"]) + 2  # ... and "written to"
    assert lines[-2].startswith("sections: correctness ok")
    assert report["machine"]["torch"] == torch.__version__


def test_without_cuda_and_without_device_cpu_one_line_and_exit_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_check.main([]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "no CUDA device is present" in printed


def test_a_failing_section_is_recorded_and_the_next_runs(monkeypatch, tmp_path, capsys):
    def broken(ctx, sec):
        sec.row("a first check", 0.0, limit=1.0)
        raise RuntimeError("planted failure")

    monkeypatch.setitem(device_check.SECTIONS, "tf32", broken)
    out = tmp_path / "report.json"
    code = device_check.main(["--device", "cpu", "--sections", "tf32", "memory", "--json",
                              str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 1
    assert report["sections"]["tf32"]["status"] == "error"
    assert "planted failure" in report["sections"]["tf32"]["error"]
    assert "RuntimeError" in report["sections"]["tf32"]["data"]["traceback"]
    assert [r["status"] for r in _rows(report, "tf32")] == ["ok", "error"]
    assert "memory" in report["sections"]  # ran after it (and found no runs to measure)
    assert "planted failure" in printed


def test_time_limit_skips_sections_with_a_reason(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert device_check.main(["--device", "cpu", "--time-limit", "0.2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {s["status"] for s in report["sections"].values()} == {"skipped"}
    assert all("time limit" in s["error"] for s in report["sections"].values())
    assert "skipped" in capsys.readouterr().out


def test_an_application_after_the_hard_deadline_raises_out_of_time():
    ctx = device_check.Context(device_check.CONFIGS["cpu"], torch.device("cpu"), 60, "/tmp")
    model, (x, y) = make_mlp(), mlp_data()
    op = ctx.operator("hessian", model, x, y, 5)
    op.apply(torch.ones(op.shape[0], dtype=torch.float64))
    ctx.hard_deadline = time.monotonic() - 1
    with pytest.raises(device_check.OutOfTime):
        op.apply(torch.ones(op.shape[0], dtype=torch.float64))


# ---- the TF32 policy --------------------------------------------------------------------------
@pytest.fixture
def restore_tf32():
    state = precision._save()
    yield
    precision._restore(state)


@pytest.mark.parametrize("allow", [False, True])
def test_tf32_mode_sets_the_flags_and_restores_them(allow, restore_tf32):
    before = tf32_flags()
    with tf32_mode(allow):
        inside = tf32_flags()
        assert inside["matmul"] is allow and inside["cudnn"] is allow
        for key, value in inside.items():  # torch >= 2.9: the per-operation settings too
            if key.endswith("fp32_precision"):
                assert value == ("tf32" if allow else "ieee"), inside
    assert tf32_flags() == before
    with pytest.raises(KeyError):
        with tf32_mode(allow):
            raise KeyError("inside")
    assert tf32_flags() == before


def test_tf32_mode_keeps_the_callers_own_settings(restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = False
    before = (tf32_flags(), torch.get_float32_matmul_precision())
    with tf32_mode(False):
        assert tf32_flags()["matmul"] is False
    with tf32_mode(True):
        assert tf32_flags()["cudnn"] is True
    assert (tf32_flags(), torch.get_float32_matmul_precision()) == before


def test_operators_run_their_passes_under_the_policy_and_files_record_it(tmp_path, restore_tf32):
    model, (x, y) = make_mlp(), mlp_data()
    before = tf32_flags()
    seen = []
    ops = {allow: HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=5,
                                  **({} if allow is None else {"allow_tf32": allow}))
           for allow in (None, True)}
    assert ops[None].allow_tf32 is False and ops[True].allow_tf32 is True
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(tf32_flags()))
    cpu = [k for k in before if k.startswith("mkldnn.")]  # the settings the CPU's kernels read
    try:
        for allow, op in ops.items():
            seen.clear()
            op.apply(torch.ones(op.shape[0], dtype=torch.float64))
            expected = bool(allow)
            assert seen
            for f in seen:  # oneDNN's settings set; cuBLAS's and cuDNN's left as they were
                if cpu:
                    assert {f[k] for k in cpu} == {"tf32" if allow else "ieee"}, f
                    assert {k: v for k, v in f.items() if k not in cpu} == \
                        {k: v for k, v in before.items() if k not in cpu}, f
                else:  # torch < 2.9: the legacy matmul setting also rules oneDNN
                    assert f["matmul"] is expected, f
            assert tf32_flags() == before
    finally:
        handle.remove()
    for allow, op in ops.items():
        path = tmp_path / f"run-{allow}.h5"
        run.eigs(op, path, k=2, tol=1e-8, seed=0, progress=False)
        assert read_file(path)["attrs"]["allow_tf32"] == bool(allow)
        assert run.provenance(op)["allow_tf32"] is bool(allow)


@pytest.mark.slow  # two torch interpreters more than the direct launch (about 10 s here)
def test_cpu_mode_under_torchrun(tmp_path, capsys):
    """The launcher the GPU run uses: ``torchrun --nproc-per-node 2`` of the same worker."""
    out = tmp_path / "device_check.json"
    code = device_check.main(["--device", "cpu", "--sections", "distributed", "--launcher",
                              "torchrun", "--json", str(out), "--scratch", str(tmp_path)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, printed
    launch = report["sections"]["distributed"]["data"]["launches"]["gloo-2ranks"]
    assert launch["launcher"] == "torchrun" and "torch.distributed.run" in launch["command"]
    checks = {r["check"]: r["status"] for r in report["rows"]}
    for what in ("eigs", "sharded eigs", "SLQ nodes"):
        assert checks[f"torchrun 2 ranks, gloo: {what} vs single process"] == "ok", printed


def test_memory_rows_compare_the_solver_with_the_budget_rule():
    """The GPU-only arithmetic of the memory section, on made-up allocator readings."""
    ctx = device_check.Context(device_check.CONFIGS["cpu"], torch.device("cpu"), 60, "/tmp")
    gib = 2**30
    common = {"base_bytes": gib, "params": 1000, "ncv": 21, "location": "device"}
    ctx.memory_samples = [
        {"run": "fits", "peak_bytes": 13 * gib, "operator_peak_bytes": 3 * gib,
         "rule_bytes": 10 * gib, "budget": "60GiB", "kind": "eigs", **common},
        {"run": "over", "peak_bytes": 19 * gib, "operator_peak_bytes": 3 * gib,
         "rule_bytes": 10 * gib, "budget": "12GiB", "kind": "eigs", **common},
        {"run": "no basis", "peak_bytes": 5 * gib, "operator_peak_bytes": 3 * gib,
         "rule_bytes": None, "budget": None, "kind": "slq-no-reorth", **common},
    ]
    sec = device_check.Section(ctx, "memory", time.monotonic() + 60)
    device_check.section_memory(ctx, sec)
    rows = {r["check"]: r for r in sec.rows}
    assert rows["fits: solver memory / budget rule"]["value"] == pytest.approx(1.0)
    assert rows["fits: solver memory / budget rule"]["status"] == "ok"
    assert rows["fits: within the memory budget 60GiB"]["status"] == "ok"
    assert rows["over: solver memory / budget rule"]["value"] == pytest.approx(1.6)
    assert rows["over: solver memory / budget rule"]["status"] == "FAIL"
    assert rows["over: within the memory budget 12GiB"]["status"] == "FAIL"
    assert rows["no basis: solver memory beyond one application"]["value"] == pytest.approx(2)
    assert rows["no basis: peak GPU memory of the run"]["unit"] == "GiB"
