"""The command line's other analyses of a problem, each the library function of the same
job: ``trace`` (Hutchinson, :func:`~lanczos_hessian.linalg.trace.hutchinson_trace`),
``layers`` (per-layer spectra, :func:`~lanczos_hessian.analysis.geometry.layer_spectra`),
``overlap`` (the gradient in the top eigenspace,
:func:`~lanczos_hessian.analysis.geometry.gradient_overlap`) and ``track`` (spectra during
training, :class:`~lanczos_hessian.analysis.tracking.SpectrumTracker`)."""

from __future__ import annotations

import numpy as np

from .checks import is_main
from .operator import build_operator


def run_trace_command(args, echo):
    """``trace``: Hutchinson's estimate of ``tr(C)`` with its standard error."""
    from ..linalg.trace import hutchinson_trace

    _, op = build_operator(args)
    estimate = hutchinson_trace(op, args.num_probes, probes_per_pass=args.probes_per_pass,
                                probe=args.probe, rng=args.seed)
    echo(f"result: tr({op.kind}) = {estimate.value:.6g} +- {estimate.stderr:.2g} (standard "
         f"error over {estimate.num_probes} {args.probe} probes; {op.shape[0]} parameters)")


def run_layers_command(args, echo):
    """``layers``: each layer's top or bottom eigenvalues, one line per layer."""
    from ..analysis.geometry import layer_spectra

    problem, op = build_operator(args)
    spectra = layer_spectra(problem.model, problem.loss_fn, problem.data, layers=args.layers,
                            k=args.k,
                            operator=args.operator, which=args.which, tol=args.tol,
                            rng=args.seed, batch_size=args.batch_size)
    width = max(len(name) for name in spectra) if spectra else 5
    end = "largest" if args.which == "LA" else "smallest"
    echo(f"{op.kind} per layer, the {args.k} {end} eigenvalues of each diagonal block "
         f"(descending):")
    for name, values in spectra.items():
        shown = "  ".join(f"{v: .4e}" for v in np.sort(values)[::-1])
        echo(f"  {name:<{width}}  {shown}")
    top = {name: float(np.max(values)) for name, values in spectra.items()}
    if top:
        name = max(top, key=top.get)
        echo(f"result: largest block eigenvalue {top[name]:.6g} in {name} "
             f"({len(spectra)} layers)")


def run_overlap_command(args, echo):
    """``overlap``: loss, gradient norm, and the gradient's share in the top eigenspace."""
    from ..analysis.geometry import gradient_overlap, loss_and_gradient
    from ..linalg.eigsh import lanczos_eigsh

    _, op = build_operator(args)
    result = lanczos_eigsh(op, k=args.k, which="LA", tol=args.tol, rng=args.seed,
                           progress=not args.no_progress)
    loss, gradient = loss_and_gradient(op)
    total, parts = gradient_overlap(gradient, result.eigenvectors, per_vector=True)
    echo(f"loss {loss:.6g}, ||grad|| {float(gradient.norm()):.4g}; per eigenvector "
         "(descending eigenvalue): eigenvalue, share of ||grad||^2")
    for value, part in sorted(zip(result.eigenvalues, parts), reverse=True):
        echo(f"  {value: .6e}  {part:.4f}")
    echo(f"result: {total:.4f} of ||grad||^2 lies in the span of the top {args.k} "
         f"eigenvectors of {op.kind}")


def run_track_command(args, echo):
    """``track``: train the problem's model and measure every ``--every`` steps into
    ``--out``; print a table and draw ``--plot``."""
    from ..analysis.tracking import SpectrumTracker
    from ..examples.training import train

    problem, op = build_operator(args)
    model = problem.model
    device = next(model.parameters()).device
    inputs, targets = (t.to(device) for t in _tensor_pair(problem.data))
    tracker = SpectrumTracker(model, problem.loss_fn, problem.data, k=args.k,
                              every=args.every, tol=args.tol, operator=args.operator,
                              params=args.params, batch_size=args.batch_size,
                              slq_probes=args.slq_probes, slq_steps=args.slq_steps,
                              path=args.out if is_main() else None, overwrite=args.overwrite,
                              attrs={**problem.attrs, "num_params": op.shape[0],
                                     "learning_rate": args.lr}, rng=args.seed)
    with tracker:
        tracker.measure(0)
        train(model, problem.loss_fn, inputs, targets, steps=args.steps, lr=args.lr,
              batch_size=args.train_batch_size, rng=args.seed, callback=tracker,
              progress=not args.no_progress)
    tracking = tracker.tracking()
    echo(f"{'step':>6}  {'loss':>10}  {'top eigenvalue':>14}  {'overlap':>8}")
    for step, loss, values, share in zip(tracking["step"], tracking["loss"],
                                         tracking["eigenvalues"], tracking["overlap"]):
        echo(f"{int(step):>6}  {loss:>10.4g}  {np.max(values):>14.6g}  {share:>8.4f}")
    if args.plot:
        tracking.plot(args.plot, lr=args.lr)
        echo(f"figures written to {args.plot}")
    last = tracking["eigenvalues"][-1]
    headline = (f"{tracking.num_records} measurements; top eigenvalue "
                f"{tracking['eigenvalues'][0].max():.4g} -> {last.max():.4g} (2/lr = "
                f"{2 / args.lr:.4g})")
    echo(f"written to {args.out}: {headline}" if args.out else f"result: {headline}")


def _tensor_pair(data):
    """``(inputs, targets)`` of a problem given as one tensor pair (what training needs)."""
    import torch

    if (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        return data
    raise ValueError("track trains by full-data or mini-batch gradient descent on an "
                     "(inputs, targets) tensor pair; this problem's data is a "
                     f"{type(data).__name__} (use SpectrumTracker in Python as a callback of "
                     "your own training loop)")
