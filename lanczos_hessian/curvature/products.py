"""Curvature-matrix products on one batch: Hessian, generalized Gauss-Newton, residual.

For a batch ``B = {(x_i, y_i)}`` with batch loss ``l_B(w) = loss(f(w, x_B), y_B)`` (the loss
function's own reduction, ``mean`` or ``sum`` over the batch), this module computes, for a
block of vectors ``V = [v_1 ... v_b]`` (flat parameter vectors, the model's dtype):

* Hessian:   ``H_B V``  with ``H_B = d^2 l_B / dw^2``;
* GGN:       ``G_B V``  with ``G_B = J_B^T (d^2 loss / dz^2) J_B``, ``J_B = df(w, x_B)/dw``
  the Jacobian of the network outputs ``z`` (the first term of Sagun et al. 2018's Eq. 4,
  ``H = G + R``, and their Eq. 5's approximation ``H ~ G``: positive semi-definite for a
  convex loss such as cross-entropy or squared error);
* residual:  ``R_B V = H_B V - G_B V`` (the second term of their Eq. 4, weighted by the
  loss gradient, where negative curvature comes from).

Two differentiation strategies, the same numbers up to rounding:

``"forward-over-reverse"``
    ``torch.func.jvp`` of ``torch.func.grad``, vectorized over the block by ``torch.func.vmap``.
    One fused forward-reverse-forward sweep per vector; the vmapped sweep repeats the primal
    work once per vector.
``"reverse-over-reverse"``
    One forward and one backward with ``create_graph=True`` build the gradient graph once;
    each vector then costs one more backward through it (``retain_graph``). The primal work is
    shared by the whole block. Works for every op with a double backward, also those that lack
    forward-mode rules.

``"auto"`` (the default) picks one of the two by a fixed rule, never by timing, so that two
runs of the same command compute the same numbers bit for bit and a resumed run continues
with the products it started with:

1. a model with a convolution (any ``torch.nn.Conv1d/2d/3d`` or transposed convolution)
   gets ``"reverse-over-reverse"``: its shared double-backward graph was 1.2-2.2x faster per
   vector than the vmapped forward-over-reverse sweep on the benchmark CNN, for blocks of 1,
   4 and 16 vectors (docs/BENCHMARKS.md, *HVP cost*);
2. any other model gets ``"forward-over-reverse"`` (1.3-3.9x faster on the benchmark MLP),
   unless one product of the operator's kind on the first batch, taken once when the operator
   is built, fails for lack of a forward-mode rule (e.g. ``torch.nn.MSELoss``): then
   ``"reverse-over-reverse"``. Whether an op has a forward-mode rule does not change from
   run to run, so neither does the choice.

The operator resolves the rule once (:meth:`BatchCurvature.resolve`); run files record the
resolved strategy, and a resume with another strategy is refused like any other setting.
"""

from __future__ import annotations

import logging

import torch
from torch.func import grad, grad_and_value, jvp, vjp, vmap

from ..errors import ForwardModeUnsupportedError
from .data import call_model
from .kernels import missing_derivative, twice_differentiable
from .params import ParameterSpace

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "forward-over-reverse", "reverse-over-reverse")
KINDS = ("hessian", "ggn", "residual")


class BatchCurvature:
    """Curvature products of one model and loss on single batches.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` for a tensor, a
        tuple or a dict of inputs (:func:`~lanczos_hessian.curvature.data.call_model`); must
        already be in the mode products are taken in.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``.
    space : ParameterSpace
        The parameters differentiated; all others and the buffers are held fixed.
    strategy : str
        One of :data:`STRATEGIES`.
    """

    def __init__(self, model, loss_fn, space: ParameterSpace, strategy: str = "auto"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.model, self.loss_fn, self.space = model, loss_fn, space
        self.requested = strategy
        self.strategy = strategy  # "auto" until resolve()
        self.reason = "" if strategy == "auto" else "requested"

    # ---- the functions being differentiated -------------------------------------------
    def _state(self):
        selected = set(self.space.names)
        params = self.space.parameters(self.model)
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in selected}
        frozen.update({n: b for n, b in self.model.named_buffers()})
        return params, frozen

    def _outputs(self, params, frozen, inputs):
        return call_model(self.model, (params, frozen), inputs)

    def loss(self, inputs, targets) -> torch.Tensor:
        """The batch loss ``l_B(w)`` (no graph)."""
        params, frozen = self._state()
        with torch.no_grad():
            return self.loss_fn(self._outputs(params, frozen, inputs), targets)

    # ---- public entry -------------------------------------------------------------------
    def products(self, kind: str, inputs, targets, V: torch.Tensor) -> tuple:
        """Return ``(batch loss, C_B V)`` for ``kind`` in :data:`KINDS`.

        ``V`` is ``(M, b)`` in the model's dtype and device; the product has the same layout.
        """
        if self.strategy == "auto":
            self.resolve(kind, inputs, targets)
        return self._run(kind, self.strategy, inputs, targets, V)

    def resolve(self, kind: str, inputs, targets) -> str:
        """Fix ``"auto"`` by the rule of the module docstring, once; return the strategy. May
        take one product of ``kind`` on this batch (a model without convolutions)."""
        if self.strategy != "auto":
            return self.strategy
        if any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.model.modules()):
            self.strategy, self.reason = "reverse-over-reverse", "auto: convolutional layers"
            return self.strategy
        first = next(iter(self.space.parameters(self.model).values()))
        probe = torch.ones(self.space.dim, 1, dtype=first.dtype, device=first.device)
        try:
            self._run(kind, "forward-over-reverse", inputs, targets, probe)
        except ForwardModeUnsupportedError as exc:
            logger.info("forward-over-reverse unavailable (%s); using reverse-over-reverse", exc)
            self.strategy, self.reason = "reverse-over-reverse", "auto: no forward mode"
            return self.strategy
        self.strategy, self.reason = "forward-over-reverse", "auto: no convolutional layers"
        return self.strategy

    def _run(self, kind, strategy, inputs, targets, V):
        fn = _FUNCTIONS[(kind, strategy)]
        try:
            with twice_differentiable():
                return fn(self, inputs, targets, V)
        except (NotImplementedError, RuntimeError) as exc:
            named = missing_derivative(exc, strategy, kind)
            if named is not None:
                raise named from exc
            if strategy == "reverse-over-reverse":
                raise
            raise ForwardModeUnsupportedError(
                f"forward-over-reverse {kind} products failed on this model and loss "
                f"({type(exc).__name__}: {exc}); use strategy='reverse-over-reverse' "
                "(or 'auto', which falls back by itself)"
            ) from exc


