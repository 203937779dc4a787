"""A small CNN for the bundled digits set: four conv–BN–activation sites (stem and three one-block stages).

Every nonlinearity is a named module built by ``create_act``, so the insertion engine sees it as a site.
"""

from __future__ import annotations

from torch import nn

from trainables.activations import create_act
from trainables.models.registry import register_model


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = create_act(act, channels=cout, inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DigitsCNN(nn.Module):
    def __init__(
        self, num_classes: int, in_chans: int = 3, width: float = 1.0, act: str = "relu", dropout: float = 0.0
    ):
        super().__init__()
        w = max(1, round(16 * width))
        act = "relu" if act == "native" else act
        self.stem = ConvBlock(in_chans, w, 1, act)
        self.stages = nn.Sequential(
            ConvBlock(w, 2 * w, 2, act), ConvBlock(2 * w, 2 * w, 1, act), ConvBlock(2 * w, 4 * w, 2, act)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)
        self.lslu_stage_paths = ["stages.0", "stages.1", "stages.2"]

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.drop(x))


@register_model("digits_cnn")
def digits_cnn(
    num_classes: int,
    in_chans: int = 3,
    cifar_stem: bool = False,
    width: float = 1.0,
    act: str = "relu",
    dropout: float = 0.0,
):
    """Its stem is already 3×3 stride 1: ``cifar_stem`` changes nothing."""
    return DigitsCNN(num_classes, in_chans, width=width, act=act, dropout=dropout)
