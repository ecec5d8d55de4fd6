"""Inputs: dict batches through ``unpack``, ``--problem`` modules in the working directory,
and the warning for a model and data of different floating-point precision."""

import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import assert_close, random_block
from lanczos_hessian import HessianOperator, NonDeterministicDataError, dense_matrix
from lanczos_hessian.curvature.data import dict_batch
from lanczos_hessian.errors import InvalidDataError, PrecisionWarning
from lanczos_hessian.examples import keyword_inputs
from lanczos_hessian.examples.problems import load_problem


class KeywordModel(torch.nn.Module):
    """A tiny MLP whose forward takes keyword arguments only (``features``, ``scale``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)

    def forward(self, *, features, scale):
        return self.fc2(torch.tanh(self.fc1(features * scale[:, None])))


class PositionalModel(KeywordModel):
    """The same network called as ``model(features, scale)`` (a tuple of inputs)."""

    def forward(self, features, scale):
        return super().forward(features=features, scale=scale)


def keyword_data(n=23, batch=7):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    dicts = [{"features": x[i:i + batch], "scale": s[i:i + batch], "labels": y[i:i + batch]}
             for i in range(0, n, batch)]
    return x, s, y, dicts


@pytest.mark.slow  # 3-4 s
def test_dict_batches_give_the_tuple_path_hessian():
    x, s, y, dicts = keyword_data()
    loss = torch.nn.CrossEntropyLoss()
    model = KeywordModel().double()
    positional = PositionalModel().double()
    positional.load_state_dict(model.state_dict())
    tuples = [((b["features"], b["scale"]), b["labels"]) for b in dicts]
    V = random_block(model.fc1.weight.numel() + 5 + 15 + 3, 3)
    for strategy in ("forward-over-reverse", "reverse-over-reverse"):
        by_dict = HessianOperator(model, loss, dicts, unpack=dict_batch("labels"),
                                  strategy=strategy)
        by_tuple = HessianOperator(positional, loss, tuples, strategy=strategy)
        assert_close(by_dict.matmat(V), by_tuple.matmat(V), 1e-12, strategy)
    # and both against the dense float64 Hessian of the same network on a tensor pair
    plain = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).double()
    plain[0].load_state_dict(model.fc1.state_dict())
    plain[2].load_state_dict(model.fc2.state_dict())
    H = dense_matrix(HessianOperator(plain, loss, (x * s[:, None], y), batch_size=7))
    assert_close(by_dict.matmat(V), H @ V, 1e-11, "dict vs dense")
    # the dense reference itself (autodiff of the whole Hessian) takes dict batches too
    assert_close(dense_matrix(by_dict), H, 1e-12, "dense of dict batches")


def test_dict_batch_chooses_keys_and_names_a_missing_target():
    batch = {"features": torch.ones(2, 4), "scale": torch.ones(2), "labels": torch.zeros(2)}
    inputs, targets = dict_batch("labels", inputs=["features"])(batch)
    assert list(inputs) == ["features"] and targets is batch["labels"]
    with pytest.raises(InvalidDataError, match="unpack failed on batch 0.*'target'"):
        HessianOperator(KeywordModel(), torch.nn.CrossEntropyLoss(), [batch],
                        unpack=dict_batch("target"))


def test_dict_batch_without_unpack_names_the_keys_and_the_parameter():
    _, _, _, dicts = keyword_data()
    with pytest.raises(InvalidDataError) as info:
        HessianOperator(KeywordModel().double(), torch.nn.CrossEntropyLoss(), dicts)
    message = str(info.value)
    assert "['features', 'labels', 'scale']" in message and "unpack=" in message
    assert "dict_batch('labels')" in message


def test_unpack_refuses_a_tensor_pair_and_bad_results():
    x, s, y, dicts = keyword_data()
    with pytest.raises(ValueError, match="needs none"):
        HessianOperator(KeywordModel().double(), torch.nn.CrossEntropyLoss(), (x, y),
                        unpack=dict_batch())
    with pytest.raises(InvalidDataError, match="unpack\\(batch 0\\).*targets must be a tensor"):
        HessianOperator(KeywordModel().double(), torch.nn.CrossEntropyLoss(), dicts,
                        unpack=lambda b: (b["features"], "labels"))
    with pytest.raises(InvalidDataError, match="inputs have \\[7, 6\\] samples"):
        HessianOperator(KeywordModel().double(), torch.nn.CrossEntropyLoss(), dicts,
                        unpack=lambda b: ({"features": b["features"], "scale": b["scale"][:6]},
                                          b["labels"]))


def test_dict_batches_changing_between_passes_are_detected():
    x, s, y, dicts = keyword_data()
    calls = []

    def unpack(batch):  # the scale drawn anew on every pass: a different matrix each time
        calls.append(1)
        return {"features": batch["features"],
                "scale": batch["scale"] * (1 + 0.01 * len(calls))}, batch["labels"]

    op = HessianOperator(KeywordModel().double(), torch.nn.CrossEntropyLoss(), dicts,
                         unpack=unpack)
    v = np.ones(op.shape[0])
    op.matvec(v)
    with pytest.raises(NonDeterministicDataError, match="inputs differ"):
        op.matvec(v)


def test_keyword_inputs_example_runs(capsys):
    """The README's Inputs example (lanczos_hessian/examples/keyword_inputs.py)."""
    problem = keyword_inputs.build(batch_size=16)
    batch = next(iter(problem.data))
    assert isinstance(batch, dict) and set(batch) == {"input_ids", "attention_mask", "labels"}
    keyword_inputs.main()
    out = capsys.readouterr().out
    assert "EigshResult(k=3" in out and "converged 3/3" in out
    op = HessianOperator(problem.model, problem.loss_fn, problem.data, unpack=problem.unpack)
    H = dense_matrix(op, method="products")  # Lanczos against all M products of the dict path
    top = np.linalg.eigvalsh(H)[-3:]
    values = [float(line.split()[1]) for line in out.splitlines()[2:5]]
    np.testing.assert_allclose(values, top, rtol=1e-7)