# ---- forward-over-reverse ------------------------------------------------------------------
def _hessian_fwd_rev(self: BatchCurvature, inputs, targets, V):
    params, frozen = self._state()

    def batch_loss(p):
        return self.loss_fn(self._outputs(p, frozen, inputs), targets)

    def grad_with_loss(p):
        g, value = grad_and_value(batch_loss)(p)
        return g, value

    def hvp(v):
        _, hv, value = jvp(grad_with_loss, (params,), (v,), has_aux=True)
        return hv, value

    HV, values = vmap(hvp)(self.space.split(V))
    return values[0], self.space.join(HV.values(), batched=True)


def _ggn_fwd_rev(self: BatchCurvature, inputs, targets, V):
    params, frozen = self._state()

    def outputs(p):
        return self._outputs(p, frozen, inputs)

    z, pullback = vjp(outputs, params)
    z = z.detach()
    loss_grad = grad(lambda out: self.loss_fn(out, targets))

    def ggn_vp(v):
        _, Jv = jvp(outputs, (params,), (v,))
        _, HJv = jvp(loss_grad, (z,), (Jv,))
        return pullback(HJv)[0]

    GV = vmap(ggn_vp)(self.space.split(V))
    value = self.loss_fn(z, targets).detach()
    return value, self.space.join(GV.values(), batched=True)


def _residual_fwd_rev(self: BatchCurvature, inputs, targets, V):
    value, HV = _hessian_fwd_rev(self, inputs, targets, V)
    _, GV = _ggn_fwd_rev(self, inputs, targets, V)
    return value, HV - GV


# ---- reverse-over-reverse ------------------------------------------------------------------
def _leaves(self: BatchCurvature):
    params, frozen = self._state()
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return leaves, frozen


def _backward(outputs, inputs, grad_outputs, retain):
    """``sum_k grad_outputs[k]^T d outputs[k] / d inputs``, zeros where independent."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    outs, gouts = zip(*pairs)
    return torch.autograd.grad(
        outs, inputs, gouts, retain_graph=retain, allow_unused=True, materialize_grads=True
    )


def _hessian_rev_rev(self: BatchCurvature, inputs, targets, V):
    leaves, frozen = _leaves(self)
    with torch.enable_grad():
        value = self.loss_fn(self._outputs(leaves, frozen, inputs), targets)
        grads = torch.autograd.grad(value, list(leaves.values()), create_graph=True)
        columns = []
        b = V.shape[1]
        for j in range(b):
            v = self.space.split(V[:, j])
            hv = _backward(grads, list(leaves.values()), list(v.values()), retain=j < b - 1)
            columns.append(self.space.join(hv))
    return value.detach(), torch.stack(columns).T


def _ggn_rev_rev(self: BatchCurvature, inputs, targets, V):
    leaves, frozen = _leaves(self)
    params = list(leaves.values())
    with torch.enable_grad():
        z = self._outputs(leaves, frozen, inputs)
        # J v by the double-vjp trick: J^T u is linear in u, so d(J^T u)/du applied to v is J v.
        u = torch.zeros_like(z, requires_grad=True)
        JTu = torch.autograd.grad(z, params, u, create_graph=True)
        zd = z.detach().requires_grad_(True)
        value = self.loss_fn(zd, targets)
        loss_grad = torch.autograd.grad(value, zd, create_graph=True)[0]
        columns = []
        b = V.shape[1]
        for j in range(b):
            v = list(self.space.split(V[:, j]).values())
            Jv = _backward(JTu, [u], v, retain=True)[0]
            HJv = _backward([loss_grad], [zd], [Jv], retain=True)[0]
            gv = _backward([z], params, [HJv], retain=j < b - 1)
            columns.append(self.space.join(gv))
    return value.detach(), torch.stack(columns).T


def _residual_rev_rev(self: BatchCurvature, inputs, targets, V):
    value, HV = _hessian_rev_rev(self, inputs, targets, V)
    _, GV = _ggn_rev_rev(self, inputs, targets, V)
    return value, HV - GV


_FUNCTIONS = {
    ("hessian", "forward-over-reverse"): _hessian_fwd_rev,
    ("ggn", "forward-over-reverse"): _ggn_fwd_rev,
    ("residual", "forward-over-reverse"): _residual_fwd_rev,
    ("hessian", "reverse-over-reverse"): _hessian_rev_rev,
    ("ggn", "reverse-over-reverse"): _ggn_rev_rev,
    ("residual", "reverse-over-reverse"): _residual_rev_rev,
}
