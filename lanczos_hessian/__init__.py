"""lanczos_hessian: spectra of full-dataset neural-network Hessians at scale.

Matrix-free curvature operators (Hessian, generalized Gauss-Newton, residual) over a whole
data set, Lanczos eigenpairs with residual bounds, stochastic Lanczos quadrature for the
bulk, and HDF5 output for offline analysis.
"""

from ._version import __version__
from .curvature.dense import dense_matrix, dense_spectrum
from .linalg.eigsh import EigshResult, lanczos_eigsh
from .errors import (
    DenseSizeError,
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
    SpectrumFileError,
)
from .curvature.operators import CurvatureOperator, GGNOperator, HessianOperator, ResidualOperator
from .analysis.outliers import OutlierCounts, count_outliers
from .curvature.params import ParameterSpace
from .linalg.slq import SLQResult, deflated_slq, slq
from .analysis.spectrum import Spectrum, read_spectrum
from .linalg.density import spectral_density, wasserstein1
from .analysis.geometry import (
    direction_profile,
    full_gradient,
    gradient_overlap,
    layer_spectra,
    line_profile,
)
from .analysis.tracking import SpectrumTracker, read_tracking

__all__ = [
    "__version__",
    "CurvatureOperator",
    "DenseSizeError",
    "EigshResult",
    "ForwardModeUnsupportedError",
    "GGNOperator",
    "HessianOperator",
    "InvalidDataError",
    "InvalidLossError",
    "InvalidModelError",
    "LanczosHessianError",
    "NoConvergenceError",
    "NonDeterministicDataError",
    "NonFiniteError",
    "NumericalWarning",
    "OutputPathError",
    "ParameterSpace",
    "ResidualOperator",
    "SpectrumFileError",
    "dense_matrix",
    "dense_spectrum",
    "lanczos_eigsh",
    "OutlierCounts",
    "SLQResult",
    "Spectrum",
    "count_outliers",
    "deflated_slq",
    "read_spectrum",
    "slq",
    "spectral_density",
    "wasserstein1",
    "SpectrumTracker",
    "direction_profile",
    "full_gradient",
    "gradient_overlap",
    "layer_spectra",
    "line_profile",
    "read_tracking",
]
