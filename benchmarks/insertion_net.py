"""The ground-truth network of the insertion benchmark (``bench_insertion.py``), as
``model: benchmarks.insertion_net:build``.

Six conv-BN-ReLU sites whose convolutions are all 1×1, in three resolutions (average pooling between them), then a
global mean and a linear head. A ReLU site mixes nothing spatially, an LSLU site does (its (2n+1)² depthwise
convolution): which sites get LSLU decides how far the network sees, so the 64 masks really differ in accuracy on
digits (the spread is many times the seed noise, ``benchmarks/README.md``), which is what a benchmark of insertion
search needs. It is small enough that every mask can be trained standalone with several seeds on two CPU cores.
"""

from torch import nn


def _site(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class InsertionNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, channels: int):
        super().__init__()
        c = channels
        self.stem = _site(in_chans, c)  # site 0, full resolution
        self.stage1 = nn.Sequential(nn.AvgPool2d(2), _site(c, c), _site(c, c))  # sites 1, 2: 1/2
        self.stage2 = nn.Sequential(nn.AvgPool2d(2), _site(c, 2 * c), _site(2 * c, 2 * c))  # sites 3, 4: 1/4
        self.stage3 = nn.Sequential(nn.AvgPool2d(2), _site(2 * c, 2 * c))  # site 5: 1/8
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))).mean((2, 3)))


def build(num_classes: int, in_chans: int = 3, channels: int = 16) -> nn.Module:
    return InsertionNet(num_classes, in_chans, channels)
