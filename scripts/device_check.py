"""Device check: the CUDA / NCCL path of the package, proven in one command (issue 15).

Everything else in this repository is tested on the CPU with gloo. This script is what a
session lent a GPU runs, once, in a few minutes, and what it writes (one JSON file, one
table on stdout) is what goes into docs/BENCHMARKS.md. Not yet run on a GPU: the session
that wrote it had none; it was tested on the CPU with ``--device cpu`` (tests/scripts/test_device_check.py).

    python scripts/device_check.py --json out/device_check.json            # full, < 8 min, one H200
    python scripts/device_check.py --quick --json out/device_check.json    # < 3 min
    python scripts/device_check.py --device cpu --json out/device_check_cpu.json   # tiny models

On the device tool (15 minutes of device time a session, 10 a command), from the repository
root, nothing to install (the machine's python3 has torch, h5py, scipy and tqdm; the script
puts the checkout on ``sys.path`` itself, and its workers' ``PYTHONPATH``), with
``timeout_s=600``, which leaves the full mode two minutes of slack and the session time for
one rerun in quick mode::

    PYTHONUNBUFFERED=1 python3 scripts/device_check.py --json $OUT/device_check.json

Sections (each one's failure is recorded, in the JSON and the table, and the next one runs):

1. ``correctness``: the Hessian, GGN and residual operators of the benchmark MLP and CNN
   (``scripts/bench_hvp.py``, about 1M parameters each, on MNIST digits) on the device in
   float64 and float32, against the same operator in float64 on the CPU: products within
   1e-12 (float64) and 1e-5 (float32) relative, block products equal to single products,
   top eigenpairs (``lanczos_eigsh``) and SLQ nodes equal to the CPU's.
2. ``tf32``: the policy (products with TF32 off unless ``allow_tf32=True``; see
   ``lanczos_hessian/curvature/precision.py``): the flags inside a pass and restored after
   it, the provenance entry, and on the CNN the relative HVP error and the time of both.
3. ``distributed``: ``torchrun --nproc-per-node 1`` with NCCL (a raw all-reduce on a CUDA
   tensor, then ``run.eigs`` and ``run.slq`` equal to the single process), then 2 ranks on
   the one GPU with NCCL, and with gloo over CUDA tensors if NCCL refuses two ranks on one
   device (eigs, sharded eigs and SLQ equal to the single process).
4. ``speed``: one full-data HVP over one full-data gradient for the CNN (MNIST, batches of
   512) and AlexNet (61.1M parameters, 224x224, batches of 128); the per-vector cost of
   block products of 1, 4 and 16 vectors; the share of the time outside the operator
   (reorthogonalization, restarts, quadrature, HDF5) for AlexNet's top 10 (basis in GPU
   memory, without and with the run file) and SLQ 10 x 80 (without reorthogonalization: 10
   bases of 80 AlexNet vectors would be 390 GB), and the CNN's SLQ 10 x 80 with its file.
6. ``compiled``: ``compile=True`` products (``torch.compile``, ``mode="reduce-overhead"``
   on CUDA) of the 4,270-parameter MLP (tiny MLP with ``--device cpu``), float32 and
   float64, against the eager products (1e-6 / 1e-12 relative), the graphs compiled over
   three passes with a ragged last batch (at most 2), the compile time, and the pass time
   compiled against eager (see ``lanczos_hessian/curvature/compiled.py``); with
   ``--device cpu`` the ``aot_eager`` backend (the graphs without code generation).
5. ``memory``: the peak GPU memory of those runs beyond one operator application, against
   the budget rule of the basis placement (``choose_location``: basis plus 4 working
   vectors).
7. ``sharded``: Hessian-vector products of a GPT wrapped with FSDP2's ``fully_shard``,
   taken on the parameters' shards (``scripts/bench_sharded.py --device cuda``: NCCL, W = 1,
   and W = 2 with two GPUs; the 101.4M-parameter model in full mode, float32): exactness
   against W = 1 and the gather path, peak device memory and seconds per product.

``--time-limit`` (default 170 s quick, 470 s full) bounds the whole run: each section gets
a share of what is left, optional steps are skipped when their share is spent, and every
operator application checks a hard deadline, so a slow step ends its section (recorded as
cut) rather than the run; the JSON is rewritten after every section, so a killed run
leaves what it measured. The distributed launches start with the run and are collected in
their section (their start-up overlaps the first sections); ``--launcher`` picks torchrun
(default on CUDA) or plain processes with torchrun's variables (default on the CPU, where a
second interpreter for the launcher costs seconds). Without a CUDA device and without
``--device cpu`` the script prints one line and exits 0. Exit status 1 when a check failed
or a section raised.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for _path in (str(REPO), str(SCRIPTS)):  # runs from a checkout without installing
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

KINDS = ("hessian", "ggn", "residual")
#: Variables that force TF32 below torch's flags (cuBLAS / all NVIDIA libraries)
TF32_ENVIRONMENT = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")
TOL = {"float64": 1e-12, "float32": 1e-5}  # relative, max norm
GIB = 2**30


# ---- configurations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    name: str
    time_limit: float
    tiny: bool  # the CPU mode's tiny models instead of the benchmark ones
    min_section_s: float
    # 1. correctness (CPU float64 references)
    corr_samples: int
    corr_batch: int
    block: int
    eig_k: int
    eig_max_matvecs: int
    slq_probes: int
    slq_steps: int
    # 3. distributed
    dist_samples: int
    dist_batch: int
    dist_k: int
    dist_slq_steps: int
    dist_timeout_s: float
    # 4. speed and 5. memory
    cnn_samples: int
    cnn_batch: int
    repeats: int
    blocks: tuple
    alex_samples: int
    alex_batch: int
    alex_blocks: tuple
    alex_tol: float
    alex_matvecs: int
    alex_file_matvecs: int
    alex_slq_steps: int
    alex_budget: str
    cnn_slq_steps: int
    slq_probes_speed: int = 10
    top_k: int = 10


CONFIGS = {
    "full": Config("full", 470, False, 20, corr_samples=160, corr_batch=64, block=3, eig_k=5,
                   eig_max_matvecs=300, slq_probes=2, slq_steps=30, dist_samples=96,
                   dist_batch=40, dist_k=4, dist_slq_steps=12, dist_timeout_s=150,
                   cnn_samples=10000, cnn_batch=512, repeats=5, blocks=(1, 4, 16),
                   alex_samples=512, alex_batch=128, alex_blocks=(1, 4, 16), alex_tol=1e-4,
                   alex_matvecs=150, alex_file_matvecs=40, alex_slq_steps=80,
                   alex_budget="60GiB", cnn_slq_steps=80),
    "quick": Config("quick", 170, False, 10, corr_samples=48, corr_batch=20, block=3, eig_k=3,
                    eig_max_matvecs=200, slq_probes=2, slq_steps=16, dist_samples=48,
                    dist_batch=20, dist_k=3, dist_slq_steps=8, dist_timeout_s=90,
                    cnn_samples=4096, cnn_batch=512, repeats=3, blocks=(1, 4, 16),
                    alex_samples=256, alex_batch=128, alex_blocks=(1, 4), alex_tol=1e-4,
                    alex_matvecs=40, alex_file_matvecs=12, alex_slq_steps=20,
                    alex_budget="60GiB", cnn_slq_steps=40),
    "cpu": Config("cpu", 60, True, 0.5, corr_samples=29, corr_batch=15, block=2, eig_k=2,
                  eig_max_matvecs=200, slq_probes=2, slq_steps=6, dist_samples=29,
                  dist_batch=15, dist_k=2, dist_slq_steps=5, dist_timeout_s=40,
                  cnn_samples=32, cnn_batch=16, repeats=1, blocks=(1, 4, 16),
                  alex_samples=16, alex_batch=8, alex_blocks=(1, 4), alex_tol=1e-4,
                  alex_matvecs=40, alex_file_matvecs=12, alex_slq_steps=5,
                  alex_budget="64MiB", cnn_slq_steps=6),
}

#: (section, share of the time left when it starts)
SHARES = {"correctness": 0.22, "tf32": 0.06, "distributed": 0.22, "speed": 0.42, "memory": 0.08,
          "compiled": 0.1, "sharded": 0.12}


# ---- the problems (the benchmark scripts' builders) -----------------------------------------------
_MNIST: dict = {}


def _mnist(n):
    """``n`` MNIST digits (the shipped subset), or seeded noise of their shape if it is absent."""
    if "data" not in _MNIST:
        try:
            from lanczos_hessian.examples.datasets import load_mnist

            _MNIST["data"], _MNIST["source"] = load_mnist(), "MNIST (data/mnist_10k.npz)"
        except Exception as exc:  # data/ missing on the machine: the numbers stay comparable
            g = torch.Generator().manual_seed(7)
            _MNIST["data"] = (torch.randn(10000, 1, 28, 28, generator=g),
                              torch.randint(0, 10, (10000,), generator=g))
            _MNIST["source"] = f"seeded noise ({type(exc).__name__}: {exc})"
    x, y = _MNIST["data"]
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:n]
    return x[index], y[index]


def problem(cfg: Config, name: str, n: int, dtype=torch.float64, device="cpu"):
    """``(model, inputs, targets)``, the same on every call and in every process: the
    benchmark MLP / CNN of scripts/bench_hvp.py on MNIST, AlexNet at ImageNet size on seeded
    images (scripts/bench_scale.py's problem); with ``cfg.tiny``, small ones of each kind."""
    from lanczos_hessian.examples.models import alexnet_imagenet, mlp, small_cnn

    if cfg.tiny:
        torch.manual_seed(0)
        model, shape, classes = {
            "mlp": lambda: (mlp([8, 8, 3]), (8,), 3),
            "cnn": lambda: (small_cnn(1, 3, 8, channels=(2, 2), hidden=4), (1, 8, 8), 3),
            "alexnet": lambda: (small_cnn(3, 10, 16, channels=(4, 8), hidden=16), (3, 16, 16), 10),
        }[name]()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    elif name in ("mlp", "cnn"):
        from bench_hvp import models

        model, flat = models()[name]
        x, y = _mnist(n)
        x = x.reshape(len(x), -1) if flat else x
    else:
        torch.manual_seed(0)
        model = alexnet_imagenet()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 224, 224, generator=g)
        y = torch.randint(0, 1000, (n,), generator=g)
    return model.to(device, dtype), x.to(device, dtype), y.to(device)


