"""Side by side with the peers: accuracy, operator applications and time.

Compares ``lanczos_hessian`` with PyHessian 0.1, curvlinops-for-pytorch 3.x (with
``scipy.sparse.linalg.eigsh``), hessian-eigenthings 1.0.0a5 and ARPACK (``eigsh`` on our own
operator), in ONE run, on problems small enough for the exact dense spectrum (float64 models):

* ``mlp``:  a 100-30-30-10 ReLU MLP (4,270 parameters, Sagun et al. 2018 Sec. 3.1) on 10
  Gaussian clusters in 100 dimensions, trained briefly by SGD;
* ``cnn``:  a two-block ConvNet (1,034 parameters) on scikit-learn's 8x8 digits, trained briefly;
* ``tiny``: a 612-parameter MLP (for the test and smoke runs).

The exact reference is ``dense_matrix(op, method="products")`` (our operator applied to the
identity, 128 columns a pass) and its ``eigvalsh``; it is validated in the same run against an
independent full-batch double-backward HVP (``reference`` in the JSON), and every
tool's own HVP is compared with that independent HVP too (``operator_check``), on batches that
divide the data set evenly and on ragged batches.

Measured, per problem:

1. top-k eigenvalues (k = 1, 5, 10, 20): relative eigenvalue error against the dense top-k,
   true relative residual ``||H y - theta y|| / |theta|`` (computed with the dense matrix, not
   counted), HVPs, data passes and wall time. Each peer is called the way its documentation
   shows: PyHessian ``hessian(model, criterion, dataloader=..., cuda=False).eigenvalues(top_n=k)``
   (power iteration with deflation); hessian-eigenthings 1.0 ``lanczos(HessianOperator(...), k=k)``
   and ``deflated_power_iteration`` (its 1.0 API; the 0.x ``compute_hessian_eigenthings`` was
   removed in 1.0.0a1); curvlinops ``HessianLinearOperator(model, loss, params, data)
   .to_scipy()`` + ``scipy.sparse.linalg.eigsh``. Each at its default settings and, where the
   defaults do not reach it, tuned to the stated accuracy (relative residual 1e-6).
2. the bottom eigenvalues (k = 5, ``which="SA"``) where the tool can compute them.
3. the spectral density: Wasserstein-1 distance between each tool's quadrature measure and the
   exact spectral measure, at equal numbers of HVPs.
4. the HVP itself: one full-dataset HVP over one full-dataset gradient, per tool.

How HVPs are counted (nothing is estimated):

* ours: ``op.num_vectors`` (HVPs) and ``op.num_applications`` (passes) of ``HessianOperator``;
* ARPACK: the same counters of the operator it is given;
* PyHessian: a wrapper around ``hessian.dataloader_hv_product`` (one HVP = one pass); the HVPs
  spent on each eigenvalue are read off a wrapper around the ``normalization`` call that starts
  each new power iteration, so one ``top_n=20`` run gives the costs of top 1, 5, 10 and 20
  exactly (PyHessian's top-k run is the first k rounds of its top-20 run from the same seed);
* hessian-eigenthings: a wrapper around the operator's ``matvec`` (one HVP = one pass); per
  eigenvalue of the deflated power iteration via a wrapper around ``power_iteration_one``;
* curvlinops: a wrapper around the operator's ``_matmat`` (columns = HVPs, calls = passes).

Independently, a forward hook on the model counts forward calls; ``forward_passes`` in the
JSON is that count divided by the number of batches (a cross-check of the pass counts).

    bash scripts/install_peers.sh                  # the peers, pinned, torch left alone
    python scripts/compare_peers.py --json out/compare_peers.json --markdown out/compare_peers.md
    python scripts/compare_peers.py --quick --json out/compare_peers_quick.json   # ~2 min

The full run took 7.3 minutes on the shared 2-core machine of docs/BENCHMARKS.md; a peer that
is not installed is skipped (``--peers`` restricts the set).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg as spla
import torch

from lanczos_hessian import HessianOperator, lanczos_eigsh
from lanczos_hessian.linalg import density as dens
from lanczos_hessian.curvature.dense import dense_matrix
from lanczos_hessian.examples.models import mlp, num_parameters, small_cnn
from lanczos_hessian.linalg.deflated import DeflatedPlan
from lanczos_hessian.linalg.slq import slq
from lanczos_hessian.examples.synthetic import gaussian_clusters
from lanczos_hessian.examples.training import train

TOL = 1e-6  # the stated accuracy: relative residual ||H y - theta y|| <= TOL * |theta|
PEERS = {"pyhessian": "pyhessian", "curvlinops": "curvlinops-for-pytorch",
         "hessian_eigenthings": "hessian-eigenthings"}

FULL = dict(ks=(1, 5, 10, 20), k_bottom=5, budgets=(200, 800), probes=10, seeds=(0, 1, 2),
            timing_repeats=25, strict_k=10, strict_max_iter=300, samples=512, batch=128,
            ragged_batch=100, train_steps=300)
#: Per-problem changes to the full settings: one float64 CNN HVP costs ~5x an MLP one on this CPU
#: (torch's double backward of conv2d in float64 takes its slow reference kernels), so the CNN
#: runs on fewer samples and one density seed to keep the whole run near ten minutes.
FULL_OVERRIDES = {"cnn": dict(samples=256, batch=64, ragged_batch=60, seeds=(0, 1))}
SECTIONS = ("operator", "topk", "bottom", "density", "cost")
QUICK = dict(ks=(1, 5, 10), k_bottom=3, budgets=(200,), probes=10, seeds=(0,),
             timing_repeats=5, strict_k=0, strict_max_iter=0, samples=256, batch=64,
             ragged_batch=60, train_steps=150)


# ----------------------------------------------------------------------------- problems


@dataclass
class Problem:
    name: str
    description: str
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    batch_size: int
    final_loss: float = math.nan

    def batches(self, batch_size: int | None = None) -> list:
        b = batch_size or self.batch_size
        return [(self.inputs[i:i + b], self.targets[i:i + b])
                for i in range(0, len(self.inputs), b)]

    @property
    def num_params(self) -> int:
        return num_parameters(self.model)

    @property
    def params(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]


def make_problem(name: str, cfg: dict) -> Problem:
    """The model (float64, trained briefly by SGD) and its data."""
    torch.manual_seed(0)
    loss_fn = torch.nn.CrossEntropyLoss()
    if name == "tiny":
        x, y = gaussian_clusters(4, 256, 16, rng=0)
        model, batch, steps, lr = mlp([16, 16, 16, 4]), 64, 100, 0.1
        desc = "MLP 16-16-16-4 on 4 Gaussian clusters (256 samples)"
    elif name == "mlp":
        x, y = gaussian_clusters(10, cfg["samples"], 100, rng=0)
        model, batch, steps, lr = mlp([100, 30, 30, 10]), cfg["batch"], cfg["train_steps"], 0.1
        desc = f"MLP 100-30-30-10 on 10 Gaussian clusters ({cfg['samples']} samples)"
    elif name == "cnn":
        from lanczos_hessian.examples.datasets import load_digits

        x, y = load_digits(cfg["samples"])
        model = small_cnn(1, 10, 8, channels=(4, 8), hidden=16)
        batch, steps, lr = cfg["batch"], cfg["train_steps"], 0.1
        desc = (f"CNN conv4-pool-conv8-pool-fc16-fc10 on sklearn digits 8x8 "
                f"({cfg['samples']} samples)")
    else:
        raise ValueError(f"unknown problem {name!r}")
    model = model.double()
    x = x.double()
    history = train(model, loss_fn, x, y, steps=steps, lr=lr, batch_size=64, rng=0)
    model.eval()
    return Problem(name, desc, model, loss_fn, x, y, batch, final_loss=history[-1])


# ----------------------------------------------------------------------------- counting


class ForwardCounter:
    """Counts calls of the model's forward (a hook on the top module)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        self._handle.remove()


