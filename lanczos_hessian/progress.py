"""Progress that fits where it runs: a bar on a terminal, plain status lines in a log file.

On a terminal a tqdm bar updates in place. When the stream is not a terminal (a scheduler's
log file, ``> run.log 2>&1``), carriage-return updates would fill the log with thousands of
redrawn bars, so instead one plain line is written at most every ``every`` seconds
(``LANCZOS_HESSIAN_LOG_EVERY``, default 30), and one at the end: what is counted, how many,
how fast, and the solver's own fields (converged pairs, the current eigenvalue estimate).
``quiet`` silences both.
"""

from __future__ import annotations

import os
import sys
import time

#: Seconds between two status lines when the output is not a terminal.
DEFAULT_EVERY = 30.0
EVERY_ENV = "LANCZOS_HESSIAN_LOG_EVERY"


def log_every() -> float:
    """The interval between status lines: ``LANCZOS_HESSIAN_LOG_EVERY`` seconds, else 30."""
    value = os.environ.get(EVERY_ENV)
    try:
        return float(value) if value else DEFAULT_EVERY
    except ValueError:
        raise ValueError(f"{EVERY_ENV}={value!r} is not a number of seconds") from None


class Progress:
    """Counts of one run (passes, steps), shown as a bar or as status lines.

    Parameters
    ----------
    label : str
        What runs (``"Lanczos"``, ``"SLQ"``).
    unit : str
        What one update counts (``"pass"``: one application of the operator to a block).
    total : int, optional
        The expected count, when known (SLQ's steps); its ETA is then shown, from the rate
        of the updates after the first (the first pass carries one-time costs: the
        first-batch checks, compilation, a cold page cache; extrapolated, it overstated the
        remaining time 6x on a small run). Unknown for an eigensolver, which stops on
        convergence.
    initial : int
        Counts already done (a resumed run).
    enabled : bool
        False: nothing is shown.
    stream : file, optional
        Where to write (default ``sys.stderr``).
    every : float, optional
        Seconds between status lines off a terminal (default :func:`log_every`).
    """

    def __init__(self, label: str, unit: str = "pass", total: int | None = None,
                 initial: int = 0, enabled: bool = True, stream=None,
                 every: float | None = None):
        self.label, self.unit, self.total = label, unit, total
        self.count = initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.fields: dict = {}
        self.start = self.last = time.monotonic()
        self.first: tuple | None = None  # (time, count) at the first update: the ETA's origin
        self.every = log_every() if every is None else every
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit,
                            leave=False, file=self.stream)

    def update(self, n: int = 1, **fields) -> None:
        """``n`` more counted; ``fields`` are shown beside the count (latest values)."""
        self.count += n
        self.fields.update(fields)
        if self.first is None:
            self.first = (time.monotonic(), self.count)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line("")

    def close(self) -> None:
        """End the bar; off a terminal, one last status line."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._line("done: ")

    def _line(self, prefix: str) -> None:
        elapsed = time.monotonic() - self.start
        plural = self.unit if self.count == 1 else _plural(self.unit)
        text = f"{self.label}: {prefix}{self.count}"
        if self.total:
            text += f"/{self.total}"
        text += f" {plural} in {elapsed:.0f} s"
        remaining = self.seconds_left()
        if remaining is not None:
            text += f", about {remaining:.0f} s left"
        if self.fields:
            text += "; " + ", ".join(f"{k} {v}" for k, v in self.fields.items())
        print(text, file=self.stream, flush=True)


    def seconds_left(self) -> float | None:
        """Seconds to ``total`` at the rate of the updates since the first one; None while
        only one update has come (or no total is known, or it is reached)."""
        if not self.total or self.first is None or self.count >= self.total:
            return None
        since, done = time.monotonic() - self.first[0], self.count - self.first[1]
        return since / done * (self.total - self.count) if done > 0 else None


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch")) else "s")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
