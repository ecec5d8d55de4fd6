"""Local geometry of the full-dataset loss: gradient, gradient overlap, lines, layer blocks.

Everything here is computed over the **whole data set** with the conventions of the
curvature operators (:mod:`lanczos_hessian.curvature.operators`): the objective is
``L(w) = c * sum_i loss(f(w, x_i), y_i)`` with ``c = 1/N`` for a mean-reduced loss (each
batch's mean loss weighted by ``|B|/N`` in a float64 accumulator) or ``c = 1`` for a sum, the
model runs in eval mode (dropout off, batch-norm on its running statistics) with every
submodule's flag restored afterwards, and a vector lives in the flat layout of the selected
parameters (:class:`~lanczos_hessian.curvature.params.ParameterSpace`).

* :func:`full_gradient`, :func:`loss_and_gradient`: ``grad L(w)`` in one data pass.
* :func:`gradient_overlap`: the fraction of ``||g||^2`` inside the span of a set of
  eigenvectors, ``||Q^T g||^2 / ||g||^2`` (``Q`` an orthonormal basis of the span). For the
  top-``k`` Hessian eigenspace this is the quantity of Gur-Ari, Roberts and Dyer (2018,
  "Gradient descent happens in a tiny subspace") and of Fort and Ganguli (2019, "Emergent
  properties of the local geometry of neural loss landscapes"): during training it is close
  to 1 for ``k`` = the number of classes.
* :func:`full_loss`: loss (and accuracy) of the whole data set at the current point.
* :func:`line_profile`: loss and accuracy on ``w(t) = (1 - t) w_a + t w_b`` for any ``t``
  (``t < 0`` and ``t > 1`` extend the segment beyond both ends; Sagun et al. 2018, Sec. 4.1,
  Figs. 8-9), and :func:`direction_profile` on ``w(t) = w_0 + t d`` (e.g. ``d`` a unit
  Hessian eigenvector, where the loss is ``L(w_0) + t g.d + t^2 lambda / 2 + O(t^3)``).
  The model's parameters are restored afterwards, also on error.
* :func:`layer_spectra`: the top eigenvalues of each layer's diagonal block of the
  curvature (the operators' ``params=``), one Lanczos run per layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import grad_and_value

from ..parallel.distributed import all_reduce_sum
from ..linalg.eigsh import lanczos_eigsh
from ..curvature.operators import OPERATORS, CurvatureOperator, HessianOperator, evaluation_mode
from ..curvature.data import batch_length, call_model
from ..curvature.params import ParameterSpace

__all__ = [
    "LineProfile",
    "direction_profile",
    "full_gradient",
    "full_loss",
    "gradient_overlap",
    "layer_names",
    "layer_spectra",
    "line_profile",
    "loss_and_gradient",
    "orthonormal_basis",
    "set_flat_parameters",
]


def _tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _operator(source, loss_fn=None, data=None, **kwargs) -> CurvatureOperator:
    """``source`` itself if it is an operator, else a Hessian operator built from the parts."""
    if isinstance(source, CurvatureOperator):
        if loss_fn is not None or data is not None or kwargs:
            raise TypeError("pass either an operator or (model, loss_fn, data, ...), not both")
        return source
    if loss_fn is None or data is None:
        raise TypeError("full-dataset quantities need (model, loss_fn, data) or an operator")
    kwargs.setdefault("check_data", False)
    return HessianOperator(source, loss_fn, data, **kwargs)


# ---- the full-dataset gradient ----------------------------------------------------------------
def loss_and_gradient(source, loss_fn=None, data=None, **kwargs) -> tuple:
    """``(L(w), grad L(w))`` over the whole data set in one pass: a float and a float64 ``(M,)``.

    ``source`` is a :class:`~lanczos_hessian.curvature.operators.CurvatureOperator` (its model, loss,
    data, parameter block and reduction are used) or a model, with ``loss_fn`` and ``data``
    and the operators' keyword arguments (``params``, ``reduction``, ``batch_size``).
    Each batch's gradient is taken in the model's dtype and accumulated in float64 with the
    operators' weights; the result lives on the model's device, in the operator's flat layout.
    """
    op = _operator(source, loss_fn, data, **kwargs)
    space, model = op.space, op.model
    selected = set(space.names)
    dim = space.dim
    buffer = torch.zeros(dim + 2, dtype=torch.float64, device=op.device)
    with evaluation_mode(model):
        params = space.parameters(model)
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
        frozen.update(dict(model.named_buffers()))
        for inputs, targets in op.data:
            x, y = op._to_device(inputs, targets)

            def batch_loss(p, x=x, y=y):
                return op.loss_fn(call_model(model, (p, frozen), x), y)

            g, value = grad_and_value(batch_loss)(params)
            weight = batch_length(x) if op.reduction == "mean" else 1.0
            buffer[:dim].add_(space.join(t.to(torch.float64) for t in g.values()), alpha=weight)
            buffer[dim] += weight * float(value.detach())
            buffer[dim + 1] += batch_length(x)
    all_reduce_sum(buffer)
    scale = 1.0 / float(buffer[-1]) if op.reduction == "mean" else 1.0
    return float(buffer[dim]) * scale, buffer[:dim] * scale


def full_gradient(source, loss_fn=None, data=None, **kwargs) -> torch.Tensor:
    """``grad L(w)`` over the whole data set (float64 ``(M,)``); see :func:`loss_and_gradient`."""
    return loss_and_gradient(source, loss_fn, data, **kwargs)[1]


# ---- overlap with an eigenspace ---------------------------------------------------------------
def orthonormal_basis(vectors) -> torch.Tensor:
    """An orthonormal basis ``(M, r)`` float64 (CPU) of the span of the columns of ``vectors``.

    ``vectors`` is an ``(M, k)`` array or tensor, or an object with an ``eigenvectors``
    attribute (an :class:`~lanczos_hessian.linalg.eigsh.EigshResult`). The columns are
    orthonormalized by QR; columns dependent on the others (``|R_jj| <= 1e-10 max |R_jj|``)
    are dropped.
    """
    vectors = getattr(vectors, "eigenvectors", vectors)
    if vectors is None:
        raise ValueError("no eigenvectors: run lanczos_eigsh with return_eigenvectors=True")
    Y = _tensor(vectors).to(torch.float64).cpu()
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise ValueError(f"expected an (M, k) block of vectors, got shape {tuple(Y.shape)}")
    Q, R = torch.linalg.qr(Y)
    diag = torch.abs(torch.diagonal(R))
    return Q[:, diag > 1e-10 * diag.max()]


def gradient_overlap(gradient, vectors, per_vector: bool = False):
    """Fraction of ``||g||^2`` in the span of ``vectors``: ``||Q^T g||^2 / ||g||^2``, in [0, 1].

    ``vectors``: ``(M, k)`` eigenvectors (array, tensor or an
    :class:`~lanczos_hessian.linalg.eigsh.EigshResult`), orthonormalized here (Ritz vectors are
    orthonormal to rounding already). With ``per_vector=True`` returns ``(total, parts)``,
    ``parts`` the ``(k,)`` fractions ``(y_i^T g)^2 / (||y_i||^2 ||g||^2)`` of the given
    vectors, which sum to ``total`` when they are orthogonal. A zero gradient gives NaN.
    """
    g = _tensor(gradient).to(torch.float64).cpu().reshape(-1)
    Q = orthonormal_basis(vectors)
    if Q.shape[0] != g.shape[0]:
        raise ValueError(f"gradient has {g.shape[0]} entries, vectors have {Q.shape[0]} rows")
    norm2 = float(g @ g)
    total = float(((Q.T @ g) ** 2).sum()) / norm2 if norm2 > 0 else float("nan")
    if not per_vector:
        return total
    Y = _tensor(getattr(vectors, "eigenvectors", vectors)).to(torch.float64).cpu()
    Y = Y.reshape(g.shape[0], -1)
    Y = Y / torch.linalg.vector_norm(Y, dim=0).clamp_min(1e-300)
    parts = ((Y.T @ g) ** 2 / norm2).numpy() if norm2 > 0 else np.full(Y.shape[1], np.nan)
    return total, parts


# ---- loss at other points -----------------------------------------------------------------------
def set_flat_parameters(model, space: ParameterSpace, flat) -> None:
    """Copy the flat vector ``flat`` (layout of ``space``) into ``model``'s parameters."""
    flat = _tensor(flat).reshape(-1)
    if flat.shape != (space.dim,):
        raise ValueError(f"expected a parameter vector of shape ({space.dim},), got "
                         f"{tuple(flat.shape)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in space.split(flat).items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


@contextlib.contextmanager
def _restored_parameters(model, space):
    saved = {n: p.detach().clone() for n, p in space.parameters(model).items()}
    params = dict(model.named_parameters())
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def _is_classification(outputs, targets) -> bool:
    return (outputs.ndim == 2 and outputs.shape[1] > 1 and targets.ndim == 1
            and not targets.is_floating_point())


def full_loss(source, loss_fn=None, data=None, **kwargs) -> tuple:
    """``(L(w), accuracy)`` over the whole data set at the current parameters, in eval mode.

    Weighted exactly as the operators (float64 accumulator, ``|B|/N`` for ``mean``); the
    accuracy is the fraction of ``argmax`` hits for class-label targets and NaN otherwise.
    ``source``: an operator or ``(model, loss_fn, data, **operator kwargs)``.
    """
    op = _operator(source, loss_fn, data, **kwargs)
    buffer = torch.zeros(3, dtype=torch.float64, device=op.device)
    classification = True
    with evaluation_mode(op.model), torch.no_grad():
        for inputs, targets in op.data:
            x, y = op._to_device(inputs, targets)
            out = call_model(op.model, None, x)
            weight = batch_length(x) if op.reduction == "mean" else 1.0
            buffer[0] += weight * float(op.loss_fn(out, y))
            if classification and _is_classification(out, y):
                buffer[1] += float((out.argmax(1) == y).sum())
            else:
                classification = False
            buffer[2] += batch_length(x)
    all_reduce_sum(buffer)
    n = float(buffer[2])
    loss = float(buffer[0]) / n if op.reduction == "mean" else float(buffer[0])
    return loss, (float(buffer[1]) / n if classification else float("nan"))


@dataclass
class LineProfile:
    """Loss and accuracy along a line of parameter vectors, one entry per ``t``.

    ``t`` is the coordinate of :func:`line_profile` (0 at ``w_a``, 1 at ``w_b``) or of
    :func:`direction_profile` (multiples of the direction); ``losses`` and ``accuracies``
    map each data set's name to a ``(len(t),)`` array (accuracies NaN for regression).
    ``norm`` is ``||w_b - w_a||`` or ``||d||``.
    """

    t: np.ndarray
    losses: dict = field(default_factory=dict)
    accuracies: dict = field(default_factory=dict)
    norm: float = float("nan")

    def as_arrays(self) -> dict:
        """Flat ``{name: array}`` for :meth:`SpectrumWriter.write_arrays`."""
        out = {"t": self.t, "norm": np.float64(self.norm)}
        for name in self.losses:
            out[f"loss_{name}"] = self.losses[name]
            out[f"accuracy_{name}"] = self.accuracies[name]
        return out


def _profile(model, loss_fn, datasets, points, t, norm, **kwargs) -> LineProfile:
    if not isinstance(datasets, dict):
        datasets = {"train": datasets}
    ops = {name: _operator(model, loss_fn, data, **kwargs) for name, data in datasets.items()}
    space = next(iter(ops.values())).space
    losses = {name: np.empty(len(t)) for name in ops}
    accuracies = {name: np.empty(len(t)) for name in ops}
    with _restored_parameters(model, space):
        for i, w in enumerate(points):
            set_flat_parameters(model, space, w)
            for name, op in ops.items():
                losses[name][i], accuracies[name][i] = full_loss(op)
    return LineProfile(t=np.asarray(t, dtype=np.float64), losses=losses,
                       accuracies=accuracies, norm=float(norm))


def line_profile(model, loss_fn, data, w_a, w_b, t=None, **kwargs) -> LineProfile:
    """Loss and accuracy at ``w(t) = (1 - t) w_a + t w_b`` for each ``t``, whole data sets.

    ``data`` is one data source or a dict of them (``{"train": ..., "test": ...}``);
    ``t`` defaults to 41 points on ``[-0.5, 1.5]`` (the segment extended by half its length
    beyond both ends). ``w_a``, ``w_b``: flat vectors of the selected parameters
    (``params=`` as for the operators; e.g. ``op.flat_parameters()`` taken at two points).
    The model's parameters are restored afterwards.
    """
    t = np.linspace(-0.5, 1.5, 41) if t is None else np.asarray(t, dtype=np.float64)
    w_a = _tensor(w_a).to(torch.float64).cpu().reshape(-1)
    w_b = _tensor(w_b).to(torch.float64).cpu().reshape(-1)
    points = ((1.0 - ti) * w_a + ti * w_b for ti in t)
    return _profile(model, loss_fn, data, points, t, float(torch.linalg.vector_norm(w_b - w_a)),
                    **kwargs)


def direction_profile(model, loss_fn, data, direction, t=None, origin=None,
                      **kwargs) -> LineProfile:
    """Loss and accuracy at ``w(t) = w_0 + t d`` (``w_0`` the current parameters by default).

    ``d`` is used as given (pass a unit eigenvector to read ``t`` as a distance); ``t``
    defaults to 41 points on ``[-1, 1]``. See :func:`line_profile` for ``data``.
    """
    t = np.linspace(-1.0, 1.0, 41) if t is None else np.asarray(t, dtype=np.float64)
    d = _tensor(direction).to(torch.float64).cpu().reshape(-1)
    if origin is None:
        origin = ParameterSpace.of(model, kwargs.get("params")).flat_parameters(model)
    w0 = _tensor(origin).to(torch.float64).cpu().reshape(-1)
    points = (w0 + ti * d for ti in t)
    return _profile(model, loss_fn, data, points, t, float(torch.linalg.vector_norm(d)), **kwargs)


# ---- per-layer (block) spectra ------------------------------------------------------------------
def layer_names(model) -> list:
    """Names of the modules that own trainable parameters directly (one "layer" each)."""
    return [name for name, module in model.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))]


