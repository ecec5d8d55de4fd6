"""The float64 sum of one pass, ``S = sum_B w_B C_B V``, from the batches' product pieces.

Each batch's product arrives as the per-parameter tensors of a
:class:`~lanczos_hessian.curvature.block_product.BlockProduct`, in the model's dtype, and is
added into the pass's flat float64 accumulator ``(b, M)`` (vector-major: row ``j`` is
column ``j``); ``w_B = |B|`` for a ``mean`` loss, 1 for ``sum``.

**Precision** (the operators' contract: products in the model's dtype, accumulation in
float64): every entry of a product is a float32 (or float64) number, which float64 holds
exactly, and the pass adds them in float64, batch after batch. Where the weight is applied
changed: the batches of one weight (every full batch of a tensor pair) are summed unweighted
and their sum multiplied by the weight once, ``w (P_1 + P_2 + ...)`` instead of
``w P_1 + w P_2 + ...``: the same sum in exact arithmetic, with one float64 rounding
(relative ``2^-53``) more per entry and pass, far below a float32 product's own rounding. A
batch of another weight ``w'`` (the ragged last one) is added unweighted too, after the sum
so far has been rescaled to its units (multiplied by ``w / w'``: one float64 rounding more),
and the normalization by ``N`` is folded into the final multiplication by the weight
(``w' / N``, one multiplication instead of two). The first batch is written into the
sums, not added to zeros (the same float64 numbers; the sums need no zeroing).

**Speed** (why it is done this way; preliminary, one CPU thread, shared machine):

* *Large parameter tensors* are added one by one, with no flattened copy of the product
  (the copy was a third of the time outside the product on a 1M-parameter MLP with batches
  of 32). On the CPU with torch on one or two threads (:data:`NUMPY_UP_TO_THREADS`) numpy
  adds them: torch adds a float32 tensor into a float64 one through a float64 temporary
  copy of it (1.2 ms for 784k entries with a weight, 0.8 ms without), numpy casts in
  cache-sized chunks as it adds (0.4 ms, as fast as a float64-into-float64 add). But numpy
  adds on one thread, and torch on all of its intra-op threads: on two, torch's add took
  0.41 ms against numpy's 0.39 ms, and beyond two torch's is the faster (it halved from one
  thread to two), so with more threads torch adds. numpy has no fused multiply-add, so a
  weight per batch would be one more pass: hence the unweighted sums, also for the ragged
  batch (its weighted add
  by torch took 2.7 ms a pass on that MLP, the rescaling and numpy's add 0.7 ms). On
  other devices ``torch._foreach_add_``, whose device kernels cast as they add.
* *Small parameter tensors* (under :data:`FLAT_BELOW` entries on average) are flattened into
  one tensor and added by one call (about 6 us a batch for the 4k MLP's six tensors,
  against 15-18 us for six numpy calls): there, each call costs more than the copy. A
  vectorized block's pieces ``(b, *shape)`` are set side by side into ``(b, M)``, the
  layout of the sums.

Either way the float64 add reads and writes 16 bytes per entry and batch (plus the
product's 4 in float32), whatever the code: for models of millions of parameters with small
batches it is the floor of the time a pass spends outside the products (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .params import ParameterSpace

#: Mean entries per parameter tensor under which a product is flattened and added in one
#: call: a call per tensor (a few microseconds) then costs more than copying the tensor.
FLAT_BELOW = 10_000

#: torch intra-op threads up to which numpy adds the large pieces on the CPU (numpy adds on
#: one thread, torch on all of its own: module docstring).
NUMPY_UP_TO_THREADS = 2


class Accumulator:
    """Adds weighted :class:`BlockProduct` s into ``sums`` ``(b, M)`` (float64; its contents
    on entry are ignored: the first product is written, not added).

    :meth:`add` each batch's product with its weight, then :meth:`finish` once: ``sums``
    holds ``sum_B w_B C_B V`` (divided by ``divide_by`` when given). Until then it holds that
    sum divided by :attr:`scale`, the weight of the batches added unweighted so far (module
    docstring).
    """

    def __init__(self, sums: torch.Tensor, space: ParameterSpace):
        self.sums, self.space = sums, space
        self.scale = None  # the unit of sums, a batch weight (None: nothing written yet)
        self._flat = space.dim < FLAT_BELOW * len(space.names)
        self._flat_target = None  # sums.view(-1), made on the first flat add, not per batch
        self._numpy = (sums.device.type == "cpu"
                       and torch.get_num_threads() <= NUMPY_UP_TO_THREADS)
        self._targets = {}  # layout (by_column) -> per-parameter float64 views of sums

    def add(self, product, weight: float) -> None:
        """``sums += weight * product`` (in units of :attr:`scale`)."""
        if self.scale is None:  # the first batch: written, so sums need no zeroing
            self._put(product, copy=True)
            self.scale = weight
            return
        if weight != self.scale:
            if weight == 0:  # an empty batch: nothing to rescale to
                self._put(product, alpha=0.0)
                return
            self.sums.mul_(self.scale / weight)  # from here on, in units of this weight
            self.scale = weight
        self._put(product)

    def finish(self, divide_by: float = 1) -> torch.Tensor:
        """``sums``, in place, with the last scaling applied: ``sum_B w_B C_B V``, divided by
        ``divide_by`` in the same multiplication (zeros when no batch was added)."""
        if self.scale is None:
            self.sums.zero_()
        elif self.scale != divide_by:
            self.sums.mul_(self.scale / divide_by)
        self.scale = 1
        return self.sums

    def _put(self, product, copy: bool = False, alpha: float | None = None) -> None:
        """``sums = product`` (``copy``), ``sums += product``, or ``sums += alpha * product``."""
        pieces = product.tensors()
        if self._flat:
            if product.by_column:  # column after column: the layout of sums, flattened
                if self._flat_target is None:
                    self._flat_target = self.sums.view(-1)
                flat, target = torch._C._nn.flatten_dense_tensors(pieces), self._flat_target
            else:  # (b, *shape) per parameter: side by side, (b, M) as sums
                flat, target = self.space.join(pieces, batched=True).T, self.sums
            if copy:
                target.copy_(flat)
            elif alpha is None:
                target.add_(flat)
            else:
                target.add_(flat, alpha=alpha)
            return
        views, arrays = self._views(product.by_column)
        if alpha is not None:
            torch._foreach_add_(views, pieces, alpha=alpha)
        elif arrays is not None:
            _numpy_put(views, arrays, pieces, copy)
        elif copy:
            for view, piece in zip(views, pieces):
                view.copy_(piece)
        else:
            torch._foreach_add_(views, pieces)

    def _views(self, by_column: bool) -> tuple:
        """Per-parameter float64 views of ``sums`` in the order of
        :meth:`BlockProduct.tensors` (torch, and numpy on the CPU), made once per layout."""
        if by_column not in self._targets:
            if by_column:
                views = [t for row in self.sums for t in self.space.split(row).values()]
            else:
                views = list(self.space.split(self.sums.T).values())
            arrays = [t.numpy() for t in views] if self._numpy else None
            self._targets[by_column] = views, arrays
        return self._targets[by_column]


def _numpy_put(views, arrays, pieces, copy: bool) -> None:
    """``arrays[k] += pieces[k]`` (``arrays[k] = pieces[k]`` with ``copy``) by numpy, which
    casts as it goes (the float64 ``views`` by torch where a piece has no numpy view: a
    dtype numpy lacks, such as bfloat16). Overflow is left to the pass's health check, which
    sees the Inf or NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        for view, array, piece in zip(views, arrays, pieces):
            try:
                source = piece.numpy()
            except (RuntimeError, TypeError):
                if copy:
                    view.copy_(piece.detach())
                else:
                    view.add_(piece.detach())
            else:
                if copy:
                    np.copyto(array, source)
                else:
                    np.add(array, source, out=array)
