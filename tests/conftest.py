"""Shared test cases: small float64 models with exact dense references.

A case is data: a model factory, a loss, a data set with a deliberately ragged batch size.
The reference curvature matrices are computed here, independently of the package's batch
loop, by ``torch.func.hessian`` / ``jacrev`` of the *whole-data* objective as a function of
the flat parameter vector.
"""

import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian, jacrev

@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: small products on a shared 2-core machine are 30-100x slower
    with two threads fighting other processes (measured on the tests of tracking.py).
    The same for NumPy's and SciPy's BLAS (OpenBLAS threads spin while they wait): with
    two test workers on 2 cores, eigvalsh of a 3,000 x 3,000 matrix took 5.4-7.3 s on two
    threads each and 2.4 s on one, 300 products of 400 x 400 matrices 1.9-3.6 s and 0.6 s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with _one_blas_thread():
        yield
    torch.set_num_threads(previous)


def _one_blas_thread():
    """A context limiting the BLAS libraries loaded in this process to one thread
    (threadpoolctl, a dependency of scikit-learn; a no-op context without it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401 (SciPy's own BLAS loaded, so that the limit covers it)

    return threadpool_limits(limits=1, user_api="blas")


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 3)).double()


def make_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(2 * 2 * 2, 3),
    ).double()


def mlp_data(n=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def cnn_data(n=17, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


CASES = {
    "mlp-ce-mean": (make_mlp, mlp_data, lambda: torch.nn.CrossEntropyLoss()),
    "mlp-ce-sum": (make_mlp, mlp_data, lambda: torch.nn.CrossEntropyLoss(reduction="sum")),
    "mlp-mse-mean": (make_mlp, lambda: _regression(mlp_data()), lambda: torch.nn.MSELoss()),
    "cnn-ce-mean": (make_cnn, cnn_data, lambda: torch.nn.CrossEntropyLoss()),
    "cnn-ce-sum": (make_cnn, cnn_data, lambda: torch.nn.CrossEntropyLoss(reduction="sum")),
}


def _regression(data):
    x, y = data
    g = torch.Generator().manual_seed(3)
    return x, torch.randn(len(x), 3, generator=g, dtype=torch.float64)


def _flat_objective(model, loss_fn, inputs, targets):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(w):
        return {n: t.view(s) for n, t, s in zip(names, torch.split(w, sizes), shapes)}

    def outputs(w):
        return functional_call(model, unflatten(w), (inputs,))

    return flat, outputs


def reference_matrices(model, loss_fn, inputs, targets):
    """Exact (H, G) of the whole-data loss (the loss's own reduction over all N samples)."""
    flat, outputs = _flat_objective(model, loss_fn, inputs, targets)
    H = hessian(lambda w: loss_fn(outputs(w), targets))(flat)
    z = outputs(flat).detach()
    J = jacrev(outputs)(flat).reshape(z.numel(), -1)
    Hz = hessian(lambda out: loss_fn(out, targets))(z).reshape(z.numel(), z.numel())
    return H.numpy(), (J.T @ Hz @ J).numpy()


@pytest.fixture(params=sorted(CASES))
def case(request):
    make_model, make_data, make_loss = CASES[request.param]
    model, (x, y), loss_fn = make_model(), make_data(), make_loss()
    H, G = reference_matrices(model, loss_fn, x, y)
    return {"name": request.param, "model": model, "data": (x, y), "loss_fn": loss_fn,
            "H": H, "G": G}


def random_block(dim, b, seed=0):
    return np.random.default_rng(seed).standard_normal((dim, b))


def assert_close(actual, expected, rtol=1e-10, what="product"):
    """Relative error in the max norm, with a readable report."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(np.abs(expected).max(), 1e-300)
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"{what}: relative max error {err:.2e} > {rtol:.0e}"


def spectrum_matrix(eigenvalues, seed=0):
    """A dense symmetric matrix with the given eigenvalues and a random orthogonal basis."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.asarray(eigenvalues)) @ Q.T


@pytest.fixture
def quiet():
    """An ``echo`` for the scripts' ``main`` functions that prints nothing."""
    return lambda *args: None


# ---- the order of the modules under ``-n 2 --dist loadscope`` (the README's command) ------
# xdist hands whole modules to the workers, by default in decreasing number of tests: the
# modules of one or two slow tests (an experiment's quick mode, an end-to-end example, a
# torchrun launch: 15-100 s each) came last, and one worker ran the last of them while the
# other waited. Here the modules go out in decreasing estimated cost, so the many fast
# modules come last and even out the two workers' ends. Only the order changes: every test
# runs, in its module's order; a run without xdist keeps the collection order.
SECONDS_PER_SLOW_TEST, SECONDS_PER_TEST = 10.0, 0.3  # rough means on the CI machine


def _scope(item) -> str:
    """The unit loadscope sends to one worker: a module, or a class in it."""
    return item.nodeid.rsplit("::", 1)[0]


def _loadscope(config) -> bool:
    return getattr(config.option, "dist", "no") == "loadscope"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """loadscope without its count order: the scopes in the order the workers collected."""
    if _loadscope(config):
        config.option.loadscopereorder = False
    return None  # xdist's own scheduler, which reads the option


def pytest_collection_modifyitems(config, items):
    """On an xdist worker under loadscope: the scopes in decreasing estimated seconds."""
    if not (hasattr(config, "workerinput") and _loadscope(config)):
        return
    cost, first = {}, {}
    for i, item in enumerate(items):
        scope = _scope(item)
        first.setdefault(scope, i)
        slow = item.get_closest_marker("slow") is not None
        cost[scope] = cost.get(scope, 0.0) + (SECONDS_PER_SLOW_TEST if slow else SECONDS_PER_TEST)
    order = {item.nodeid: i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-cost[_scope(item)], first[_scope(item)], order[item.nodeid]))
