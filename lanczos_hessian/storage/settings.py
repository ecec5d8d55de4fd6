"""A run's settings in its file, and the resume check against them: a resume names every
setting that differs from the run it would continue; a finished run whose resume state was
dropped keeps its settings as the group's own attributes."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ResumeError

logger = logging.getLogger(__name__)

__all__ = ["STATE", "state_dropped", "saved_settings", "check_settings", "plain_value",
           "ADDED_LATER", "rounding_settings", "report_rounding"]

#: Settings recorded since the resume identity took in the summation order (files written
#: before lack them): not checked when the file has none, so that such files still resume.
ADDED_LATER = frozenset({"batch_size", "device"})

#: The subgroup of a run's group that holds its resume state.
STATE = "state"


def state_dropped(group) -> bool:
    """Whether the run of ``group`` (an open HDF5 group) finished and its resume state was
    dropped: complete, with no ``state`` subgroup."""
    return bool(group.attrs.get("complete", False)) and STATE not in group


def saved_settings(group) -> dict:
    """The settings a run recorded: its state's ``run_<name>`` attributes, or, once the
    state was dropped, the finished group's own attributes (a setting that was None is
    absent, or the string "None" in files written before: both read as None)."""
    state = group.get(STATE)
    if state is None:
        return {k: plain_value(v) for k, v in group.attrs.items()}
    return {k[len("run_"):]: plain_value(v) for k, v in state.attrs.items() if k.startswith("run_")}


def check_settings(saved: dict, settings: dict, path, group: str, dropped: bool = False):
    """Raise :class:`ResumeError` naming every setting of this run that differs from the
    ``saved`` ones of the file at ``path``."""
    differences = [
        f"{key}: file has {saved.get(key)!r}, this run has {plain_value(value)!r}"
        for key, value in settings.items() if plain_value(value) != saved.get(key)
        and not (key in ADDED_LATER and key not in saved)
    ]
    if not differences:
        return
    message = (f"{path} is from a different run; refusing to resume ("
               + "; ".join(differences) + ")")
    if dropped:
        message += (f". Its {group} run is complete and its resume state was dropped when it "
                    "finished (the default): a resume can only return its stored result. "
                    "Write a new file (another --out, or --overwrite); a run whose file is to "
                    "be continued keeps its state with --keep-state (keep_state=True)")
    raise ResumeError(message)


def plain_value(value):
    """Attribute values as comparable Python values (None, lists and numpy scalars); the
    string "None" of files written before absent attributes meant None is None."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, str) and value == "None":
        return None
    return value


def rounding_settings() -> dict:
    """What changes a run's floating-point rounding but not what it computes: the torch
    version (its kernels) and the number of CPU threads (how a reduction is split). Recorded
    with a run's state; a resume under others is reported (:func:`report_rounding`), not
    refused."""
    import torch

    return {"torch_version": str(torch.__version__), "num_threads": torch.get_num_threads()}


def report_rounding(saved: dict, path, group: str) -> list:
    """Warn, naming each, when this process's :func:`rounding_settings` differ from the ones
    the run of ``group`` recorded: the continuation then equals the undisturbed run to
    rounding, not bit for bit. Returns the differences (empty: bit-identical continuation;
    a file that recorded none is not compared)."""
    differences = [f"{key}: file has {saved[key]!r}, this process has {value!r}"
                   for key, value in rounding_settings().items()
                   if key in saved and plain_value(saved[key]) != value]
    if differences:
        logger.warning("resuming the %s run of %s under other rounding (%s): the continuation "
                       "equals the undisturbed run to rounding, not bit for bit", group, path,
                       "; ".join(differences))
    return differences