def loss_fn():
    return torch.nn.CrossEntropyLoss()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- the run's context: time, device, records -----------------------------------------------------
class OutOfTime(Exception):
    """An operator application was asked for after the section's hard deadline."""


class Context:
    def __init__(self, cfg: Config, device: torch.device, time_limit: float, scratch: str):
        self.cfg, self.device = cfg, device
        self.start = time.monotonic()
        self.deadline = self.start + time_limit
        self.hard_deadline = self.deadline
        self.scratch = scratch
        self.memory_samples: list = []  # filled by the speed section, read by the memory one
        self.launches: list = []  # distributed launches started early (start_launches)
        self.launch_dir = None
        self.launcher = "torchrun" if device.type == "cuda" else "direct"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def operator(self, kind, model, inputs, targets, batch_size, **kwargs):
        """A curvature operator whose every application first checks the hard deadline."""
        from lanczos_hessian.curvature.operators import OPERATORS

        op = OPERATORS[kind](model, loss_fn(), (inputs, targets), batch_size=batch_size,
                             **kwargs)
        apply = op.apply

        def guarded(V):
            if time.monotonic() > self.hard_deadline:
                raise OutOfTime(f"{kind} application after the section's hard deadline")
            return apply(V)

        op.apply = guarded  # the solvers and scipy's hooks all go through op.apply
        return op

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn, repeats: int) -> float:
        """Least wall time of ``repeats`` calls, the device synchronized around each."""
        best = math.inf
        for _ in range(max(1, repeats)):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def peak_start(self) -> int:
        """Reset the peak counter; the bytes allocated now (0 on the CPU)."""
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_since(self, base: int):
        """Peak bytes allocated beyond ``base`` since :meth:`peak_start`; None on the CPU."""
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) - base

    def cleanup(self):
        if self.cuda:  # give the freed blocks back, so the next peak is the next run's own
            gc.collect()
            torch.cuda.empty_cache()


class Section:
    """The rows and data of one section; ``step`` runs a part of it whose failure is
    recorded as an error row while the section goes on."""

    def __init__(self, ctx: Context, name: str, soft_deadline: float):
        self.ctx, self.name, self.soft_deadline = ctx, name, soft_deadline
        self.rows: list = []
        self.data: dict = {}

    def left(self) -> float:
        return self.soft_deadline - time.monotonic()

    def row(self, check, value=None, *, limit=None, unit="", status=None, note=""):
        if status is None:
            if limit is None:
                status = "info"
            else:
                status = "ok" if value is not None and np.isfinite(value) and value <= limit \
                    else "FAIL"
        value = None if value is None else float(value)
        self.rows.append({"section": self.name, "check": check, "value": value, "unit": unit,
                          "limit": limit, "status": status, "note": note})
        return value

    def compare(self, check, got, ref, limit, note=""):
        return self.row(check, relative_error(got, ref), limit=limit, note=note)

    def step(self, label, fn, estimate_s: float = 0.0):
        left = self.left()
        if left < estimate_s:
            self.row(label, status="skipped",
                     note=f"time: {max(left, 0):.0f} s left of the section's share, "
                          f"needs about {estimate_s:.0f} s")
            return None
        try:
            return fn()
        except OutOfTime:
            raise
        except Exception as exc:  # recorded; the section goes on
            self.row(label, status="error", note=_message(exc))
            self.data.setdefault("tracebacks", {})[label] = traceback.format_exc()[-4000:]
            self.ctx.cleanup()
            return None


def _message(exc) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "..."


def relative_error(got, ref) -> float:
    """``max |got - ref| / max |ref|`` (NaN entries, the padding of SLQ rules, must match)."""
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, float)
    ref = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref, float)
    if got.shape != ref.shape or not np.array_equal(np.isnan(got), np.isnan(ref)):
        return math.inf
    scale = np.nanmax(np.abs(ref)) if ref.size else 0.0
    diff = np.nanmax(np.abs(got - ref)) if ref.size else 0.0
    return float(diff / max(scale, 1e-300))


def _quiet_warnings():
    from lanczos_hessian.errors import NumericalWarning

    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore", NumericalWarning)
    return context


# ---- 1. correctness ----------------------------------------------------------------------------------
def section_correctness(ctx: Context, sec: Section):
    for name in ("mlp", "cnn"):
        _correctness_of(ctx, sec, name)
        ctx.cleanup()


