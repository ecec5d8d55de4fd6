"""What each command does once its options are checked: ``demo``, ``eigs``, ``slq``,
``analyze``. Each takes the parsed options and ``echo`` (print on the writing rank)."""

from __future__ import annotations

from .analyses import (
    run_layers_command,
    run_overlap_command,
    run_trace_command,
    run_track_command,
)
from .blocks import run_blocks_command
from .checks import check_new_output, keep_state
from .operator import build_operator


def run_demo_command(args, echo):
    """``demo``: train the clusters MLP, measure, write ``--out``."""
    from ..examples.demo import run_demo

    run_demo(args.out, num_classes=args.num_classes, num_examples=args.num_examples,
             steps=args.steps, seed=args.seed, dense=not args.no_dense,
             overwrite=args.overwrite, progress=not args.no_progress, echo=echo)


def run_eigs_command(args, echo):
    """``eigs``: extreme eigenpairs of the operator, printed and written."""
    from ..run import eigs as run_eigs
    from ..analysis.report import eigen_table, run_summary

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out, the file of the run to continue")
    check_new_output(args)
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
    converged = int(result.converged.sum())
    ends = f"top eigenvalue {result.eigenvalues.max():.6g}"
    if args.which in ("BE", "SA"):
        ends += f", bottom {result.eigenvalues.min():.6g}"
    closing(echo, args.out, f"{ends}; {converged}/{len(result.eigenvalues)} pairs converged "
                            f"to tol={result.tol:g}")


def run_slq_command(args, echo):
    """``slq``: the spectral density by SLQ, printed and written."""
    from ..run import slq as run_slq

    check_new_output(args)
    problem, op = build_operator(args)
    spectrum = run_slq(op, args.out, num_probes=args.num_probes, num_steps=args.num_steps,
                           probe=args.probe, k_top=args.deflate_top,
                           k_bottom=args.deflate_bottom, tol=args.tol,
                           reorthogonalize=not args.no_reorthogonalize, seed=args.seed,
                           overwrite=args.overwrite, resume=args.resume,
                           memory_budget=args.memory_budget,
                           shard_vectors=args.shard_vectors, progress=not args.no_progress,
                           attrs=problem.attrs, keep_state=keep_state(args),
                           target_error=args.target_error, confidence=args.confidence)
    result = spectrum.slq
    echo(f"SLQ: {result.num_probes} probes x {result.num_steps} steps, "
         f"{result.num_passes} data passes ({result.deflation_passes} for "
         f"{len(result.outliers)} outliers), {result.timings['total']:.1f} s")
    if args.out:  # the spectrum read_spectrum(args.out) gives (analyze's summary)
        echo(spectrum.summary())
    trace, negative = result.trace(), result.fraction_below(0.0)
    closing(echo, args.out, f"trace {trace.value:.6g} +- {trace.stderr:.2g}; fraction below 0 "
                            f"in [{negative.lower:.4f}, {negative.upper:.4f}]")


def closing(echo, out, headline: str) -> None:
    """The command's last line, the one ``--quiet`` keeps: where the result went and its
    headline numbers (``result: ...`` without ``--out``)."""
    echo(f"written to {out}: {headline}" if out else f"result: {headline}")


def run_analyze_command(args, echo):
    """``analyze``: summaries (and ``--plot`` figures) of saved files."""
    from ..analysis.runs import merge_runs
    from ..analysis.spectrum import read_spectrum, summarize

    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width must be positive, got {args.width}")
    spectra = merge_runs([read_spectrum(path) for path in args.files])
    for spectrum in spectra:
        echo(summarize(spectrum, args.top))
    if args.plot:
        from ..analysis.plotting import plot_spectra

        plot_spectra(spectra, args.plot, width=args.width)
        echo(f"figures written to {args.plot}")


#: The function of each command.
COMMANDS = {"demo": run_demo_command, "eigs": run_eigs_command, "slq": run_slq_command,
            "analyze": run_analyze_command, "trace": run_trace_command,
            "layers": run_layers_command, "overlap": run_overlap_command,
            "track": run_track_command, "blocks": run_blocks_command}
