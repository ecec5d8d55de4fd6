"""Problems: a model, a loss and a data set, built in or supplied by the user.

The CLI measures spectra of a :class:`Problem`. ``--problem`` takes either a built-in name
(:data:`BUILTIN`) or ``package.module:function``, a function of the user's that returns a
``Problem`` or a ``(model, loss_fn, data)`` tuple; ``--checkpoint`` then loads a
``state_dict`` into the model. This is how a trained network of one's own is analysed::

    lanczos-hessian eigs --problem mylab.setup:cifar_alexnet --checkpoint ep100.pt --k 20
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field

import torch

from .models import mlp, num_parameters
from .synthetic import gaussian_clusters
from .training import evaluate, train

logger = logging.getLogger(__name__)


@dataclass
class Problem:
    """What a curvature operator is built from, plus a description for the file's attributes."""

    model: torch.nn.Module
    loss_fn: object
    data: object
    name: str = "custom"
    attrs: dict = field(default_factory=dict)


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
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        problem.model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict)
                                      else state)
        problem.attrs["checkpoint"] = str(checkpoint)
    return problem


def _from_user_function(spec: str) -> Problem:
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load problem {spec!r}: {exc}") from exc
    built = function()
    if isinstance(built, Problem):
        return built
    if isinstance(built, tuple) and len(built) == 3:
        return Problem(*built, name=spec, attrs={"problem": spec})
    raise ValueError(f"problem function {spec!r} must return a Problem or a "
                     f"(model, loss_fn, data) tuple, got {type(built).__name__}")
