"""What each command does once its options are checked: ``demo``, ``eigs``, ``slq``,
``analyze``. Each takes the parsed options and ``echo`` (print on the writing rank)."""

from __future__ import annotations

from .checks import is_main, keep_state
from .operator import build_operator


def run_demo_command(args, echo):
    """``demo``: train the clusters MLP, measure, write ``--out``."""
    from ..examples.demo import run_demo

    run_demo(args.out, num_classes=args.num_classes, num_examples=args.num_examples,
             steps=args.steps, seed=args.seed, dense=not args.no_dense,
             overwrite=args.overwrite, progress=not args.no_progress, echo=echo)


def run_eigs_command(args, echo):
    """``eigs``: extreme eigenpairs of the operator, printed and written."""
    from ..storage.hdf5 import check_output_path
    from ..run import eigs as run_eigs
    from ..analysis.report import eigen_table, run_summary

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the file of the run to continue")
    if args.out is not None and not args.resume and is_main():
        check_output_path(args.out, args.overwrite)
    problem, op = build_operator(args)
    result = run_eigs(op, args.out, k=args.k, which=args.which, k_bottom=args.k_bottom,
                      tol=args.tol, ncv=args.ncv, max_matvecs=args.max_matvecs,
                      block_size=args.block_size, seed=args.seed,
                      save_vectors=args.save_vectors, overwrite=args.overwrite,
                      resume=args.resume, memory_budget=args.memory_budget,
                      shard_vectors=args.shard_vectors,
                      progress=not args.no_progress, attrs=problem.attrs,
                      keep_state=keep_state(args))
    echo(eigen_table(result.eigenvalues, result.residual_bounds, result.error_bounds,
                     result.residuals, result.converged,
                     title=f"{op.kind} eigenvalues ({args.which}, k={args.k}), "
                           f"{op.shape[0]} parameters"))
    echo(run_summary(result))
    if args.out:
        echo(f"written to {args.out}")


def run_slq_command(args, echo):
    """``slq``: the spectral density by SLQ, printed and written."""
    from ..analysis.spectrum import read_spectrum, summarize
    from ..storage.hdf5 import check_output_path
    from ..run import slq as run_slq

    if args.out is not None and not args.resume and is_main():
        check_output_path(args.out, args.overwrite)
    problem, op = build_operator(args)
    eigs, result = run_slq(op, args.out, num_probes=args.num_probes, num_steps=args.num_steps,
                           probe=args.probe, k_top=args.deflate_top,
                           k_bottom=args.deflate_bottom, tol=args.tol,
                           reorthogonalize=not args.no_reorthogonalize, seed=args.seed,
                           overwrite=args.overwrite, resume=args.resume,
                           memory_budget=args.memory_budget,
                           shard_vectors=args.shard_vectors, progress=not args.no_progress,
                           attrs=problem.attrs, keep_state=keep_state(args))
    echo(f"SLQ: {result.num_probes} probes x {result.num_steps} steps, "
         f"{result.num_passes} data passes ({result.deflation_passes} for "
         f"{len(result.outliers)} outliers), {result.timings['total']:.1f} s")
    if args.out and is_main():  # only the writing rank reads its file back
        echo(summarize(read_spectrum(args.out)))
        echo(f"written to {args.out}")


def run_analyze_command(args, echo):
    """``analyze``: summaries (and ``--plot`` figures) of saved files."""
    from ..analysis.spectrum import read_spectrum, summarize

    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width must be positive, got {args.width}")
    spectra = [read_spectrum(path) for path in args.files]
    for spectrum in spectra:
        echo(summarize(spectrum, args.top))
    if args.plot:
        from ..analysis.plotting import plot_spectra

        plot_spectra(spectra, args.plot, width=args.width)
        echo(f"figures written to {args.plot}")


#: The function of each command.
COMMANDS = {"demo": run_demo_command, "eigs": run_eigs_command, "slq": run_slq_command,
            "analyze": run_analyze_command}
