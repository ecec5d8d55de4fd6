"""Run a blockwise spectrum of the tiny causal LM into a file, and SIGKILL this process at a
named point (what a preemption can hit); print the passes as JSON when it gets to the end.

    python tests/blocks/_kill_blocks.py OUT POINT N [--resume]

POINT: ``pass``: right before the operator's (N + 1)-th pass (every solver has committed
pass N); ``commit``: right after the N-th solver commit (some solvers of that pass have
committed it, others not yet); ``none``: no kill.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lanczos_hessian import HessianOperator, TokenLoss, dict_batch  # noqa: E402
from lanczos_hessian.blocks import block_spectra, preset_blocks  # noqa: E402
from lanczos_hessian.storage.checkpoint import Checkpointer  # noqa: E402
from lm_problems import TinyCausalLM, pad_batches, sequences  # noqa: E402

#: The run every test compares: 4 blocks x (eigensolver + 2 probes), the eigensolvers
#: outlasting the probes' 8 steps.
SETTINGS = {"k": 2, "tol": 1e-10, "num_probes": 2, "num_steps": 8, "seed": 3}


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def problem():
    """The tiny causal LM (float64) and the Hessian of its token-mean loss."""
    torch.manual_seed(0)
    model = TinyCausalLM(width=4).double().eval()
    return model, HessianOperator(model, TokenLoss(),
                                  pad_batches(sequences([7, 3, 5, 2, 6, 4]), [2, 1, 3]),
                                  unpack=dict_batch("labels"))


def main(out, point, n, resume):
    model, H = problem()
    calls = {"passes": 0, "commits": 0}
    if point == "pass":
        apply = H.apply

        def dying_apply(V):
            if calls["passes"] == n:
                die()
            calls["passes"] += 1
            return apply(V)

        H.apply = dying_apply
    elif point == "commit":
        commit = Checkpointer.commit

        def dying_commit(self, solver, progress, finished):
            commit(self, solver, progress, finished)
            calls["commits"] += 1
            if calls["commits"] == n:
                die()

        Checkpointer.commit = dying_commit
    result = block_spectra(H, preset_blocks(model, "mha"), out=out, resume=resume, **SETTINGS)
    print(json.dumps({"num_passes": result.num_passes, "resumed_from": result.resumed_from}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--resume" in sys.argv[4:])
