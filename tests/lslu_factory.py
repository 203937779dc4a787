"""An LSLU far from its initial values, for tests in which every term of the formula has to matter."""

import torch

from trainables.activations import LSLU


def randomized_lslu(
    base: str = "relu",
    granularity: str = "layer",
    n: int = 3,
    channels: int = 3,
    seed: int = 0,
    theta: tuple[float, float] = (0.5, 1.5),
) -> LSLU:
    """float64; θ uniform in ``theta`` (spanning 0 for the ReLU closed form's bound swaps), ω in [−0.5, 0.5], the
    depthwise kernel N(0, 0.3²), BatchNorm's γ in [0.5, 2], β in [−1, 1], running mean in [−0.5, 0.5], variance in
    [0.5, 2]."""
    torch.manual_seed(seed)
    act = LSLU(channels, n=n, base=base, granularity=granularity).double()
    with torch.no_grad():
        act.theta.uniform_(*theta)
        act.omega.uniform_(-0.5, 0.5)
        act.weight.normal_(0, 0.3)
        act.bn.weight.uniform_(0.5, 2.0)
        act.bn.bias.uniform_(-1, 1)
        act.bn.running_mean.uniform_(-0.5, 0.5)
        act.bn.running_var.uniform_(0.5, 2.0)
    return act
