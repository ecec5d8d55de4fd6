"""``lanczos-hessian blocks``: top eigenvalues and SLQ density of each diagonal block, in
lockstep (one pass over the data per step for all blocks), one group per block in ``--out``,
and a figure of the per-block densities."""

from __future__ import annotations

from .checks import check_new_output
from .operator import build_operator


def parse_block(text: str):
    """``NAME=SEL[+SEL...]`` with ``SEL`` a module prefix or parameter name, ``re:PATTERN``,
    or ``PARAM[AXIS,START:STOP]`` (a slice of one parameter): a :class:`Block`."""
    from ..blocks import Block, Slice

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--block {text!r}: expected NAME=SELECTION (e.g. q=attn.in_proj_weight"
                         "[0,0:64]+attn.in_proj_bias[0,0:64], mlp=layers.0.mlp, emb=re:embed)")
    selections = []
    for part in rest.split("+"):
        if part.endswith("]") and "[" in part and not part.startswith("re:"):
            param, _, index = part[:-1].partition("[")
            try:
                axis, span = index.split(",")
                start, stop = span.split(":")
                selections.append(Slice(param, int(axis), int(start), int(stop)))
            except ValueError as exc:
                raise ValueError(f"--block {text!r}: a slice is PARAM[AXIS,START:STOP], got "
                                 f"{part!r}") from exc
        else:
            selections.append(part)
    return Block(name, *selections)


def add_blocks_command(sub, add_common_options, add_operator_options) -> None:
    blocks = sub.add_parser("blocks", help="top eigenvalues and density of each diagonal "
                                           "block H_bb (layers, Q/K/V, heads) in one run")
    add_common_options(blocks)
    add_operator_options(blocks)
    blocks.add_argument("--preset", default=None, choices=("mha", "encoder", "gpt2", "llama"),
                        help="blocks of a standard layout: Q, K, V, O (and MLPs) (default: none, "
                             "give --block)")
    blocks.add_argument("--per-head", action="store_true",
                        help="with --preset: Q, K, V split into their heads")
    blocks.add_argument("--block", action="append", default=None, metavar="NAME=SEL",
                        help="a block (repeatable): NAME=SEL[+SEL..], SEL a module prefix, "
                             "re:PATTERN or PARAM[AXIS,START:STOP] (default: none, give "
                             "--preset)")
    blocks.add_argument("--k", type=int, default=5, help="top eigenvalues per block "
                                                         "(default 5; 0: none)")
    blocks.add_argument("--tol", type=float, default=1e-6, help="residual tolerance of each block's eigenpairs "
                                                          "(default 1e-6)")
    blocks.add_argument("--num-probes", type=int, default=5, help="SLQ probes per block "
                                                                  "(default 5; 0: none)")
    blocks.add_argument("--num-steps", type=int, default=40,
                        help="Lanczos steps per SLQ probe (default 40)")
    blocks.add_argument("--resume", action="store_true",
                        help="continue --out: its complete blocks kept, the others from "
                             "the last pass all of them committed (bit for bit)")
    blocks.add_argument("--figure", default=None, help="PNG of the per-block densities (default: none)")


def run_blocks_command(args, echo):
    from ..blocks import block_spectra

    if bool(args.preset) == bool(args.block):
        raise ValueError("give either --preset or one or more --block")
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the file of the run to continue")
    blocks = args.preset or [parse_block(text) for text in args.block]
    check_new_output(args)
    _, op = build_operator(args)
    result = block_spectra(op, blocks, k=args.k, tol=args.tol, num_probes=args.num_probes,
                           num_steps=args.num_steps, seed=args.seed, per_head=args.per_head,
                           out=args.out, resume=args.resume, overwrite=args.overwrite)
    echo(result.summary())
    if args.figure and args.num_probes:
        result.plot(args.figure)
        echo(f"figures written to {args.figure}")
    where = f"written to {args.out}: " if args.out else "result: "
    echo(f"{where}{len(result.blocks)} blocks, {result.num_passes} passes over the data")
