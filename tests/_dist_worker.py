"""One rank of the 2-process gloo runs of ``tests/parallel/test_distributed.py``.

Run as ``python tests/_dist_worker.py <scenario> <outdir>`` with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; each rank writes what it computed
(or how it failed) to ``<outdir>/<scenario>-rank<r>.pkl``. The builders below are imported by
the test too, which computes the single-process references from the very same model and data.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

N, BATCH = 37, 5  # uneven: 18 + 19 samples on 2 ranks, ragged last batches
NUM_PROBES, NUM_STEPS = 3, 12
SKIPPING_RANK_SLEEP_S = 6.0  # "stuck" rank 1 of the timeout scenario (timeout: 2 s there)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 3)).double()


def make_data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def as_batches(data, batch_size=BATCH):
    x, y = data
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def make_block(dim, b=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((dim, b)))


def loss_for(reduction):
    return torch.nn.CrossEntropyLoss(reduction=reduction)


#: (operator kind, loss reduction, data form) of every product compared with one process
PRODUCT_CASES = [(kind, "mean", form) for kind in ("hessian", "ggn", "residual")
                 for form in ("tensors", "batches")] + [("hessian", "sum", "batches")]


def build_operator(kind, reduction="mean", form="tensors", data=None, model=None, **kwargs):
    from lanczos_hessian.curvature.operators import OPERATORS

    data = make_data() if data is None else data
    data = as_batches(data) if form == "batches" else data
    return OPERATORS[kind](make_model() if model is None else model, loss_for(reduction),
                           data, batch_size=BATCH, **kwargs)


def numerics(outdir: Path, rank: int) -> dict:
    """Products, eigenpairs, SLQ and the two jobs' files (rank 0 writes them)."""
    from lanczos_hessian import slq
    from lanczos_hessian.run import eigs_job, slq_job

    out = {"products": {}}
    for case in PRODUCT_CASES:
        op = build_operator(*case)
        out["products"][case] = op.apply(make_block(op.shape[0])).numpy()
        out.setdefault("num_samples", {})[case] = op.num_samples
    eig = eigs_job(build_operator("hessian"), outdir / "eigs.h5", k=4, which="BE", tol=1e-10,
                   seed=0, save_vectors=True, progress=False)
    out["eigs"] = {"eigenvalues": eig.eigenvalues, "eigenvectors": eig.eigenvectors,
                   "residuals": eig.residuals, "num_passes": eig.num_passes}
    res = slq(build_operator("ggn", form="batches"), NUM_PROBES, NUM_STEPS, rng=1)
    out["slq"] = {"nodes": res.nodes, "weights": res.weights, "num_passes": res.num_passes}
    slq_job(build_operator("residual", form="batches"), outdir / "slq.h5",
            num_probes=NUM_PROBES, num_steps=NUM_STEPS, k_top=1, k_bottom=1, seed=0,
            progress=False)
    return out


