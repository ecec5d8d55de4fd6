"""Answers to be trusted (issue 16, points 3 and 4): data that change between passes are
refused, however their sums look; 16-bit products are refused unless allowed; the default
differentiation strategy is a rule, recorded in the file and checked on resume."""

import numpy as np
import pytest
import torch

from conftest import cnn_data, make_cnn, make_mlp, mlp_data
from lanczos_hessian import (
    HessianOperator,
    InvalidModelError,
    NonDeterministicDataError,
    lanczos_eigsh,
    run,
)
from lanczos_hessian.cli import main
from lanczos_hessian.curvature.data import PassFingerprint
from lanczos_hessian.errors import ResumeError
from lanczos_hessian.storage.hdf5 import read_file

LOSS = torch.nn.CrossEntropyLoss()


class Loader:
    """Batches of 5 samples of ``(x, y)``, transformed anew on every pass by ``transform``."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform
        self.generator = torch.Generator().manual_seed(0)

    def __iter__(self):
        x, y = self.transform(self.x.clone(), self.y.clone(), self.generator)
        for start in range(0, len(x), 5):
            yield x[start:start + 5], y[start:start + 5]


def random_flips(x, y, generator):
    """A left-right flip of half the images, drawn anew on every pass."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x[flip] = x[flip].flip(-1)
    return x, y


def repaired_labels(x, y, generator):
    """The same images and the same labels, the labels dealt to other images every pass."""
    return x, y[torch.randperm(len(y), generator=generator)]


def fingerprints(loader, passes=2):
    out = []
    for _ in range(passes):
        fingerprint = PassFingerprint()
        for inputs, targets in loader:
            fingerprint.add(inputs, targets)
        out.append(fingerprint)
    return out


@pytest.mark.parametrize("transform, named", [
    (random_flips, "the inputs differ, sample by sample: random flips"),
    (repaired_labels, "the same inputs and the same targets, paired differently")])
def test_a_loader_that_changes_samples_between_passes_is_refused(transform, named):
    x, y = cnn_data()
    loader = Loader(x, y, transform)
    first, second = fingerprints(Loader(x, y, transform))
    sums_only = PassFingerprint.from_tuple(first.as_tuple()[:4])  # the former check
    assert second._difference(sums_only, 1e-9) is None  # its sums cannot see the change
    op = HessianOperator(make_cnn(), LOSS, loader)
    with pytest.raises(NonDeterministicDataError, match=named):
        lanczos_eigsh(op, k=3, tol=1e-8, rng=0)
    assert op.num_applications == 1  # refused at the second pass, before any result


def test_shuffling_is_no_change_of_the_data():
    x, y = mlp_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    shuffled = lanczos_eigsh(HessianOperator(make_mlp(), LOSS, loader), k=3, tol=1e-10, rng=0)
    plain = lanczos_eigsh(HessianOperator(make_mlp(), LOSS, (x, y)), k=3, tol=1e-10, rng=0)
    np.testing.assert_allclose(shuffled.eigenvalues, plain.eigenvalues, rtol=1e-9)


class Preempted(Exception):
    pass


class StoppingLoss:
    """Cross-entropy that raises :class:`Preempted` at its ``stop``-th call (a kill)."""

    reduction = "mean"

    def __init__(self):
        self.calls, self.stop = 0, None

    def __call__(self, outputs, targets):
        self.calls += 1
        if self.calls == self.stop:
            raise Preempted
        return LOSS(outputs, targets)


