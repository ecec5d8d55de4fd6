"""One application of a curvature operator: one pass over the data, one flat float64 sum.

Batch ``B`` with batch loss ``l_B`` contributes ``|B| * C_B V`` (``mean`` reduction) or
``C_B V`` (``sum``) to a float64 accumulator, which is divided by the total sample count
``N`` at the end of the pass, so ragged batches are weighted exactly:
``C V = (1/N) sum_B |B| C_B V`` for ``mean``. The accumulator is one flat buffer,
all-reduced once per pass under ``torch.distributed``, laid out, with ``W`` ranks and a block
of ``b`` vectors of length ``M``::

    [ sum_B |B| C_B V  (M*b) | sample count | error flag | W x (sum V, |V|_1, |V|_2) ]

What the pass adds around the products is kept to a few operations per batch: the losses and
the sums of the products are stacked and checked for NaN/Inf once per pass (one device sync);
a tensor pair's data fingerprint is computed on the first pass and reused while the tensors
are unchanged (their version counters, :meth:`DataSource.stamp`); the model's parameters and
buffers are compared before and after each pass by identity and version counter, so a model
that changes itself in ``forward`` is refused instead of giving a matrix that is not one.
"""

from __future__ import annotations

import torch

from ..errors import InvalidModelError, NonFiniteError
from ..parallel.distributed import all_reduce_or_raise
from .checks import check_finite, check_same_block
from .fingerprint import PassFingerprint
from .inputs import batch_length
from .kernels import twice_differentiable


def model_state(model) -> dict:
    """Each parameter's and buffer's identity and version counter, by name: any in-place
    change (``self.count += 1``) or rebinding (``self.count = self.count + 1``) shows."""
    state = {f"parameter {n!r}": (id(t), t._version) for n, t in model.named_parameters()}
    state.update({f"buffer {n!r}": (id(t), t._version) for n, t in model.named_buffers()})
    return state


def check_model_unchanged(before: dict, after: dict, kind: str) -> None:
    """Raise :class:`InvalidModelError` naming what the model changed during a pass."""
    if before == after:
        return
    changed = [name for name in after if before.get(name) != after[name]]
    changed += [name for name in before if name not in after]
    raise InvalidModelError(
        f"the model changed its own {', '.join(changed[:3])}"
        f"{' and more' if len(changed) > 3 else ''} during a {kind} pass over the data: its "
        "forward modifies its state (a counter, a running statistic, an in-place update), so "
        "every batch sees another function and the products are not those of one matrix. "
        "Make forward free of side effects in eval mode (products are taken in eval mode)")


def accumulate(op, block: torch.Tensor) -> torch.Tensor:
    """``C V`` for ``V = block`` ``(M, b)`` in the model's dtype: one pass of ``op`` over its
    data (this rank's shard, all-reduced), float64 on the model's device."""
    dim, b = block.shape
    size, rank = op.world.size, op.world.rank
    n = dim * b
    checks = 3 if size > 1 else 0  # per rank: sum V, |V|_1, |V|_2
    buffer = torch.zeros(n + 2 + checks * size, dtype=torch.float64, device=op.device)
    error = None
    try:  # every rank reaches the one all-reduce, also after a local failure
        if checks:
            row = buffer[n + 2 + 3 * rank: n + 5 + 3 * rank]
            row[0] = torch.sum(block, dtype=torch.float64)
            row[1] = torch.linalg.vector_norm(block, 1, dtype=torch.float64)
            row[2] = torch.linalg.vector_norm(block, 2, dtype=torch.float64)
        buffer[n] = _pass(op, block, buffer[:n].view(b, dim))
    except Exception as exc:
        error = exc
    all_reduce_or_raise(buffer, error, flag_index=n + 1, what=f"a {op.kind} pass over the data")
    if checks:
        check_same_block(buffer[n + 2:].view(size, 3).cpu().numpy(), op.kind)
    if op.num_samples is None:
        op.record_num_samples(int(buffer[n]))
    total = buffer[:n].view(b, dim).T
    return total / buffer[n] if op.reduction == "mean" else total


def _pass(op, block, sums) -> int:
    """Add every batch's weighted product into ``sums`` ``(b, M)``; return the sample count."""
    stamp = op.data.stamp() if op.check_data else None
    known = op.fingerprints.known(stamp)
    fingerprint = PassFingerprint() if known is None else known
    values, totals, count = [], [], 0
    before = model_state(op.model)
    op.curvature.begin_pass()
    product = op.batch_product()
    with twice_differentiable():
        for inputs, targets in _batches(op):
            x, y = op.to_device(inputs, targets)
            value, result = product(x, y, block)
            values.append(value)
            totals.append(result.sum())  # in the model's dtype: no float64 copy per batch
            samples = batch_length(x)
            # vector-major accumulator: the products come as the transpose of a contiguous
            # (b, M) block, so this adds in place with no copy or transpose
            sums.add_(result.T, alpha=samples if op.reduction == "mean" else 1.0)
            count += samples
            if known is None and op.check_data:
                fingerprint.add(inputs, targets)
    check_model_unchanged(before, model_state(op.model), op.kind)
    if values:
        _check_health(values, totals, sums, op)
    if op.check_data:
        op.fingerprints.check(fingerprint, stamp)
    return count


def _check_health(values, totals, sums, op) -> None:
    """NaN or Inf in a loss or a product, named by batch: one device sync per pass. A
    product's sum in its own dtype may overflow where the float64 accumulator does not, so the
    products count as finite whenever the accumulated ``sums`` are."""
    losses = torch.stack(values).detach().to(torch.float64).reshape(-1)
    totals = torch.stack(totals).to(torch.float64)
    finite = torch.isfinite(sums.sum())
    totals = torch.where(finite, torch.zeros_like(totals), totals)
    check_finite(torch.stack([losses, totals], dim=1), op.kind, op.world)
    if not bool(finite):  # non-finite only after accumulation: say so without a batch
        raise NonFiniteError(f"the accumulated {op.kind}-vector product overflows float64 "
                             "(the products are finite batch by batch)")


def _batches(op):
    """``op``'s batches on this rank, with a progress bar on rank 0 when asked for."""
    if not (op.progress and op.world.is_main):
        return op.data
    from tqdm.auto import tqdm

    return tqdm(op.data, desc=f"{op.kind} pass", leave=False, unit="batch")