def _correctness_of(ctx, sec, name):
    from lanczos_hessian import lanczos_eigsh, slq

    cfg = ctx.cfg
    model, x, y = problem(cfg, name, cfg.corr_samples)  # float64 on the CPU: the reference
    dim = sum(p.numel() for p in model.parameters())
    sec.data[f"{name}_params"] = dim
    V = torch.from_numpy(np.random.default_rng(0).standard_normal((dim, cfg.block)))
    refs, ref_ops = {}, {}
    for kind in KINDS:
        ref_ops[kind] = ctx.operator(kind, model, x, y, cfg.corr_batch)
        refs[kind] = ref_ops[kind].apply(V)
    models = {dt: copy.deepcopy(model).to(ctx.device, dt) for dt in (torch.float64, torch.float32)}
    for dt, dev_model in models.items():
        dn = _dtype_name(dt)
        for kind in KINDS:
            def products(kind=kind, dev_model=dev_model, dn=dn):
                op = ctx.operator(kind, dev_model, x, y, cfg.corr_batch)
                block = op.apply(V).cpu()
                sec.compare(f"{name} {kind} {dn}: product vs CPU float64", block, refs[kind],
                            TOL[dn], note=f"M={dim}, N={cfg.corr_samples}, {cfg.block} vectors")
                singles = torch.stack([op.apply(V[:, j]).cpu() for j in range(V.shape[1])], 1)
                sec.compare(f"{name} {kind} {dn}: block of {cfg.block} vs single products",
                            block, singles, TOL[dn])

            sec.step(f"{name} {kind} {dn} products", products)

    # eigenpairs: float64 to tol 1e-9, float32 to 2e-5 (above the precision floor of float32
    # products, 100 eps = 1.2e-5: linalg.linop.precision_floor)
    tols = {"float64": 1e-9, "float32": 2e-5}
    context = _quiet_warnings()
    try:
        def eigs(op, tol):
            return lanczos_eigsh(op, k=cfg.eig_k, which="LA", tol=tol, rng=0,
                                 return_eigenvectors=True, true_residuals=False,
                                 max_matvecs=cfg.eig_max_matvecs)

        ref = sec.step(f"{name} eigenpairs on the CPU (reference)",
                       lambda: eigs(ref_ops["hessian"], tols["float64"]), estimate_s=2)
        if ref is not None:
            sec.data[f"{name}_eigenvalues_cpu"] = ref.eigenvalues.tolist()
            for dt, dev_model in models.items():
                dn = _dtype_name(dt)

                def compare_eigs(dev_model=dev_model, dn=dn):
                    op = ctx.operator("hessian", dev_model, x, y, cfg.corr_batch)
                    res = eigs(op, tols[dn])
                    sec.data[f"{name}_eigenvalues_{dn}"] = res.eigenvalues.tolist()
                    note = (f"top {cfg.eig_k}, tol {tols[dn]:g}; converged "
                            f"{int(res.converged.sum())}/{cfg.eig_k} (CPU "
                            f"{int(ref.converged.sum())}), {res.num_matvecs} matvecs")
                    sec.compare(f"{name} hessian {dn}: top eigenvalues vs CPU",
                                res.eigenvalues, ref.eigenvalues, TOL[dn], note=note)
                    angle, bound = _eigenvector_agreement(ref, res, TOL[dn])
                    sec.row(f"{name} hessian {dn}: eigenvectors, sin angle to CPU's / bound",
                            angle / bound if bound > 0 else math.inf, limit=1.0, unit="x",
                            note=f"max sin angle {angle:.1e}; bound (product error + both "
                                 f"residuals) / gap = {bound:.1e}")

                sec.step(f"{name} eigenpairs {dn}", compare_eigs, estimate_s=1)

        def slq_of(op):
            return slq(op, num_probes=cfg.slq_probes, num_steps=cfg.slq_steps, rng=0)

        ref_slq = sec.step(f"{name} SLQ on the CPU (reference)",
                           lambda: slq_of(ref_ops["hessian"]), estimate_s=2)
        if ref_slq is not None:
            for dt, dev_model in models.items():
                dn = _dtype_name(dt)

                def compare_slq(dev_model=dev_model, dn=dn):
                    op = ctx.operator("hessian", dev_model, x, y, cfg.corr_batch)
                    res = slq_of(op)
                    sec.compare(f"{name} hessian {dn}: SLQ nodes vs CPU", res.nodes,
                                ref_slq.nodes, TOL[dn],
                                note=f"{cfg.slq_probes} probes x {cfg.slq_steps} steps")

                sec.step(f"{name} SLQ {dn}", compare_slq, estimate_s=1)
    finally:
        context.__exit__(None, None, None)


def _eigenvector_agreement(ref, res, product_tol):
    """Max sine of the angle between matching eigenvectors of two runs, and its bound: each
    Ritz vector is within ``r / gap`` of the eigenvector (Davis-Kahan), the products
    differ by ``product_tol * |lambda|max``; compared for all pairs but the lowest computed
    (whose gap to the next, uncomputed eigenvalue is unknown)."""
    lam = np.asarray(ref.eigenvalues)
    if len(lam) < 2:
        return 0.0, 1.0
    scale = np.abs(lam).max()
    worst_angle, worst_ratio, bound_at = 0.0, 0.0, 1.0
    for i in range(1, len(lam)):
        others = np.delete(lam, i)
        gap = max(np.abs(others - lam[i]).min(), 1e-300)
        a = ref.eigenvectors[:, i] / np.linalg.norm(ref.eigenvectors[:, i])
        b = res.eigenvectors[:, i] / np.linalg.norm(res.eigenvectors[:, i])
        # distance of the unit vectors up to sign: the sine of the angle to first order,
        # resolved to rounding (sqrt(1 - cos^2) would stop at 1e-8)
        angle = float(min(np.linalg.norm(a - b), np.linalg.norm(a + b)))
        bound = (product_tol * scale + ref.residual_bounds[i] + res.residual_bounds[i]) / gap
        bound = max(bound, 1e-14)
        if angle / bound >= worst_ratio:
            worst_angle, worst_ratio, bound_at = angle, angle / bound, bound
    return worst_angle, bound_at


# ---- 2. TF32 ------------------------------------------------------------------------------------------
def section_tf32(ctx: Context, sec: Section):
    from lanczos_hessian.curvature.operators import HessianOperator
    from lanczos_hessian.curvature.precision import device_flags, policy_holds, tf32_flags
    from lanczos_hessian.run import provenance

    cfg = ctx.cfg
    if ctx.cuda:
        major, minor = torch.cuda.get_device_capability(ctx.device)
        sec.data["compute_capability"] = f"{major}.{minor}"
        sec.data["tf32_hardware"] = major >= 8
    sec.data["policy"] = ("products run with TF32 off (cuBLAS and cuDNN on CUDA, oneDNN on "
                          "the CPU, which never runs them in bfloat16) unless the operator "
                          "is built with allow_tf32=True; the process-wide flags are restored "
                          "after every pass; recorded as the file attribute allow_tf32")
    sec.data["flags_before"] = before = tf32_flags()
    overrides = {name: os.environ[name] for name in TF32_ENVIRONMENT if name in os.environ}
    sec.data["environment"] = overrides
    if overrides:  # these decide below torch's flags: the policy cannot turn TF32 off then
        sec.row("TF32 environment overrides", status="info", note=str(overrides))
    model, x, y = problem(cfg, "cnn", cfg.corr_samples)
    dim = sum(p.numel() for p in model.parameters())
    v = torch.from_numpy(np.random.default_rng(1).standard_normal(dim))
    ref = HessianOperator(model, loss_fn(), (x, y), batch_size=cfg.corr_batch).apply(v)
    dev32 = copy.deepcopy(model).to(ctx.device, torch.float32)
    for allow in (False, True):
        def error_and_flags(allow=allow):
            seen = []
            op = ctx.operator("hessian", dev32, x, y, cfg.corr_batch, allow_tf32=allow)
            handle = dev32.register_forward_pre_hook(lambda module, args: seen.append(tf32_flags()))
            try:
                got = op.apply(v)
            finally:
                handle.remove()
            after = tf32_flags()
            label = "on" if allow else "off"
            err = relative_error(got, ref)
            sec.data[f"hvp_error_tf32_{label}"] = err
            sec.row(f"cnn float32 HVP with TF32 {label}: rel. error vs CPU float64", err,
                    limit=None if allow else TOL["float32"],
                    note="opt-in: TF32 rounding expected on GPUs from Ampere on" if allow
                    else "the default")
            inside = [device_flags(ctx.device, f) for f in seen]
            sec.row(f"TF32 {label}: flags inside the pass", status="ok"
                    if inside and all(policy_holds(f, allow) for f in inside) else "FAIL",
                    note=f"the settings {ctx.device.type} reads, in {len(seen)} forward calls: "
                         f"{sorted({tuple(sorted(f.items())) for f in inside})}")
            sec.row(f"TF32 {label}: flags restored after the pass",
                    status="ok" if after == before else "FAIL", note=f"after: {after}")
            recorded = provenance(op).get("allow_tf32")
            sec.row(f"TF32 {label}: provenance allow_tf32", status="ok"
                    if recorded is allow else "FAIL", note=f"recorded {recorded!r}")

        sec.step(f"TF32 {'on' if allow else 'off'}: error and flags", error_and_flags)

    def timing():
        model, x, y = problem(cfg, "cnn", cfg.cnn_samples, torch.float32, ctx.device)
        dim = sum(p.numel() for p in model.parameters())
        v = torch.randn(dim, 1, dtype=torch.float64, device=ctx.device)
        times = {}
        for allow in (False, True):
            op = ctx.operator("hessian", model, x, y, cfg.cnn_batch, allow_tf32=allow,
                              check_data=False)
            op.apply(v)  # warm-up and the strategy's calibration
            times[allow] = ctx.timed(lambda: op.apply(v), cfg.repeats)
            sec.row(f"cnn HVP time, TF32 {'on' if allow else 'off'}", times[allow], unit="s",
                    note=f"N={cfg.cnn_samples}, batches of {cfg.cnn_batch}, strategy "
                         f"{op.curvature.strategy}")
        sec.row("cnn HVP time, TF32 on / off", times[True] / times[False], unit="x")
        sec.data["hvp_seconds"] = {"tf32_off": times[False], "tf32_on": times[True]}

    sec.step("TF32 timing on the CNN", timing, estimate_s=3)


