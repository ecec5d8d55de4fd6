"""The two ways of differentiating twice: the primitives every curvature is built from.

A strategy takes a batch's functions (:class:`BatchFunctions`: the batch loss and the network
outputs as functions of the selected parameters) and a block ``V`` of ``b`` flat vectors
``(M, b)`` in the model's dtype, and returns ``(batch loss, product)``, the product a
:class:`~lanczos_hessian.curvature.block_product.BlockProduct`: the per-parameter tensors
the differentiation gives, not flattened (its ``joined`` is the flat ``(M, b)`` block):

* :meth:`hessian`: ``H_B V``, ``H_B = d^2 l_B / dw^2``;
* :meth:`ggn`: ``G_B V = J_B^T (d^2 loss / dz^2) J_B V``, ``J_B = dz/dw`` for the outputs
  ``z``.

Products are taken in grad mode with attention on a twice-differentiable kernel: the caller
runs them under :func:`~lanczos_hessian.curvature.kernels.twice_differentiable`, once per
pass (the operators), not once per batch.

``ReverseOverReverse`` builds the gradient graph once with the model's own parameters (one
forward, one backward with ``create_graph=True``), then one more backward per vector: the
primal work is shared by the block, and a single vector costs exactly the bare double
backward. For a block of a small model (:attr:`ReverseOverReverse.batched_blocks`, set by
the rule of :mod:`lanczos_hessian.curvature.products`) the second backward is one call for
the whole block, vectorized over its columns (``is_grads_batched``: the same graph, each
op of the backward applied to ``b`` cotangents at once): where a product is many small ops,
this divides their per-op cost by ``b``. ``ForwardOverReverse`` takes ``torch.func.jvp`` of
``torch.func.grad`` on the parameters swapped in by ``functional_call``: one fused sweep per
vector, vectorized over a block by ``torch.func.vmap`` (which repeats the primal work per
vector); a single vector goes through no ``vmap``. Both give the same numbers up to rounding.
"""

from __future__ import annotations

import torch
from torch.func import grad, grad_and_value, jvp, vjp, vmap

from .block_product import BlockProduct
from .data import call_model
from .kernels import math_attention
from .params import ParameterSpace

try:  # the autograd engine's entry behind torch.autograd.grad (torch >= 2.3)
    from torch.autograd.graph import _engine_run_backward as run_engine
except ImportError:  # older torch: torch.autograd.grad throughout
    run_engine = None

#: Tensor types :func:`_grad` hands to the engine directly (subclasses, such as DTensor,
#: take torch.autograd.grad's path with its ``__torch_function__`` handling).
PLAIN = (torch.Tensor, torch.nn.Parameter)

#: Scalar ones by (dtype, device): the seeds of the gradients of scalar losses (:func:`_one`).
ONES = {}


class BatchFunctions:
    """One batch's loss and outputs as functions of the selected parameters.

    ``outputs(params)`` is the network's output with ``params`` (a dict of the selected
    parameters) swapped in by ``functional_call``, the other parameters and the buffers held
    fixed; ``outputs()`` calls the model itself, with its own parameters (the cheap path of
    autograd). ``loss_on(z)`` is the loss of outputs ``z`` on the batch's targets.
    """

    def __init__(self, model, loss_fn, space: ParameterSpace, inputs, targets,
                 parameters: dict | None = None):
        self.model, self.loss_fn, self.space = model, loss_fn, space
        self.inputs, self.targets = inputs, targets
        self._parameters = parameters or self.read_parameters(model, space)

    @staticmethod
    def read_parameters(model, space: ParameterSpace, modules: list | None = None) -> dict:
        """The model's own selected parameters by name, in the space's order: each read from
        its module's own table, found in one walk over the modules (a third of the calls of
        ``named_parameters()``, which the space's names come from; ``modules``, the
        ``named_modules()`` of ``model`` when the caller has walked them already)."""
        tables = {prefix: module._parameters
                  for prefix, module in (model.named_modules() if modules is None else modules)}
        found = {}
        for name in space.names:
            prefix, _, leaf = name.rpartition(".")
            found[name] = tables[prefix][leaf]
        return found

    def detached(self) -> dict:
        """The selected parameters, detached (the point of a ``torch.func`` transform)."""
        return {name: p.detach() for name, p in self._parameters.items()}

    def live(self) -> list:
        """The model's own selected parameters (autograd differentiates with respect to
        these)."""
        return list(self._parameters.values())

    def outputs(self, params: dict | None = None):
        if params is None:
            return call_model(self.model, None, self.inputs)
        selected = set(params)
        fixed = {n: p.detach() for n, p in self.model.named_parameters() if n not in selected}
        fixed.update(self.model.named_buffers())
        return call_model(self.model, ({**fixed, **params}), self.inputs)

    def loss_on(self, z):
        return self.loss_fn(z, self.targets)

    def loss(self, params: dict | None = None):
        return self.loss_on(self.outputs(params))


