"""What a pass does around the products, made cheap without losing a check: the data
fingerprint hashed once and reused only while the data tensors are unchanged, batch views
cut once, the health check as one sum with the batch named only on failure, the autograd
engine called without torch.autograd.grad's argument handling (the same numbers)."""

import numpy as np
import pytest
import torch

from conftest import make_mlp, mlp_data
from lanczos_hessian import GGNOperator, HessianOperator, NonDeterministicDataError, \
    NonFiniteError, ResidualOperator
from lanczos_hessian.curvature import differentiation
from lanczos_hessian.curvature.data import DataSource
from lanczos_hessian.curvature.fingerprint import PassFingerprint

LOSS = torch.nn.CrossEntropyLoss()


def counting_hashes(monkeypatch):
    """Count the batches hashed into a pass fingerprint."""
    calls = []
    add = PassFingerprint.add

    def counted(self, inputs, targets):
        calls.append(len(targets))
        return add(self, inputs, targets)

    monkeypatch.setattr(PassFingerprint, "add", counted)
    return calls


def test_a_tensor_pair_is_hashed_on_the_first_pass_only(monkeypatch):
    calls = counting_hashes(monkeypatch)
    x, y = mlp_data()
    op = HessianOperator(make_mlp(), LOSS, (x, y), batch_size=7)
    v = np.ones(op.shape[0])
    first = op.matvec(v)
    assert sum(calls) == len(x)  # every sample of the first pass
    for _ in range(3):
        np.testing.assert_array_equal(op.matvec(v), first)
    assert sum(calls) == len(x)  # later passes reuse the fingerprint: nothing hashed


@pytest.mark.parametrize("change", ["inputs", "targets"])
def test_the_cached_fingerprint_still_sees_an_in_place_change(monkeypatch, change):
    calls = counting_hashes(monkeypatch)
    x, y = mlp_data()
    x, y = x.clone(), y.clone()
    op = HessianOperator(make_mlp(), LOSS, (x, y), batch_size=7)
    v = np.ones(op.shape[0])
    op.matvec(v)
    op.matvec(v)
    if change == "inputs":
        x[20, 1] += 1.0  # the ragged last batch, through the tensor the operator holds
    else:
        y[3] = (y[3] + 1) % 3
    with pytest.raises(NonDeterministicDataError, match=f"the {change} differ"):
        op.matvec(v)
    assert sum(calls) == 2 * len(x)  # the version counter moved: hashed afresh


def test_an_in_place_write_of_the_same_values_is_no_change(monkeypatch):
    calls = counting_hashes(monkeypatch)
    x, y = mlp_data()
    x = x.clone()
    op = HessianOperator(make_mlp(), LOSS, (x, y), batch_size=7)
    v = np.ones(op.shape[0])
    first = op.matvec(v)
    x.mul_(1.0)  # bumps the version counter, same bytes
    np.testing.assert_array_equal(op.matvec(v), first)
    assert sum(calls) == 2 * len(x)  # hashed again, and found equal


def list_of_batches(x, y, size=7):
    return [(x[i:i + size].clone(), y[i:i + size].clone()) for i in range(0, len(x), size)]


def test_a_list_of_batches_is_hashed_on_the_first_pass_only(monkeypatch):
    """A list's tensors are held by the list: unchanged (same objects, versions, storage), the
    first pass's fingerprint stands, as for a tensor pair; a DataLoader's are new each pass
    and hashed each pass."""
    calls = counting_hashes(monkeypatch)
    x, y = mlp_data()
    op = HessianOperator(make_mlp(), LOSS, list_of_batches(x, y))
    v = np.ones(op.shape[0])
    first = op.matvec(v)
    for _ in range(3):
        np.testing.assert_array_equal(op.matvec(v), first)
    assert sum(calls) == len(x)
    calls.clear()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    op = HessianOperator(make_mlp(), LOSS, loader)
    op.matvec(v), op.matvec(v)
    assert sum(calls) == 2 * len(x)


@pytest.mark.parametrize("change", ["in place", "replaced batch", "appended batch"])
def test_the_cached_fingerprint_of_a_list_sees_every_change(monkeypatch, change):
    calls = counting_hashes(monkeypatch)
    x, y = mlp_data()
    batches = list_of_batches(x, y)
    op = HessianOperator(make_mlp(), LOSS, batches)
    v = np.ones(op.shape[0])
    op.matvec(v), op.matvec(v)
    if change == "in place":
        batches[1][0][2, 1] += 1.0  # a sample's input, through the tensor the list holds
    elif change == "replaced batch":
        inputs, targets = batches[2]
        batches[2] = (inputs, (targets + 1) % 3)  # new labels, the inputs' tensor kept
    else:
        batches.append(batches[0])  # one batch counted twice
    with pytest.raises(NonDeterministicDataError):
        op.matvec(v)
    assert sum(calls) == 2 * len(x) + (7 if change == "appended batch" else 0)