# ---- 3. distributed -------------------------------------------------------------------------------
def _dist_reference(cfg, device):
    """What every launch must reproduce: the single-process run on this device."""
    model, x, y = problem(cfg, "mlp", cfg.dist_samples, torch.float64, device)
    from lanczos_hessian.curvature.operators import HessianOperator

    op = HessianOperator(model, loss_fn(), (x, y), batch_size=cfg.dist_batch)
    return _dist_runs(cfg, op, None, sharded=True)


def _dist_runs(cfg, op, outdir, sharded):
    """eigs, sharded eigs and deflated SLQ of ``op`` by the run path (with files under
    ``outdir``, or without files)."""
    from lanczos_hessian import run

    def path(name):
        return None if outdir is None else Path(outdir) / name

    context = _quiet_warnings()
    try:
        eig = run.eigs(op, path("eigs.h5"), k=cfg.dist_k, tol=1e-10, seed=0, progress=False)
        shard = (run.eigs(op, path("eigs-sharded.h5"), k=cfg.dist_k, tol=1e-10, seed=0,
                          shard_vectors=True, progress=False) if sharded else None)
        _, bulk = run.slq(op, path("slq.h5"), k_top=1, num_probes=2,
                          num_steps=cfg.dist_slq_steps, seed=0, progress=False)
    finally:
        context.__exit__(None, None, None)
    return {"eigenvalues": eig.eigenvalues.tolist(),
            "eigenvalues_sharded": None if shard is None else shard.eigenvalues.tolist(),
            "nodes": np.nan_to_num(bulk.nodes, nan=1e300).tolist()}


def dist_worker(args) -> int:
    """One rank of a launch (``--worker dist``); rank 0 writes ``<out>/<tag>.json``."""
    import torch.distributed as dist

    cfg = CONFIGS[args.mode]
    out = Path(args.out)
    rank = int(os.environ.get("RANK", 0))
    size = int(os.environ.get("WORLD_SIZE", 1))
    result, code = {"tag": args.tag, "world_size": size}, 0
    try:
        from lanczos_hessian.curvature.operators import HessianOperator
        from lanczos_hessian.parallel.distributed import default_device, init_from_env

        timeout_s = args.time_limit or cfg.dist_timeout_s
        timeout = datetime.timedelta(seconds=timeout_s)
        cuda = args.device == "cuda"
        if args.backend == "gloo":  # gloo for every tensor, CUDA ones too
            dist.init_process_group("gloo", timeout=timeout)
        elif size == 1:  # init_from_env starts no group for one rank: start it as it would
            torch.cuda.set_device(0)
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
        world = init_from_env(timeout_s=timeout_s)  # the library's own start
        device = default_device(world) if cuda else torch.device("cpu")
        result.update(backend=str(dist.get_backend()), device=str(device),
                      nccl=_nccl_version() if cuda else None)
        probe = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(probe)  # the raw collective on this device's tensors
        result["raw_all_reduce"] = float(probe[0])
        result["raw_all_reduce_expected"] = float(size * (size + 1) / 2)
        model, x, y = problem(cfg, "mlp", cfg.dist_samples, torch.float64, device)
        op = HessianOperator(model, loss_fn(), (x, y), batch_size=cfg.dist_batch)
        result.update(_dist_runs(cfg, op, out / args.tag, sharded=size > 1))
        result["library_collectives"] = size > 1
    except Exception as exc:
        result["error"] = _message(exc)
        result["traceback"] = traceback.format_exc()[-3000:]
        code = 1
    if rank == 0 or code:
        name = f"{args.tag}.json" if rank == 0 else f"{args.tag}.rank{rank}.json"
        (out / name).write_text(json.dumps(result))
    if code == 0:  # after a failure (NCCL refusing, say) leave without touching the group
        try:
            from lanczos_hessian.parallel.distributed import shutdown

            shutdown()
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown under a process group (see exit_process)


