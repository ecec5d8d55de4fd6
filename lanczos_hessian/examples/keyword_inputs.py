"""Dict batches (HuggingFace style): a model called with keyword arguments.

A data set whose items are dicts (``input_ids``, ``attention_mask``, ``labels``), batched by
a ``DataLoader`` into dicts of tensors, and a model whose ``forward`` takes
``input_ids`` and ``attention_mask`` as keyword arguments. ``unpack=dict_batch("labels")``
tells the operator how to read a batch: ``labels`` go to the loss, every other key to the
model as a keyword argument::

    from lanczos_hessian import HessianOperator, lanczos_eigsh
    from lanczos_hessian.curvature.data import dict_batch

    loader = DataLoader(TokenDataset(), batch_size=16)          # yields dicts of tensors
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), loader,
                         unpack=dict_batch("labels"))          # model(**rest), loss(out, labels)
    result = lanczos_eigsh(op, k=3, rng=0)

Any other mapping works the same way: ``unpack`` is any function ``batch -> (inputs,
targets)`` with ``inputs`` a tensor, a tuple (positional arguments) or a dict (keyword
arguments). Run ``python -m lanczos_hessian.examples.keyword_inputs`` for the top three
Hessian eigenvalues of the tiny model below.
"""

from __future__ import annotations

import torch

from ..curvature.data import dict_batch
from .problems import Problem


class TinyTokenClassifier(torch.nn.Module):
    """Embedding, masked mean over the sequence, ``tanh``, a linear head:
    ``forward(input_ids, attention_mask)`` as a transformer classifier's."""

    def __init__(self, vocab_size: int = 12, width: int = 4, num_classes: int = 3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.head = torch.nn.Linear(width, num_classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.head.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(dim=1)
        return self.head(torch.tanh(pooled))


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences of one length, a random number of them padded at the end,
    each with a class label: items are dicts, as a tokenized HuggingFace data set's."""

    def __init__(self, num_samples: int = 40, length: int = 6, vocab_size: int = 12,
                 num_classes: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, vocab_size, (num_samples, length), generator=g)
        lengths = torch.randint(2, length + 1, (num_samples,), generator=g)
        self.attention_mask = (torch.arange(length) < lengths[:, None]).to(torch.int64)
        self.input_ids = self.input_ids * self.attention_mask  # token 0 pads
        self.labels = torch.randint(0, num_classes, (num_samples,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "labels": self.labels[i]}


def build(batch_size: int = 16, dtype=torch.float64, seed: int = 0) -> Problem:
    """The tiny classifier (``dtype``), cross-entropy, and a loader of dict batches, with
    ``unpack`` set (``--problem lanczos_hessian.examples.keyword_inputs:build``)."""
    torch.manual_seed(seed)
    model = TinyTokenClassifier().to(dtype)
    loader = torch.utils.data.DataLoader(TokenDataset(seed=seed), batch_size=batch_size)
    return Problem(model, torch.nn.CrossEntropyLoss(), loader, "keyword-inputs",
                   {"problem": "keyword-inputs"}, unpack=dict_batch("labels"))


def main() -> None:
    from ..curvature.operators import HessianOperator
    from ..linalg.eigsh import lanczos_eigsh

    problem = build()
    op = HessianOperator(problem.model, problem.loss_fn, problem.data, unpack=problem.unpack)
    print(lanczos_eigsh(op, k=3, tol=1e-8, rng=0).summary())


if __name__ == "__main__":
    main()