def layer_spectra(model, loss_fn, data, layers=None, k: int = 5, *, operator: str = "hessian",
                  which: str = "LA", tol: float = 1e-8, rng=0, return_results: bool = False,
                  **kwargs) -> dict:
    """Top (``which="LA"``) or bottom (``"SA"``) eigenvalues of each layer's diagonal block.

    For each entry of ``layers`` (default :func:`layer_names`: every module owning
    parameters; an entry may also be a parameter name, or a list of names/prefixes taken
    together), builds the ``operator`` (``"hessian"``, ``"ggn"`` or ``"residual"``)
    restricted to those parameters (``params=``: the block ``C[layer, layer]`` of the full
    matrix, not the curvature of the layer with the others' coupling) and runs
    :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh` for ``min(k, block size)`` eigenpairs.
    Returns ``{layer: eigenvalues ascending}``, or ``{layer: EigshResult}`` with
    ``return_results=True``. Extra keyword arguments go to the operator (``batch_size``,
    ``reduction``, ...).

    Single-vector Lanczos sees one copy of an exactly repeated eigenvalue: a last layer's
    weight block, ``sum_i H_softmax,i (x) a_i a_i^T``, has a zero eigenvalue of multiplicity
    at least ``fan_in`` (the softmax Hessian has rank ``classes - 1``), so its bottom end is
    returned with one zero, not all of them. The top ends are unaffected in practice.
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; choose one of {sorted(OPERATORS)}")
    layers = layer_names(model) if layers is None else list(layers)
    out = {}
    for layer in layers:
        names = [layer] if isinstance(layer, str) else list(layer)
        op = OPERATORS[operator](model, loss_fn, data, params=names, **kwargs)
        result = lanczos_eigsh(op, k=min(k, op.shape[0]), which=which, tol=tol, rng=rng)
        key = layer if isinstance(layer, str) else "+".join(names)
        out[key] = result if return_results else result.eigenvalues
    return out
