"""Blockwise spectra in lockstep against the blocks one after another: passes and time.

The small GPT of :mod:`lanczos_hessian.examples.small_gpt` (trained briefly on the standard
library's sources, float64), its twelve blocks (Q, K, V, O and MLP of each of two layers,
embeddings, head), and for each block a fixed number of Lanczos steps: ``--probes`` SLQ probes
of ``--steps`` steps and a top-3 eigensolve capped at ``--steps`` applications. Two ways:

* **lockstep**: :func:`lanczos_hessian.blocks.block_spectra`, all blocks served by one pass
  over the data per step (one block product with a column per block and probe);
* **one after another**: the same call on each block alone (the cost of running a per-block
  spectrum as a separate run per block).

Prints a table (passes over the data, vectors, seconds) and writes JSON.

    python scripts/bench_blocks.py --json out/bench_blocks.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from lanczos_hessian import HessianOperator, NumericalWarning, TokenLoss, dict_batch
from lanczos_hessian.blocks import block_spectra
from lanczos_hessian.examples.small_gpt import (SmallGPT, corpus, gpt_blocks, padded_batches,
                                                paragraphs, train)


def problem(quick: bool):
    torch.manual_seed(0)
    context = 32 if quick else 64
    model = SmallGPT(context=context)
    text = corpus(200_000)
    train(model, text[len(text) // 10:], 30 if quick else 200, context)
    model = model.double().eval()
    held_out = paragraphs(text[:len(text) // 10], context, 32 if quick else 128)
    return model, HessianOperator(model, TokenLoss(), padded_batches(held_out, 16),
                                  unpack=dict_batch("labels"))


def measure(H, blocks, settings) -> dict:
    passes, vectors, start = H.num_applications, H.num_vectors, time.perf_counter()
    block_spectra(H, blocks, **settings)
    return {"passes": H.num_applications - passes, "vectors": H.num_vectors - vectors,
            "seconds": time.perf_counter() - start}


def machine() -> dict:
    """Where the timings were taken (they are only comparable on one machine)."""
    import os
    import platform

    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here (default: none)")
    parser.add_argument("--quick", action="store_true", help="smaller problem (default: off)")
    parser.add_argument("--steps", type=int, default=20, help="Lanczos steps (default 20)")
    parser.add_argument("--probes", type=int, default=2, help="SLQ probes (default 2)")
    args = parser.parse_args(argv)
    # the eigensolves stop at --steps applications by design: their warnings say so
    warnings.filterwarnings("ignore", category=NumericalWarning)
    model, H = problem(args.quick)
    blocks = gpt_blocks(model)
    settings = {"k": 3, "max_matvecs": args.steps, "num_probes": args.probes,
                "num_steps": args.steps, "seed": 0}
    lockstep = measure(H, blocks, settings)
    one_by_one = [measure(H, [block], settings) for block in blocks]
    separate = {key: sum(m[key] for m in one_by_one) for key in lockstep}
    rows = [("lockstep", lockstep), ("one after another", separate)]
    print(f"{len(blocks)} blocks of a {H.shape[0]}-parameter GPT, {H.loss_fn.num_tokens} "
          f"target tokens; {args.probes} probes x {args.steps} steps and top-3 per block")
    print(f"{'run':<20}{'passes':>8}{'vectors':>10}{'seconds':>10}")
    for name, m in rows:
        print(f"{name:<20}{m['passes']:>8}{m['vectors']:>10}{m['seconds']:>10.1f}")
    print(f"ratio (one after another / lockstep): passes "
          f"{separate['passes'] / lockstep['passes']:.1f}x, time "
          f"{separate['seconds'] / lockstep['seconds']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "quick": args.quick,
                       "blocks": [b.name for b in blocks], "settings": settings,
                       "num_params": H.shape[0], "lockstep": lockstep,
                       "one_after_another": separate,
                       "per_block": dict(zip([b.name for b in blocks], one_by_one))}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