def _nccl_version():
    try:
        version = torch.cuda.nccl.version()
        return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """This script's worker on ``nproc`` ranks, each launch in process sessions of its own:
    ``torchrun --nproc-per-node N`` (the default on CUDA), or (``--launcher direct``, the
    default on the CPU, where a second torch interpreter for the launcher costs seconds)
    the N processes started here with the variables torchrun would set."""

    def __init__(self, ctx: Context, tag: str, nproc: int, backend: str, outdir: Path,
                 timeout_s: float | None = None):
        self.tag, self.nproc, self.backend, self.outdir = tag, nproc, backend, outdir
        self.timeout_s = timeout_s or ctx.cfg.dist_timeout_s
        (outdir / tag).mkdir(parents=True, exist_ok=True)
        self.log = outdir / f"{tag}.log"
        port = str(_free_port())
        worker = [str(Path(__file__).resolve()), "--worker", "dist", "--mode", ctx.cfg.name,
                  "--device", ctx.device.type, "--backend", backend, "--tag", tag,
                  "--out", str(outdir), "--time-limit", str(self.timeout_s)]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SCRIPTS)]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("NCCL_DEBUG", "WARN")
        if not ctx.cuda:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.launcher = ctx.launcher
        if ctx.launcher == "torchrun":
            commands = [([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                          "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                          "--master-port", port] + worker, env)]
        else:
            commands = [([sys.executable] + worker,
                         dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                              LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=port)) for r in range(nproc)]
        self.command = " ".join(commands[0][0])
        self.procs = []
        with open(self.log, "w") as log:
            for command, environment in commands:
                self.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                   env=environment, cwd=str(REPO),
                                                   start_new_session=True))
        self.started = time.monotonic()

    def kill(self) -> None:
        """End the launch's process sessions (started by this script) if they still run."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def wait(self, deadline: float) -> dict:
        """The launch's outcome: rank 0's JSON, or the reason there is none; killed at
        ``deadline`` or after its own timeout, whichever comes first."""
        deadline = min(deadline, self.started + self.timeout_s)
        try:
            codes = [proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                     for proc in self.procs]
            code = next((c for c in codes if c), 0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = "timeout"
        seconds = time.monotonic() - self.started
        path = self.outdir / f"{self.tag}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        for other in sorted(self.outdir.glob(f"{self.tag}.rank*.json")):
            result.setdefault("rank_errors", []).append(json.loads(other.read_text()).get("error"))
        result.update(exit_code=code, seconds=seconds, launcher=self.launcher,
                      command=self.command,
                      log_tail=self.log.read_text(errors="replace")[-2000:])
        if code != 0 and "error" not in result:
            result["error"] = ("timed out" if code == "timeout" else f"exit code {code}") + \
                ": " + " | ".join(line.strip() for line in result["log_tail"].splitlines()
                                  if line.strip())[-300:]
        return result


def start_launches(ctx: Context) -> None:
    """Start the first two launches (1 rank, 2 ranks) at the start of the run, so that their
    start-up (interpreters, CUDA, NCCL) runs beside the first sections; the distributed
    section collects them, :func:`stop_launches` ends what is left."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return
    backend = "nccl" if ctx.cuda and dist.is_nccl_available() else "gloo"
    ctx.launch_dir = Path(tempfile.mkdtemp(prefix="device_check_dist_", dir=ctx.scratch))
    if ctx.cuda:  # one rank is the NCCL case
        ctx.launches.append(Launch(ctx, f"{backend}-1rank", 1, backend, ctx.launch_dir))
    # NCCL may refuse two ranks on one GPU, or hang: that attempt gets a shorter leash
    two_timeout = min(ctx.cfg.dist_timeout_s, 60) if backend == "nccl" else None
    ctx.launches.append(Launch(ctx, f"{backend}-2ranks", 2, backend, ctx.launch_dir,
                               two_timeout))


def stop_launches(ctx: Context) -> None:
    for launch in ctx.launches:
        launch.kill()
    ctx.launches = []
    if ctx.launch_dir is not None:
        shutil.rmtree(ctx.launch_dir, ignore_errors=True)
        ctx.launch_dir = None


def section_distributed(ctx: Context, sec: Section):
    import torch.distributed as dist

    cfg = ctx.cfg
    if not (dist.is_available() and dist.is_gloo_available()):
        sec.row("torch.distributed", status="skipped", note="this torch has no gloo")
        return
    if ctx.cuda and not dist.is_nccl_available():
        sec.row("NCCL available", status="FAIL", note="this torch build has no NCCL")
    sec.data["nccl_version"] = _nccl_version() if ctx.cuda else None
    if not ctx.launches:
        start_launches(ctx)
    *first, two = ctx.launches
    backend = two.backend
    launches = sec.data["launches"] = {}
    ref = sec.step("single-process reference", lambda: _dist_reference(cfg, ctx.device))
    for launch in ctx.launches:
        launches[launch.tag] = launch.wait(ctx.hard_deadline)
    if first:
        _dist_rows(sec, f"{ctx.launcher} 1 rank, {backend}", launches[first[0].tag], ref,
                   one_rank=True)
    else:
        sec.row("1 rank", status="skipped", note="the NCCL case, run on CUDA only")
    refused = "error" in launches[two.tag]
    if ctx.cuda and refused and backend == "nccl":
        sec.row("2 ranks on one GPU, nccl", status="info",
                note="refused (NCCL allows one rank per GPU): " + str(launches[two.tag]["error"]))
        left = ctx.hard_deadline - time.monotonic()
        if left < 15:
            sec.row("2 ranks on one GPU, gloo over CUDA tensors", status="skipped",
                    note=f"time: {left:.0f} s left")
        else:
            gloo = Launch(ctx, "gloo-2ranks", 2, "gloo", ctx.launch_dir)
            ctx.launches.append(gloo)
            launches[gloo.tag] = gloo.wait(ctx.hard_deadline)
            _dist_rows(sec, "2 ranks on one GPU, gloo over CUDA tensors", launches[gloo.tag],
                       ref, one_rank=False)
    else:
        where = " on one GPU" if ctx.cuda else ""
        _dist_rows(sec, f"{ctx.launcher} 2 ranks{where}, {backend}", launches[two.tag], ref,
                   one_rank=False)
    stop_launches(ctx)


def _dist_rows(sec, label, result, ref, one_rank):
    if "error" in result:
        sec.row(label, status="error", note=str(result["error"])[-400:])
        return
    sec.row(f"{label}: raw all-reduce on {result.get('device')}",
            status="ok" if result.get("raw_all_reduce") == result.get("raw_all_reduce_expected")
            else "FAIL",
            note=f"backend {result.get('backend')}; got {result.get('raw_all_reduce')}, "
                 f"expected {result.get('raw_all_reduce_expected')}"
                 + ("; with one rank the library makes no collective of its own" if one_rank
                    else ""))
    if ref is None:
        sec.row(f"{label}: results", status="skipped", note="no single-process reference")
        return
    sec.compare(f"{label}: eigs vs single process", result["eigenvalues"], ref["eigenvalues"],
                TOL["float64"], note=f"{result['seconds']:.1f} s launch and run")
    if result.get("eigenvalues_sharded") is not None:
        sec.compare(f"{label}: sharded eigs vs single process", result["eigenvalues_sharded"],
                    ref["eigenvalues_sharded"], TOL["float64"])
    sec.compare(f"{label}: SLQ nodes vs single process", _nodes(result["nodes"]),
                _nodes(ref["nodes"]), TOL["float64"])


def _nodes(values):
    nodes = np.asarray(values, float)
    nodes[nodes >= 1e299] = np.nan
    return nodes


# ---- 4. speed -----------------------------------------------------------------------------------------
def section_speed(ctx: Context, sec: Section):
    from bench_hvp import full_gradient

    cfg = ctx.cfg
    for name, samples, batch, blocks in (("cnn", cfg.cnn_samples, cfg.cnn_batch, cfg.blocks),
                                         ("alexnet", cfg.alex_samples, cfg.alex_batch,
                                          cfg.alex_blocks)):
        state = sec.step(f"{name}: HVP and gradient",
                         lambda name=name, samples=samples, batch=batch, blocks=blocks:
                         _products_speed(ctx, sec, full_gradient, name, samples, batch, blocks),
                         estimate_s=2)
        if state is None:
            continue
        if name == "alexnet":
            _alexnet_runs(ctx, sec, state)
        else:
            sec.step("cnn: the ways of taking a block",
                     lambda state=state: _block_forms(ctx, sec, state), estimate_s=2)
            sec.step("cnn: SLQ with its file", lambda state=state: _cnn_slq(ctx, sec, state),
                     estimate_s=3)
        del state
        ctx.cleanup()


