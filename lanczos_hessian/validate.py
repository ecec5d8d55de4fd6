"""One checker per kind of argument, shared by every public entry point.

Each checker takes the argument's ``name`` (as the user wrote it: ``k``, ``max_matvecs``) and
its ``value``, and returns the value in its plain Python form or raises ``ValueError`` naming
both. An integer argument refuses ``bool`` (``True`` is an ``int`` to Python, never a count
here) and non-integral numbers (``12.5``) before any operator application, so that a wrong
value never reaches torch as a size.

>>> integer("k", 3, low=1)
3
>>> integer("k", True, low=1)
Traceback (most recent call last):
    ...
ValueError: k must be an integer >= 1, got True (bool)
>>> choice("which", "LA", ("LA", "SA"))
'LA'
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["integer", "optional_integer", "positive_float", "probability", "choice",
           "seed", "boolean"]


def integer(name: str, value, *, low: int | None = None, high: int | None = None,
            high_name: str = "", hint: str = "") -> int:
    """``value`` as an ``int``: an integer (numpy integers included, ``bool`` excluded) with
    ``low <= value <= high`` where given; else ``ValueError`` naming ``name`` (and the upper
    bound as ``high_name = high`` when it has a name, e.g. ``n``)."""
    kind = "an integer" if low is None or high is not None else f"an integer >= {low}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if low is not None and high is None and value < low:
        raise ValueError(f"{name} must be {kind}, got {value!r}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        top = f"{high_name} = {high}" if high_name else f"{high}"
        bounds = f"{low} <= {name} <= {top}" if low is not None else f"{name} <= {top}"
        raise ValueError(f"{name}={value} out of range: need {bounds}{hint}")
    return value


def optional_integer(name: str, value, **bounds) -> int | None:
    """None, or :func:`integer` of ``value``."""
    return None if value is None else integer(name, value, **bounds)


def positive_float(name: str, value, *, allow_zero: bool = False,
                   phrase: str = "") -> float:
    """A finite real number ``> 0`` (``>= 0`` with ``allow_zero``), ``bool`` excluded;
    ``phrase`` words the requirement in the message (default "a positive number")."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))
            or not (float(value) >= 0 if allow_zero else float(value) > 0)):
        need = phrase or ("a non-negative number" if allow_zero else "a positive number")
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return float(value)


def probability(name: str, value) -> float:
    """A real number strictly between 0 and 1."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not 0 < float(value) < 1):
        raise ValueError(f"{name} must be a probability in (0, 1), got {value!r}")
    return float(value)


def choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices`` (the library's own constant), else a
    ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name}={value!r}; choose one of {tuple(choices)}")
    return value


def seed(name: str, value, *, flag: str = "") -> int | None:
    """None (fresh entropy) or a non-negative integer seed."""
    if value is None:
        return None
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < 0):
        where = f" ({flag})" if flag else ""
        raise ValueError(f"{name} must be a non-negative integer{where}, got {value!r}")
    return int(value)


def boolean(name: str, value) -> bool:
    """A ``bool`` (numpy's included); anything else is refused, so that a count passed in
    the place of a flag does not pass for ``True``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
