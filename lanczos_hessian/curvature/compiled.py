"""Compiled per-batch products: ``torch.compile`` once per operator.

``CurvatureOperator(..., compile=True)`` runs each batch's product through a function compiled
by ``torch.compile`` from the operator's own per-batch product (its curvature and strategy),
so the numbers are the eager products' up to the rounding of fused kernels (the tests hold
compiled and eager to 1e-6 relative in float32 and 1e-12 in float64).

* **Once per operator, ragged batches included**: the batch dimension is marked dynamic
  before the first call (``torch._dynamo.mark_dynamic`` on every batch tensor's first axis),
  so the full batches and the ragged last one share one graph; a second graph is the most a
  pass can add (:attr:`CompiledProduct.num_graphs` counts them).
* **Compile time apart**: the seconds of the calls that compiled (each first call of a graph)
  are :attr:`CompiledProduct.compile_time`; a benchmark reports them beside the pass time and
  the number of passes after which compiling has paid (``scripts/bench_products.py``).
* **Fallback**: if compiling or running the compiled function raises, the operator warns once
  (a :class:`CompileWarning` naming the reason) and takes the eager product from then on.
* **CUDA**: ``mode="reduce-overhead"`` (CUDA graphs) on CUDA devices, where the fixed shapes
  of the full batches allow replaying one graph; the default mode elsewhere.

When it pays (docs/BENCHMARKS.md, *Products*): on small models, whose batches are dominated
by per-op launch and Python overhead, and on launch-bound accelerators; not on large CPU
models, whose time is in the matrix products themselves.
"""

from __future__ import annotations

import contextlib
import time
import types
import warnings

import torch

from .data import input_tensors


class CompileWarning(UserWarning):
    """Compiling a product failed; the operator goes on with the eager product."""


class CompiledProduct:
    """``(inputs, targets, V) -> (loss, C_B V)`` compiled from ``curvature``'s own product.

    Parameters
    ----------
    curvature : BatchCurvature
        Its :meth:`matmat_batch` is what gets compiled (the eager strategy, unchanged).
    device : torch.device
        ``"cuda"`` selects ``mode="reduce-overhead"`` (CUDA graphs).
    options : dict, optional
        Keyword arguments of ``torch.compile`` that replace the defaults (e.g.
        ``{"backend": "aot_eager"}``: the graphs without code generation, seconds to build).
    """

    def __init__(self, curvature, device, options: dict | None = None):
        self.curvature = curvature
        self.options = {"mode": "reduce-overhead" if torch.device(device).type == "cuda"
                        else None, "dynamic": None, **(options or {})}
        self.compile_time = 0.0
        self.usable, self.reason = True, None
        self.num_graphs = 0
        self._fn = torch.compile(_own_code(_product_of(curvature)), **self.options)

    def __call__(self, inputs, targets, V):
        if self.usable:
            _mark_batch_dynamic(inputs, targets)
            graphs = _graph_count()
            start = time.perf_counter()
            try:
                with _no_donated_buffers():  # a double backward keeps its buffers
                    out = self._call(inputs, targets, V)
            except Exception as exc:  # compiling or running the compiled graph failed
                self._give_up(exc)
            else:
                new = _graph_count() - graphs
                if new:  # this call compiled: its time is compile time, not product time
                    self.num_graphs += new
                    self.compile_time += time.perf_counter() - start
                return out
        return self.curvature.products(inputs, targets, V)

    def _call(self, inputs, targets, V):
        if self.options.get("mode") != "reduce-overhead":
            return self._fn(inputs, targets, V)
        # CUDA graphs: each replay reuses the output memory of the last, so every call is a
        # new step and its outputs are copied out before the next batch replays the graph
        torch.compiler.cudagraph_mark_step_begin()
        value, product = self._fn(inputs, targets, V)
        return value.clone(), product.clone()

    def _give_up(self, exc) -> None:
        self.usable = False
        self.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        warnings.warn(f"compiling the {self.curvature.kind} product failed ({self.reason}); "
                      "going on with the eager product", CompileWarning, stacklevel=3)


def _product_of(curvature):
    def product(inputs, targets, V):
        return curvature.matmat_batch(curvature.functions(inputs, targets), V)

    return product


def _own_code(fn):
    """``fn`` with a code object of its own. Dynamo keeps compiled graphs, and counts
    recompilations against ``recompile_limit`` (8), per code object: operators sharing one
    would evict each other's graphs and, past the limit, run eager without a word."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def _graph_count() -> int:
    """Graphs compiled so far in this process (dynamo's own counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _no_donated_buffers():
    """AOTAutograd may donate a compiled backward's buffers, which a double backward (the
    reverse-over-reverse product differentiates a backward) cannot allow."""
    config = getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "donated_buffer"):
        return contextlib.nullcontext()
    return config.patch(donated_buffer=False)


def _mark_batch_dynamic(inputs, targets) -> None:
    """The first axis (samples) of every batch tensor may vary: one graph for every batch
    size, the ragged last batch included."""
    for t in [*input_tensors(inputs), targets]:
        if t.ndim and len(t) > 1:
            torch._dynamo.maybe_mark_dynamic(t, 0)
