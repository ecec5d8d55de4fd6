"""Plain training loops for the demo and the experiments (GD and SGD, no tricks).

The seed papers train with (stochastic) gradient descent at a fixed learning rate; these
loops do exactly that, so that the trained point is the one the papers' recipe gives.
"""

from __future__ import annotations

import torch


def train(model, loss_fn, inputs, targets, *, steps: int, lr: float, batch_size: int | None = None,
          momentum: float = 0.0, rng=0, callback=None, progress: bool = False):
    """Train ``model`` in place by (mini-batch) gradient descent; return the loss history.

    ``batch_size=None`` is full-batch gradient descent (GD). Otherwise each step draws a
    batch without replacement from a seeded permutation, reshuffled every epoch (SGD).
    ``callback(step, model)`` runs after every step (e.g. spectrum tracking).
    """
    generator = torch.Generator().manual_seed(rng)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = len(inputs)
    order, cursor = torch.randperm(n, generator=generator), 0
    history = []
    from ..progress import Progress

    bar = Progress("training", unit="step", total=steps, enabled=progress)  # no \r off a TTY
    model.train()
    for step in range(steps):
        if batch_size is None or batch_size >= n:
            x, y = inputs, targets
        else:
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            index = order[cursor: cursor + batch_size]
            cursor += batch_size
            x, y = inputs[index], targets[index]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        bar.update(1)
        if callback is not None:
            callback(step, model)
    bar.close()
    return history


@torch.no_grad()
def evaluate(model, loss_fn, inputs, targets, batch_size: int = 4096):
    """Full-data loss (mean over samples) and accuracy, in eval mode."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
        out = model(x)
        total += float(loss_fn(out, y)) * len(x)
        if out.ndim == 2 and out.shape[1] > 1:
            correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    return total / len(inputs), correct / len(inputs)
