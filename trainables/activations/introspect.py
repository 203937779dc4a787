"""The current learnable state of every learnable activation in a model, keyed by module path."""
from __future__ import annotations

from torch import nn

from trainables.activations.lslu import LSLU
from trainables.activations.pwlu import PWLU


def learnable_act_state(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """``{path: {"theta": [θ_1..θ_n], "omega": [ω_1..ω_n]}}`` for every LSLU site and
    ``{path: {"left": [B_L], "right": [B_R]}}`` for every PWLU site.

    Channel granularity reports channel means (of each θ_i and ω_i; of B_L and B_R), as DESIGN.md §4 asks for θ/ω.
    """
    state = {}
    for path, module in model.named_modules():
        if isinstance(module, LSLU):
            state[path] = {"theta": _channel_mean(module.theta, 1), "omega": _channel_mean(module.omega, 1)}
        elif isinstance(module, PWLU):
            state[path] = {"left": _channel_mean(module.left, 0), "right": _channel_mean(module.right, 0)}
    return state


def _channel_mean(p, channel_dim: int) -> list[float]:
    """A layer-granularity value as a list, or the mean over the channel dimension of a channel-granularity one."""
    p = p.detach()
    if p.dim() > channel_dim:
        p = p.mean(dim=channel_dim)
    return p.reshape(-1).cpu().tolist()
