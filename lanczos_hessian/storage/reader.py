"""Reading a spectrum file: its groups as arrays, attributes and committed step records.
Readers trust only each group's ``steps/committed`` counter, so a cut-off file reads up to
its last committed step."""

from __future__ import annotations

import h5py

from ..errors import SpectrumFileError
from .recovery import decode_value, first_line, open_spectrum
from .schema import declared_shape

__all__ = ["COMMITTED", "SpectrumRecord", "read_group", "check_shapes", "decode_attrs",
           "read_file"]

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
    """Arrays, attributes and committed step records of one run group, their shapes checked
    against the format (:func:`check_shapes`)."""
    arrays, steps = {}, {}
    for key, item in node.items():
        if key == "steps":
            check_shapes(item)
            committed = int(item[COMMITTED][0]) if COMMITTED in item else 0
            short = [k for k, ds in item.items()
                     if k != COMMITTED and isinstance(ds, h5py.Dataset) and len(ds) < committed]
            if short:
                raise SpectrumFileError(
                    f"{item.file.filename} is damaged: dataset {item.name}/{short[0]} holds "
                    f"{len(item[short[0]])} rows but {item.name}/{COMMITTED} counts "
                    f"{committed} (docs/FORMAT.md: one row per commit)")
            steps = {k: ds[:committed] for k, ds in item.items() if k != COMMITTED}
        elif isinstance(item, h5py.Dataset):
            arrays[key] = item[()]
    check_shapes(node)
    return SpectrumRecord(arrays, decode_attrs(node.attrs), steps)


def check_shapes(group: h5py.Group) -> None:
    """Raise :class:`SpectrumFileError` naming the first dataset of ``group`` whose number
    of axes, or length beside the dataset it is aligned with, is not the format's
    (docs/FORMAT.md; :data:`~lanczos_hessian.storage.schema.SHAPES`)."""
    for key, item in group.items():
        shape = declared_shape(item.name) if isinstance(item, h5py.Dataset) else None
        if shape is None:
            continue
        axes, aligned = shape
        where = f"{group.file.filename}: dataset {item.name}"
        if item.ndim != axes:
            raise SpectrumFileError(f"{where} has shape {item.shape}, the format "
                                    f"(docs/FORMAT.md) gives it {axes} "
                                    f"ax{'is' if axes == 1 else 'es'}: the file is damaged")
        other = group.get(aligned) if aligned else None
        if isinstance(other, h5py.Dataset) and other.shape[:1] != item.shape[:1]:
            raise SpectrumFileError(f"{where} has shape {item.shape} but {other.name}, which it "
                                    f"is aligned with, has {other.shape}: the file is damaged")


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
        except SpectrumFileError:
            raise
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SpectrumFileError(f"{path} is damaged or truncated: reading it failed "
                                    f"({first_line(exc)})") from exc
    return out
