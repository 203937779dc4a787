"""A user's own learnable activation, known to no file of the project: the activation contract (DESIGN.md §2) alone
carries it through a sweep (tests/test_plugin_act.py)."""

import torch
from torch import nn


class SlopeReLU(nn.Module):
    """max(x, 0) + a·min(x, 0) with one learned slope a for the whole layer."""

    def __init__(self, channels: int | None = None, init: float = 0.25):
        super().__init__()
        self.slope = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return torch.relu(x) - self.slope * torch.relu(-x)

    def learnable_state(self) -> dict[str, float]:
        return {"slope": self.slope.item()}

    def on_epoch_start(self, epoch: int, epochs: int) -> bool:
        self.epochs_started = epoch + 1  # what the loop told it, read back by the test
        return False
