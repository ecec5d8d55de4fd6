"""A batch's inputs in their three forms: a tensor, a tuple of tensors, a dict of tensors.

``inputs`` is a tensor (the model is called as ``model(inputs)``), a tuple of tensors
(``model(*inputs)``) or a dict of tensors (``model(**inputs)``: keyword arguments such as
``input_ids`` and ``attention_mask``); every tensor has the batch's samples along its first
axis. These helpers are the one place that knows the three forms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import functional_call


def input_tensors(inputs) -> list:
    """The tensors of a batch's inputs in a fixed order (a dict's by sorted key)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [inputs[key] for key in sorted(inputs)]
    return list(inputs)


def map_inputs(inputs, fn):
    """``fn`` applied to every tensor of ``inputs``, the structure kept."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {key: fn(value) for key, value in inputs.items()}
    return tuple(fn(value) for value in inputs)


def batch_length(inputs) -> int:
    """Samples in a batch: the first dimension of its (first) input tensor."""
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return len(input_tensors(inputs)[0])


def call_model(model, parameters_and_buffers, inputs):
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` (a tensor, a tuple, a dict)
    with the given parameters and buffers swapped in (``torch.func.functional_call``), or
    the model's own when ``parameters_and_buffers`` is None."""
    if parameters_and_buffers is None:
        if isinstance(inputs, torch.Tensor):
            return model(inputs)
        return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)
    if isinstance(inputs, torch.Tensor):
        return functional_call(model, parameters_and_buffers, (inputs,))
    if isinstance(inputs, Mapping):
        return functional_call(model, parameters_and_buffers, (), dict(inputs))
    return functional_call(model, parameters_and_buffers, tuple(inputs))
