"""A small network of nested blocks, written as a user would: conv–BN–SiLU blocks, a mixer block whose MLP runs on
channels-last (B, H, W, C) tensors with a GELU between its two Linears (as ConvNeXt's does), and one activation applied
as a function (``F.relu`` before the pooling), which no insertion policy can replace.

    lslu-sweep sites my_project.nets:build      # from examples/my_project: the sites, their layouts, the F.relu
"""

from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """conv 3×3 (stride ``stride``) – BatchNorm – SiLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class MixerBlock(nn.Module):
    """Depthwise 3×3 conv, then an MLP over the channels on a channels-last view: Linear – GELU – Linear, residual."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, expansion * channels), nn.GELU(), nn.Linear(expansion * channels, channels)
        )

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        return x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)


class Stage(nn.Module):
    """A stride-2 ConvBlock (the stage downsamples) and ``depth`` MixerBlocks."""

    def __init__(self, cin: int, cout: int, depth: int):
        super().__init__()
        self.down = ConvBlock(cin, cout, stride=2)
        self.blocks = nn.Sequential(*[MixerBlock(cout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.down(x))


class MyNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16, depth: int = 1):
        super().__init__()
        self.stem = ConvBlock(in_chans, width)
        self.stages = nn.Sequential(Stage(width, 2 * width, depth), Stage(2 * width, 4 * width, depth))
        self.norm = nn.BatchNorm2d(4 * width)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.stages(self.stem(x))))  # a functional activation: counted by `sites`, not a site
        return self.head(x.mean((2, 3)))


def build(num_classes: int, in_chans: int = 3, width: int = 16, depth: int = 1) -> nn.Module:
    """The factory ``model: my_project.nets:build`` names; ``width`` and ``depth`` come from ``model_args``."""
    return MyNet(num_classes, in_chans, width, depth)
