"""Worker for tests/parallel/test_sharded.py: one rank of a 2-process gloo group.

Usage: python _shard_worker.py OUT_DIR  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).
Computes the same eigenpairs with Lanczos vectors sharded across ranks, on a dense matrix
and on a data-parallel network Hessian, and saves them with the basis sizes.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_mlp, mlp_data, spectrum_matrix  # noqa: E402
from lanczos_hessian import HessianOperator, lanczos_eigsh, slq  # noqa: E402
from lanczos_hessian.linalg.hooks import Hooks  # noqa: E402
from lanczos_hessian.parallel.sharding import Shard  # noqa: E402


def main(out_dir):
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    rng = np.random.default_rng(0)
    A = spectrum_matrix(np.concatenate([rng.uniform(-1, 1, 93), [-3, -2, 3, 4, 5, 6, 7.0]]), seed=0)
    dense = lanczos_eigsh(A, k=4, which="BE", ncv=10, tol=1e-10, rng=0, true_residuals=True,
                          hooks=Hooks(shard=Shard(A.shape[0])))
    model, data = make_mlp(), mlp_data(n=37)
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data, batch_size=5)
    network = lanczos_eigsh(op, k=5, which="LA", ncv=12, tol=1e-10, rng=1, true_residuals=True,
                            hooks=Hooks(shard=Shard(op.shape[0])))
    slq_dense = slq(A, num_probes=3, num_steps=15, rng=2, deflate=dense,
                    hooks=Hooks(shard=Shard(A.shape[0])))
    slq_network = slq(op, num_probes=2, num_steps=12, rng=3, deflate=network,
                      reorthogonalize=False, hooks=Hooks(shard=Shard(op.shape[0])))
    block = lanczos_eigsh(A, k=4, which="BE", ncv=20, tol=1e-10, rng=0, block_size=3,
                          true_residuals=True, hooks=Hooks(shard=Shard(A.shape[0])))
    np.savez(Path(out_dir) / f"rank{rank}.npz",
             block_values=block.eigenvalues, block_residuals=block.residuals,
             block_passes=block.num_passes,
             slq_dense_nodes=slq_dense.nodes, slq_dense_weights=slq_dense.weights,
             slq_dense_passes=slq_dense.num_passes,
             slq_network_nodes=slq_network.nodes, slq_network_weights=slq_network.weights,
             dense_values=dense.eigenvalues, dense_vectors=dense.eigenvectors,
             dense_residuals=dense.residuals, dense_matvecs=dense.num_matvecs,
             network_values=network.eigenvalues, network_vectors=network.eigenvectors,
             network_residuals=network.residuals, local_rows=Shard(A.shape[0]).local_dim)
    dist.barrier()  # both ranks done communicating before gloo tears down its threads
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it (distributed.py)


if __name__ == "__main__":
    main(sys.argv[1])
