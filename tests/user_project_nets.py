"""Copied into a temp folder outside the project by test_multinode as ``<package>/nets.py``: a user's own network,
with nested blocks, a GELU in an MLP on NHWC tensors, SiLUs and one functional relu."""

import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ChannelMlp(nn.Module):
    """ConvNeXt-style: the MLP runs on (B, H, W, C)."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1))))
        return x + y.permute(0, 3, 1, 2)


class Net(nn.Module):
    def __init__(self, num_classes, in_chans=3, width=8):
        super().__init__()
        self.stem = Block(in_chans, width, 1)
        self.stages = nn.Sequential(
            nn.Sequential(Block(width, 2 * width, 2), ChannelMlp(2 * width)),
            nn.Sequential(Block(2 * width, 4 * width, 2)),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.stages(self.stem(x)))
        return self.head(x.mean((2, 3)))


def build(num_classes, in_chans=3, width=8):
    return Net(num_classes, in_chans, width)