def _products_speed(ctx, sec, full_gradient, name, samples, batch, blocks):
    cfg = ctx.cfg
    label = name if not cfg.tiny else f"{name} (tiny stand-in)"
    model, x, y = problem(cfg, name, samples, torch.float32, ctx.device)
    dim = sum(p.numel() for p in model.parameters())
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    full_gradient(model, loss_fn(), batches)  # warm-up
    grad_s = ctx.timed(lambda: full_gradient(model, loss_fn(), batches), cfg.repeats)
    op = ctx.operator("hessian", model, x, y, batch, check_data=False)
    note = f"M={dim:,}, N={samples}, batches of {batch}, float32"
    sec.row(f"{label}: one full-data gradient", grad_s, unit="s", note=note)
    per_vector, peaks = {}, {}
    for b in blocks:
        V = torch.randn(dim, b, dtype=torch.float64, device=ctx.device)
        base = ctx.peak_start()
        op.apply(V)  # warm-up, the strategy's calibration for this block size
        peaks[b] = ctx.peak_since(base)
        seconds = ctx.timed(lambda: op.apply(V), cfg.repeats)
        per_vector[b] = seconds / b / grad_s
        strategy = op.curvature.strategy
        if b == 1:
            sec.row(f"{label}: one full-data HVP / one gradient", per_vector[b], unit="x",
                    note=f"{seconds:.3g} s; strategy {strategy}")
        else:
            sec.row(f"{label}: block of {b}, per-vector cost / gradient", per_vector[b],
                    unit="x", note=f"{seconds:.3g} s per pass; strategy {strategy}")
        del V
    sec.data[name] = {"params": dim, "samples": samples, "batch": batch, "gradient_s": grad_s,
                      "per_vector_over_gradient": per_vector, "operator_peak_bytes": peaks,
                      "strategy": op.curvature.strategy}
    return {"model": model, "x": x, "y": y, "op": op, "dim": dim, "peaks": peaks,
            "label": label, "batch": batch}


def _block_forms(ctx, sec, state):
    """The largest block of ``cfg.blocks`` in each way a block can be taken
    (``bench_products.BLOCK_FORMS``: one backward per column, one backward vectorized over
    the columns, the vmapped forward-over-reverse), per vector over the gradient, and the
    default rule's way over the fastest: whether the rule's threshold (a batch's forward at
    most 8 MFLOP, placed on a CPU, where per-op cost is far below a GPU's kernel launch)
    holds on this device."""
    from bench_products import BLOCK_FORMS, block_operator, rule_form

    cfg, model, x, y = ctx.cfg, state["model"], state["x"], state["y"]
    label, batch, dim = state["label"], state["batch"], state["dim"]
    grad_s, b = sec.data["cnn"]["gradient_s"], max(cfg.blocks)
    chosen = rule_form(state["op"])
    V = torch.randn(dim, b, dtype=torch.float64, device=ctx.device)
    per_vector = {}
    for form in BLOCK_FORMS:
        op = block_operator(lambda strategy: ctx.operator(
            "hessian", model, x, y, batch, check_data=False, strategy=strategy), form)
        op.apply(V)  # warm-up
        per_vector[form] = ctx.timed(lambda op=op: op.apply(V), cfg.repeats) / b
        sec.row(f"{label}: block of {b} by {form}, per vector / gradient",
                per_vector[form] / grad_s, unit="x", note=f"{per_vector[form]:.3g} s a vector")
        del op
        ctx.cleanup()
    fastest = min(per_vector, key=per_vector.get)
    sec.row(f"{label}: block of {b}, the rule's way over the fastest",
            per_vector[chosen] / per_vector[fastest], unit="x",
            note=f"the rule: {chosen}; the fastest: {fastest}")
    sec.data["block_forms"] = {"block": b, "rule": chosen, "seconds_per_vector": per_vector,
                               "gradient_s": grad_s}


def _operator_peak(ctx, state, b):
    """Peak bytes of one application to ``b`` vectors (measured once per block size)."""
    if b not in state["peaks"]:
        V = torch.randn(state["dim"], b, dtype=torch.float64, device=ctx.device)
        base = ctx.peak_start()
        state["op"].apply(V)
        state["peaks"][b] = ctx.peak_since(base)
    return state["peaks"][b]


def _timed_run(ctx, sec, label, state, fn, note, memory=None):
    """Run ``fn`` (a solver run on ``state['op']``), record its time outside the operator and
    its peak memory; a run cut by the deadline is recorded with what it had done."""
    op = state["op"]
    op_before, passes_before = op.time_in_products, op.num_applications
    base = ctx.peak_start()
    t0 = time.perf_counter()
    try:
        result = fn()
    except OutOfTime:
        wall = time.perf_counter() - t0
        inside = op.time_in_products - op_before
        sec.row(f"{label}: time outside the operator", (wall - inside) / wall if wall else None,
                unit="fraction", status="cut",
                note=f"cut by the time limit after {wall:.1f} s, "
                     f"{op.num_applications - passes_before} passes")
        raise
    ctx.sync()
    wall = time.perf_counter() - t0
    peak = ctx.peak_since(base)
    inside = op.time_in_products - op_before
    passes = op.num_applications - passes_before
    sec.row(f"{label}: time outside the operator", (wall - inside) / wall, unit="fraction",
            note=f"{wall:.1f} s in all, {inside:.1f} s in {passes} passes; {note(result)}")
    sec.data.setdefault("runs", {})[label] = {"wall_s": wall, "operator_s": inside,
                                             "passes": passes, "peak_bytes": peak,
                                             "note": note(result)}
    if memory is not None:
        ctx.memory_samples.append({"run": label, "peak_bytes": peak, "base_bytes": base,
                                   "params": state["dim"], **memory})
    return result


def _alexnet_runs(ctx, sec, state):
    from lanczos_hessian import run
    from lanczos_hessian.linalg.basis import choose_location, working_bytes
    from lanczos_hessian.linalg.eigsh import default_ncv

    cfg = ctx.cfg
    label, dim, op = state["label"], state["dim"], state["op"]
    k = cfg.top_k
    ncv = default_ncv(k, dim)
    location = choose_location(dim, ncv, cfg.alex_budget, ctx.device)
    rule = dim * ncv * 8 + working_bytes(dim)
    sec.data["alexnet_basis"] = {"ncv": ncv, "budget": cfg.alex_budget, "location": location,
                                 "rule_bytes": rule}

    def eigs_note(res):
        return (f"{int(res.converged.sum())}/{k} converged to tol {cfg.alex_tol:g}, "
                f"{res.num_matvecs} matvecs, {res.num_restarts} restarts, basis {location} "
                f"({ncv} x {dim:,} float64)")

    def top(out, max_matvecs, what):
        def go():
            context = _quiet_warnings()
            try:
                return run.eigs(op, out, k=k, which="LA", tol=cfg.alex_tol, seed=0,
                                max_matvecs=max_matvecs, memory_budget=cfg.alex_budget,
                                progress=False)
            finally:
                context.__exit__(None, None, None)

        peaks = {"operator_peak_bytes": max(_operator_peak(ctx, state, 1) or 0,
                                            _operator_peak(ctx, state, k) or 0)
                 if ctx.cuda else None, "rule_bytes": rule, "location": location,
                 "budget": cfg.alex_budget, "ncv": ncv, "kind": "eigs"}
        return _timed_run(ctx, sec, f"{label}: top-{k} {what}", state, go, eigs_note, peaks)

    sec.step(f"{label}: top-{k}, basis in memory, no file",
             lambda: top(None, cfg.alex_matvecs, "(no file)"), estimate_s=5)
    ctx.cleanup()

    def with_file():
        need = dim * (ncv + 8) * 8
        free = shutil.disk_usage(ctx.scratch).free
        if free < 1.2 * need:
            sec.row(f"{label}: top-{k} with its HDF5 file", status="skipped",
                    note=f"{free / GIB:.1f} GiB free in {ctx.scratch}, the file needs about "
                         f"{need / GIB:.1f} GiB")
            return
        with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
            top(Path(tmp) / "alexnet-eigs.h5", cfg.alex_file_matvecs,
                f"with its HDF5 file ({cfg.alex_file_matvecs} matvecs at most)")

    sec.step(f"{label}: top-{k} with its HDF5 file", with_file, estimate_s=10)
    ctx.cleanup()

    P, S = cfg.slq_probes_speed, cfg.alex_slq_steps

    def slq_run():
        def go():
            return run.slq(op, None, num_probes=P, num_steps=S, reorthogonalize=False, seed=0,
                           progress=False).slq

        memory = {"operator_peak_bytes": _operator_peak(ctx, state, P) if ctx.cuda else None,
                  "rule_bytes": None, "location": "none (no basis)", "budget": None,
                  "kind": "slq-no-reorth"}
        return _timed_run(ctx, sec, f"{label}: SLQ {P} x {S}, no reorthogonalization, no file",
                          state, go, lambda r: f"{r.num_passes} passes", memory)

    sec.step(f"{label}: SLQ {P} x {S}", slq_run, estimate_s=5)


