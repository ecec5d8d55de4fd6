"""Compiled per-batch products: ``torch.compile`` once per operator.

``CurvatureOperator(..., compile=True)`` runs each batch's product through a function compiled
by ``torch.compile`` from the operator's own per-batch product (its curvature and strategy),
so the numbers are the eager products' up to the rounding of fused kernels (the tests hold
compiled and eager to 1e-6 relative in float32 and 1e-12 in float64).

* **What is traced**: the eager product's own code; where that code differentiates
  autograd's backward, which ``torch.compile`` cannot, the strategy has a traced form (the
  reverse-over-reverse Hessian: ``torch.func``'s gradient of ``<grad l_B, v>``,
  :meth:`~lanczos_hessian.curvature.differentiation.ReverseOverReverse.traced_hessian`);
  the rule of :mod:`lanczos_hessian.curvature.products` gives the GGN and the residual
  forward-over-reverse when compiled.
* **Once per operator, ragged batches included**: the batch dimension is marked dynamic
  before the first call (``torch._dynamo.mark_dynamic`` on every batch tensor's first axis),
  so the full batches and the ragged last one share one graph; a second graph is the most a
  pass can add (:attr:`CompiledProduct.num_graphs` counts them).
* **Compile time apart**: the seconds of the calls that compiled (each first call of a graph)
  are :attr:`CompiledProduct.compile_time`; a benchmark reports them beside the pass time and
  the number of passes after which compiling has paid (``scripts/bench_products.py``).
* **Fallback**: if compiling or running the compiled function raises, the operator warns once
  (a :class:`CompileWarning` naming the reason) and takes the eager product from then on. A
  graph break (an op Dynamo cannot trace) is no error but leaves the product partly or, inside
  ``torch.func``'s transforms, wholly eager: a :class:`CompileWarning` names the first one
  and :attr:`CompiledProduct.num_graph_breaks` counts them.
* **Attention's fast path off**: ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``
  in eval mode take a fused C++ fast path (``_transformer_encoder_layer_fwd``) whenever their
  checks pass; eagerly inside ``torch.func``'s transforms they do not, but in Dynamo's trace
  of them they did (torch 2.13), while that op has no forward-mode rule: the trace broke there, and
  the break inside the ``jvp`` left the whole product eager (the 67k-parameter transformer
  of ``scripts/bench_products.py``: compiled 0.48x the speed of the bare double backward,
  as slow as eager forward-over-reverse). The compiled calls therefore run with
  ``torch.backends.mha.set_fastpath_enabled(False)`` (restored after each call): the layers
  take their ordinary modules, the same function, and the product compiles to one graph
  (2.0x faster than the bare double backward there; preliminary, shared machine).
* **CUDA**: ``mode="reduce-overhead"`` (CUDA graphs) on CUDA devices, where the fixed shapes
  of the full batches allow replaying one graph; the default mode elsewhere.
* **Guards checked once per pass and batch layout**: before running a graph, Dynamo checks
  its guards (the model's structure and parameters' metadata, the global torch state, the
  tensors' shapes, dtypes and strides; several hundred checks, 50-80 us a call on a CPU,
  measured: as much as the whole product of a small model's batch). The first call of every
  pass runs every guard, and so does the first call with a batch layout (shapes, dtypes,
  strides and devices of the inputs, targets and block) not met since; the other calls of a
  pass evaluate only the guards that tell the compiled graphs apart
  (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``). Within a pass only the
  layout can change, and the layouts are tracked here; between passes anything can (the
  model trained or rebuilt, the torch state), and the first call's full check sees it: a
  graph compiled there forgets every layout (the next calls check everything again).

When it pays (docs/BENCHMARKS.md, *Products*, "When to use ``--compile``"): on small
models, whose batches are dominated by per-op launch and Python overhead (the more batches a
pass has, the more: per batch the compiled graph replaces the autograd engine's and
Python's work, per pass the operator's own checks remain), and on launch-bound
accelerators, for runs long enough to recover the compile time (the break-even pass count
of ``scripts/bench_products.py``); not on large CPU models, whose time is in the matrix
products themselves.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
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
        self.num_graph_breaks = 0  # while compiling: parts of the product left to eager
        self.num_full_checks = 0  # calls that ran every guard (the rest: distinguishing ones)
        self._fn = torch.compile(_own_code(_product_of(curvature)), **self.options)
        self._checked = set()  # batch layouts whose calls passed every guard, no recompile since
        self._pass_checked = False  # whether this pass's first call ran every guard

    def start_pass(self) -> None:
        """A new pass begins: its first call runs every guard (module docstring)."""
        self._pass_checked = False

    def __call__(self, inputs, targets, V):
        if self.usable:
            _mark_batch_dynamic(inputs, targets)
            layout = _layout(inputs, targets, V)
            full = not self._pass_checked or layout not in self._checked
            graphs, breaks = _graph_count(), _graph_breaks()
            start = time.perf_counter()
            fast_path = _attention_fast_path(False)
            try:
                with _checks(full, self.curvature.strategy):
                    out = self._call(inputs, targets, V)
            except Exception as exc:  # compiling or running the compiled graph failed
                self._give_up(exc)
            else:
                new = _graph_count() - graphs
                if new:  # this call compiled: its time is compile time, not product time
                    self.num_graphs += new
                    self.compile_time += time.perf_counter() - start
                self._note_graph_breaks(breaks)
                if full:
                    self._record_check(layout, recompiled=bool(new))
                return out
            finally:
                _attention_fast_path(fast_path)
        return self.curvature.products(inputs, targets, V)

    def _note_graph_breaks(self, before: dict) -> None:
        """Count the graph breaks a call's trace met (against the counts ``before`` it) and
        warn, naming the first (a break can leave no graph at all: counted on every call)."""
        new = {reason: count - before.get(reason, 0)
               for reason, count in _graph_breaks().items() if count > before.get(reason, 0)}
        if not new:
            return
        self.num_graph_breaks += sum(new.values())
        first = next(iter(new)).strip().splitlines()[0]
        warnings.warn(f"the compiled {self.curvature.kind} product has "
                      f"{sum(new.values())} graph break(s) ({first}): the parts between them, "
                      "or the whole product when the break is inside torch.func's transforms, "
                      "run eagerly", CompileWarning, stacklevel=3)

    def _record_check(self, layout, recompiled: bool) -> None:
        """After a call that ran every guard: a graph compiled on a pass's first call means
        the state changed since the layouts were checked, so they are all checked again."""
        self.num_full_checks += 1
        if recompiled and not self._pass_checked:
            self._checked.clear()
        self._checked.add(layout)
        self._pass_checked = True

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


_CODE_NUMBERS = itertools.count()


def _own_code(fn):
    """``fn`` with a code object of its own, under a name of its own. Dynamo keeps compiled
    graphs, and counts recompilations against ``recompile_limit`` (8), per code object:
    operators sharing one would evict each other's graphs and, past the limit, run eager
    without a word. And its automatic dynamic shapes remember, per function name, file and
    line, which sizes and strides changed between calls: under one name a model compiled
    after another inherited what the first had seen (an MLP's ragged batch made the strides
    of a transformer's inputs symbolic, and its forward-over-reverse trace failed)."""
    name = f"{fn.__name__}_{next(_CODE_NUMBERS)}"
    fields = {"co_name": name}
    if hasattr(fn.__code__, "co_qualname"):  # Python >= 3.11
        fields["co_qualname"] = name
    return types.FunctionType(fn.__code__.replace(**fields), fn.__globals__, name,
                              fn.__defaults__, fn.__closure__)


def _graph_count() -> int:
    """Graphs compiled so far in this process (dynamo's own counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _graph_breaks() -> dict:
    """Graph breaks met so far in this process, by reason (a copy of dynamo's counter)."""
    return dict(torch._dynamo.utils.counters["graph_break"])


def _attention_fast_path(enabled: bool):
    """Set whether ``nn.MultiheadAttention`` and the transformer layers may take their fused
    eval-mode fast path (module docstring); return the setting it replaces (None, and
    nothing set, where this torch has no switch)."""
    mha = getattr(torch.backends, "mha", None)
    if enabled is None or mha is None or not hasattr(mha, "set_fastpath_enabled"):
        return None
    before = mha.get_fastpath_enabled()
    if before != enabled:
        mha.set_fastpath_enabled(enabled)
    return before


def _no_donated_buffers():
    """AOTAutograd may donate a compiled backward's buffers, which a double backward (the
    reverse-over-reverse product differentiates a backward) cannot allow."""
    config = getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "donated_buffer"):
        return contextlib.nullcontext()
    return config.patch(donated_buffer=False)


def _layout(inputs, targets, V) -> tuple:
    """What the guards check of a call's tensors and may differ between the batches of one
    pass: each tensor's shape, strides, dtype and device (and a dict's keys)."""
    keys = tuple(sorted(inputs)) if isinstance(inputs, dict) else None
    return keys, tuple((tuple(t.shape), t.stride(), t.dtype, t.device)
                       for t in (*input_tensors(inputs), targets, V))


def _checks(full: bool, strategy: str):
    """Every guard, and compiling allowed under the settings a double backward needs
    (``full``); else only the guards that tell the compiled graphs apart, where this torch
    can (``skip_guard_eval_unsafe``, torch >= 2.6): a call whose layout every guard passed
    before, in a state that has not changed, runs a graph that exists."""
    if full:
        double_backward = strategy == "reverse-over-reverse"
        return _no_donated_buffers() if double_backward else contextlib.nullcontext()
    if "skip_guard_eval_unsafe" not in _STANCE_OPTIONS:
        return contextlib.nullcontext()
    return torch.compiler.set_stance(skip_guard_eval_unsafe=True)


_STANCE_OPTIONS = set(inspect.signature(torch.compiler.set_stance).parameters) \
    if hasattr(torch.compiler, "set_stance") else set()


def _mark_batch_dynamic(inputs, targets) -> None:
    """The first axis (samples) of every batch tensor may vary: one graph for every batch
    size, the ragged last batch included."""
    for t in [*input_tensors(inputs), targets]:
        if t.ndim and len(t) > 1:
            torch._dynamo.maybe_mark_dynamic(t, 0)
