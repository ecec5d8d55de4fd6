"""The model digest that run files record (``fingerprints/model``): fed one parameter at a
time, it must equal the SHA-256 of the whole flat float64 parameter vector, the digest of
files written when it was computed from that vector, so that those files still resume."""

import hashlib

import torch

from lanczos_hessian import HessianOperator
from lanczos_hessian.curvature.params import ParameterSpace


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def test_streamed_digest_is_the_digest_of_the_flat_float64_vector():
    model = _model()
    space = ParameterSpace.of(model)
    whole = hashlib.sha256(space.flat_parameters(model).numpy().tobytes()).hexdigest()[:16]
    assert space.digest(model) == whole
    assert space.digest(model, whole=lambda p: p.clone()) == whole


def test_operator_identity_records_the_digest_and_follows_the_parameters():
    model = _model()
    data = (torch.randn(9, 5), torch.randint(0, 3, (9,)))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data, batch_size=4)
    digest = op.identity()["fingerprints"]["model"]
    assert digest == hashlib.sha256(op.flat_parameters().numpy().tobytes()).hexdigest()[:16]
    with torch.no_grad():
        model[2].bias[1] += 1e-6
    assert op.identity()["fingerprints"]["model"] != digest
