"""The operator a command analyses: ``--problem`` loaded, moved to ``--device`` and cast to
``--model-dtype``, wrapped as ``--operator``."""

from __future__ import annotations


def build_operator(args):
    """``(problem, op)``: the problem of ``--problem`` (with ``--checkpoint``), its model and
    data as analysed (``--model-dtype``, ``--device``), and its curvature operator
    ``--operator``, restricted to ``--params``."""
    import torch

    from ..parallel.distributed import default_device
    from ..curvature.operators import OPERATORS
    from ..examples.problems import load_problem

    device = device_named(args.device) if args.device else default_device()
    problem = load_problem(args.problem, args.checkpoint, **problem_kwargs(args))
    model, data = problem.model, problem.data
    if args.model_dtype:
        dtype = getattr(torch, args.model_dtype)
        model, data = model.to(dtype), floating_inputs_to(data, dtype)
    try:
        model = model.to(device)
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(f"--device {device}: cannot move the model there ({exc})") from exc
    op = OPERATORS[args.operator](model, problem.loss_fn, data, params=args.params,
                                  batch_size=args.batch_size, strategy=args.strategy,
                                  allow_tf32=args.allow_tf32, unpack=problem.unpack,
                                  compile=args.compile)
    problem.model, problem.data = model, data  # as analysed: cast and moved
    return problem, op


def floating_inputs_to(data, dtype):
    """``--model-dtype`` for a tensor pair: floating inputs converted with the model, so that
    the products are not taken on inputs of another precision (a DataLoader or iterable is
    left as it is: the operator warns once if its inputs differ from the model's dtype)."""
    import torch

    if (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and data[0].is_floating_point()):
        return data[0].to(dtype), data[1]
    return data


def device_named(name: str):
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


def problem_kwargs(args):
    """Keywords of the built-in demo problem (its training seed and progress bar)."""
    if args.problem == "clusters-mlp":
        return {"seed": args.seed, "progress": not args.no_progress}
    return {}