@contextlib.contextmanager
def patched(obj, name, make_wrapper):
    """Temporarily replace ``obj.name`` by ``make_wrapper(original)``."""
    original = getattr(obj, name)
    setattr(obj, name, make_wrapper(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _eig_shim(A, eigenvectors=False):
    """``torch.eig`` (removed from torch) for the symmetric tridiagonal PyHessian passes it:
    eigenvalues as ``(n, 2)`` real/imaginary columns, eigenvectors as columns."""
    values, vectors = torch.linalg.eigh(A)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def peer_available(module: str) -> tuple:
    """``(True, version)`` if the peer imports, else ``(False, reason)``."""
    try:
        __import__(module)
        return True, importlib.metadata.version(PEERS[module])
    except Exception as exc:  # not installed, or broken against this torch
        return False, f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- reference


@dataclass
class Reference:
    matrix: np.ndarray
    eigenvalues: np.ndarray  # ascending
    seconds: float
    check: dict = field(default_factory=dict)

    @property
    def norm(self) -> float:
        return float(np.abs(self.eigenvalues).max())

    def top(self, k):
        return self.eigenvalues[::-1][:k]

    def bottom(self, k):
        return self.eigenvalues[:k]

    def rel_residuals(self, values, vectors) -> np.ndarray:
        """``||A y - theta y|| / |theta|`` per pair, with the dense matrix (unit ``y``)."""
        Y = np.asarray(vectors, dtype=np.float64)
        Y = Y / np.linalg.norm(Y, axis=0)
        R = self.matrix @ Y - Y * np.asarray(values)
        return np.linalg.norm(R, axis=0) / np.abs(values)


def full_batch_hvp(problem: Problem, v: torch.Tensor) -> torch.Tensor:
    """Independent reference ``H v``: the whole data set as one batch, double backward."""
    params = problem.params
    loss = problem.loss_fn(problem.model(problem.inputs), problem.targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    parts, offset = [], 0
    for p in params:
        parts.append(v[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    hv = torch.autograd.grad(grads, params, parts)
    return torch.cat([h.reshape(-1) for h in hv]).detach()


def build_reference(problem: Problem) -> Reference:
    start = time.perf_counter()
    # the strategy named explicitly, so that the reference does not hang on a timing-based
    # choice (forward-over-reverse: one vmapped sweep for 128 columns)
    op = HessianOperator(problem.model, problem.loss_fn, problem.batches(), check_data=False,
                         strategy="forward-over-reverse")
    A = dense_matrix(op, method="products")
    asymmetry = float(np.abs(A - A.T).max() / np.abs(A).max())
    A = (A + A.T) / 2  # symmetric to rounding already; make it exactly so for eigvalsh
    values = np.linalg.eigvalsh(A)
    seconds = time.perf_counter() - start
    gen = torch.Generator().manual_seed(123)
    errors = []
    for _ in range(2):
        v = torch.randn(A.shape[0], generator=gen, dtype=torch.float64)
        hv = full_batch_hvp(problem, v).numpy()
        errors.append(float(np.linalg.norm(A @ v.numpy() - hv) / np.linalg.norm(hv)))
    return Reference(A, values, seconds, {"max_rel_error_vs_full_batch_hvp": max(errors),
                                          "relative_asymmetry": asymmetry})


# ----------------------------------------------------------------------------- helpers


def _flat(tensors) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).numpy()


def topk_row(ref: Reference, tool, setting, k, values, vectors, hvps, passes, seconds,
             converged=None, note="", which="LA", extra=None) -> dict:
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values) if which == "LA" else np.argsort(values)
    values = values[order]
    vectors = None if vectors is None else np.asarray(vectors)[:, order]
    exact = ref.top(k) if which == "LA" else ref.bottom(k)
    if len(values) < k:
        note = (note + "; " if note else "") + f"returned only {len(values)} values"
    n = min(k, len(values))
    err = np.abs(values[:n] - exact[:n])
    residuals = ref.rel_residuals(values, vectors) if vectors is not None else None
    row = {
        "tool": tool, "setting": setting, "which": which, "k": k,
        "hvps": int(hvps), "passes": int(passes), "seconds": float(seconds),
        "max_rel_eig_error": float((err / np.abs(exact[:n])).max()) if n else math.nan,
        "max_eig_error_over_norm": float(err.max() / ref.norm) if n else math.nan,
        "max_rel_residual": float(residuals.max()) if residuals is not None else math.nan,
        "reached_tol": bool(residuals is not None and residuals.max() <= TOL * 1.0001
                            and len(values) >= k),
        "tool_says_converged": None if converged is None else bool(np.all(converged)),
        "eigenvalues": values.tolist(),
        "note": note,
    }
    if extra:
        row.update(extra)
    return row


def print_rows(title, rows, columns):
    print(f"\n{title}")
    widths = [max(len(c), 10) for c, _ in columns]
    print("  ".join(f"{c:>{w}}" for (c, _), w in zip(columns, widths)))
    for row in rows:
        cells = []
        for (c, fmt), w in zip(columns, widths):
            value = row.get(c, "")
            cells.append(f"{fmt(value) if value not in ('', None) else '-':>{w}}")
        print("  ".join(cells), flush=True)


def _sci(x):
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _int(x):
    return f"{int(x):d}"


def _sec(x):
    return f"{x:.2f}"


def _str(x):
    return str(x)


# ----------------------------------------------------------------------------- our package


def ours_operator(problem: Problem, batches=None) -> HessianOperator:
    return HessianOperator(problem.model, problem.loss_fn, batches or problem.batches())


def run_ours_eigs(problem, ref, k, which, criterion="eigenvalue", tol=TOL, max_matvecs=4000):
    op = ours_operator(problem)
    fwd = ForwardCounter(problem.model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lanczos_eigsh(op, k, which, tol, criterion=criterion, rng=0,
                            max_matvecs=max_matvecs)
    seconds = time.perf_counter() - start
    fwd.close()
    return topk_row(ref, "ours", f"lanczos_eigsh tol={tol:g} ({criterion})", k,
                    res.eigenvalues, res.eigenvectors, res.num_matvecs, res.num_passes,
                    seconds, res.converged, which=which,
                    extra={"restarts": res.num_restarts,
                           "forward_passes": fwd.calls / len(problem.batches())})


def run_arpack(problem, ref, k, which, tol=TOL, operator="ours"):
    """``scipy.sparse.linalg.eigsh`` (ARPACK) on our operator, or on curvlinops' (``to_scipy``)."""
    v0 = np.random.default_rng(0).standard_normal(problem.num_params)
    fwd = ForwardCounter(problem.model)
    if operator == "ours":
        op = ours_operator(problem)
        count = lambda: (op.num_vectors, op.num_applications)  # noqa: E731
        lin, tool, note = op, "ARPACK", "scipy eigsh on our HessianOperator"
    else:
        lin, count, construction = curvlinops_operator(problem)
        tool, note = "curvlinops", f"HessianLinearOperator.to_scipy() + scipy eigsh; {construction}"
    fwd.calls = 0
    start = time.perf_counter()
    try:
        values, vectors = spla.eigsh(lin, k=k, which=which, tol=tol, v0=v0, maxiter=5000)
        converged = True
    except spla.ArpackNoConvergence as exc:
        values, vectors, converged = exc.eigenvalues, exc.eigenvectors, False
    seconds = time.perf_counter() - start
    fwd.close()
    hvps, passes = count()
    return topk_row(ref, tool, f"eigsh tol={tol:g}", k, values, vectors, hvps, passes, seconds,
                    converged, note=note, which=which,
                    extra={"forward_passes": fwd.calls / len(problem.batches())})


# ----------------------------------------------------------------------------- curvlinops


def curvlinops_operator(problem: Problem, batches=None, scipy_op=True):
    """``HessianLinearOperator`` with a counting ``_matmat``; returns (op, count(), note)."""
    from curvlinops import HessianLinearOperator

    fwd = ForwardCounter(problem.model)
    H = HessianLinearOperator(problem.model, problem.loss_fn, problem.params,
                              batches or problem.batches())
    fwd.close()
    counts = {"hvps": 0, "passes": 0}
    original = H._matmat

    def counting(M):
        counts["hvps"] += M[0].shape[-1]
        counts["passes"] += 1
        return original(M)

    H._matmat = counting
    note = (f"construction made {fwd.calls / len(batches or problem.batches()):.0f} passes "
            "(num_data and check_deterministic), not counted")
    lin = H.to_scipy() if scipy_op else H
    return lin, (lambda: (counts["hvps"], counts["passes"])), note


# ----------------------------------------------------------------------------- PyHessian


@contextlib.contextmanager
def pyhessian_counters():
    """Count HVPs of ``pyhessian.hessian`` and the HVP count at which each power iteration
    starts (the module-level ``normalization`` call that precedes its first HVP)."""
    import pyhessian  # noqa: F401  (its __init__ rebinds the name pyhessian.hessian to the class)

    ph = sys.modules["pyhessian.hessian"]
    state = {"hvps": 0, "starts": [], "last_was_hvp": False}

    def wrap_hvp(original):
        def counting(self, v):
            state["hvps"] += 1
            state["last_was_hvp"] = True
            return original(self, v)
        return counting

    def wrap_norm(original):
        def marking(v):
            if not state["last_was_hvp"]:
                state["starts"].append(state["hvps"])
            state["last_was_hvp"] = False
            return original(v)
        return marking

    with patched(ph.hessian, "dataloader_hv_product", wrap_hvp), \
            patched(ph, "normalization", wrap_norm), default_dtype(torch.float64):
        yield state


def run_pyhessian_topk(problem, ref, ks, tol, max_iter, setting):
    """One ``eigenvalues(top_n=max(ks))`` run; rows for each k from its prefix."""
    from pyhessian import hessian

    top_n = max(ks)
    with pyhessian_counters() as state:
        hc = hessian(problem.model, problem.loss_fn, dataloader=problem.batches(), cuda=False)
        torch.manual_seed(0)
        times = []
        wrap = hc.dataloader_hv_product

        def timed(v, _wrap=wrap):
            times.append(time.perf_counter())
            return _wrap(v)

        hc.dataloader_hv_product = timed
        start = time.perf_counter()
        values, vectors = hc.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        total = time.perf_counter() - start
    if len(state["starts"]) != top_n:  # the marker relies on PyHessian 0.1's loop structure
        raise RuntimeError(f"expected {top_n} power iterations, saw {len(state['starts'])}")
    starts = state["starts"] + [state["hvps"]]
    rows = []
    for k in ks:
        hvps = starts[k]
        seconds = (times[hvps] - start) if hvps < len(times) else total
        V = np.stack([_flat(v) for v in vectors[:k]], axis=1)
        iters = np.diff(starts)[:k]
        rows.append(topk_row(ref, "PyHessian", setting, k, values[:k], V, hvps, hvps, seconds,
                             converged=iters < max_iter,
                             note=f"power iterations per eigenvalue: {iters.tolist()}"))
    return rows


def run_pyhessian_density(problem, num_probes, num_steps, seed):
    """``hessian.density(iter=num_steps, n_v=num_probes)``: its (nodes, weights)."""
    from pyhessian import hessian

    with pyhessian_counters() as state, patched(torch, "eig", lambda _: _eig_shim):
        hc = hessian(problem.model, problem.loss_fn, dataloader=problem.batches(), cuda=False)
        torch.manual_seed(seed)
        start = time.perf_counter()
        nodes, weights = hc.density(iter=num_steps, n_v=num_probes)
        seconds = time.perf_counter() - start
    return np.array(nodes, dtype=np.float64), np.array(weights, dtype=np.float64), \
        state["hvps"], state["hvps"], seconds


# ----------------------------------------------------------------------------- hessian-eigenthings


def he_operator(problem: Problem, batches=None):
    from hessian_eigenthings import HessianOperator as HEHessian, supervised_loss

    H = HEHessian(problem.model, batches or problem.batches(), supervised_loss(problem.loss_fn))
    counts = {"hvps": 0}
    original = H.matvec

    def counting(v):
        counts["hvps"] += 1
        return original(v)

    H.matvec = counting
    return H, counts


def run_he_lanczos(problem, ref, k, which="LA", tuned=False, cap=600):
    """``lanczos(H, k=k)``: at its defaults (``max_iter = 2k``, tol 1e-4), or ``tuned``: tol
    ``TOL`` and ``max_iter`` grown by 1.5x until its own flags say every pair converged (the
    row reports that last run: an oracle choice of ``max_iter``; the search is in ``note``)."""
    from hessian_eigenthings import lanczos

    n = problem.num_params
    max_iter = min(2 * k, n - 1)
    spent = 0
    while True:
        H, counts = he_operator(problem)
        torch.manual_seed(0)
        start = time.perf_counter()
        if tuned or which != "LA":
            res = lanczos(H, k=k, which=which, seed=0, max_iter=max_iter,
                          tol=TOL if tuned else 1e-4)
        else:  # exactly the documented call: which="LM", max_iter=2k, tol=1e-4
            res = lanczos(H, k=k, seed=0)
        seconds = time.perf_counter() - start
        spent += counts["hvps"]
        done = bool(res.converged.all())
        if not tuned or done or max_iter >= min(cap, n - 1):
            break
        max_iter = min(int(math.ceil(1.5 * max_iter)), cap, n - 1)
    reorth = max_iter <= 50
    note = (f"max_iter={max_iter}, reorthogonalize="
            f"{'on' if reorth else 'off (its default above 50)'}")
    if tuned:
        note += f"; search over max_iter spent {spent} HVPs in all"
    return topk_row(ref, "hessian-eigenthings",
                    f"lanczos {'tol=1e-6, max_iter searched' if tuned else 'defaults'}", k,
                    res.eigenvalues.numpy(), res.eigenvectors.numpy().T, counts["hvps"],
                    counts["hvps"], seconds, res.converged.numpy(), note=note, which=which)


def run_he_power(problem, ref, ks, tol, max_iter, setting):
    """One ``deflated_power_iteration(k=max(ks))`` run; rows for each k from its prefix (its
    eigenvalue i uses seed + i and the operator deflated by the first i pairs, so the top-k
    run is the first k rounds of the top-max(ks) run). The pairs are taken in the order they
    were computed (the result itself is re-sorted by |lambda|)."""
    import hessian_eigenthings.algorithms.power_iteration as pi

    H, counts = he_operator(problem)
    rounds = []

    def wrap(original):
        def recording(*args, **kwargs):
            lam, vec, residual, iters, conv = original(*args, **kwargs)
            rounds.append((lam, vec.numpy().copy(), iters, conv, counts["hvps"],
                           time.perf_counter()))
            return lam, vec, residual, iters, conv
        return recording

    with patched(pi, "power_iteration_one", wrap):
        start = time.perf_counter()
        pi.deflated_power_iteration(H, k=max(ks), tol=tol, max_iter=max_iter, seed=0)
    rows = []
    for k in ks:
        lams = np.array([r[0] for r in rounds[:k]])
        vecs = np.stack([r[1] for r in rounds[:k]], axis=1)
        iters = [int(r[2]) for r in rounds[:k]]
        rows.append(topk_row(ref, "hessian-eigenthings", setting, k, lams, vecs,
                             rounds[k - 1][4], rounds[k - 1][4], rounds[k - 1][5] - start,
                             converged=[r[3] for r in rounds[:k]],
                             note=f"power iterations per eigenvalue: {iters}"))
    return rows


# ----------------------------------------------------------------------------- density


def w1_to_exact(ref: Reference, nodes, weights, outliers=(), dim=None) -> float:
    x, w = dens.average_measure(nodes, weights, outliers=outliers, dim=dim)
    ex, ew = dens.exact_measure(ref.eigenvalues)
    return dens.wasserstein1(x, w, ex, ew)


def density_rows(problem, ref, budget, probes, seed, available) -> list:
    steps = budget // probes
    spread = float(ref.eigenvalues[-1] - ref.eigenvalues[0])
    rows = []

    def add(tool, setting, nodes, weights, hvps, passes, seconds, outliers=(), note=""):
        w1 = w1_to_exact(ref, nodes, weights, outliers, problem.num_params)
        rows.append({"tool": tool, "setting": setting, "budget": budget, "seed": seed,
                     "hvps": int(hvps), "passes": int(passes), "seconds": float(seconds),
                     "w1": w1, "w1_over_range": w1 / spread, "note": note})

    op = ours_operator(problem)
    start = time.perf_counter()
    res = slq(op, probes, steps, rng=seed)
    add("ours", f"slq {probes}x{steps}", res.nodes, res.weights, res.num_matvecs,
        res.num_passes, time.perf_counter() - start)

    op = ours_operator(problem)
    start = time.perf_counter()
    plan = DeflatedPlan(k=10, which="LA", k_bottom=None, eigs_seed=seed, probe_seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eig = plan.eigenpairs(op, tol=1e-3, max_matvecs=budget // 2)
    left = budget - eig.num_matvecs
    res = plan.quadrature(op, eig, num_probes=probes, num_steps=max(left // probes, 1))
    add("ours", f"deflated_slq top-10 + {probes}x{max(left // probes, 1)}", res.nodes,
        res.weights, op.num_vectors, op.num_applications, time.perf_counter() - start,
        outliers=res.outliers, note=f"lanczos_eigsh(k=10, tol=1e-3) took {eig.num_matvecs} HVPs")

    if available.get("pyhessian"):
        nodes, weights, hvps, passes, seconds = run_pyhessian_density(problem, probes, steps,
                                                                      seed)
        add("PyHessian", f"density(iter={steps}, n_v={probes})", nodes, weights, hvps, passes,
            seconds, note="torch.eig shimmed with torch.linalg.eigh")
    if available.get("hessian_eigenthings"):
        from hessian_eigenthings import spectral_density

        H, counts = he_operator(problem)
        start = time.perf_counter()
        sd = spectral_density(H, num_runs=probes, lanczos_steps=steps, seed=seed)
        add("hessian-eigenthings", f"spectral_density({probes} runs x {steps})",
            sd.raw_eigenvalues.numpy(), sd.raw_weights.numpy(), counts["hvps"],
            counts["hvps"], time.perf_counter() - start)
    if available.get("curvlinops"):
        from curvlinops.papyan2020traces.spectrum import fast_lanczos

        H, count, _ = curvlinops_operator(problem, scipy_op=False)
        torch.manual_seed(seed)
        start = time.perf_counter()
        nodes, weights = [], []
        for _ in range(probes):
            evals, evecs = fast_lanczos(H, steps)
            nodes.append(evals.numpy())
            weights.append((evecs[0, :] ** 2).numpy())
        hvps, passes = count()
        add("curvlinops", f"{probes} x fast_lanczos(ncv={steps})", np.array(nodes),
            np.array(weights), hvps, passes, time.perf_counter() - start,
            note="the Lanczos of lanczos_approximate_spectrum (no reorthogonalization); its "
                 "boundary estimate (extra eigsh HVPs) is not run or counted")
    return rows


# ----------------------------------------------------------------------------- HVP cost


def hvp_cost_rows(problem, repeats, available) -> list:
    """Seconds of one full-dataset HVP over one full-dataset gradient, per tool, interleaved
    (gradient, HVP, gradient, HVP, ...) and the minimum of each taken (least disturbed)."""
    batches = problem.batches()
    params = problem.params
    n = len(problem.inputs)
    dim = problem.num_params
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    V10 = torch.randn(dim, 10, generator=gen, dtype=torch.float64)

    def gradient():
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            grads = torch.autograd.grad(problem.loss_fn(problem.model(x), y), params)
            for t, g in zip(total, grads):
                t.add_(g, alpha=len(x) / n)
        return total

    vl = [t.view_as(p).clone() for t, p in zip(v.split([p.numel() for p in params]), params)]

    def plain_hvp():  # the textbook loop: forward, grad with create_graph, one more backward
        for x, y in batches:
            g = torch.autograd.grad(problem.loss_fn(problem.model(x), y), params,
                                    create_graph=True)
            torch.autograd.grad(g, params, vl)

    graphs = [torch.autograd.grad(problem.loss_fn(problem.model(x), y), params,
                                  create_graph=True) for x, y in batches]

    def cached_hvp():  # the gradient graphs of every batch kept across products
        for g in graphs:
            torch.autograd.grad(g, params, vl, retain_graph=True)

    tools = {"baseline: plain double backward": (plain_hvp, 1, "no framework around it"),
             "baseline: cached gradient graphs": (cached_hvp, 1,
                                                  "one backward a batch; not offered by any tool")}
    op = ours_operator(problem)
    tools["ours"] = (lambda: op.apply(v), 1, "HessianOperator.apply, one vector (auto strategy)")
    op10 = ours_operator(problem)
    tools["ours (block of 10)"] = (lambda: op10.apply(V10), 10,
                                   "HessianOperator.apply on 10 vectors: one pass, per vector")
    if available.get("pyhessian"):
        from pyhessian import hessian

        hc = hessian(problem.model, problem.loss_fn, dataloader=batches, cuda=False)
        tools["PyHessian"] = (lambda: hc.dataloader_hv_product(vl), 1,
                              "hessian.dataloader_hv_product")
    if available.get("hessian_eigenthings"):
        H, _ = he_operator(problem)
        tools["hessian-eigenthings"] = (lambda: H.matvec(v), 1, "HessianOperator.matvec")
    if available.get("curvlinops"):
        Hc, _, _ = curvlinops_operator(problem, scipy_op=False)
        tools["curvlinops"] = (lambda: Hc @ v, 1, "HessianLinearOperator @ v")
        tools["curvlinops (block of 10)"] = (lambda: Hc @ V10, 10,
                                             "HessianLinearOperator @ V (10 columns)")
    rows = []
    for name, (fn, per, how) in tools.items():
        fn(), gradient()  # warm-up (our strategy calibration, vmap tracing)
        tg, th = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            gradient()
            t1 = time.perf_counter()
            fn()
            t2 = time.perf_counter()
            tg.append(t1 - t0)
            th.append((t2 - t1) / per)
        rows.append({"tool": name, "how": how, "hvp_seconds": min(th),
                     "gradient_seconds": min(tg), "ratio": min(th) / min(tg)})
    return rows


def operator_check_rows(problem, cfg, available) -> list:
    """Relative error of each tool's full-dataset ``H v`` against the independent full-batch
    HVP, on even batches and on ragged ones (the last batch smaller)."""
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(problem.num_params, generator=gen, dtype=torch.float64)
    exact = full_batch_hvp(problem, v).numpy()
    rows = []
    for label, bs in (("even", problem.batch_size), ("ragged", cfg["ragged_batch"])):
        batches = problem.batches(bs)
        sizes = sorted({len(b[0]) for b in batches})
        results = {"ours": ours_operator(problem, batches).apply(v).numpy()}
        if available.get("pyhessian"):
            from pyhessian import hessian

            params = problem.params
            vl = [t.view_as(p).clone() for t, p in zip(v.split([p.numel() for p in params]),
                                                        params)]
            hc = hessian(problem.model, problem.loss_fn, dataloader=batches, cuda=False)
            results["PyHessian"] = _flat(hc.dataloader_hv_product(vl)[1])
        if available.get("hessian_eigenthings"):
            H, _ = he_operator(problem, batches)
            results["hessian-eigenthings"] = H.matvec(v).detach().numpy()
        if available.get("curvlinops"):
            Hc, _, _ = curvlinops_operator(problem, batches, scipy_op=False)
            results["curvlinops"] = (Hc @ v).detach().numpy()
        for tool, hv in results.items():
            rows.append({"tool": tool, "batches": label, "batch_sizes": sizes,
                         "rel_error": float(np.linalg.norm(hv - exact) / np.linalg.norm(exact))})
    return rows


# ----------------------------------------------------------------------------- driver


def run_problem(name: str, cfg: dict, available: dict, sections=SECTIONS) -> dict:
    t_start = time.perf_counter()
    problem = make_problem(name, cfg)
    print(f"\n=== {name}: {problem.description}; {problem.num_params:,d} parameters, "
          f"{len(problem.batches())} batches of {problem.batch_size}, float64, "
          f"final training loss {problem.final_loss:.3g}", flush=True)
    ref = build_reference(problem)
    print(f"dense reference: {ref.seconds:.1f} s; lambda_max {ref.eigenvalues[-1]:.6g}, "
          f"lambda_min {ref.eigenvalues[0]:.6g}; check against a full-batch HVP: "
          f"{ref.check['max_rel_error_vs_full_batch_hvp']:.1e}", flush=True)
    out = {"description": problem.description, "params": problem.num_params,
           "samples": len(problem.inputs), "batch_size": problem.batch_size,
           "num_batches": len(problem.batches()), "final_train_loss": problem.final_loss,
           "reference": {"seconds": ref.seconds, "lambda_max": float(ref.eigenvalues[-1]),
                         "lambda_min": float(ref.eigenvalues[0]),
                         "top20": ref.top(20).tolist(), "bottom5": ref.bottom(5).tolist(),
                         **ref.check}}

    if "operator" in sections:
        out["operator_check"] = operator_check_rows(problem, cfg, available)
        print_rows("operator check: ||H v - H_exact v|| / ||H_exact v|| "
                   "(independent full-batch HVP)",
               out["operator_check"], [("tool", _str), ("batches", _str), ("batch_sizes", _str),
                                       ("rel_error", _sci)])

    if "topk" in sections:
        ks = cfg["ks"]
        topk = []
        cols = [("tool", _str), ("setting", _str), ("k", _int), ("hvps", _int), ("passes", _int),
                ("seconds", _sec), ("max_rel_eig_error", _sci), ("max_rel_residual", _sci),
                ("reached_tol", _str)]
        for k in ks:
            rows = [run_ours_eigs(problem, ref, k, "LA"), run_arpack(problem, ref, k, "LA")]
            if available.get("curvlinops"):
                rows.append(run_arpack(problem, ref, k, "LA", operator="curvlinops"))
            if available.get("hessian_eigenthings"):
                rows.append(run_he_lanczos(problem, ref, k))
                rows.append(run_he_lanczos(problem, ref, k, tuned=True))
            topk += rows
            print_rows(f"top-{k}", rows, cols)
        if available.get("pyhessian"):
            rows = run_pyhessian_topk(problem, ref, ks, 1e-3, 100, "power iteration defaults "
                                      "(tol=1e-3, maxIter=100)")
            if cfg["strict_k"]:
                rows += run_pyhessian_topk(problem, ref, [k for k in ks if k <= cfg["strict_k"]],
                                           1e-12, cfg["strict_max_iter"], "power iteration "
                                           f"tol=1e-12, maxIter={cfg['strict_max_iter']}")
            topk += rows
            print_rows("PyHessian", rows, cols)
        if available.get("hessian_eigenthings"):
            rows = run_he_power(problem, ref, ks, 1e-4, 100, "deflated_power_iteration defaults "
                                "(tol=1e-4, max_iter=100)")
            if cfg["strict_k"]:
                rows += run_he_power(problem, ref, [k for k in ks if k <= cfg["strict_k"]], TOL,
                                     cfg["strict_max_iter"], "deflated_power_iteration tol=1e-6, "
                                     f"max_iter={cfg['strict_max_iter']}")
            topk += rows
            print_rows("hessian-eigenthings power iteration", rows, cols)
        out["topk"] = topk

    if "bottom" in sections:
        kb = cfg["k_bottom"]
        bottom = [run_ours_eigs(problem, ref, kb, "SA", criterion="norm"),
                  run_ours_eigs(problem, ref, kb, "SA", criterion="eigenvalue"),
                  run_arpack(problem, ref, kb, "SA")]
        if available.get("curvlinops"):
            bottom.append(run_arpack(problem, ref, kb, "SA", operator="curvlinops"))
        if available.get("hessian_eigenthings"):
            bottom.append(run_he_lanczos(problem, ref, kb, which="SA"))
            bottom.append(run_he_lanczos(problem, ref, kb, which="SA", tuned=True))
        out["bottom"] = bottom
        print_rows(f"bottom-{kb} (most negative); PyHessian: not available (power iteration finds "
                   "the largest |lambda| only)", bottom,
                   cols[:6] + [("max_eig_error_over_norm", _sci), ("max_rel_eig_error", _sci),
                               ("max_rel_residual", _sci)])

    if "density" in sections:
        drows = []
        for budget in cfg["budgets"]:
            for seed in cfg["seeds"]:
                drows += density_rows(problem, ref, budget, cfg["probes"], seed, available)
        out["density"] = drows
        out["density_summary"] = summarize_density(drows)
        print_rows(f"spectral density: W1 to the exact spectrum (mean over seeds {cfg['seeds']}); "
                   f"spectrum range {ref.eigenvalues[-1] - ref.eigenvalues[0]:.4g}",
                   out["density_summary"], [("budget", _int), ("tool", _str), ("setting", _str),
                                            ("hvps", _int), ("passes", _int), ("seconds", _sec),
                                            ("w1", _sci), ("w1_over_range", _sci)])

    if "cost" in sections:
        out["hvp_cost"] = hvp_cost_rows(problem, cfg["timing_repeats"], available)
        print_rows("one full-dataset HVP / one full-dataset gradient", out["hvp_cost"],
                   [("tool", _str), ("hvp_seconds", lambda x: f"{x * 1e3:.1f} ms"),
                    ("gradient_seconds", lambda x: f"{x * 1e3:.1f} ms"),
                    ("ratio", lambda x: f"{x:.2f}x")])
    out["targets"] = evaluate_targets(out, cfg)
    print("\ntargets (measured in this run):")
    for key, value in out["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "-"}[value["met"]]
        print(f"  {verdict:>6}  {key}: {value['measured']}")
    out["seconds"] = time.perf_counter() - t_start
    return out


def summarize_density(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["budget"], r["tool"], r["setting"].split(" ")[0]), []).append(r)
    out = []
    for (budget, tool, _), rs in groups.items():
        out.append({"budget": budget, "tool": tool, "setting": rs[0]["setting"],
                    "hvps": int(np.mean([r["hvps"] for r in rs])),
                    "passes": int(np.mean([r["passes"] for r in rs])),
                    "seconds": float(np.mean([r["seconds"] for r in rs])),
                    "w1": float(np.mean([r["w1"] for r in rs])),
                    "w1_over_range": float(np.mean([r["w1_over_range"] for r in rs])),
                    "w1_per_seed": [r["w1"] for r in rs]})
    return out


def evaluate_targets(out, cfg) -> dict:
    """Each target of the issue against this run's measurements: ``{measured, met}``."""
    targets = {}

    def put(key, measured, met):
        targets[key] = {"measured": measured, "met": None if met is None else bool(met)}

    topk = out.get("topk", [])
    if topk:
        k = 10 if 10 in cfg["ks"] else max(cfg["ks"])
        rows = [r for r in topk if r["k"] == k]
        ours = next(r for r in rows if r["tool"] == "ours")
        arpack = next(r for r in rows if r["tool"] == "ARPACK")
        put(f"top-{k} to relative residual {TOL:g}",
            f"{ours['hvps']} HVPs, max rel. residual {ours['max_rel_residual']:.1e}",
            ours["reached_tol"])
        put(f"top-{k}: ours <= ARPACK's HVPs", f"{ours['hvps']} vs {arpack['hvps']}",
            ours["hvps"] <= arpack["hvps"])
        for r in rows:
            if r["tool"] == "PyHessian":
                ratio = r["hvps"] / ours["hvps"]
                put(f"top-{k}: >= 5x fewer HVPs than PyHessian [{r['setting']}]",
                    f"PyHessian {r['hvps']} HVPs (max rel. residual "
                    f"{r['max_rel_residual']:.1e}{'' if r['reached_tol'] else ', tol not reached'})"
                    f" = {ratio:.1f}x ours", ratio >= 5)
    cost = {r["tool"]: r for r in out.get("hvp_cost", [])}
    if "ours" in cost:
        ratio = cost["ours"]["ratio"]
        put("HVP <= 2.5x gradient", f"{ratio:.2f}x", ratio <= 2.5)
        single = [r for t, r in cost.items()
                  if not t.startswith(("ours", "baseline")) and "block" not in t]
        if single:  # compared as ratios to the gradient timed beside each (load drifts)
            cheapest = min(single, key=lambda r: r["ratio"])
            put("one-vector HVP at least as cheap as the cheapest peer's",
                f"ours {ratio:.2f}x vs {cheapest['tool']} {cheapest['ratio']:.2f}x the gradient",
                ratio <= cheapest["ratio"])
        blocks = [r for t, r in cost.items() if "block" in t and not t.startswith("ours")]
        if blocks and "ours (block of 10)" in cost:
            ours_block = cost["ours (block of 10)"]["ratio"]
            put("per-vector HVP in a block of 10 at least as cheap as a peer's block",
                f"ours {ours_block:.2f}x vs " + ", ".join(
                    f"{r['tool']} {r['ratio']:.2f}x" for r in blocks),
                all(ours_block <= r["ratio"] for r in blocks))
    summary = out.get("density_summary", [])
    for budget in cfg["budgets"] if summary else ():
        rs = [r for r in summary if r["budget"] == budget]
        peers = [r for r in rs if r["tool"] != "ours"]
        if not peers:
            continue
        best_peer = min(peers, key=lambda r: r["w1"])
        for r in (r for r in rs if r["tool"] == "ours"):
            put(f"density W1 at {budget} HVPs: ours {r['setting'].split()[0]} <= every peer",
                f"{r['w1']:.2e} vs best peer {best_peer['tool']} {best_peer['w1']:.2e}",
                r["w1"] <= best_peer["w1"])
    return targets


def versions(available) -> dict:
    v = {"lanczos_hessian": importlib.metadata.version("lanczos_hessian"),
         "torch": torch.__version__, "numpy": np.__version__,
         "scipy": importlib.metadata.version("scipy"), "python": platform.python_version()}
    for module, (ok, info) in available.items():
        v[PEERS[module]] = info if ok else f"not available ({info})"
    return v


def machine() -> dict:
    info = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                               "Hypervisor vendor", "L2 cache", "L3 cache"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems and settings")
    parser.add_argument("--problems", nargs="+", default=None,
                        help="any of tiny, mlp, cnn (default: mlp cnn)")
    parser.add_argument("--peers", nargs="*", default=None,
                        help="restrict to these peers (pyhessian curvlinops hessian_eigenthings)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: steadier on a shared machine, "
                             "and faster for models this small)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="parts to run (default all)")
    parser.add_argument("--ks", nargs="+", type=int, default=None, help="top-k values")
    parser.add_argument("--budgets", nargs="+", type=int, default=None,
                        help="HVP budgets for the density comparison")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--markdown", default=None, help="write the tables as markdown here")
    parser.add_argument("--from-json", default=None,
                        help="only render --markdown (or print it) from a JSON written before")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        text = markdown(report)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text + "\n")
        else:
            print(text)
        return report
    cfg = dict(QUICK if args.quick else FULL)
    if args.ks:
        cfg["ks"] = tuple(args.ks)
    if args.budgets:
        cfg["budgets"] = tuple(args.budgets)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings():
            # PyHessian calls loss.backward(create_graph=True), which warns of a .grad cycle
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            return _run(args, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(args, cfg) -> dict:
    wanted = set(PEERS) if args.peers is None else set(args.peers)
    availability = {m: peer_available(m) for m in PEERS}
    available = {m: ok and m in wanted for m, (ok, _) in availability.items()}
    for m, (ok, info) in availability.items():
        state = "used" if available[m] else ("skipped" if ok else "not available")
        print(f"{PEERS[m]}: {state} ({info})")
    report = {"command": " ".join([sys.executable] + sys.argv),
              "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
              "tol": TOL, "versions": versions(availability), "machine": machine(),
              "peers_used": [PEERS[m] for m, ok in available.items() if ok], "problems": {}}
    start = time.perf_counter()
    for name in args.problems or ["mlp", "cnn"]:
        problem_cfg = {**cfg, **({} if args.quick else FULL_OVERRIDES.get(name, {}))}
        report["problems"][name] = run_problem(name, problem_cfg, available, args.sections)
        report["problems"][name]["config"] = {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in problem_cfg.items()}
    report["seconds"] = time.perf_counter() - start
    print(f"\ntotal {report['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report) + "\n")
        print(f"written to {args.markdown}")
    return report


def markdown(report) -> str:
    """The tables of a report as GitHub markdown (``--markdown``, or ``--from-json``)."""
    lines = []

    def table(header, rows):
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines.append("")

    def e(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"

    for name, p in report["problems"].items():
        ref = p["reference"]
        lines.append(f"### {name}: {p['description']}")
        lines.append("")
        lines.append(f"{p['params']:,} parameters, {p['samples']} samples in {p['num_batches']} "
                     f"batches of {p['batch_size']}, float64; final training loss "
                     f"{p['final_train_loss']:.3g}. Exact spectrum: lambda_max "
                     f"{ref['lambda_max']:.6g}, lambda_min {ref['lambda_min']:.6g} (dense "
                     f"matrix in {ref['seconds']:.0f} s, agrees with an independent full-batch "
                     f"HVP to {ref['max_rel_error_vs_full_batch_hvp']:.0e}).")
        lines.append("")
        if "operator_check" in p:
            lines.append("**One HVP against the independent full-batch HVP** "
                         "(relative error; ragged: last batch smaller)")
            lines.append("")
            tools = list(dict.fromkeys(r["tool"] for r in p["operator_check"]))
            cells = {(r["tool"], r["batches"]): r for r in p["operator_check"]}
            table(["tool", "even batches", "ragged batches"],
                  [[t, e(cells[(t, "even")]["rel_error"]),
                    f"{e(cells[(t, 'ragged')]['rel_error'])} "
                    f"(sizes {cells[(t, 'ragged')]['batch_sizes']})"]
                   for t in tools])
        if "topk" in p:
            lines.append(f"**Top-k eigenvalues** (residual target {report['tol']:g} relative "
                         "to |theta|; error against the dense top-k; HVPs = full-dataset "
                         "Hessian-vector products, passes = passes over the data)")
            lines.append("")
            rows = sorted(p["topk"], key=lambda r: r["k"])
            table(["k", "tool", "setting", "HVPs", "passes", "s", "max rel. eig. error",
                   "max rel. residual", "reached 1e-6"],
                  [[r["k"], r["tool"], r["setting"], r["hvps"], r["passes"],
                    f"{r['seconds']:.2f}", e(r["max_rel_eig_error"]), e(r["max_rel_residual"]),
                    "yes" if r["reached_tol"] else "no"] for r in rows])
        if "bottom" in p:
            lines.append("**Bottom-k (most negative) eigenvalues** (PyHessian: no routine)")
            lines.append("")
            table(["k", "tool", "setting", "HVPs", "passes", "s", "max error / norm(H)",
                   "max rel. eig. error", "max rel. residual"],
                  [[r["k"], r["tool"], r["setting"], r["hvps"], r["passes"],
                    f"{r['seconds']:.2f}", e(r["max_eig_error_over_norm"]),
                    e(r["max_rel_eig_error"]), e(r["max_rel_residual"])] for r in p["bottom"]])
        if "density_summary" in p:
            spread = ref["lambda_max"] - ref["lambda_min"]
            lines.append(f"**Spectral density**: W1 to the exact spectral measure, mean over "
                         f"seeds {p.get('config', {}).get('seeds', '')} (per seed in brackets); "
                         f"spectrum range {spread:.4g}")
            lines.append("")
            table(["HVP budget", "tool", "setting", "HVPs", "passes", "s", "W1", "W1 / range",
                   "per seed"],
                  [[r["budget"], r["tool"], r["setting"], r["hvps"], r["passes"],
                    f"{r['seconds']:.2f}", e(r["w1"]), e(r["w1_over_range"]),
                    ", ".join(f"{w:.2e}" for w in r["w1_per_seed"])]
                   for r in p["density_summary"]])
        if "hvp_cost" in p:
            lines.append("**One full-dataset HVP over one full-dataset gradient** (minimum of "
                         "interleaved repeats)")
            lines.append("")
            table(["tool", "how", "HVP ms", "gradient ms", "ratio"],
                  [[r["tool"], r["how"], f"{r['hvp_seconds'] * 1e3:.2f}",
                    f"{r['gradient_seconds'] * 1e3:.2f}", f"{r['ratio']:.2f}x"]
                   for r in p["hvp_cost"]])
        if p.get("targets"):
            lines.append("**Targets, as measured in this run**")
            lines.append("")
            table(["target", "measured", "verdict"],
                  [[k, v["measured"], {True: "met", False: "missed", None: "-"}[v["met"]]]
                   for k, v in p["targets"].items()])
    return "\n".join(lines)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


if __name__ == "__main__":
    main()
