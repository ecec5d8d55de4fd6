"""Curvature operators against exact dense float64 references (tests/conftest.py)."""

import numpy as np
import pytest
import torch

from conftest import assert_close, make_mlp, mlp_data, random_block
from lanczos_hessian import (
    GGNOperator,
    HessianOperator,
    NonDeterministicDataError,
    ResidualOperator,
    dense_matrix,
)

STRATEGIES = ["forward-over-reverse", "reverse-over-reverse"]


def data_forms(x, y, batch_size):
    """The same data as a tensor pair, a DataLoader and a list of ragged batches."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=batch_size)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return {"tensors": (x, y), "loader": loader, "list": batches}


@pytest.mark.parametrize("strategy", STRATEGIES + ["auto"])
def test_products_match_dense_reference(case, strategy):
    if strategy == "forward-over-reverse" and case["name"].startswith("mlp-mse"):
        strategy = "auto"  # MSELoss lacks forward-over-reverse in torch: the test below
    x, y = case["data"]
    V = random_block(case["H"].shape[0], 3)
    refs = {"hessian": case["H"], "ggn": case["G"], "residual": case["H"] - case["G"]}
    for form, data in data_forms(x, y, batch_size=7).items():  # 7 does not divide N: ragged
        for cls in (HessianOperator, GGNOperator, ResidualOperator):
            op = cls(case["model"], case["loss_fn"], data, batch_size=7, strategy=strategy)
            assert op.shape == refs["hessian"].shape and op.dtype == np.float64
            assert_close(op.matmat(V), refs[op.kind] @ V, 1e-11, f"{op.kind} {form}")
            assert_close(op.matvec(V[:, 0]), refs[op.kind] @ V[:, 0], 1e-11)


def test_forward_mode_failure_is_named_and_auto_falls_back():
    from lanczos_hessian import ForwardModeUnsupportedError

    model, (x, _) = make_mlp(), mlp_data()
    y = torch.randn(len(x), 3, dtype=torch.float64)
    V = random_block(sum(p.numel() for p in model.parameters()), 2)
    explicit = HessianOperator(model, torch.nn.MSELoss(), (x, y),
                               strategy="forward-over-reverse")
    with pytest.raises(ForwardModeUnsupportedError, match="reverse-over-reverse"):
        explicit.matmat(V)
    auto = HessianOperator(model, torch.nn.MSELoss(), (x, y), strategy="auto")
    assert auto.strategy == "reverse-over-reverse"  # resolved by its rule at construction
    np.testing.assert_allclose(auto.matmat(V), HessianOperator(
        model, torch.nn.MSELoss(), (x, y), strategy="reverse-over-reverse").matmat(V),
        rtol=0, atol=0)


def test_dense_path_matches_reference(case):
    for cls, ref in ((HessianOperator, case["H"]), (GGNOperator, case["G"]),
                     (ResidualOperator, case["H"] - case["G"])):
        op = cls(case["model"], case["loss_fn"], case["data"], batch_size=5)
        assert_close(dense_matrix(op), ref, 1e-11, f"dense {op.kind}")
        assert_close(dense_matrix(op, method="products", block_size=16), ref, 1e-11,
                     f"dense {op.kind} by products")


def test_sum_reduction_is_n_times_mean():
    """A missing or extra 1/N would show here: the sum-loss Hessian is exactly N times."""
    model, (x, y) = make_mlp(), mlp_data()
    mean = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4)
    summed = HessianOperator(model, torch.nn.CrossEntropyLoss(reduction="sum"), (x, y),
                             batch_size=4)
    v = random_block(mean.shape[0], 1)
    assert_close(summed.matmat(v), len(x) * mean.matmat(v), 1e-12, "sum = N * mean")


def test_ggn_is_symmetric_psd_and_h_equals_g_plus_r(case):
    x, y = case["data"]
    G = dense_matrix(GGNOperator(case["model"], case["loss_fn"], (x, y), batch_size=6))
    R = dense_matrix(ResidualOperator(case["model"], case["loss_fn"], (x, y), batch_size=6))
    H = dense_matrix(HessianOperator(case["model"], case["loss_fn"], (x, y), batch_size=6))
    assert np.abs(G - G.T).max() <= 1e-14 * np.abs(G).max() * 10
    assert np.linalg.eigvalsh(G).min() >= -1e-12 * np.abs(G).max()
    assert_close(G + R, H, 1e-12, "H = G + R")


def test_numpy_torch_and_block_paths_agree_and_block_is_one_pass():
    model, (x, y) = make_mlp(), mlp_data()
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=5)
    V = random_block(op.shape[0], 4)
    block = op.matmat(V)
    assert op.num_applications == 1 and op.num_vectors == 4
    torch_block = op.apply(torch.from_numpy(V)).numpy()
    columns = np.stack([op.matvec(V[:, j]) for j in range(4)], axis=1)
    assert_close(torch_block, block, 1e-13, "torch vs numpy block")
    assert_close(columns, block, 1e-13, "single vs block")
    assert_close(op.rmatvec(V[:, 0]), block[:, 0], 1e-13, "rmatvec")


def test_float32_model_accumulates_in_float64():
    model = make_mlp()
    x, y = mlp_data(n=200)
    H64 = dense_matrix(HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y)))
    model32 = make_mlp().float()
    op = HessianOperator(model32, torch.nn.CrossEntropyLoss(), (x.float(), y), batch_size=3,
                         dtype=np.float32)
    V = random_block(op.shape[0], 2)
    out = op.matmat(V)
    assert out.dtype == np.float32
    # float32 products, float64 sum of 67 batches: error at float32 level, not 67x it
    assert_close(out, H64 @ V, 2e-6, "float32 model")


def test_eval_mode_is_used_and_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Dropout(0.5), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    x, y = mlp_data()
    model(x)  # give batch-norm non-trivial running statistics
    model.train()
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=6)
    H = dense_matrix(op)
    V = random_block(op.shape[0], 2)
    first, second = op.matmat(V), op.matmat(V)
    assert_close(first, second, 1e-14, "repeat")  # dropout off: deterministic
    assert_close(first, H @ V, 1e-11, "eval-mode Hessian")
    assert_close(H, H.T, 1e-12, "symmetry")
    assert model.training and all(m.training for m in model.modules())


def test_parameter_subset_is_the_diagonal_block(case):
    names = [n for n, _ in case["model"].named_parameters()]
    first = names[0].split(".")[0]  # the first module
    op = HessianOperator(case["model"], case["loss_fn"], case["data"], params=[first])
    m = op.shape[0]
    offset = 0  # the first module's parameters come first in the flat vector
    block = case["H"][offset:offset + m, offset:offset + m]
    assert_close(dense_matrix(op), block, 1e-11, "block Hessian")


def test_shuffled_loader_is_fine_but_augmentation_is_detected():
    model, (x, y) = make_mlp(), mlp_data()
    dataset = torch.utils.data.TensorDataset(x, y)
    shuffled = torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=True)
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), shuffled)
    V = random_block(op.shape[0], 1)
    assert_close(op.matmat(V), op.matmat(V), 1e-12, "shuffled passes")

    class Augmented:
        def __iter__(self):
            for i in range(0, len(x), 5):
                yield x[i:i + 5] + 0.01 * torch.randn_like(x[i:i + 5]), y[i:i + 5]

    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), Augmented())
    op.matmat(V)
    with pytest.raises(NonDeterministicDataError, match="different samples"):
        op.matmat(V)


def test_operator_follows_the_model_and_reports_itself():
    model, (x, y) = make_mlp(), mlp_data()
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    v = random_block(op.shape[0], 1)
    before = op.matmat(v)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    assert np.abs(op.matmat(v) - before).max() > 1e-3
    assert "HessianOperator" in repr(op) and op.flat_parameters().shape == (op.shape[0],)
