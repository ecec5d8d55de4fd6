"""One application of a curvature operator: one pass over the data, one flat float64 sum.

Batch ``B`` with batch loss ``l_B`` contributes ``|B| * C_B V`` (``mean`` reduction) or
``C_B V`` (``sum``) to a float64 accumulator, which is divided by the total sample count
``N`` at the end of the pass, so ragged batches are weighted exactly:
``C V = (1/N) sum_B |B| C_B V`` for ``mean`` (the products are added parameter by parameter,
the batches of one weight summed before the weight is applied, and in one process the
division by ``N`` is the same multiplication as that weight's:
:mod:`lanczos_hessian.curvature.accumulation`). The accumulator is one flat buffer,
all-reduced once per pass under ``torch.distributed``, laid out, with ``W`` ranks and a block
of ``b`` vectors of length ``M``::

    [ sum_B |B| C_B V  (M*b) | sample count | error flag | W x (sum V, |V|_1, |V|_2) ]

(under ``torch.distributed`` only: in one process there is nothing to all-reduce, and the
accumulator is the sums alone, the pass's own count the total).

What the pass adds around the products is a few operations per batch (the accumulation, one
add per parameter; the batch's loss kept for the health check) and a few per pass:

* **health**: one sum of every batch loss and every accumulated entry, checked for NaN/Inf
  once per pass (one device sync). NaN and Inf survive a float64 sum (``Inf - Inf`` is
  NaN), so a finite sum proves every loss and every batch's product finite; only when it is
  not, the losses are checked one by one and a second look at the batches
  (:func:`locate_non_finite`) names the first batch whose product is not finite, or says
  the products are finite and only their sum overflows;
* **data**: a tensor pair's batches are views cut once and kept while the tensors are the
  same (:meth:`DataSource.stamp`), and moved to the model's device and dtype only where they
  are not there already; its data fingerprint is computed on the first pass and reused while
  the stamp is unchanged: every in-place change of a data tensor bumps its version counter
  (through any view), every rebinding its storage address, so an unchanged stamp means the
  same bytes and the cached fingerprint is the one a fresh hash would give. A list or
  tuple of tensor batches likewise, its tensors held and compared by identity, storage and
  version (:class:`~lanczos_hessian.curvature.stamps.HeldTensors`); other iterables (a
  DataLoader makes new tensors every pass) are hashed on every pass;
* **model**: its parameters and buffers are compared before and after each pass by identity
  and version counter, so a model that changes itself in ``forward`` is refused instead of
  giving a matrix that is not one.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidModelError, NonFiniteError
from ..parallel.distributed import all_reduce_or_raise
from .accumulation import Accumulator
from .checks import check_finite, check_same_block
from .fingerprint import PassFingerprint
from .inputs import batch_length
from .kernels import twice_differentiable


def model_state(model, modules: list | None = None) -> list:
    """Each parameter's and buffer's place (module, kind, name), identity and version counter:
    any in-place change (``self.count += 1``) or rebinding (``self.count = self.count + 1``)
    shows. Reads the modules' own parameter and buffer tables, from one walk over the
    modules (``modules``, the ``named_modules()`` of ``model`` when the caller has walked
    them already: a third of the calls of ``named_parameters()`` and ``named_buffers()``,
    which walk twice)."""
    return [(prefix, kind, name, id(t), t._version)
            for prefix, module in (model.named_modules() if modules is None else modules)
            for kind, table in (("parameter", module._parameters), ("buffer", module._buffers))
            for name, t in table.items() if t is not None]


def _place(prefix: str, kind: str, name: str) -> str:
    return f"{kind} {(prefix + '.' if prefix else '') + name!r}"


def check_model_unchanged(before: list, after: list, kind: str) -> None:
    """Raise :class:`InvalidModelError` naming what the model changed during a pass."""
    if before == after:
        return
    then = {_place(*entry[:3]): entry[3:] for entry in before}
    now = {_place(*entry[:3]): entry[3:] for entry in after}
    changed = [place for place, rest in now.items() if then.get(place) != rest]
    changed += [place for place in then if place not in now]
    raise InvalidModelError(
        f"the model changed its own {', '.join(changed[:3])}"
        f"{' and more' if len(changed) > 3 else ''} during a {kind} pass over the data: its "
        "forward modifies its state (a counter, a running statistic, an in-place update), so "
        "every batch sees another function and the products are not those of one matrix. "
        "Make forward free of side effects in eval mode (products are taken in eval mode)")


def accumulate(op, block: torch.Tensor, modules: list | None = None) -> torch.Tensor:
    """``C V`` for ``V = block`` ``(M, b)`` in the model's dtype: one pass of ``op`` over its
    data (this rank's shard, all-reduced), float64 on the model's device (``modules``: the
    model's ``named_modules()``, where the caller has walked them)."""
    dim, b = block.shape
    size, rank = op.world.size, op.world.rank
    n = dim * b
    checks = 3 if size > 1 else 0  # per rank: sum V, |V|_1, |V|_2
    if size > 1:
        buffer = torch.empty(n + 2 + checks * size, dtype=torch.float64, device=op.device)
        buffer[n:].zero_()  # the sums are written by the pass (Accumulator), the rest is not
        sums = buffer[:n].view(b, dim)  # one view for the pass and the result
    else:  # one process: nothing to all-reduce, the sums alone
        buffer, sums = None, torch.empty(b, dim, dtype=torch.float64, device=op.device)
    error, divided, count = None, False, 0
    try:  # every rank reaches the one all-reduce, also after a local failure
        if checks:
            row = buffer[n + 2 + 3 * rank: n + 5 + 3 * rank]
            row[0] = torch.sum(block, dtype=torch.float64)
            row[1] = torch.linalg.vector_norm(block, 1, dtype=torch.float64)
            row[2] = torch.linalg.vector_norm(block, 2, dtype=torch.float64)
        divide = op.reduction == "mean" and size == 1  # by N within the pass: all is here
        count = _pass(op, block, sums, divide, modules)
        if size > 1:  # summed over the ranks by the all-reduce; in one process, count is all
            buffer[n] = count
        divided = divide and count > 0
    except Exception as exc:
        sums.zero_()  # sums a failed pass may have left unwritten
        divided, error = False, exc
    if buffer is not None:
        all_reduce_or_raise(buffer, error, flag_index=n + 1,
                            what=f"a {op.kind} pass over the data")
    elif error is not None:
        raise error
    if checks:
        check_same_block(buffer[n + 2:].view(size, 3).cpu().numpy(), op.kind)
    samples = buffer[n] if size > 1 else count
    if op.num_samples is None:
        op.record_num_samples(int(samples))
    total = sums.T
    if op.reduction == "mean" and not divided:
        total.div_(samples)  # in place: no copy
    return total


def _pass(op, block, sums, divide: bool = False, modules: list | None = None) -> int:
    """Write the sum of every batch's weighted product into ``sums`` ``(b, M)`` (divided by
    the pass's sample count with ``divide``, when it has samples); return the count."""
    stamp = op.data.stamp(held=op.check_data)  # the contents, without reading them (or None)
    known = op.fingerprints.known(stamp) if op.check_data else None
    fingerprint = PassFingerprint() if known is None else known
    values, count = [], 0
    weighted = op.reduction == "mean"
    total = Accumulator(sums, op.space)
    if modules is None:  # one walk for the state and the parameters
        modules = list(op.model.named_modules())
    before = model_state(op.model, modules)
    op.curvature.begin_pass(modules)
    product = op.batch_product()
    if product is op.compiled:
        product.start_pass()  # its first call checks every guard
    move = None if op.data.placed(op.device, op.model_dtype) else op.to_device
    hashing = known is None and op.check_data  # decided once per pass, as the names below
    keep, add = values.append, total.add
    with twice_differentiable():
        for inputs, targets in _batches(op, stamp):
            x, y = (inputs, targets) if move is None else move(inputs, targets)
            value, result = product(x, y, block)
            keep(value)
            samples = batch_length(x)
            add(result, samples if weighted else 1)
            del result  # freed before the next batch's product allocates its own
            count += samples
            if hashing:
                fingerprint.add(inputs, targets)
        total.finish(count if divide and count else 1)
        check_model_unchanged(before, model_state(op.model), op.kind)
        if values and not _healthy(values, sums):
            _raise_non_finite(op, values, sums, block, move, product)
    if op.check_data:
        op.fingerprints.check(fingerprint, stamp)
    return count


def _healthy(values, sums) -> bool:
    """The cheap test of a healthy pass: the sum of every batch loss and every accumulated
    product is finite (a NaN or Inf anywhere makes it so; one reduction and one device sync
    per pass; on the CPU the losses are read as Python floats, with no tensor made to sum
    them). False may also mean that only the sum of finite values overflowed:
    :func:`_raise_non_finite` decides."""
    if sums.device.type == "cpu":
        return math.isfinite(float(sums.sum()) + sum(map(float, values)))
    return math.isfinite(float(sums.sum() + torch.stack(values).sum()))


def _raise_non_finite(op, values, sums, block, move, product) -> None:
    """After a failed :func:`_healthy`: name the first batch whose loss or product is NaN or
    Inf (:func:`check_finite`), say that the products are finite and only their float64 sum
    overflows, or return when every loss and accumulated entry is finite after all."""
    losses = torch.stack(values).detach().to(torch.float64).reshape(-1, 1)
    check_finite(torch.cat([losses, torch.zeros_like(losses)], dim=1), op.kind, op.world)
    if bool(torch.isfinite(sums).all()):
        return
    index = locate_non_finite(op, block, move, product)
    if index is None:
        raise NonFiniteError(f"the accumulated {op.kind}-vector product overflows float64 "
                             "(the products are finite batch by batch)")
    health = torch.zeros(index + 1, 2, dtype=torch.float64)  # batch `index`: a bad product
    health[index, 1] = float("nan")
    check_finite(health, op.kind, op.world)


def locate_non_finite(op, block, move=None, product=None) -> int | None:
    """The index of the first batch whose product with ``block`` has a NaN or Inf entry,
    else None: a second look at the batches, taken only after a pass whose accumulated
    products were not finite (the data are the same on every pass, which the fingerprints
    check)."""
    product = product or op.batch_product()
    for index, (inputs, targets) in enumerate(_batches(op)):
        x, y = (inputs, targets) if move is None else move(inputs, targets)
        if not product(x, y, block)[1].all_finite():
            return index
    return None


def _batches(op, stamp=None):
    """``op``'s batches on this rank, with a progress bar on rank 0 when asked for
    (``stamp``: the data's :meth:`DataSource.stamp`, where the caller has just taken it)."""
    if not (op.progress and op.world.is_main):
        return op.data.batches(stamp)
    from tqdm.auto import tqdm

    return tqdm(op.data, desc=f"{op.kind} pass", leave=False, unit="batch")