def test_a_resume_with_other_data_says_they_differ_from_the_saved_run(tmp_path):
    x, y = mlp_data()
    path = tmp_path / "run.h5"
    loss = StoppingLoss()
    op = HessianOperator(make_mlp(), loss, (x, y))
    loss.stop = loss.calls + 8  # one batch a pass: stopped at the 8th pass
    with pytest.raises(Preempted):
        run.eigs(op, path, k=3, tol=1e-10, seed=0, progress=False)
    repaired = (x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))])
    for data, named in (((x + 1.0, y), "the inputs differ"),
                        (repaired, "the same inputs and the same targets, paired differently")):
        with pytest.raises(NonDeterministicDataError, match=r"the data differ from the saved "
                           r"run's: the data source yielded different samples than the run "
                           rf"saved in the file \({named}"):
            run.eigs(HessianOperator(make_mlp(), LOSS, data), path, k=3, tol=1e-10, seed=0,
                     resume=True, progress=False)
    resumed = run.eigs(HessianOperator(make_mlp(), LOSS, (x, y)), path, k=3, tol=1e-10,
                       seed=0, resume=True, progress=False)
    whole = lanczos_eigsh(HessianOperator(make_mlp(), LOSS, (x, y)), k=3, tol=1e-10, rng=0)
    np.testing.assert_array_equal(resumed.eigenvalues, whole.eigenvalues)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_models_are_refused_unless_allowed(dtype, tmp_path, monkeypatch, capsys):
    x, y = mlp_data()
    with pytest.raises(InvalidModelError, match=rf"{dtype}.*float32 products with float64 "
                                                r"accumulation.*allow_low_precision=True"):
        HessianOperator(make_mlp().to(dtype), LOSS, (x.to(dtype), y))
    op = HessianOperator(make_mlp().to(dtype), LOSS, (x.to(dtype), y), allow_low_precision=True)
    assert op.model_dtype == dtype
    (tmp_path / "half_problem.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        f"    model = torch.nn.Linear(3, 2).to(torch.{str(dtype).split('.')[1]})\n"
        f"    x = torch.randn(8, 3).to(model.weight.dtype)\n"
        "    return model, torch.nn.CrossEntropyLoss(), (x, torch.randint(0, 2, (8,)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["eigs", "--problem", "half_problem:build", "--k", "2", "--no-progress"]) == 2
    assert "float32 products with float64 accumulation" in capsys.readouterr().err


def test_the_default_strategy_is_a_rule_recorded_in_the_file_and_checked_on_resume(tmp_path):
    x, y = mlp_data()
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    results = [run.eigs(HessianOperator(make_mlp(), LOSS, (x, y)), path, k=4, which="BE",
                        tol=1e-10, seed=0, save_vectors=True, progress=False)
               for path in paths]
    np.testing.assert_array_equal(results[0].eigenvalues, results[1].eigenvalues)
    np.testing.assert_array_equal(results[0].eigenvectors, results[1].eigenvectors)
    saved = [read_file(path) for path in paths]
    np.testing.assert_array_equal(saved[0]["eigs"].steps["alpha"], saved[1]["eigs"].steps["alpha"])
    assert saved[0]["attrs"]["strategy"] == saved[0]["eigs"].attrs["strategy"] \
        == "reverse-over-reverse"  # the rule's choice (curvature/products.py)
    assert HessianOperator(make_cnn(), LOSS, cnn_data()).strategy == "reverse-over-reverse"
    regression = (x, torch.randn(len(x), 3, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64))
    assert HessianOperator(make_mlp(), torch.nn.MSELoss(), regression).strategy \
        == "reverse-over-reverse"  # no forward-mode rule for MSELoss
    other = HessianOperator(make_mlp(), LOSS, (x, y), strategy="forward-over-reverse")
    with pytest.raises(ResumeError, match="strategy: file has 'reverse-over-reverse', this run "
                                          "has 'forward-over-reverse'"):
        run.eigs(other, paths[0], k=4, which="BE", tol=1e-10, seed=0, save_vectors=True,
                 resume=True, progress=False)
    same = HessianOperator(make_mlp(), LOSS, (x, y), strategy="reverse-over-reverse")
    resumed = run.eigs(same, paths[0], k=4, which="BE", tol=1e-10, seed=0, save_vectors=True,
                       resume=True, progress=False)  # "auto" resolved alike: the same setting
    np.testing.assert_array_equal(resumed.eigenvalues, results[0].eigenvalues)
