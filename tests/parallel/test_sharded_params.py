"""Models whose parameters are sharded across gloo ranks (FSDP2's ``fully_shard``, DTensor
parameters) give the curvature of the unsharded model on the full data.

One launch per world size computes everything (``_sharded_params_worker.py``); this process
computes the references with the unsharded model, alone: the dense Hessian (its
``eigvalsh``), the products, an SLQ run, and a finished run file of another world size.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lanczos_hessian import GGNOperator, HessianOperator, ResidualOperator, run
from lanczos_hessian.parallel.layout import ShardLayout

WORKER = Path(__file__).parent / "_sharded_params_worker.py"
BATCH = 14
EIGS = dict(k=8, which="BE", k_bottom=3, tol=1e-8, ncv=50, seed=0)  # top 5, bottom 3
RESUME = dict(k=2, which="LA", tol=1e-8, ncv=10, seed=3)  # a short run, stopped and resumed
SLQ = dict(num_probes=2, num_steps=6, seed=1)


def make_model(seed=0):
    """Three blocks, 224 parameters; row counts (10, 10, 4) that 2 and 4 ranks split unevenly
    (FSDP2 pads its shards)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 10),
                               torch.nn.Tanh(), torch.nn.Linear(10, 4)).double()


def make_data(n=41, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=g))