def _cnn_slq(ctx, sec, state):
    from lanczos_hessian import run
    from lanczos_hessian.linalg.basis import working_bytes

    cfg = ctx.cfg
    P, S, dim = cfg.slq_probes_speed, cfg.cnn_slq_steps, state["dim"]
    capacity = min(S, dim)
    rule = dim * capacity * P * 8 + working_bytes(dim)
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        def go():
            return run.slq(state["op"], Path(tmp) / "cnn-slq.h5", num_probes=P, num_steps=S,
                           seed=0, progress=False).slq

        memory = {"operator_peak_bytes": _operator_peak(ctx, state, P) if ctx.cuda else None,
                  "rule_bytes": rule, "location": "device", "budget": None, "kind": "slq"}
        _timed_run(ctx, sec, f"{state['label']}: SLQ {P} x {S} with its HDF5 file", state, go,
                   lambda r: f"{r.num_passes} passes, reorthogonalized, bases on the device",
                   memory)


# ---- 5. memory ----------------------------------------------------------------------------------------
def section_memory(ctx: Context, sec: Section):
    from lanczos_hessian.linalg.basis import choose_location, parse_bytes

    if not ctx.memory_samples:
        sec.row("runs to measure", status="skipped",
                note="the speed section recorded no run (see its rows)")
        return
    sec.data["samples"] = ctx.memory_samples
    for s in ctx.memory_samples:
        label = s["run"]
        if s["peak_bytes"] is None:
            rule = s["rule_bytes"]
            sec.row(f"{label}: peak beyond one operator application", status="skipped",
                    note="peak memory is read from the CUDA allocator; "
                         + (f"the rule's basis + working vectors: {_bytes(rule)}"
                            if rule else "no basis"))
            continue
        beyond = s["peak_bytes"] - (s["operator_peak_bytes"] or 0)
        sec.row(f"{label}: peak GPU memory of the run", s["peak_bytes"] / GIB, unit="GiB",
                note=f"beyond the {s['base_bytes'] / GIB:.2f} GiB held before it (model, data)")
        if s["rule_bytes"]:
            sec.row(f"{label}: solver memory / budget rule", beyond / s["rule_bytes"],
                    limit=1.10, unit="x",
                    note=f"{beyond / GIB:.2f} GiB beyond one application "
                         f"({(s['operator_peak_bytes'] or 0) / GIB:.2f} GiB) against the "
                         f"rule's {s['rule_bytes'] / GIB:.2f} GiB (basis + 4 working vectors), "
                         f"location {s['location']}")
        else:
            sec.row(f"{label}: solver memory beyond one application", beyond / GIB,
                    unit="GiB", note="no basis: the placement rule does not apply")
        if s.get("budget"):
            chosen = choose_location(s["params"], s["ncv"], s["budget"], ctx.device)
            fits = s["peak_bytes"] - (s["operator_peak_bytes"] or 0) <= parse_bytes(s["budget"])
            sec.row(f"{label}: within the memory budget {s['budget']}",
                    status="ok" if fits else "FAIL",
                    note=f"choose_location -> {chosen}")


def _bytes(n) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= 0.1 * size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def section_compiled(ctx: Context, sec: Section):
    """Compiled products against eager ones, their graph count, compile and pass times."""
    from lanczos_hessian.examples.models import mlp

    cfg = ctx.cfg
    widths = [8, 8, 3] if cfg.tiny else [100, 30, 30, 10]
    n, batch = (29, 8) if cfg.tiny else (1000, 256)  # ragged last batch either way
    sec.data["mode"] = "reduce-overhead" if ctx.cuda else "default"
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        def check(dtype=dtype, tol=tol):
            torch.manual_seed(0)
            model = mlp(widths, "tanh").to(ctx.device, dtype)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(n, widths[0], generator=g).to(ctx.device, dtype)
            y = torch.randint(0, widths[-1], (n,), generator=g).to(ctx.device)
            name = _dtype_name(dtype)
            eager = ctx.operator("hessian", model, x, y, batch)
            # the CPU mode's quick stand-in: the same graphs without code generation
            options = {"backend": "aot_eager"} if cfg.tiny else True
            compiled = ctx.operator("hessian", model, x, y, batch, compile=options)
            v = torch.randn(eager.shape[0], 1, dtype=torch.float64, device=ctx.device)
            ref = eager.apply(v)
            errors = [relative_error(compiled.apply(v), ref) for _ in range(3)]
            sec.row(f"mlp {name}: compiled vs eager, rel. error", max(errors), limit=tol,
                    note=f"strategy {compiled.strategy}, usable "
                         f"{compiled.compiled.usable} {compiled.compiled.reason or ''}")
            sec.row(f"mlp {name}: graphs over 3 passes (ragged last batch)",
                    compiled.compiled.num_graphs, limit=2)
            sec.row(f"mlp {name}: compile time", compiled.compile_time, unit="s")
            t_eager = ctx.timed(lambda: eager.apply(v), cfg.repeats)
            t_compiled = ctx.timed(lambda: compiled.apply(v), cfg.repeats)
            sec.row(f"mlp {name}: pass time eager / compiled", t_eager / t_compiled, unit="x",
                    note=f"eager {t_eager * 1e3:.2f} ms, compiled {t_compiled * 1e3:.2f} ms")
            sec.data[f"mlp_{name}"] = {"errors": errors, "compile_s": compiled.compile_time,
                                       "eager_s": t_eager, "compiled_s": t_compiled,
                                       "graphs": compiled.compiled.num_graphs}

        sec.step(f"compiled products, {_dtype_name(dtype)}", check, estimate_s=10)


def section_sharded(ctx: Context, sec: Section):
    """Products of an FSDP2-sharded language model taken on its shards
    (:mod:`lanczos_hessian.parallel.native`) on the device: ``scripts/bench_sharded.py``
    launched with ``--device cuda`` (NCCL, one GPU per rank), W = 1 and, with two GPUs or on
    the CPU, W = 2; both paths (products on the shards, every parameter gathered) at W = 1.
    Rows: exactness against W = 1 (the data split over the ranks changes only the order of
    float sums), the product's peak memory per rank (``torch.cuda.max_memory_allocated`` on
    CUDA, resident memory on the CPU) and the seconds per product."""
    cfg = ctx.cfg
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    sizes = "1,2" if (not ctx.cuda or gpus >= 2) else "1"
    modes = "native" if cfg.tiny else "native,gather"
    dtype, tol = ("float64", 1e-12) if cfg.tiny else ("float32", 1e-5)
    out = Path(ctx.scratch) / "device_check_sharded.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_sharded.py"), "--device",
               "cuda" if ctx.cuda else "cpu", "--world-sizes", sizes, "--modes", modes,
               "--repeats", "1", "--dtype", dtype, "--json", str(out)]
    if cfg.tiny or cfg.name == "quick":
        command.append("--quick")
    sec.data.update(command=" ".join(command[1:]), gpus=gpus)

    def launch():
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=max(sec.left(), 1.0))
        if done.returncode:
            raise RuntimeError(f"bench_sharded.py exited {done.returncode}: "
                               f"{done.stderr.strip()[-400:]}")
        results = json.loads(out.read_text())["results"]
        sec.data["results"] = results
        for r in results:
            label = f"W={r['world_size']} {r['mode']}"
            peak = r.get("device_peak_mib_per_rank") or r["peak_mib_per_rank"]
            if r["world_size"] > 1 or r["mode"] != "native":
                sec.row(f"{label}: H v vs W=1 native, rel. diff", r["rel_diff_sample"],
                        limit=tol, note=f"v^T H v {r['rel_diff_vHv']:.1e}")
                sec.row(f"{label}: parameters still sharded", float(not r["still_sharded"]),
                        limit=0.0)
            sec.row(f"{label}: product peak per rank", peak / 1024, unit="GiB",
                    note=f"{r['num_params'] / 1e6:.1f}M parameters, "
                         f"{r['seconds_per_hvp']:.3g} s per product")

    sec.step("sharded products (bench_sharded.py)", launch, estimate_s=20 if cfg.tiny else 60)


