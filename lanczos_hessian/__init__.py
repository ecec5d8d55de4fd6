"""lanczos_hessian: spectra of full-dataset neural-network Hessians at scale.

Matrix-free curvature operators (Hessian, generalized Gauss-Newton, residual) over a whole
data set (:mod:`.curvature`), Lanczos eigenpairs with residual bounds and stochastic Lanczos
quadrature for the bulk (:mod:`.linalg`), data-parallel and sharded runs (:mod:`.parallel`),
resumable HDF5 output (:mod:`.storage`, run by :mod:`.run`), and offline analysis
(:mod:`.analysis`).
"""

from ._version import __version__
from . import run
from .analysis.geometry import (
    direction_profile,
    full_gradient,
    gradient_overlap,
    layer_spectra,
    line_profile,
)
from .analysis.outliers import (
    OutlierCounts,
    below_top_count,
    count_outliers,
    step_after,
    threshold_count,
)
from .analysis.spectrum import Quadrature, Spectrum, read_spectrum
from .analysis.tracking import SpectrumTracker, read_tracking
from .curvature.data import dict_batch
from .curvature.dense import dense_matrix, dense_spectrum
from .curvature.objective import TokenLoss
from .curvature.operators import CurvatureOperator, GGNOperator, HessianOperator, ResidualOperator
from .curvature.params import ParameterSpace
from .errors import (
    DenseSizeError,
    DiskFullError,
    DistributedError,
    ForwardModeUnsupportedError,
    InvalidDataError,
    InvalidLossError,
    InvalidModelError,
    LanczosHessianError,
    NoConvergenceError,
    NonDeterministicDataError,
    NonFiniteError,
    NumericalWarning,
    OutputPathError,
    PrecisionWarning,
    RankFailedError,
    RankMismatchError,
    ResumeError,
    RunInterrupted,
    SpectrumFileError,
)
from .linalg.density import Estimate, spectral_density, wasserstein1
from .linalg.eigsh import EigshResult, lanczos_eigsh
from .linalg.hooks import Hooks
from .contract import SpectralOperator
from .linalg.deflated import DeflatedPlan, deflated_slq
from .linalg.eigsh_state import EigshState
from .linalg.slq import SLQResult, adaptive_slq, slq
from .linalg.slq_state import AdaptiveSLQState, SLQState
from .linalg.trace import hutchinson_trace
from .parallel.sharding import Shard
from .storage.hdf5 import read_file
from .storage.runstore import RunStore

__all__ = [
    "__version__",
    "adaptive_slq",
    "AdaptiveSLQState",
    "DeflatedPlan",
    "EigshState",
    "RunStore",
    "SLQState",
    "SpectralOperator",
    "CurvatureOperator",
    "DenseSizeError",
    "DiskFullError",
    "DistributedError",
    "EigshResult",
    "Estimate",
    "ForwardModeUnsupportedError",
    "GGNOperator",
    "HessianOperator",
    "Hooks",
    "InvalidDataError",
    "InvalidLossError",
    "InvalidModelError",
    "LanczosHessianError",
    "NoConvergenceError",
    "NonDeterministicDataError",
    "NonFiniteError",
    "NumericalWarning",
    "OutlierCounts",
    "OutputPathError",
    "PrecisionWarning",
    "ParameterSpace",
    "Quadrature",
    "RankFailedError",
    "RankMismatchError",
    "ResidualOperator",
    "ResumeError",
    "RunInterrupted",
    "SLQResult",
    "Shard",
    "Spectrum",
    "SpectrumFileError",
    "SpectrumTracker",
    "below_top_count",
    "count_outliers",
    "deflated_slq",
    "dict_batch",
    "TokenLoss",
    "dense_matrix",
    "dense_spectrum",
    "direction_profile",
    "full_gradient",
    "gradient_overlap",
    "hutchinson_trace",
    "lanczos_eigsh",
    "layer_spectra",
    "line_profile",
    "read_file",
    "read_spectrum",
    "read_tracking",
    "run",
    "slq",
    "step_after",
    "threshold_count",
    "spectral_density",
    "wasserstein1",
]