def probe_block(b=3, seed=2):
    dim = sum(p.numel() for p in make_model().parameters())
    return np.random.default_rng(seed).standard_normal((dim, b))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size, out_dir):
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    failed = [f"rank {r}: {err.decode()[-2000:]}" for r, (p, (_, err))
              in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return [(dict(np.load(out_dir / f"rank{r}.npz")),
             json.loads((out_dir / f"rank{r}.json").read_text())) for r in range(world_size)]


def dense_hessian(model, data):
    """``d^2 L / dw^2`` of the mean loss over all of ``data`` by ``torch.func.hessian`` of
    the flat parameters (a path independent of the operators)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w):
        pieces = torch.split(w, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(model, params, (data[0],)), data[1])

    return torch.func.hessian(loss)(flat).numpy()


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The unsharded model on the full data in this single process (shared by both world
    sizes); ``single`` a finished run file of world size 1."""
    out_dir = tmp_path_factory.mktemp("single")
    data, V = make_data(), probe_block()
    op = HessianOperator(make_model(), torch.nn.CrossEntropyLoss(), data, batch_size=BATCH)
    H = dense_hessian(make_model(), data)
    exact = np.linalg.eigvalsh(H)
    run.eigs(op, out_dir / "single.h5", progress=False, **RESUME)  # a file of world size 1
    _, density = run.slq(op, progress=False, **SLQ)
    loss = torch.nn.CrossEntropyLoss()
    return {"hv": H @ V, "H": H, "single": out_dir / "single.h5",
            "digest": op.identity()["fingerprints"]["model"],
            "top": exact[-5:], "bottom": exact[:3],
            "ggn_hv": GGNOperator(make_model(), loss, data, batch_size=BATCH) @ V,
            "residual_hv": ResidualOperator(make_model(), loss, data, batch_size=BATCH) @ V,
            "slq_nodes": density.nodes, "slq_weights": density.weights}


def shard_major(H, world_size):
    """The dense ``H`` in the operators' shard-major coordinates over ``world_size`` ranks
    (:mod:`lanczos_hessian.parallel.layout`): ``P^T H P``."""
    layout = ShardLayout([p.shape for p in make_model().parameters()], world_size)
    return layout.from_parameters(layout.from_parameters(H).T).T


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.slow  # W gloo processes; one launch checks every property
@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_parameters_give_the_unsharded_curvature(tmp_path, world_size, ref):
    shutil.copy(ref["single"], tmp_path / "single.h5")
    ranks = launch(world_size, tmp_path)
    M = ref["H"].shape[0]
    # SLQ in the operators' coordinates: the same probes (seed) as the sharded runs
    H_sm = shard_major(ref["H"], world_size)
    _, density = run.slq(H_sm, progress=False, **SLQ)
    hv_sm = H_sm @ ShardLayout([p.shape for p in make_model().parameters()],
                               world_size).from_parameters(probe_block())
    layout = ShardLayout([p.shape for p in make_model().parameters()], world_size)
    offsets = layout.offsets
    labels = ["fsdp", "dtensor", "mixed", "checkpointed", "wrapped"] + (
        ["hsdp"] if world_size == 4 else [])
    for rank, (saved, messages) in enumerate(ranks):
        for label in labels:  # products: the unsharded full-data product, on every rank
            assert relative(saved[f"{label}_hv"], ref["hv"]) < 1e-12, label
            # the file's model digest: the unsharded model's, gathered one parameter at a time
            assert messages[f"{label}_digest"] == ref["digest"], label
        assert relative(saved["forward_hv"], ref["hv"]) < 1e-12  # the other strategy
        assert relative(saved["ggn_hv"], ref["ggn_hv"]) < 1e-12
        assert relative(saved["residual_hv"], ref["residual_hv"]) < 1e-12
        # eigenvalues at both ends (sharded Lanczos vectors) against eigvalsh of the dense H
        values = np.sort(saved["eigs_values"])
        np.testing.assert_allclose(values[-5:], ref["top"], rtol=0, atol=1e-8)
        np.testing.assert_allclose(values[:3], ref["bottom"], rtol=0, atol=1e-8)
        assert np.all(saved["eigs_residuals"] < 1e-8)
        np.testing.assert_allclose(saved["slq_nodes"], density.nodes, rtol=0, atol=1e-10)
        np.testing.assert_allclose(saved["slq_weights"], density.weights, rtol=0, atol=1e-10)
        # products on the shards: fully_shard and plain DTensor parameters, and blocks
        # under activation checkpointing (torch.utils.checkpoint, checkpoint_wrapper)
        for label in ("fsdp", "dtensor", "checkpointed", "wrapped"):
            assert bool(saved[f"{label}_native"]), label
            lo, hi = offsets[rank:rank + 2]
            difference = np.abs(saved[f"{label}_rows"] - hv_sm[lo:hi]).max()
            assert difference < 1e-12 * np.abs(hv_sm).max(), (label, difference)
            if label in ("checkpointed", "wrapped"):  # recomputed in the backward passes
                assert int(saved[f"{label}_calls"]) > 2 * int(saved["fsdp_calls"]), label
            if label == "wrapped":
                continue  # SLQ: the torch.utils.checkpoint model's run (the same products)
            np.testing.assert_allclose(saved[f"{label}_slq_nodes"], density.nodes, atol=1e-10)
            np.testing.assert_allclose(saved[f"{label}_slq_weights"], density.weights,
                                       atol=1e-10)
            # every pass of the runs on the shards (the trial step is not a pass)
            assert int(saved[f"{label}_native_passes"]) == int(saved[f"{label}_all_passes"])
            assert int(saved[f"{label}_native_passes"]) >= SLQ["num_steps"]
            if label != "fsdp":
                continue  # eigenvalues: the fully_shard model's run (the same products)
            values = np.sort(saved[f"{label}_eigs_values"])
            np.testing.assert_allclose(values[-5:], ref["top"], rtol=0, atol=1e-8)
            np.testing.assert_allclose(values[:3], ref["bottom"], rtol=0, atol=1e-8)
            assert np.all(saved[f"{label}_eigs_residuals"] < 1e-8)
            assert int(saved[f"{label}_native_passes"]) > SLQ["num_steps"] + 20
            if rank == 0:  # the run file says in which order its vectors are
                assert messages[f"{label}_order"] == "shard-major"
        # the GGN and the residual on the shards, against the unsharded operators
        lo, hi = offsets[rank:rank + 2]
        for kind in ("ggn", "residual"):
            assert bool(saved[f"{kind}_native"]), kind
            exact = layout.from_parameters(ref[f"{kind}_hv"])
            difference = np.abs(saved[f"{kind}_rows"] - exact[lo:hi]).max()
            assert difference < 1e-12 * np.abs(exact).max(), (kind, difference)
        # partly sharded: its plain parameters cut as Shard(0) too; a 2-D mesh (HSDP) is
        # not one shard per rank: gathered
        assert bool(saved["mixed_native"])
        if "hsdp" in labels:
            assert not bool(saved["hsdp_native"])
        if world_size != 2:
            continue  # the 2-rank launch alone checks blocks, resume and bad input
        # blockwise spectra: the top 2 of the diagonal blocks of the first and last layers
        for name, rows in (("first", slice(0, 70)), ("last", slice(M - 44, M))):
            exact = np.linalg.eigvalsh(ref["H"][rows, rows])[-2:]
            np.testing.assert_allclose(np.sort(saved[f"block_{name}"]), exact, atol=1e-8)
        assert bool(saved["resume_equal"])  # a stopped run resumed with the same W
        assert "RuntimeError: simulated failure of rank 0" in messages["stopped"] or \
            "rank 0 raised RuntimeError" in messages["stopped"], messages["stopped"]
        assert "(world_size: file has 1, this run has 2)" in messages["other_world"], \
            messages["other_world"]
        assert "InvalidModelError" in messages["dtype"] and "'0.weight'" in messages["dtype"]
        assert f"ranks 0 and {world_size - 1}" in messages["dtype"], messages["dtype"]
        assert "InvalidModelError" in messages["mesh"] and "mesh" in messages["mesh"]
        assert f"has {world_size}" in messages["mesh"], messages["mesh"]
        assert "RankMismatchError" in messages["replica"], messages["replica"]
        if rank == world_size - 1:  # the first batch's loss, checked on the shards
            assert messages["first_batch"].startswith("NonFiniteError: the loss is nan on "
                                                      f"batch 0 of rank {rank}'s shard"), \
                messages["first_batch"]
        else:
            assert messages["first_batch"].startswith("RankFailedError") and \
                f"rank {world_size - 1}" in messages["first_batch"], messages["first_batch"]
        assert messages["compile"].startswith("InvalidModelError: compile=True is not "
                                              "available"), messages["compile"]
        assert messages["grouped"].startswith("InvalidModelError: module '0' is an FSDP2 "
                                              "module whose forward hooks"), messages["grouped"]
        assert messages["data_order"].startswith("RankMismatchError: the 2 ranks disagree on "
                                                 "the sum of the inputs"), messages["data_order"]
    # still sharded after every product and run: each rank holds at most its Shard(0) rows,
    # ceil(rows / W) of each parameter
    most = sum(-(-p.shape[0] // world_size) * p[0].numel() for p in make_model().parameters())
    for label in set(labels) - {"mixed"}:
        held = [int(saved[f"{label}_held"]) for saved, _ in ranks]
        assert all(bool(saved[f"{label}_all_dtensor"]) for saved, _ in ranks), label
        if label != "hsdp":  # HSDP: each shard held by 2 replicas
            assert sum(held) == M and max(held) <= most, (label, held)