def _grad(outputs, inputs, grad_outputs=None, retain=None, create_graph=False):
    """``torch.autograd.grad`` with zeros for the inputs the outputs do not depend on (what
    ``materialize_grads=True`` does, without its per-input generator steps on every call).

    Where every tensor is a plain tensor or parameter and nothing is being compiled, the
    autograd engine is called as ``torch.autograd.grad`` calls it, without that function's
    argument handling (its Python checks of every gradient's shape cost as much as a small
    layer's backward: 40-50 us a batch of a 4k-parameter MLP, measured). Those checks hold by
    construction here: every ``grad_outputs[k]`` is made with the shape of ``outputs[k]``
    (the tangents by :meth:`ParameterSpace.split`, the others by the backward itself), and
    an output without ``grad_outputs`` must be a scalar, a one (what ``torch.autograd.grad``
    would make) else the general path, which raises its own error. The engine computes the
    same numbers either way."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
        grad_outputs = None if grad_outputs is None else (grad_outputs,)
    if _direct(outputs, inputs, grad_outputs):
        if grad_outputs is None:
            grad_outputs = [_one(o) for o in outputs]
        grads = run_engine(tuple(outputs), tuple(grad_outputs),
                           create_graph if retain is None else retain, create_graph,
                           tuple(inputs), True, accumulate_grad=False)
    else:
        grads = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain,
                                    create_graph=create_graph, allow_unused=True)
    for g in grads:  # a loop, not a comprehension: this runs for every batch
        if g is None:
            return [torch.zeros_like(x, requires_grad=create_graph) if g is None else g
                    for g, x in zip(grads, inputs)]
    return grads


def _one(output: torch.Tensor) -> torch.Tensor:
    """A scalar one of ``output``'s dtype and device, made once per kind (the engine adds
    into a root gradient in place only when nothing else holds it, and this one is held)."""
    key = (output.dtype, output.device)
    one = ONES.get(key)
    if one is None:
        one = ONES[key] = torch.ones((), dtype=output.dtype, device=output.device)
    return one


def _direct(outputs, inputs, grad_outputs) -> bool:
    """Whether :func:`_grad` may call the engine directly (its docstring)."""
    if run_engine is None or torch.compiler.is_compiling():
        return False
    for t in outputs:
        if type(t) not in PLAIN or (grad_outputs is None and t.ndim):
            return False
    for t in inputs:
        if type(t) not in PLAIN:
            return False
    return grad_outputs is None or all(type(t) in PLAIN for t in grad_outputs)


def _dependent(outputs, grad_outputs):
    """The pairs of ``outputs`` and their cotangents that depend on the inputs (an output
    without ``requires_grad`` contributes zeros); ``(outputs, grad_outputs)`` as given when
    every output does, None when none does."""
    for o in outputs:
        if not o.requires_grad:
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
            return tuple(zip(*pairs)) if pairs else None
    return outputs, grad_outputs


def _backward(outputs, inputs, grad_outputs, retain):
    """``sum_k grad_outputs[k]^T d outputs[k] / d inputs``, zeros where independent."""
    dependent = _dependent(outputs, grad_outputs)
    if dependent is None:
        return [torch.zeros_like(x) for x in inputs]
    return _grad(dependent[0], inputs, dependent[1], retain=retain)


def _batched_backward(outputs, inputs, grad_outputs):
    """``sum_k grad_outputs[k][j]^T d outputs[k] / d inputs`` for every ``j`` in one call:
    ``grad_outputs[k]`` is ``(b, *outputs[k].shape)`` and each result ``(b, *input.shape)``
    (``torch.autograd.grad`` with ``is_grads_batched``, a ``vmap`` of the backward over the
    cotangents' leading axis), zeros where independent. Releases the graph."""
    b = grad_outputs[0].shape[0]
    dependent = _dependent(outputs, grad_outputs)
    if dependent is None:
        return [x.new_zeros((b, *x.shape)) for x in inputs]
    grads = torch.autograd.grad(dependent[0], inputs, dependent[1], allow_unused=True,
                                is_grads_batched=True)
    return [x.new_zeros((b, *x.shape)) if g is None else g for g, x in zip(grads, inputs)]


class _Strategy:
    """The tangents of a block, split per parameter once per block: every batch of a pass
    applies the same ``V``, so the split (a copy for a block) is not repeated per batch."""

    def __init__(self):
        self._block = self._version = self._split = None

    def forget(self) -> None:
        """Drop the last block (called at the start of each pass)."""
        self._block = self._version = self._split = None

    def tangents(self, space: ParameterSpace, V: torch.Tensor):
        """``V``'s columns as per-parameter tensors: a list of ``b`` dicts of views of
        contiguous rows (reverse mode), or one dict of ``(b, *shape)`` tensors (``vmap``)."""
        if torch.compiler.is_compiling():  # traced: no Python-side state in the graph
            return self.split(space, V)
        if V is not self._block or V._version != self._version:
            self._split = self.refresh(space, V)
            self._block, self._version = V, V._version
        return self._split

    def refresh(self, space: ParameterSpace, V: torch.Tensor):
        """The split of a new block (:meth:`split`; a strategy may reuse its buffers)."""
        return self.split(space, V)


class ReverseOverReverse(_Strategy):
    """Double backward: the gradient graph once per batch, one backward per vector."""

    name = "reverse-over-reverse"

    #: Columns from which a block's backward sweeps are vectorized, where
    #: :attr:`batched_blocks` holds: the Hessian's one sweep pays from two columns; the
    #: GGN's three (``J V``, the loss's Hessian, ``J^T``) pay from eight (4k-parameter MLP,
    #: batches of 256, one CPU thread: a block of 4 took 1.16x the time of its columns one
    #: by one, a block of 8 0.86x, 16 0.67x; docs/BENCHMARKS.md).
    BATCHED_FROM = {"hessian": 2, "ggn": 8}

    def __init__(self):
        super().__init__()
        self._rows = self._row_split = self._by_parameter = self._space = None
        #: A block's second backward as one vectorized call (True: from
        #: :attr:`BATCHED_FROM` columns) or one call per column (False, the default);
        #: single vectors take one call either way.
        self.batched_blocks = False

    @staticmethod
    def split(space, V):
        rows = _rows(V)
        return [list(space.split(rows[j]).values()) for j in range(len(rows))]

    def refresh(self, space, V):
        """A new block's rows copied into the rows of the last one, whose per-parameter views
        stay valid: one copy per pass instead of cutting ``M``-long rows into views anew (a
        dozen small ops, measured 20-50 us a pass on a CPU). Values are copied exactly."""
        rows = self._rows
        if (rows is None or space is not self._space or rows.shape != V.T.shape
                or rows.dtype != V.dtype or rows.device != V.device):
            rows = torch.empty(V.T.shape, dtype=V.dtype, device=V.device)
            self._rows, self._space = rows, space
            self._row_split = [list(space.split(rows[j]).values()) for j in range(len(rows))]
            self._by_parameter = list(space.split(rows.T).values())  # (b, *shape) views
        rows.copy_(V.T if V.shape[1] > 1 else V.reshape(rows.shape))  # (M, 1): no transposing
        return self._row_split

    def hessian(self, fns: BatchFunctions, V: torch.Tensor) -> tuple:
        if torch.compiler.is_compiling():
            return self.traced_hessian(fns, V)
        params, space = fns.live(), fns.space
        value = fns.loss()
        grads = _grad(value, params, create_graph=True)
        tangents, b = self.tangents(space, V), V.shape[1]
        if self._vectorized("hessian", b):
            return value.detach(), BlockProduct(
                _batched_backward(grads, params, self._by_parameter), False)
        columns = [_backward(grads, params, tangents[j], retain=j < b - 1) for j in range(b)]
        return value.detach(), BlockProduct(columns, True)

    def _vectorized(self, kind: str, b: int) -> bool:
        """Whether a block of ``b`` columns of ``kind`` takes the vectorized backward (the
        per-parameter views of the block's rows are there once :meth:`tangents` ran
        eagerly)."""
        return (self.batched_blocks and b >= self.BATCHED_FROM[kind]
                and self._by_parameter is not None)

    @staticmethod
    def traced_hessian(fns: BatchFunctions, V: torch.Tensor) -> tuple:
        """:meth:`hessian` as ``torch.compile`` traces it: ``H_B v = grad_w <grad_w l_B, v>``
        written with ``torch.func``, the same two reverse sweeps (autograd's double backward
        cannot be compiled; these transforms trace into one graph). A block is a ``vmap``
        over the second sweep only: the first does not depend on ``v``, and is not
        repeated. Attention runs on the math kernel, selected inside the traced function
        (the switches set around a compiled call do not reach Dynamo's trace)."""
        params, space = fns.detached(), fns.space

        def directional(p, v):  # (<grad l_B(p), v>, l_B(p))
            g, value = grad_and_value(fns.loss)(p)
            return sum((g[name] * v[name]).sum() for name in g), value

        hvp = grad(directional, has_aux=True)
        with math_attention():
            if V.shape[1] == 1:
                hv, value = hvp(params, space.split(V[:, 0]))
                return value, BlockProduct([list(hv.values())], True)
            HV, values = vmap(hvp, in_dims=(None, 0))(params, space.split(V))
        return values[0], BlockProduct(list(HV.values()), False)

    def ggn(self, fns: BatchFunctions, V: torch.Tensor) -> tuple:
        params, space = fns.live(), fns.space
        z = fns.outputs()
        # J v by the double-vjp trick: J^T u is linear in u, so d(J^T u)/du v = J v.
        u = torch.zeros_like(z, requires_grad=True)
        JTu = _grad(z, params, u, create_graph=True)
        zd = z.detach().requires_grad_(True)
        value = fns.loss_on(zd)
        loss_grad = _grad(value, [zd], create_graph=True)[0]
        tangents, b = self.tangents(space, V), V.shape[1]
        if self._vectorized("ggn", b):
            Jv = _batched_backward(JTu, [u], self._by_parameter)
            HJv = _batched_backward([loss_grad], [zd], Jv)
            return value.detach(), BlockProduct(_batched_backward([z], params, HJv), False)
        columns = []
        for j in range(b):
            Jv = _backward(JTu, [u], tangents[j], retain=True)[0]
            HJv = _backward([loss_grad], [zd], [Jv], retain=True)[0]
            columns.append(_backward([z], params, [HJv], retain=j < b - 1))
        return value.detach(), BlockProduct(columns, True)


class ForwardOverReverse(_Strategy):
    """``jvp`` of ``grad`` (``torch.func``): one fused sweep per vector, ``vmap`` for blocks."""

    name = "forward-over-reverse"

    @staticmethod
    def split(space, V):
        return space.split(V[:, 0]) if V.shape[1] == 1 else space.split(V)

    def hessian(self, fns: BatchFunctions, V: torch.Tensor) -> tuple:
        params, space = fns.detached(), fns.space

        def hvp(v):
            _, hv, value = jvp(grad_and_value(fns.loss), (params,), (v,), has_aux=True)
            return hv, value

        if V.shape[1] == 1:  # no vmap of one vector
            hv, value = hvp(self.tangents(space, V))
            return value, BlockProduct([list(hv.values())], True)
        HV, values = vmap(hvp)(self.tangents(space, V))
        return values[0], BlockProduct(list(HV.values()), False)

    def ggn(self, fns: BatchFunctions, V: torch.Tensor) -> tuple:
        params, space = fns.detached(), fns.space
        z, pullback = vjp(fns.outputs, params)
        z = z.detach()
        loss_grad = grad(fns.loss_on)

        def ggn_vp(v):
            _, Jv = jvp(fns.outputs, (params,), (v,))
            _, HJv = jvp(loss_grad, (z,), (Jv,))
            return pullback(HJv)[0]

        value = fns.loss_on(z).detach()
        if V.shape[1] == 1:
            return value, BlockProduct([list(ggn_vp(self.tangents(space, V)).values())], True)
        GV = vmap(ggn_vp)(self.tangents(space, V))
        return value, BlockProduct(list(GV.values()), False)


def _rows(V: torch.Tensor) -> torch.Tensor:
    """The columns of ``V`` ``(M, b)`` as contiguous rows ``(b, M)``: a column of a block is
    strided, and strided tangents send the double backward's matrix products to slow
    kernels (measured 6x per vector on a 1M-parameter MLP)."""
    return V.T.contiguous() if V.shape[1] > 1 else V.reshape(1, -1)


STRATEGY_CLASSES = {cls.name: cls for cls in (ForwardOverReverse, ReverseOverReverse)}
