"""A deterministic float64 problem whose passes take a little time, for kill/resume tests.

Importable by the CLI as ``slow_mlp:build`` with ``tests/problems`` on PYTHONPATH.
"""

import os
import time

import torch

#: Seconds every forward sleeps ($SLOW_MLP_SLEEP: longer for a run that must outlive others).
SLEEP = float(os.environ.get("SLOW_MLP_SLEEP", "0.003"))


class SlowMLP(torch.nn.Module):
    """MLP 6-12-4 (136 parameters); every forward sleeps a moment so a run can be killed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                                       torch.nn.Linear(12, 4))

    def forward(self, x):
        time.sleep(SLEEP)
        return self.net(x)


def build(num_samples=90):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(num_samples, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (num_samples,), generator=g)
    return SlowMLP().double(), torch.nn.CrossEntropyLoss(), (x, y)


def build_other_data():
    """The same model with different data: a resume must refuse it."""
    model, loss, (x, y) = build()
    return model, loss, (x + 1.0, y)
