"""Lanczos with vectors split across 2 gloo ranks equals the single-process run."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_mlp, mlp_data, spectrum_matrix
from lanczos_hessian import HessianOperator, lanczos_eigsh, slq

WORKER = Path(__file__).parents[1] / "_shard_worker.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes under gloo
def test_sharded_lanczos_matches_single_process(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-2000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert ranks[0]["local_rows"] + ranks[1]["local_rows"] == 100  # basis rows split 50/50

    rng = np.random.default_rng(0)
    A = spectrum_matrix(np.concatenate([rng.uniform(-1, 1, 93), [-3, -2, 3, 4, 5, 6, 7.0]]), seed=0)
    dense = lanczos_eigsh(A, k=4, which="BE", ncv=10, tol=1e-10, rng=0, true_residuals=True)
    op = HessianOperator(make_mlp(), torch.nn.CrossEntropyLoss(), mlp_data(n=37), batch_size=5)
    network = lanczos_eigsh(op, k=5, which="LA", ncv=12, tol=1e-10, rng=1, true_residuals=True)
    slq_dense = slq(A, num_probes=3, num_steps=15, rng=2, deflate=dense)
    slq_network = slq(op, num_probes=2, num_steps=12, rng=3, deflate=network,
                      reorthogonalize=False)
    block = lanczos_eigsh(A, k=4, which="BE", ncv=20, tol=1e-10, rng=0, block_size=3,
                          true_residuals=True)
    for saved in ranks:  # block Lanczos with sharded blocks: the single process's numbers
        np.testing.assert_allclose(saved["block_values"], block.eigenvalues, rtol=1e-11)
        np.testing.assert_allclose(saved["block_residuals"], block.residuals, atol=1e-12)
        assert int(saved["block_passes"]) == block.num_passes
    for saved in ranks:  # every rank ends with the same, whole result
        np.testing.assert_allclose(saved["dense_values"], dense.eigenvalues, rtol=1e-12)
        assert int(saved["dense_matvecs"]) == dense.num_matvecs
        np.testing.assert_allclose(np.abs(saved["dense_vectors"]), np.abs(dense.eigenvectors),
                                   atol=1e-9)
        np.testing.assert_allclose(saved["network_values"], network.eigenvalues, rtol=1e-11)
        np.testing.assert_allclose(saved["network_residuals"], network.residuals, atol=1e-12)
        # SLQ with sharded probes, bases and deflation vectors: the same Gauss rules
        np.testing.assert_allclose(saved["slq_dense_nodes"], slq_dense.nodes, atol=1e-10)
        np.testing.assert_allclose(saved["slq_dense_weights"], slq_dense.weights, atol=1e-10)
        assert int(saved["slq_dense_passes"]) == slq_dense.num_passes == 15
        np.testing.assert_allclose(saved["slq_network_nodes"], slq_network.nodes, atol=1e-10)
        np.testing.assert_allclose(saved["slq_network_weights"], slq_network.weights,
                                   atol=1e-10)