# ------------------------------------------------------------------ --problem from the cwd


def test_problem_module_found_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_problem_mod.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    x = torch.randn(8, 2, dtype=torch.float64)\n"
        "    model = torch.nn.Linear(2, 2).double()\n"
        "    return model, torch.nn.CrossEntropyLoss(), (x, torch.zeros(8, dtype=torch.long))\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_problem_mod", raising=False)
    monkeypatch.chdir(tmp_path)
    problem = load_problem("cwd_problem_mod:build")
    assert problem.model.weight.shape == (2, 2)
    sys.modules.pop("cwd_problem_mod", None)


def test_problem_module_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        load_problem("no_such_module_xyz:build")
    message = str(info.value)
    assert str(tmp_path) in message and "PYTHONPATH" in message
    assert "no module named 'no_such_module_xyz'" in message


def test_problem_module_failing_inside_is_not_blamed_on_the_path(tmp_path, monkeypatch):
    (tmp_path / "broken_problem_mod.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "broken_problem_mod", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="failed inside the module.*not_installed_dependency"):
        load_problem("broken_problem_mod:build")


# ------------------------------------------------------------------ precision mismatch


@pytest.mark.parametrize("model_dtype, data_dtype", [(torch.float64, torch.float32),
                                                      (torch.float32, torch.float64)])
def test_precision_mismatch_warns_once(model_dtype, data_dtype):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(model_dtype)
    x, y = torch.randn(10, 3, dtype=data_dtype), torch.randint(0, 2, (10,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4)
        op.matvec(np.ones(op.shape[0]))
        op.matvec(np.ones(op.shape[0]))
    mine = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    text = str(mine[0].message)
    assert str(model_dtype) in text and str(data_dtype) in text
    assert f"computed in {model_dtype}" in text
    assert mine[0].filename == __file__  # points at the caller's line


def test_same_precision_and_integer_inputs_do_not_warn():
    problem = keyword_inputs.build()  # float64 model, int64 token ids, int64 mask
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        HessianOperator(problem.model, problem.loss_fn, problem.data, unpack=problem.unpack)
        model = torch.nn.Linear(3, 2).double()
        HessianOperator(model, torch.nn.CrossEntropyLoss(),
                        (torch.randn(5, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.long)))


def test_command_line_takes_a_problem_with_dict_batches(tmp_path, capsys):
    """``--problem module:function`` returning dict batches and their ``unpack``: the command
    line passes ``unpack`` on, and its eigenvalues are those of the dense dict-path Hessian."""
    from lanczos_hessian.cli import main

    out = tmp_path / "kw.h5"
    code = main(["eigs", "--problem", "lanczos_hessian.examples.keyword_inputs:build",
                 "--k", "2", "--tol", "1e-8", "--seed", "0", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr()
    problem = keyword_inputs.build()
    op = HessianOperator(problem.model, problem.loss_fn, problem.data, unpack=problem.unpack)
    top = np.linalg.eigvalsh(dense_matrix(op))[-2:]
    import h5py

    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(np.sort(f["eigs/eigenvalues"][()]), top, rtol=1e-7)
