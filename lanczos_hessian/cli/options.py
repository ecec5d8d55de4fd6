"""The command line's options: one parser, a function per group of options shared by
several commands."""

from __future__ import annotations

import argparse


def add_common_options(parser):
    parser.add_argument("--out", default=None, help="HDF5 file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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


def add_operator_options(parser):
    parser.add_argument("--problem", default="clusters-mlp",
                        help="built-in problem name or 'package.module:function' returning "
                             "(model, loss_fn, data) (default clusters-mlp)")
    parser.add_argument("--checkpoint", default=None, help="state_dict to load into the model")
    parser.add_argument("--operator", choices=("hessian", "ggn", "residual"), default="hessian",
                        help="H, its Gauss-Newton part G, or R = H - G (default hessian)")
    parser.add_argument("--params", nargs="+", default=None,
                        help="restrict to these parameters or module prefixes (a block)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--strategy", default="auto",
                        choices=("auto", "forward-over-reverse", "reverse-over-reverse"),
                        help="differentiation of the products; auto (default): "
                             "reverse-over-reverse for a model with convolutions, else "
                             "forward-over-reverse where forward mode works (a fixed rule, "
                             "recorded in --out; a resume with another is refused)")
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
    parser = argparse.ArgumentParser(
        prog="lanczos-hessian",
        description="Spectra of full-dataset neural-network Hessians (Lanczos, SLQ, HDF5).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="Sagun et al. 2018 Sec. 3.1 on 10 Gaussian clusters")
    add_common_options(demo)
    demo.set_defaults(out="demo.h5")
    demo.add_argument("--num-examples", type=int, default=1000)
    demo.add_argument("--num-classes", type=int, default=10)
    demo.add_argument("--steps", type=int, default=2000, help="GD steps (default 2000)")
    demo.add_argument("--no-dense", action="store_true", help="skip the exact dense spectrum")

    eigs = sub.add_parser("eigs", help="extreme eigenpairs with residual bounds")
    add_common_options(eigs)
    add_operator_options(eigs)
    eigs.add_argument("--k", type=int, default=20, help="number of eigenpairs (default 20)")
    eigs.add_argument("--which", choices=("LA", "SA", "BE", "LM"), default="LA")
    eigs.add_argument("--k-bottom", type=int, default=None, help="with --which BE")
    eigs.add_argument("--tol", type=float, default=1e-6, help="residual <= tol*||H||")
    eigs.add_argument("--ncv", type=int, default=None, help="basis size before a restart")
    eigs.add_argument("--max-matvecs", type=int, default=None,
                      help="budget of vectors the operator is applied to")
    eigs.add_argument("--block-size", type=int, default=1,
                      help="vectors per pass over the data (block Lanczos; default 1)")
    eigs.add_argument("--save-vectors", action="store_true", help="store the eigenvectors")
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
    slq.add_argument("--num-probes", type=int, default=10)
    slq.add_argument("--num-steps", type=int, default=80)
    slq.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher")
    slq.add_argument("--deflate-top", type=int, default=0,
                     help="compute and deflate this many top eigenpairs first")
    slq.add_argument("--deflate-bottom", type=int, default=0)
    slq.add_argument("--tol", type=float, default=1e-6, help="for the deflated eigenpairs")
    slq.add_argument("--no-reorthogonalize", action="store_true",
                     help="three vectors per probe instead of a stored basis")
    add_state_options(slq)
    slq.add_argument("--resume", action="store_true",
                     help="continue a killed run from the last committed step in --out "
                          "(a finished one: print its stored result)")
    slq.add_argument("--memory-budget", default=None,
                     help="memory for the probes' bases, e.g. 6GiB (else on disk in --out)")
    slq.add_argument("--shard-vectors", action="store_true",
                     help="under torchrun: each rank keeps only its rows of the probes' "
                          "vectors and bases; with --out, rank r > 0 commits its rows to "
                          "OUT.rank<r>-of-<N>.h5 beside it")

    analyze = sub.add_parser("analyze", help="summarize and plot saved spectrum files")
    analyze.add_argument("files", nargs="+", help="HDF5 files written by this package")
    analyze.add_argument("--plot", default=None, help="write the figures to this PNG")
    analyze.add_argument("--width", type=float, default=None,
                         help="kernel standard deviation for the density (default: "
                              "sqrt(1e-5) x half the spectral range, Ghorbani et al. 2019)")
    analyze.add_argument("--top", type=int, default=20, help="eigenvalues listed per run")
    analyze.add_argument("-v", "--verbose", action="store_true")
    analyze.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)
    return parser
