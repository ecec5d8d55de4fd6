"""Problems: a model, a loss and a data set, built in or supplied by the user.

The CLI measures spectra of a :class:`Problem`. ``--problem`` takes either a built-in name
(:data:`BUILTIN`) or ``package.module:function``, a function of the user's that returns a
``Problem`` or a ``(model, loss_fn, data)`` tuple; ``--checkpoint`` then loads a
``state_dict`` into the model. This is how a trained network of one's own is analysed::

    lanczos-hessian eigs --problem mylab.setup:cifar_alexnet --checkpoint ep100.pt --k 20

The module is imported as ``python -m`` would: the current working directory is put first
on ``sys.path``, so ``--problem mymodule:build`` works from the directory that holds
``mymodule.py``; from elsewhere, its directory goes on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field

import torch

from .models import mlp, num_parameters
from .synthetic import gaussian_clusters
from .training import evaluate, train

logger = logging.getLogger(__name__)


@dataclass
class Problem:
    """What a curvature operator is built from, plus a description for the file's attributes.

    ``unpack`` (optional) maps each batch of ``data`` to ``(inputs, targets)`` (see
    :class:`~lanczos_hessian.curvature.data.DataSource`), for data sets of dict batches.
    """

    model: torch.nn.Module
    loss_fn: object
    data: object
    name: str = "custom"
    attrs: dict = field(default_factory=dict)
    unpack: object = None


def clusters_mlp(num_classes: int = 10, num_examples: int = 1000, widths=(100, 30, 30),
                 activation: str = "relu", steps: int = 2000, lr: float = 0.1,
                 batch_size: int | None = None, scale: float = 1.0, seed: int = 0,
                 progress: bool = False) -> Problem:
    """Sagun et al. 2018, Sec. 3.1: an MLP on Gaussian clusters, trained by GD to low loss.

    Inputs from ``num_classes`` Gaussian clusters in ``widths[0]`` dimensions (standardized),
    network ``widths -> num_classes`` (100-30-30-10 by default: 4,270 parameters), softmax
    cross-entropy with mean reduction, full-batch gradient descent (``batch_size=None``) at
    learning rate ``lr`` for ``steps`` steps from a seeded initialization.
    """
    inputs, targets = gaussian_clusters(num_classes, num_examples, dim=widths[0], scale=scale,
                                        rng=seed)
    torch.manual_seed(seed)
    model = mlp(list(widths) + [num_classes], activation).to(inputs.dtype)
    loss_fn = torch.nn.CrossEntropyLoss()
    history = train(model, loss_fn, inputs, targets, steps=steps, lr=lr, batch_size=batch_size,
                    rng=seed, progress=progress)
    loss, accuracy = evaluate(model, loss_fn, inputs, targets)
    attrs = {"problem": "clusters-mlp", "num_classes": num_classes, "num_samples": num_examples,
             "widths": list(widths) + [num_classes], "activation": activation,
             "train_steps": steps, "learning_rate": lr, "train_loss": loss,
             "train_accuracy": accuracy, "input_scale": scale,
             "num_params": num_parameters(model)}
    logger.info("trained %s: loss %.3g, accuracy %.3f", attrs["widths"], loss, accuracy)
    problem = Problem(model, loss_fn, (inputs, targets), "clusters-mlp", attrs)
    problem.history = history
    return problem


BUILTIN = {"clusters-mlp": clusters_mlp}


def load_problem(spec: str, checkpoint=None, **kwargs) -> Problem:
    """Build the problem named by ``spec`` (a built-in name or ``module:function``)."""
    if spec in BUILTIN:
        problem = BUILTIN[spec](**kwargs)
    elif ":" in spec:
        problem = _from_user_function(spec)
    else:
        raise ValueError(f"unknown problem {spec!r}: use one of {sorted(BUILTIN)} or "
                         "'package.module:function'")
    if checkpoint is not None:
        _load_checkpoint(problem.model, checkpoint)
        problem.attrs["checkpoint"] = str(checkpoint)
    return problem


def _load_checkpoint(model, checkpoint) -> None:
    """Load a ``state_dict`` (or ``{"state_dict": ...}``) saved by ``torch.save`` into
    ``model``; a clear ValueError for anything else."""
    from collections.abc import Mapping

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 (pickle, zip and torch errors alike)
        raise ValueError(f"cannot load --checkpoint {checkpoint}: not a state_dict saved by "
                         f"torch.save ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                         ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        what = type(state).__name__
        if isinstance(state, Mapping):
            bad = next(k for k, v in state.items()
                       if not isinstance(k, str) or not isinstance(v, torch.Tensor))
            what = f"a {what} whose entry {bad!r} is not a named tensor"
        raise ValueError(f"--checkpoint {checkpoint} is not a state_dict (a mapping of parameter "
                         f"names to tensors, as model.state_dict() returns): it holds {what}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"--checkpoint {checkpoint} does not fit the problem's model: "
                         f"{str(exc).strip().splitlines()[0]}") from exc


def _import_user_module(module_name: str, spec: str):
    """Import ``module_name`` with the working directory first on ``sys.path`` (as
    ``python -m`` puts it there; a console script does not); a ValueError that names the
    directories searched and the fix when the module is not found."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise ValueError(f"cannot load problem {spec!r}: importing {module_name!r} failed "
                             f"inside the module: {exc}") from exc
        searched = [path or cwd for path in sys.path]
        shown = ", ".join(searched[:4]) + (f" and {len(searched) - 4} more"
                                           if len(searched) > 4 else "")
        raise ValueError(
            f"cannot load problem {spec!r}: no module named {missing!r} in the working "
            f"directory {cwd} or on the rest of sys.path ({shown}); run the command from the "
            f"directory that holds {module_name.split('.')[0]}.py (or its package), or put that "
            f"directory on the path: PYTHONPATH=/path/to/dir lanczos-hessian ...") from exc
    except ImportError as exc:
        raise ValueError(f"cannot load problem {spec!r}: importing {module_name!r} failed "
                         f"inside the module: {exc}") from exc


def _from_user_function(spec: str) -> Problem:
    module_name, _, function_name = spec.partition(":")
    module = _import_user_module(module_name, spec)
    try:
        function = getattr(module, function_name)
    except AttributeError as exc:
        raise ValueError(f"cannot load problem {spec!r}: module {module_name!r} "
                         f"({getattr(module, '__file__', '?')}) has no {function_name!r}"
                         ) from exc
    if not callable(function):
        raise ValueError(f"problem {spec!r} names a {type(function).__name__}, not a function: "
                         "--problem takes 'package.module:function', a function returning a "
                         "Problem or a (model, loss_fn, data) tuple")
    built = function()
    if isinstance(built, tuple) and len(built) == 3:
        built = Problem(*built, name=spec, attrs={"problem": spec})
    if not isinstance(built, Problem):
        raise ValueError(f"problem function {spec!r} must return a Problem or a "
                         f"(model, loss_fn, data) tuple, got {type(built).__name__}")
    if not isinstance(built.model, torch.nn.Module):
        raise ValueError(f"problem function {spec!r} returned a model of type "
                         f"{type(built.model).__name__}; expected a torch.nn.Module")
    if not callable(built.loss_fn):
        raise ValueError(f"problem function {spec!r} returned a loss_fn of type "
                         f"{type(built.loss_fn).__name__}; expected a callable "
                         "loss_fn(outputs, targets) such as torch.nn.CrossEntropyLoss()")
    return built
