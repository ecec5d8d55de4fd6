"""The command line's options: one parser, a function per group of options shared by
several commands."""

from __future__ import annotations

import argparse

from ..curvature.operators import OPERATORS
from ..curvature.products import STRATEGIES
from ..linalg.eigsh import WHICH
from ..linalg.probes import PROBES
from .blocks import add_blocks_command


def add_common_options(parser, writes: bool = True):
    """Options of every command that analyses a problem; ``--out`` and ``--overwrite`` for
    those that write a file."""
    if writes:
        parser.add_argument("--out", default=None,
                            help="HDF5 file to write (default: none for eigs, slq and "
                                 "track, demo.h5 for demo)")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace an existing --out (deletes a stopped run's "
                                 "committed steps: to continue one, use --resume)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress and no tables: errors, warnings and one closing line")
    parser.add_argument("--log-every", type=float, default=None, metavar="SECONDS",
                        help="seconds between plain status lines when the output is not a "
                             "terminal (default $LANCZOS_HESSIAN_LOG_EVERY or 30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a rank waits for the others under torchrun before it "
                             "fails (default $LANCZOS_HESSIAN_TIMEOUT or 1800)")


#: What a missing ``--problem`` is told (the error's second half).
PROBLEM_HINT = ("pass --problem package.module:function (returning model, loss_fn, data) for "
                "your model, or --problem clusters-mlp for the built-in demo network")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose error for a missing ``--problem`` says how to give one (every
    command that analyses a problem requires it: no network is analysed by default)."""

    def error(self, message):
        if "--problem" in message and "required" in message:
            message = f"{message}: {PROBLEM_HINT}"
        super().error(message)


def add_operator_options(parser):
    parser.add_argument("--problem", required=True,
                        help="what to analyse (required, no default): "
                             "'package.module:function' returning (model, loss_fn, data), or "
                             "the built-in demo network 'clusters-mlp'")
    parser.add_argument("--checkpoint", default=None,
                        help="state_dict to load into --problem's model (default: none)")
    parser.add_argument("--operator", choices=tuple(OPERATORS), default="hessian",
                        help="H, its Gauss-Newton part G, or R = H - G (default hessian)")
    parser.add_argument("--params", nargs="+", default=None,
                        help="restrict to these parameters or module prefixes, a block of the "
                             "curvature (default: all parameters)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per forward/backward pass (default: the problem's "
                             "batches, or all samples at once)")
    parser.add_argument("--strategy", default="auto",
                        choices=STRATEGIES,
                        help="differentiation of the products; auto (default): "
                             "reverse-over-reverse, forward-over-reverse where an op has no "
                             "double backward or for the GGN and residual with --compile (a "
                             "fixed rule, recorded in --out; a resume with another is "
                             "refused)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the per-batch product with torch.compile (pays on "
                             "small models and launch-bound GPUs; compile time is reported "
                             "apart; falls back to eager with a warning)")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="let CUDA products use TF32 (faster, about three digits less "
                             "accurate; off by default, recorded in --out)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if "
                        "available, on the local rank's GPU)")
    parser.add_argument("--model-dtype", choices=("float32", "float64"), default=None,
                        help="cast the model (default: keep its dtype)")


def add_state_options(parser):
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the resume state (Lanczos bases, commit slots) in the "
                             "finished --out, so that it can be continued; by default a "
                             "finished file holds results and provenance only")
    parser.add_argument("--drop-state", action="store_true",
                        help="accepted for old scripts: dropping the state is now the default")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lanczos-hessian",
        description="Spectra of full-dataset neural-network Hessians (Lanczos, SLQ, HDF5).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="Sagun et al. 2018 Sec. 3.1 on 10 Gaussian clusters")
    add_common_options(demo)
    demo.set_defaults(out="demo.h5")
    demo.add_argument("--num-examples", type=int, default=1000,
                      help="training samples (default 1000)")
    demo.add_argument("--num-classes", type=int, default=10,
                      help="Gaussian clusters, one class each (default 10, as Sagun et al.)")
    demo.add_argument("--steps", type=int, default=2000, help="GD steps (default 2000)")
    demo.add_argument("--no-dense", action="store_true", help="skip the exact dense spectrum")

    eigs = sub.add_parser("eigs", help="extreme eigenpairs with residual bounds")
    add_common_options(eigs)
    add_operator_options(eigs)
    eigs.add_argument("--k", type=int, default=20, help="number of eigenpairs (default 20)")
    eigs.add_argument("--which", choices=WHICH, default="LA",
                      help="largest (LA), smallest (SA), both ends (BE) or largest in "
                           "magnitude (LM), scipy's names (default LA)")
    eigs.add_argument("--k-bottom", type=int, default=None,
                      help="with --which BE: how many of the k at the bottom (default k // 2)")
    eigs.add_argument("--tol", type=float, default=1e-6,
                      help="stop when every residual <= tol * ||H|| (default 1e-6)")
    eigs.add_argument("--ncv", type=int, default=None,
                      help="basis size before a thick restart (default: max(2k + 1, 20), more "
                           "for the bottom end: lanczos_hessian.linalg.eigsh.default_ncv)")
    eigs.add_argument("--max-matvecs", type=int, default=None,
                      help="budget of vectors the operator is applied to (default: "
                           "no limit)")
    eigs.add_argument("--block-size", type=int, default=1,
                      help="vectors per pass over the data (block Lanczos; default 1)")
    eigs.add_argument("--save-vectors", action="store_true",
                      help="store the eigenvectors in --out (default: values only)")
    add_state_options(eigs)
    eigs.add_argument("--resume", action="store_true",
                      help="continue a killed run from the last committed step in --out "
                           "(a finished one: print its stored result)")
    eigs.add_argument("--shard-vectors", action="store_true",
                      help="under torchrun: each rank keeps only its rows of the Lanczos "
                           "vectors and basis (memory / number of ranks); with --out, "
                           "rank r > 0 commits its rows to OUT.rank<r>-of-<N>.h5 beside it")
    eigs.add_argument("--memory-budget", default=None,
                      help="memory for the Lanczos basis, e.g. 6GiB; the basis goes to disk "
                           "(in --out) when it does not fit (default: no limit)")

    slq = sub.add_parser("slq", help="spectral density by stochastic Lanczos quadrature")
    add_common_options(slq)
    add_operator_options(slq)
    slq.add_argument("--num-probes", type=int, default=10,
                     help="random probe vectors; the error bars shrink as 1/sqrt of it "
                          "(default 10)")
    slq.add_argument("--num-steps", type=int, default=80,
                     help="Lanczos steps per probe, the Gauss nodes of each rule: the "
                          "resolution of the density (default 80)")
    slq.add_argument("--probe", choices=PROBES, default="rademacher",
                     help="probe distribution (default rademacher)")
    slq.add_argument("--deflate-top", type=int, default=0,
                     help="compute and deflate this many top eigenpairs first (default 0)")
    slq.add_argument("--deflate-bottom", type=int, default=0,
                     help="and this many bottom eigenpairs (default 0)")
    slq.add_argument("--tol", type=float, default=1e-6,
                     help="residual tolerance of the deflated eigenpairs (default 1e-6)")
    slq.add_argument("--target-error", type=float, default=None, metavar="E",
                     help="adaptive SLQ: add rounds of --num-probes probes until the trace is "
                          "known to within E (half-width of a --confidence interval; at most "
                          "200 probes; default: one round)")
    slq.add_argument("--confidence", type=float, default=0.95, metavar="C",
                     help="coverage of the --target-error interval (default 0.95)")
    slq.add_argument("--no-reorthogonalize", action="store_true",
                     help="three vectors per probe instead of a stored basis")
    add_state_options(slq)
    slq.add_argument("--resume", action="store_true",
                     help="continue a killed run from the last committed step in --out "
                          "(a finished one: print its stored result)")
    slq.add_argument("--memory-budget", default=None,
                     help="memory for the probes' bases, e.g. 6GiB; beyond it they go to "
                          "disk in --out (default: no limit)")
    slq.add_argument("--shard-vectors", action="store_true",
                     help="under torchrun: each rank keeps only its rows of the probes' "
                          "vectors and bases; with --out, rank r > 0 commits its rows to "
                          "OUT.rank<r>-of-<N>.h5 beside it")

    add_blocks_command(sub, add_common_options, add_operator_options)
    analyze = sub.add_parser("analyze", help="summarize and plot saved spectrum files")
    analyze.add_argument("files", nargs="+",
                         help="HDF5 files written by this package; files of one operator "
                              "(an eigs and an slq file) are read as one run")
    analyze.add_argument("--plot", default=None,
                         help="write the figures to this PNG (default: no figure)")
    analyze.add_argument("--width", type=float, default=None,
                         help="kernel standard deviation for the density (default: 1/50 of "
                              "the interval holding the central 98%% of the spectrum)")
    analyze.add_argument("--top", type=int, default=20,
                         help="eigenvalues listed per run (default 20)")
    analyze.add_argument("-v", "--verbose", action="store_true", help="log details")
    analyze.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)
    add_analysis_commands(sub)
    return parser


def add_analysis_commands(sub) -> None:
    """The parsers of ``trace``, ``layers``, ``overlap`` and ``track``."""
    trace = sub.add_parser("trace", help="tr(H) by Hutchinson's estimator, with its error")
    add_common_options(trace, writes=False)
    add_operator_options(trace)
    trace.add_argument("--num-probes", type=int, default=100,
                       help="random probe vectors (default 100)")
    trace.add_argument("--probes-per-pass", type=int, default=10,
                       help="probes applied together in one pass over the data (default 10)")
    trace.add_argument("--probe", choices=PROBES, default="rademacher",
                       help="probe distribution (default rademacher)")

    layers = sub.add_parser("layers", help="top (or bottom) eigenvalues of each layer's "
                                           "diagonal block of the curvature")
    add_common_options(layers, writes=False)
    add_operator_options(layers)
    layers.add_argument("--k", type=int, default=5, help="eigenvalues per layer (default 5)")
    layers.add_argument("--which", choices=("LA", "SA"), default="LA",
                        help="top (LA) or bottom (SA) of each block (default LA)")
    layers.add_argument("--tol", type=float, default=1e-6,
                        help="residual tolerance, relative to the block's norm (default 1e-6)")
    layers.add_argument("--layers", nargs="+", default=None,
                        help="module or parameter names (default: every module that owns "
                             "parameters)")

    overlap = sub.add_parser("overlap", help="fraction of the full-data gradient in the span "
                                             "of the top k eigenvectors (Gur-Ari et al. 2018)")
    add_common_options(overlap, writes=False)
    add_operator_options(overlap)
    overlap.add_argument("--k", type=int, default=10,
                         help="eigenvectors spanning the subspace (default 10)")
    overlap.add_argument("--tol", type=float, default=1e-6,
                         help="residual tolerance of the eigenpairs (default 1e-6)")

    track = sub.add_parser("track", help="train the problem's model by gradient descent and "
                                         "track its top eigenpairs every N steps")
    add_common_options(track)
    add_operator_options(track)
    track.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    track.add_argument("--lr", type=float, default=0.1,
                       help="learning rate; the figure draws 2/lr (default 0.1)")
    track.add_argument("--train-batch-size", type=int, default=None,
                       help="SGD batch size (default: full-batch gradient descent)")
    track.add_argument("--every", type=int, default=20,
                       help="measure every this many steps, and before the first (default 20)")
    track.add_argument("--k", type=int, default=5, help="tracked eigenpairs (default 5)")
    track.add_argument("--tol", type=float, default=1e-6,
                       help="residual tolerance of each measurement (default 1e-6)")
    track.add_argument("--slq-probes", type=int, default=0,
                       help="also an SLQ density per measurement with this many probes, for "
                            "the trace and negative mass (default 0: none)")
    track.add_argument("--slq-steps", type=int, default=30,
                       help="Lanczos steps of each SLQ probe (default 30)")
    track.add_argument("--plot", default=None,
                       help="write the tracking figure to this PNG (default: no figure)")