SECTIONS = {"correctness": section_correctness, "tf32": section_tf32,
            "distributed": section_distributed, "speed": section_speed,
            "memory": section_memory, "compiled": section_compiled,
            "sharded": section_sharded}


# ---- the driver ---------------------------------------------------------------------------------------
def machine(ctx: Context) -> dict:
    import scipy

    info = {"mode": ctx.cfg.name, "device": str(ctx.device), "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "cpu_threads": torch.get_num_threads(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}
    try:
        import h5py

        info["h5py"] = h5py.__version__
    except ImportError:
        info["h5py"] = None
    from lanczos_hessian import __version__

    info["lanczos_hessian"] = __version__
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                                            capture_output=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / GIB,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), nccl=_nccl_version())
    return info


def run_sections(ctx: Context, names, json_path=None) -> dict:
    report = {"machine": machine(ctx), "config": asdict(ctx.cfg), "sections": {},
              "rows": []}
    report["config"]["time_limit"] = ctx.deadline - ctx.start
    try:
        if "distributed" in names:
            start_launches(ctx)
        _run_each(ctx, names, report, json_path)
    finally:
        stop_launches(ctx)
    report["machine"]["elapsed_s"] = time.monotonic() - ctx.start
    _write(report, json_path)
    return report


def _run_each(ctx: Context, names, report, json_path) -> None:
    for i, name in enumerate(names):
        later = names[i + 1:]
        now = time.monotonic()
        left = ctx.deadline - now
        entry = {"status": "ok", "seconds": 0.0, "error": None, "data": {}}
        report["sections"][name] = entry
        reserve = ctx.cfg.min_section_s * len(later)
        if left - reserve < ctx.cfg.min_section_s:
            entry.update(status="skipped",
                         error=f"time limit: {max(left, 0):.0f} s left, {reserve:.0f} s kept "
                               "for the later sections")
            report["rows"].append({"section": name, "check": "(section)", "value": None,
                                   "unit": "", "limit": None, "status": "skipped",
                                   "note": entry["error"]})
            _write(report, json_path)
            continue
        share = SHARES[name] / sum(SHARES[n] for n in [name, *later])
        soft = now + share * left
        ctx.hard_deadline = min(ctx.deadline - reserve, soft + 0.5 * share * left)
        sec = Section(ctx, name, soft)
        print(f"[device_check] {name} ({left:.0f} s left) ...", file=sys.stderr, flush=True)
        try:
            SECTIONS[name](ctx, sec)
        except OutOfTime as exc:
            entry.update(status="cut", error=f"the section's time ran out: {exc}")
            sec.row("(section)", status="cut", note=entry["error"])
        except Exception as exc:
            entry.update(status="error", error=_message(exc))
            sec.data["traceback"] = traceback.format_exc()[-4000:]
            sec.row("(section)", status="error", note=_message(exc))
        finally:
            ctx.hard_deadline = ctx.deadline
            ctx.cleanup()
        statuses = {r["status"] for r in sec.rows}
        if entry["status"] == "ok" and statuses & {"FAIL", "error"}:
            entry["status"] = "failed"
        entry["seconds"] = time.monotonic() - now
        entry["data"] = sec.data
        report["rows"].extend(sec.rows)
        _write(report, json_path)


def _write(report, path):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_jsonable))
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _format_value(row) -> str:
    v, unit = row["value"], row["unit"]
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    if unit == "x":
        return f"{v:.3g}x"
    if unit == "s":
        return f"{v:.3g} s"
    if unit == "GiB":
        return f"{v:.2f} GiB"
    if unit == "fraction":
        return f"{100 * v:.1f}%"
    return f"{v:.1e}"


def _format_limit(row) -> str:
    limit = row["limit"]
    if limit is None:
        return ""
    return f"<= {limit:.2g}x" if row["unit"] == "x" else f"<= {limit:.0e}"


def table(report) -> str:
    m = report["machine"]
    where = m.get("gpu") or "CPU"
    versions = f"torch {m['torch']}" + (f", CUDA {m['cuda']}, cuDNN {m['cudnn']}, NCCL "
                                        f"{m['nccl']}" if m.get("gpu") else "")
    lines = [f"device check ({m['mode']}) on {where} ({versions}), "
             f"{m.get('elapsed_s', 0):.0f} s of {report['config']['time_limit']:.0f} s"]
    header = ("section", "check", "value", "limit", "status", "note")
    rows = [(r["section"], r["check"], _format_value(r), _format_limit(r), r["status"],
             r["note"]) for r in report["rows"]]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
              for i in range(5)]
    widths[1] = min(widths[1], 72)
    fmt = "  ".join(f"{{:{w}}}" for w in widths) + "  {}"
    lines.append(fmt.format(*header))
    lines.append(fmt.format(*("-" * w for w in widths), "----"))
    for row in rows:
        note = row[5] if len(row[5]) <= 110 else row[5][:107] + "..."
        lines.append(fmt.format(*row[:5], note).rstrip())
    sections = ", ".join(f"{name} {s['status']} ({s['seconds']:.0f} s)"
                         for name, s in report["sections"].items())
    lines.append(f"sections: {sections}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the < 3 minute version")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="cpu: the same logic on tiny models (default: cuda)")
    parser.add_argument("--json", default=None, help="write the report here (updated after "
                                                      "every section)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds for the whole run (default 170 quick, 470 full, 60 cpu)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--scratch", default=None,
                        help="directory for run files and launches (default: the temp dir)")
    parser.add_argument("--launcher", choices=["torchrun", "direct"], default=None,
                        help="how the distributed section starts its ranks (default: torchrun "
                             "on CUDA, direct on the CPU)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "dist":
        return dist_worker(args)
    if args.device is None:
        if not torch.cuda.is_available():
            print("device_check: no CUDA device is present (torch "
                  f"{torch.__version__}); nothing checked. Use --device cpu to run the "
                  "same logic on tiny models.")
            return 0
        args.device = "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"device_check: --device cuda, but no CUDA device is present (torch "
              f"{torch.__version__})")
        return 1
    cfg = CONFIGS["cpu" if args.device == "cpu" else ("quick" if args.quick else "full")]
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" \
        else torch.device("cpu")
    if cfg.tiny:  # tiny products on a shared CPU: one thread is faster and steadier
        torch.set_num_threads(1)
    ctx = Context(cfg, device, args.time_limit or cfg.time_limit,
                  args.scratch or tempfile.gettempdir())
    if args.launcher:
        ctx.launcher = args.launcher
    report = run_sections(ctx, [s for s in SECTIONS if s in args.sections], args.json)
    report["machine"]["data"] = _MNIST.get("source")
    _write(report, args.json)
    print(table(report), flush=True)
    if args.json:
        print(f"written to {args.json}")
    bad = [r for r in report["rows"] if r["status"] in ("FAIL", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