def test_a_list_of_batches_with_tuple_inputs_or_unpack_is_stamped_or_read_afresh():
    """Tuple inputs are tensors too (stamped); an ``unpack`` may make new tensors each pass
    (never stamped)."""
    x, y = mlp_data()
    a, b = x[:5], y[:5]
    stamp = DataSource([((a, a), b)]).stamp()
    assert stamp is not None and stamp == DataSource([((a, a), b)]).stamp()
    assert stamp != DataSource([((a, a.clone()), b)]).stamp()  # another tensor object
    assert stamp != DataSource([((a, x[:5]), b)]).stamp()  # the same bytes, another view
    unpacked = DataSource([{"x": x[:5], "y": y[:5]}], unpack=lambda b: (b["x"], b["y"]))
    assert unpacked.stamp() is None
    assert DataSource(list_of_batches(x, y)).stamp(held=False) is None


def test_batch_views_are_cut_once_and_see_the_data():
    x, y = mlp_data()
    x = x.clone()
    source = DataSource((x, y), batch_size=7)
    first, second = list(source), list(source)
    assert [len(b[0]) for b in first] == [7, 7, 7, 2]
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(first, second))
    x[0, 0] = 5.0  # in place: the kept views see it
    assert float(list(source)[0][0][0, 0]) == 5.0
    source.batch_size = 10  # another cut: new views
    assert [len(b[0]) for b in source] == [10, 10, 3]
    x.set_(torch.zeros(23, 4, dtype=x.dtype))  # rebound storage: cut anew
    assert float(list(source)[0][0].abs().sum()) == 0.0


class KinkLoss:
    """``mean sqrt(|z_0 - t|)``: finite everywhere, with an infinite second derivative where
    an output meets its target (a product that is NaN while the loss is finite)."""

    reduction = "mean"

    def __call__(self, z, t):
        return torch.sqrt((z[:, 0] - t).abs() + 0.0).mean()


def test_a_non_finite_product_with_finite_losses_names_its_batch():
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.arange(20, dtype=torch.float64).reshape(10, 2)
    t = x.sum(1) + 1.0
    t[7] = x[7].sum()  # sample 7 (batch 2 of 4): output equals target
    op = HessianOperator(model, KinkLoss(), (x, t), batch_size=3)
    with pytest.raises(NonFiniteError, match="product has NaN or Inf entries on batch 2"):
        op.matvec(np.ones(2))


class Huge(torch.nn.Module):
    """``loss = s * (w_0^2 + w_1^2) / 2`` per batch (sum reduction): ``H_B = s I``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return (x[:, :1] * 0 + 1) * (self.w ** 2).sum() / 2


def huge_loss(scale):
    return lambda z, t: scale * z.mean()


def test_finite_entries_whose_sum_overflows_are_healthy():
    # one batch, H = 1e308 I: both entries finite, their sum is not (the cheap check fails,
    # the precise one passes)
    x, t = torch.ones(4, 1, dtype=torch.float64), torch.zeros(4)
    op = HessianOperator(Huge(), huge_loss(1e308), (x, t), reduction="sum")
    np.testing.assert_array_equal(op.matvec(np.ones(2)), [1e308, 1e308])


def test_finite_products_whose_float64_sum_overflows_say_so():
    x, t = torch.ones(4, 1, dtype=torch.float64), torch.zeros(4)
    op = HessianOperator(Huge(), huge_loss(1e308), (x, t), batch_size=2, reduction="sum")
    with pytest.raises(NonFiniteError, match="overflows float64.*finite batch by batch"):
        op.matvec(np.ones(2))


def test_successive_vectors_reuse_the_staged_rows_exactly():
    """Reverse-over-reverse copies each pass's block into the rows of the last one (its
    per-parameter views kept): vector after vector, the columns of one block product."""
    x, y = mlp_data()
    op = HessianOperator(make_mlp(), LOSS, (x, y), batch_size=7,
                         strategy="reverse-over-reverse")
    eye = np.eye(op.shape[0])
    H = op.matmat(eye[:, :5])
    for i in (0, 3, 1, 4, 2):
        np.testing.assert_allclose(op.matvec(eye[:, i]), H[:, i], rtol=0,
                                   atol=1e-14 * np.abs(H).max())
    np.testing.assert_allclose(op.matmat(eye[:, 2:4]), H[:, 2:4], rtol=0,
                               atol=1e-14 * np.abs(H).max())


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator, ResidualOperator])
def test_the_direct_engine_call_gives_the_products_of_autograd_grad_bit_for_bit(monkeypatch,
                                                                                operator):
    x, y = mlp_data()
    op = operator(make_mlp(), LOSS, (x, y), batch_size=7, strategy="reverse-over-reverse")
    V = np.random.default_rng(0).standard_normal((op.shape[0], 3))
    calls = []
    engine = differentiation.run_engine
    monkeypatch.setattr(differentiation, "run_engine",
                        lambda *args, **kw: calls.append(1) or engine(*args, **kw))
    direct = op.matmat(V)
    assert calls  # the direct path was taken
    monkeypatch.setattr(differentiation, "run_engine", None)  # torch.autograd.grad throughout
    np.testing.assert_array_equal(op.matmat(V), direct)


def test_a_non_scalar_output_takes_autograd_grads_path_and_its_error():
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        differentiation._grad(w * 2, [w])