class _ChangingBatches:
    """A re-iterable whose odd batches (rank 1's, with 2 ranks) change on every pass."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        for i, (x, y) in enumerate(self.batches):
            yield (x + self.passes if i % 2 else x), y


def _nan_at(index):
    x, y = make_data()
    x = x.clone()
    x[index, 0] = float("nan")
    return x, y


def _failure_cases(rank):
    """name -> a callable that must fail (on every rank) without a hang."""
    from lanczos_hessian import lanczos_eigsh

    def nan_in_pass():  # sample 30 lies in rank 1's shard [18, 37), past its first batch
        build_operator("hessian", data=_nan_at(30)).apply(make_block(51, 1))

    def nan_at_construction():  # sample 20: rank 1's first batch, checked when building
        build_operator("hessian", data=_nan_at(20))

    def bad_batch():  # batch 5 is dealt to rank 1 and is not an (inputs, targets) pair
        batches = as_batches(make_data())
        batches[5] = batches[5][0]
        from lanczos_hessian.curvature.operators import GGNOperator

        GGNOperator(make_model(), loss_for("mean"), batches).apply(make_block(51, 2))

    def changed_data():
        from lanczos_hessian.curvature.operators import HessianOperator

        op = HessianOperator(make_model(), loss_for("mean"),
                             _ChangingBatches(as_batches(make_data())))
        op.apply(make_block(51, 1))
        op.apply(make_block(51, 1))

    def fewer_batches_than_ranks():
        from lanczos_hessian.curvature.operators import HessianOperator

        HessianOperator(make_model(), loss_for("mean"), as_batches(make_data(), 40))

    def more_ranks_than_samples():
        build_operator("hessian", data=make_data(n=1))

    def unseeded_start_vectors():  # rng differs per rank: the blocks applied differ
        lanczos_eigsh(build_operator("hessian"), k=2, rng=100 + rank)

    def different_models():
        build_operator("hessian", model=make_model(seed=rank))

    def sharded_data():  # each rank passes only "its" part: the operator would shard again
        x, y = make_data()
        half = slice(0, 18) if rank == 0 else slice(18, 37)
        build_operator("hessian", data=(x[half], y[half]))

    return {fn.__name__: fn for fn in (
        nan_in_pass, nan_at_construction, bad_batch, changed_data, fewer_batches_than_ranks,
        more_ranks_than_samples, unseeded_start_vectors, different_models, sharded_data)}


FAILURE_CASES = ("nan_in_pass", "nan_at_construction", "bad_batch", "changed_data",
                 "fewer_batches_than_ranks", "more_ranks_than_samples",
                 "unseeded_start_vectors", "different_models", "sharded_data")


def failures(outdir: Path, rank: int) -> dict:
    """Every failure case in turn (the group stays usable after each), then a healthy product."""
    cases = _failure_cases(rank)
    out = {"cases": {}}
    for name in FAILURE_CASES:
        start = time.perf_counter()
        try:
            cases[name]()
            outcome = ("no error", "", None)
        except Exception as exc:  # recorded for the test to judge
            outcome = (type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__])
        out["cases"][name] = (*outcome, time.perf_counter() - start)
    op = build_operator("hessian")
    out["after"] = op.apply(make_block(op.shape[0])).numpy()
    from lanczos_hessian.parallel.distributed import common_seed

    out["seed"] = common_seed()  # drawn on rank 0, shared
    return out


def timeout(outdir: Path, rank: int) -> dict:
    """Rank 1 stays alive but never joins the pass: rank 0 must give up at the timeout."""
    op = build_operator("hessian", strategy="reverse-over-reverse")
    if rank == 1:
        time.sleep(SKIPPING_RANK_SLEEP_S)
        return {}
    start = time.perf_counter()
    try:
        op.apply(make_block(op.shape[0], 1))
        outcome = ("no error", "", None)
    except Exception as exc:
        outcome = (type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__])
    return {"outcome": (*outcome, time.perf_counter() - start)}


SCENARIOS = {"numerics": numerics, "failures": failures, "timeout": timeout}


def main(scenario: str, outdir: str) -> int:
    torch.set_num_threads(1)
    from lanczos_hessian.parallel.distributed import current_world, init_from_env

    outdir = Path(outdir)
    world = init_from_env()  # the timeout comes from $LANCZOS_HESSIAN_TIMEOUT, as in the CLI
    assert world.size == int(os.environ["WORLD_SIZE"]) and world == current_world()
    try:
        result = {"ok": True, "world": world, **SCENARIOS[scenario](outdir, world.rank)}
    except Exception:
        result = {"ok": False, "traceback": traceback.format_exc()}
    with open(outdir / f"{scenario}-rank{world.rank}.pkl", "wb") as f:
        pickle.dump(result, f)
    sys.stdout.flush()
    if scenario == "timeout":  # the group is broken on purpose: no orderly shutdown
        os._exit(0)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
