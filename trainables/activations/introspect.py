"""The current learnable state of every learnable activation in a model, keyed by module path."""
from __future__ import annotations

from torch import nn

from trainables.activations.lslu import LSLU


def learnable_act_state(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """``{path: {"theta": [θ_1..θ_n], "omega": [ω_1..ω_n]}}`` for every LSLU site.

    Channel granularity reports the channel mean of each θ_i and ω_i (DESIGN.md §4).
    """
    state = {}
    for path, module in model.named_modules():
        if isinstance(module, LSLU):
            theta, omega = module.theta.detach(), module.omega.detach()
            if theta.dim() == 2:
                theta, omega = theta.mean(dim=1), omega.mean(dim=1)
            state[path] = {"theta": theta.cpu().tolist(), "omega": omega.cpu().tolist()}
    return state
