"""Command line: ``lanczos-hessian <command>`` (also ``python -m lanczos_hessian``).

Commands: ``demo`` (the embedded default), ``eigs`` (eigenpairs of a problem's curvature),
``slq`` (its spectral density by stochastic Lanczos quadrature, optionally deflated) and
``analyze`` (summaries and figures of saved files, offline).
Runs unchanged under ``torchrun --nproc-per-node N -m lanczos_hessian ...``: the process
group is started from the environment, the data is sharded exactly across ranks, and only
rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from .errors import LanczosHessianError

logger = logging.getLogger("lanczos_hessian")


def _common(parser):
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


def _operator_args(parser):
    parser.add_argument("--problem", default="clusters-mlp",
                        help="built-in problem name or 'package.module:function' returning "
                             "(model, loss_fn, data) (default clusters-mlp)")
    parser.add_argument("--checkpoint", default=None, help="state_dict to load into the model")
    from .curvature.operators import OPERATORS
    from .curvature.products import STRATEGIES

    parser.add_argument("--operator", choices=tuple(OPERATORS), default="hessian",
                        help="H, its Gauss-Newton part G, or R = H - G (default hessian)")
    parser.add_argument("--params", nargs="+", default=None,
                        help="restrict to these parameters or module prefixes (a block)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--strategy", default="auto",
                        choices=STRATEGIES,
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


def _state_args(parser):
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the resume state (Lanczos bases, commit slots) in the "
                             "finished --out, so that it can be continued; by default a "
                             "finished file holds results and provenance only")
    parser.add_argument("--drop-state", action="store_true",
                        help="accepted for old scripts: dropping the state is now the default")


def build_parser() -> argparse.ArgumentParser:
    from .linalg.eigsh import WHICH
    from .linalg.slq import PROBES

    parser = argparse.ArgumentParser(
        prog="lanczos-hessian",
        description="Spectra of full-dataset neural-network Hessians (Lanczos, SLQ, HDF5).")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="Sagun et al. 2018 Sec. 3.1 on 10 Gaussian clusters")
    _common(demo)
    demo.set_defaults(out="demo.h5")
    demo.add_argument("--num-examples", type=int, default=1000)
    demo.add_argument("--num-classes", type=int, default=10)
    demo.add_argument("--steps", type=int, default=2000, help="GD steps (default 2000)")
    demo.add_argument("--no-dense", action="store_true", help="skip the exact dense spectrum")

    eigs = sub.add_parser("eigs", help="extreme eigenpairs with residual bounds")
    _common(eigs)
    _operator_args(eigs)
    eigs.add_argument("--k", type=int, default=20, help="number of eigenpairs (default 20)")
    eigs.add_argument("--which", choices=WHICH, default="LA")
    eigs.add_argument("--k-bottom", type=int, default=None, help="with --which BE")
    eigs.add_argument("--tol", type=float, default=1e-6, help="residual <= tol*||H||")
    eigs.add_argument("--ncv", type=int, default=None, help="basis size before a restart")
    eigs.add_argument("--max-matvecs", type=int, default=None,
                      help="budget of vectors the operator is applied to")
    eigs.add_argument("--block-size", type=int, default=1,
                      help="vectors per pass over the data (block Lanczos; default 1)")
    eigs.add_argument("--save-vectors", action="store_true", help="store the eigenvectors")
    _state_args(eigs)
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
    _common(slq)
    _operator_args(slq)
    slq.add_argument("--num-probes", type=int, default=10)
    slq.add_argument("--num-steps", type=int, default=80)
    slq.add_argument("--probe", choices=PROBES, default="rademacher")
    slq.add_argument("--deflate-top", type=int, default=0,
                     help="compute and deflate this many top eigenpairs first")
    slq.add_argument("--deflate-bottom", type=int, default=0)
    slq.add_argument("--tol", type=float, default=1e-6, help="for the deflated eigenpairs")
    slq.add_argument("--target-error", type=float, default=None, metavar="E",
                     help="add rounds of --num-probes probes until the trace is known to "
                          "within E (half-width of a --confidence interval; at most 200 "
                          "probes)")
    slq.add_argument("--confidence", type=float, default=0.95, metavar="C",
                     help="coverage of the --target-error interval (default 0.95)")
    slq.add_argument("--no-reorthogonalize", action="store_true",
                     help="three vectors per probe instead of a stored basis")
    _state_args(slq)
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


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _build_operator(args):
    import torch

    from .parallel.distributed import default_device
    from .curvature.operators import OPERATORS
    from .examples.problems import load_problem

    device = _device(args.device) if args.device else default_device()
    problem = load_problem(args.problem, args.checkpoint, **_problem_kwargs(args))
    model, data = problem.model, problem.data
    if args.model_dtype:
        dtype = getattr(torch, args.model_dtype)
        model, data = model.to(dtype), _floating_inputs_to(data, dtype)
    try:
        model = model.to(device)
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(f"--device {device}: cannot move the model there ({exc})") from exc
    op = OPERATORS[args.operator](model, problem.loss_fn, data, params=args.params,
                                  batch_size=args.batch_size, strategy=args.strategy,
                                  allow_tf32=args.allow_tf32, unpack=problem.unpack)
    return problem, op


def _floating_inputs_to(data, dtype):
    """``--model-dtype`` for a tensor pair: floating inputs converted with the model, so that
    the products are not taken on inputs of another precision (a DataLoader or iterable is
    left as it is: the operator warns once if its inputs differ from the model's dtype)."""
    import torch

    if (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and data[0].is_floating_point()):
        return data[0].to(dtype), data[1]
    return data


def _device(name: str):
    """``--device``'s value as a device that exists here, or a clear ValueError."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {name!r} is not a device name ({exc}); e.g. cpu, cuda, "
                         "cuda:1") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this build of torch has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible to this process")
            raise ValueError(f"--device {name}: {why} (torch {torch.__version__}); use "
                             "--device cpu, or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")
    return device


#: Options that must be integers >= 1 (when given), and >= 0.
_POSITIVE = ("k", "k_bottom", "ncv", "max_matvecs", "batch_size", "num_probes", "num_steps",
             "num_examples", "num_classes")
_NON_NEGATIVE = ("seed", "deflate_top", "deflate_bottom", "steps")


def _check_args(args) -> None:
    """Refuse an invalid option value before any model is built or file created, naming the
    option (the solvers check the rest, also before any file is created)."""
    for names, low, phrase in ((_POSITIVE, 1, "a positive integer"),
                               (_NON_NEGATIVE, 0, "a non-negative integer")):
        for name in names:
            value = getattr(args, name, None)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be {phrase}, got {value}")
    tol = getattr(args, "tol", None)
    if tol is not None and not tol > 0:
        raise ValueError(f"--tol must be positive, got {tol}")


@contextlib.contextmanager
def _writer_lock(args):
    """Rank 0 of a command that writes ``--out`` holds the file's lock from the start, so
    that a second writer, ``--resume`` or ``--overwrite`` on a file a live run writes is
    refused at once, before any model is built (every rank learns of the refusal); the
    command's writers join it (:mod:`lanczos_hessian.storage.lock`)."""
    from .parallel.distributed import current_world, default_device, gather_rows
    from .storage.hdf5 import check_output_location, clear_left_open
    from .storage.lock import hold

    out, resume = getattr(args, "out", None), getattr(args, "resume", False)
    if args.command == "analyze" or out is None or (resume and not Path(out).exists()):
        yield  # nothing to lock (a resume of a missing file is refused by the run itself)
        return
    world = current_world()
    with contextlib.ExitStack() as stack:
        error = None
        if world.is_main:
            try:
                if not resume:
                    check_output_location(out)
                stack.enter_context(hold(out))
                if resume:
                    clear_left_open(out)  # a killed writer's flags, before replicas read
            except Exception as exc:  # noqa: BLE001 (every rank learns of it)
                error = exc
        if world.size > 1:
            gather_rows([0.0], error, device=default_device(), what="locking --out")
        elif error is not None:
            raise error
        yield


def _problem_kwargs(args):
    if args.problem == "clusters-mlp":
        return {"seed": args.seed, "progress": not args.no_progress}
    return {}


def _run_demo(args, echo):
    from .examples.demo import run_demo

    run_demo(args.out, num_classes=args.num_classes, num_examples=args.num_examples,
             steps=args.steps, seed=args.seed, dense=not args.no_dense,
             overwrite=args.overwrite, progress=not args.no_progress, echo=echo)


def _keep_state(args) -> bool:
    """``--keep-state``; ``--drop-state`` (the default since the state is dropped unless kept)
    is accepted with a note, and refused beside ``--keep-state``."""
    if args.drop_state and args.keep_state:
        raise ValueError("--drop-state and --keep-state contradict each other (dropping the "
                         "resume state is the default: pass --keep-state alone to keep it)")
    if args.drop_state:
        logger.warning("--drop-state is the default now (a finished file keeps its resume "
                       "state only with --keep-state); the option will go")
    return args.keep_state


def _run_eigs(args, echo):
    from .storage.hdf5 import check_output_path
    from .run import eigs as run_eigs
    from .analysis.report import eigen_table, run_summary

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the file of the run to continue")
    if args.out is not None and not args.resume and _is_main():
        check_output_path(args.out, args.overwrite)
    problem, op = _build_operator(args)
    result = run_eigs(op, args.out, k=args.k, which=args.which, k_bottom=args.k_bottom,
                      tol=args.tol, ncv=args.ncv, max_matvecs=args.max_matvecs,
                      block_size=args.block_size, seed=args.seed,
                      save_vectors=args.save_vectors, overwrite=args.overwrite,
                      resume=args.resume, memory_budget=args.memory_budget,
                      shard_vectors=args.shard_vectors,
                      progress=not args.no_progress, attrs=problem.attrs,
                      keep_state=_keep_state(args))
    echo(eigen_table(result.eigenvalues, result.residual_bounds, result.error_bounds,
                     result.residuals, result.converged,
                     title=f"{op.kind} eigenvalues ({args.which}, k={args.k}), "
                           f"{op.shape[0]} parameters"))
    echo(run_summary(result))
    if args.out:
        echo(f"written to {args.out}")


def _run_slq(args, echo):
    from .analysis.spectrum import read_spectrum, summarize
    from .storage.hdf5 import check_output_path
    from .run import slq as run_slq

    if args.out is not None and not args.resume and _is_main():
        check_output_path(args.out, args.overwrite)
    problem, op = _build_operator(args)
    eigs, result = run_slq(op, args.out, num_probes=args.num_probes, num_steps=args.num_steps,
                           probe=args.probe, k_top=args.deflate_top,
                           k_bottom=args.deflate_bottom, tol=args.tol,
                           reorthogonalize=not args.no_reorthogonalize, seed=args.seed,
                           overwrite=args.overwrite, resume=args.resume,
                           memory_budget=args.memory_budget,
                           shard_vectors=args.shard_vectors, progress=not args.no_progress,
                           attrs=problem.attrs, keep_state=_keep_state(args),
                           target_error=args.target_error, confidence=args.confidence)
    echo(f"SLQ: {result.num_probes} probes x {result.num_steps} steps, "
         f"{result.num_passes} data passes ({result.deflation_passes} for "
         f"{len(result.outliers)} outliers), {result.timings['total']:.1f} s")
    if args.out and _is_main():  # only the writing rank reads its file back
        echo(summarize(read_spectrum(args.out)))
        echo(f"written to {args.out}")


def _run_analyze(args, echo):
    from .analysis.spectrum import read_spectrum, summarize

    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width must be positive, got {args.width}")
    spectra = [read_spectrum(path) for path in args.files]
    for spectrum in spectra:
        echo(summarize(spectrum, args.top))
    if args.plot:
        from .analysis.plotting import plot_spectra

        plot_spectra(spectra, args.plot, width=args.width)
        echo(f"figures written to {args.plot}")


COMMANDS = {"demo": _run_demo, "eigs": _run_eigs, "slq": _run_slq, "analyze": _run_analyze}


def _is_main() -> bool:
    from .parallel.distributed import current_world

    return current_world().is_main


def run() -> None:
    """The ``lanczos-hessian`` command: :func:`main`, then exit with its code (see
    :func:`~lanczos_hessian.parallel.distributed.exit_process` for runs under ``torchrun``)."""
    from .parallel.distributed import exit_process

    exit_process(main())


def _closing_line_only(echo):
    """``--quiet``: of what a command prints, only its closing line ("written to ...")."""

    def quiet(*args, **kwargs):
        text = " ".join(str(a) for a in args)
        if text.startswith(("written to", "figures written to")):
            echo(*args, **kwargs)

    return quiet


def main(argv=None) -> int:
    from .parallel.distributed import current_world, group_running, init_from_env, shutdown

    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    ours = not group_running()  # a group started here is ended here
    try:
        init_from_env(timeout_s=args.timeout)
    except ValueError as exc:
        print(f"lanczos-hessian: error: {exc}", file=sys.stderr)
        return 2
    echo = print if current_world().is_main else (lambda *a, **k: None)
    if getattr(args, "quiet", False):
        args.no_progress = True
        echo = _closing_line_only(echo)
    if getattr(args, "log_every", None) is not None:
        if not args.log_every > 0:
            print(f"lanczos-hessian: error: --log-every must be a positive number of seconds, "
                  f"got {args.log_every}", file=sys.stderr)
            return 2
        os.environ["LANCZOS_HESSIAN_LOG_EVERY"] = str(args.log_every)
    orderly = False
    try:
        _check_args(args)
        with _writer_lock(args):
            COMMANDS[args.command](args, echo)
        orderly = True
    except (LanczosHessianError, ValueError, FileNotFoundError, ImportError, MemoryError) as exc:
        print(f"lanczos-hessian {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ours:
            shutdown(orderly)
    return 0
