"""Reading a spectrum file: its groups as arrays, attributes and committed step records.
Readers trust only each group's ``steps/committed`` counter, so a cut-off file reads up to
its last committed step."""

from __future__ import annotations

import h5py

from ..errors import SpectrumFileError
from .recovery import decode_value, first_line, open_spectrum

__all__ = ["COMMITTED", "SpectrumRecord", "read_group", "decode_attrs", "read_file"]

COMMITTED = "committed"


class SpectrumRecord(dict):
    """One group of a spectrum file: arrays by name, plus ``attrs`` and ``steps``."""

    def __init__(self, arrays, attrs, steps):
        super().__init__(arrays)
        self.attrs = attrs
        self.steps = steps

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_group(node: h5py.Group) -> SpectrumRecord:
    """Arrays, attributes and committed step records of one run group."""
    arrays, steps = {}, {}
    for key, item in node.items():
        if key == "steps":
            committed = int(item[COMMITTED][0]) if COMMITTED in item else 0
            steps = {k: ds[:committed] for k, ds in item.items() if k != COMMITTED}
        elif isinstance(item, h5py.Dataset):
            arrays[key] = item[()]
    return SpectrumRecord(arrays, decode_attrs(node.attrs), steps)


def decode_attrs(attrs) -> dict:
    """A group's attributes as Python values (:func:`decode_value`), with the ``seconds_<phase>``
    attributes also gathered into a ``timings`` dict, as results hold them (a file written
    before they were numbers holds ``timings`` as a JSON string: decoded alike)."""
    out = {k: decode_value(v) for k, v in attrs.items()}
    seconds = {k[len("seconds_"):]: v for k, v in out.items() if k.startswith("seconds_")}
    if seconds and "timings" not in out:
        out["timings"] = seconds
    return out


def read_file(path) -> dict:
    """All groups of a spectrum file: ``{"attrs": root attrs, "<run>": SpectrumRecord, ...}``."""
    with open_spectrum(path) as handle:
        try:
            out = {"attrs": decode_attrs(handle.attrs)}
            for key, item in handle.items():
                if isinstance(item, h5py.Group):
                    out[key] = read_group(item)
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SpectrumFileError(f"{path} is damaged or truncated: reading it failed "
                                    f"({first_line(exc)})") from exc
    return out
