"""The parameter space of a model: names, shapes and offsets of the flat vector.

A curvature operator acts on flat vectors ``v`` of length ``M = sum_p numel(p)``, the
concatenation of the selected parameters in the order of ``model.named_parameters()``.
This module is the one place where flat vectors are split into per-parameter tensors
and joined back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import InvalidModelError


@dataclass(frozen=True)
class ParameterSpace:
    """Layout of the selected parameters inside a flat vector.

    Attributes
    ----------
    names : tuple of str
        Parameter names, in ``model.named_parameters()`` order.
    shapes : tuple of torch.Size
        Shape of each parameter.
    offsets : tuple of int
        ``offsets[i]`` is where parameter ``i`` starts in the flat vector; ``offsets[-1] == dim``.
    """

    names: tuple
    shapes: tuple
    offsets: tuple

    @property
    def dim(self) -> int:
        """Number of scalar parameters ``M``."""
        return self.offsets[-1]

    @classmethod
    def of(cls, model: torch.nn.Module, names: Sequence[str] | None = None) -> "ParameterSpace":
        """Build the space of ``model``'s trainable parameters, or of the ones in ``names``.

        ``names`` may list exact parameter names or module prefixes (``"fc1"`` selects
        ``fc1.weight`` and ``fc1.bias``), which is how per-layer (block) Hessians are taken.
        """
        if isinstance(names, (str, bytes)):
            raise TypeError(f"params must be a list of parameter names or module prefixes, got "
                            f"the string {names!r} (which would be read character by "
                            f"character); pass [{names!r}]")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if names is not None:
            named = _select(named, names)
        if not named:
            raise InvalidModelError(
                f"model {type(model).__name__} has no trainable parameters"
                + ("" if names is None else f" matching {list(names)!r}")
                + ": a Hessian needs at least one parameter with requires_grad=True"
            )
        offsets = [0]
        for _, p in named:
            offsets.append(offsets[-1] + p.numel())
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(p.shape for _, p in named),
            offsets=tuple(offsets),
        )

    def split(self, flat: torch.Tensor) -> dict:
        """View a flat vector ``(M,)`` or block ``(M, b)`` as a dict of parameter-shaped tensors.

        A block gives tensors with a leading batch axis, ``(b, *shape)``, the layout that
        ``torch.func.vmap`` expects.
        """
        if flat.ndim == 1:
            return {
                n: flat[a:z].view(s)
                for n, s, a, z in zip(self.names, self.shapes, self.offsets, self.offsets[1:])
            }
        cols = flat.T
        return {
            n: cols[:, a:z].reshape(-1, *s)
            for n, s, a, z in zip(self.names, self.shapes, self.offsets, self.offsets[1:])
        }

    def join(self, tensors: Iterable[torch.Tensor], batched: bool = False) -> torch.Tensor:
        """Inverse of :meth:`split`: concatenate per-parameter tensors into ``(M,)`` or ``(M, b)``."""
        tensors = list(tensors)
        if not batched:
            return torch.cat([t.reshape(-1) for t in tensors])
        b = tensors[0].shape[0]
        return torch.cat([t.reshape(b, -1) for t in tensors], dim=1).T

    def parameters(self, model: torch.nn.Module) -> dict:
        """The selected parameters of ``model``, detached, by name."""
        params = dict(model.named_parameters())
        return {n: params[n].detach() for n in self.names}

    def flat_parameters(self, model: torch.nn.Module) -> torch.Tensor:
        """The selected parameters of ``model`` as one flat float64 vector (a copy)."""
        return self.join(p.to(torch.float64) for p in self.parameters(model).values())

    def digest(self, model: torch.nn.Module, whole=None) -> str:
        """SHA-256, first 16 hex digits, of :meth:`flat_parameters`'s bytes (float64, native
        byte order), fed one parameter at a time: ``whole`` (default: the identity) maps a
        parameter to its full values, so that a sharded model is gathered one parameter at a
        time and never held whole."""
        h = hashlib.sha256()
        for p in self.parameters(model).values():
            full = p if whole is None else whole(p)
            h.update(full.to(torch.float64).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _select(named, names):
    wanted = list(names)
    chosen = [
        (n, p)
        for n, p in named
        if any(n == w or n.startswith(w + ".") for w in wanted)
    ]
    unmatched = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n, _ in named)]
    if unmatched:
        available = ", ".join(n for n, _ in named)
        raise InvalidModelError(
            f"no trainable parameter matches {unmatched!r}; available: {available}"
        )
    return chosen
