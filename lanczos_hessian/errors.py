"""Named errors and warnings, so that users can catch or filter them by type.

Every error raised at the public edge of the package is one of these (or a plain
``ValueError`` / ``TypeError`` for an argument of the wrong value or type) and names
the offending value in its message.
"""


class LanczosHessianError(Exception):
    """Base class of the package's own errors."""


class InvalidModelError(LanczosHessianError, ValueError):
    """The model cannot define a curvature operator (e.g. no trainable parameters)."""


class InvalidLossError(LanczosHessianError, ValueError):
    """The loss function does not return a finite scalar, or its reduction is unknown."""


class InvalidDataError(LanczosHessianError, ValueError):
    """The data source is empty, one-shot, or yields malformed batches."""


class NonDeterministicDataError(LanczosHessianError, RuntimeError):
    """Two passes over the data source yielded different batches.

    A full-dataset operator must be the same matrix on every application; shuffling,
    augmentation or ``drop_last`` with a random sampler break that and make Lanczos
    meaningless.
    """


class NonFiniteError(LanczosHessianError, FloatingPointError):
    """A NaN or Inf appeared in a loss or a curvature-vector product."""


class ForwardModeUnsupportedError(LanczosHessianError, RuntimeError):
    """Forward-mode differentiation failed on some op of the model or loss.

    PyTorch lacks forward-mode (or forward-over-reverse) rules for some ops, e.g.
    ``torch.nn.MSELoss`` in torch 2.13 ("ZeroTensors are immutable"); the
    ``reverse-over-reverse`` strategy computes the same products without forward mode.
    """


class DenseSizeError(LanczosHessianError, MemoryError):
    """A dense matrix was requested for a model above the allowed size."""


class OutputPathError(LanczosHessianError, OSError):
    """An output file exists (and overwriting was not allowed) or cannot be written."""


class DiskFullError(OutputPathError):
    """The output's file system filled up during a run: the file was closed with everything
    committed before readable, and the run can continue with ``--resume`` once there is room."""


class NoConvergenceError(LanczosHessianError, RuntimeError):
    """Lanczos stopped before every wanted pair met its tolerance.

    Attributes
    ----------
    result : EigshResult
        The partial result, converged and unconverged pairs with their residuals.
    """

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class SpectrumFileError(LanczosHessianError, ValueError):
    """An HDF5 file is not a spectrum file of this package, is incompatible, or is damaged."""


class ResumeError(LanczosHessianError, ValueError):
    """A run cannot be resumed from this file (different run, or nothing committed)."""


class DistributedError(LanczosHessianError, RuntimeError):
    """A multi-process run cannot go on: launch variables, a collective, a timeout."""


class RankFailedError(DistributedError):
    """Another rank failed during its local part of a collective step.

    Attributes
    ----------
    failures : list of (rank, exception type name, message)
        Every rank that failed, in rank order.
    """

    def __init__(self, message, failures):
        super().__init__(message)
        self.failures = failures


class RankMismatchError(DistributedError):
    """The ranks disagree on what must be identical: model, data, or the vectors applied.

    Every rank computes its share of the *same* product; a model initialized differently on
    each rank, a data set loaded differently, or a solver started from different random
    vectors on each rank would make the sum meaningless. Raised on every rank alike.
    """


class NumericalWarning(RuntimeWarning):
    """A numerical result is less accurate than asked for (e.g. unconverged Ritz pairs)."""


class PrecisionWarning(NumericalWarning):
    """The model and its data differ in floating-point precision (e.g. a float64 model fed
    float32 inputs): the inputs are converted to the model's dtype on every pass and the
    products computed in it, so the data carry only the precision they came in."""


class RunInterrupted(LanczosHessianError):
    """A run stopped on a signal (SIGINT, SIGTERM, SIGUSR1) at a safe point: after its last
    committed pass, with its file closed and its lock released; ``resume=True``
    (``--resume``) continues it. ``exit_status`` is the shell's convention, 128 + the
    signal's number (130 for SIGINT, 143 for SIGTERM).

    Attributes
    ----------
    signum : int
        The signal that stopped the run.
    committed : bool
        Whether the run reached a safe point (False: stopped at once, before its first commit
        or on a second Ctrl-C; what was committed before stays in the file all the same).
    """

    def __init__(self, message, signum: int, committed: bool = True):
        super().__init__(message)
        self.signum, self.committed = int(signum), committed

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class BasisSizeError(LanczosHessianError, MemoryError):
    """The Lanczos bases asked for (``--ncv``, ``--k``, ``--num-steps`` x ``--num-probes``)
    do not fit in the memory of the operator's device: refused before any allocation."""
