# %% [markdown]
# # The Hessian spectrum of a trained network, from Python
#
# A percent-format script: run it whole (`python examples/tutorial.py`), cell by cell in an
# editor that knows `# %%` cells, or as a notebook (`jupytext --to notebook`). The tests run
# it (`tests/examples/test_tutorial.py`), so it stays in step with the package. It writes its file and
# figures to `$TUTORIAL_OUT` (default `tutorial_out/`) and takes about half a minute on a CPU.
#
# The steps: train a small network; its top and bottom eigenpairs with residual bounds; the
# density of the whole spectrum by stochastic Lanczos quadrature (SLQ) with honest error
# bars; scalar summaries; the spectrum during training; and the same run written to an HDF5
# file and read back as the same object.

# %%
import os
from pathlib import Path

import numpy as np

from lanczos_hessian import (HessianOperator, SpectrumTracker, Spectrum, deflated_slq,
                             lanczos_eigsh, read_spectrum, run)
from lanczos_hessian.analysis.plotting import plot_spectra
from lanczos_hessian.examples.problems import clusters_mlp
from lanczos_hessian.examples.training import train

out = Path(os.environ.get("TUTORIAL_OUT", "tutorial_out"))
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. A trained model
# Sagun et al. (2018) find one outlier eigenvalue per class above a bulk near zero. Five
# Gaussian clusters, an MLP 20-16-5 (421 parameters), full-batch gradient descent.
# The operator is the full-dataset Hessian of the mean loss, applied without forming it;
# we analyse in float64 so that the residuals are not limited by float32 rounding.

# %%
problem = clusters_mlp(num_classes=5, num_examples=300, widths=(20, 16), steps=300, lr=0.2,
                       seed=0)
x, y = problem.data
model = problem.model.double()
op = HessianOperator(model, problem.loss_fn, (x.double(), y))
print(f"{op.shape[0]} parameters, loss {problem.attrs['train_loss']:.3g}")

# %% [markdown]
# ## 2. Eigenpairs at both ends
# `which="BE"` gives the top and the bottom in one Lanczos run. Each pair comes with its Ritz
# bound (free) and a measured residual; the summary names the columns.

# %%
eigs = lanczos_eigsh(op, k=12, which="BE", k_bottom=3, tol=1e-8, rng=0, true_residuals=True)
print(eigs.summary())

# %% [markdown]
# ## 3. The density of the whole spectrum
# Deflated SLQ: the top 8 eigenpairs exactly, the bulk by 10 probes of 40 Lanczos steps. The
# trace is a polynomial, integrated exactly by the Gauss rules: its standard error is its
# whole error. A fraction of the spectrum (below a threshold) is not: it is known only to
# within the weights of the Gauss nodes next to the threshold, so it comes as a bracket.

# %%
bulk = deflated_slq(op, 8, 3, num_probes=10, num_steps=40, rng=0)
print("trace", bulk.trace())
negative = bulk.fraction_below(0.0)
print("mass below 0:", negative, "resolved" if negative.resolved else "unresolved")
t = bulk.nearest_resolved_threshold(0.0, "below")
print(f"nearest resolved threshold below 0: {t:.3g}, mass below it", bulk.fraction_below(t))
grid, phi, lower, upper = bulk.density_band()
print(f"density on {grid.size} points, band width at the peak "
      f"{(upper - lower)[np.argmax(phi)]:.3g}")

# %% [markdown]
# ## 4. Summaries and one verdict
# A `Spectrum` gathers eigenpairs and rules; its `statistics()` are the numbers usually
# computed by hand, each with its error bar, and its outlier verdict names its rule. Its
# `attrs` (what a file records) name the operator and model in the figure's title.

# %%
spectrum = Spectrum.from_results(eigs, bulk, label="tutorial",
                                 attrs={**problem.attrs, "label": "tutorial",
                                        "operator": op.kind, "num_params": op.shape[0]})
print(spectrum.outlier_verdict())
for row in spectrum.statistics():
    print(f"{row.name:<26} {row}")
plot_spectra(spectrum, out / "tutorial_spectrum.png")

# %% [markdown]
# ## 5. The spectrum during training
# `SpectrumTracker` is a training callback: the top eigenpairs every `every` steps, warm
# started from the previous ones, the gradient's overlap with them, and a small SLQ density.
# Its table has one row per step and eigenpair; its figure draws the edge-of-stability line
# `2 / lr`.

# %%
fresh = clusters_mlp(num_classes=5, num_examples=300, widths=(20, 16), steps=0, seed=1)
fx, fy = fresh.data
fresh_model = fresh.model.double()
tracker = SpectrumTracker(fresh_model, fresh.loss_fn, (fx.double(), fy), k=5, every=25,
                          tol=1e-6, slq_probes=4, slq_steps=20, rng=0)
tracker.measure(0)
train(fresh_model, fresh.loss_fn, fx.double(), fy, steps=100, lr=0.5, callback=tracker)
print(tracker)

# %%
try:
    import pandas  # noqa: F401

    table = tracker.to_dataframe()
    print(table[["step", "pair", "eigenvalue", "loss", "overlap", "trace"]].head(10))
except ImportError:
    print("pandas is not installed: tracker.as_arrays() holds the same numbers")
tracker.plot(out / "tutorial_tracking.png", lr=0.5)

# %% [markdown]
# ## 6. The same run, streamed to a file and read back
# `run.slq` commits after every pass over the data (a killed run continues with
# `resume=True`). It returns the `Spectrum` that `read_spectrum` reads back from the file: the
# same repr, numbers and `summary()` (what `lanczos-hessian analyze` prints); the solvers'
# results are its `.eigs` and `.slq`.

# %%
path = out / "tutorial.h5"
returned = run.slq(op, path, k_top=8, k_bottom=3, num_probes=10, num_steps=40, seed=0,
                   overwrite=True, progress=False, attrs=problem.attrs)
saved = read_spectrum(path)
print(repr(saved))
print(saved.summary())
assert repr(returned) == repr(saved) and returned.summary() == saved.summary()
print(returned.eigs)
plot_spectra(saved, out / "tutorial_file.png")
print("figures in", out)
