"""A user's own networks, known to no file of the project: named by import path (``tests.user_models:build``) in the
trial config (tests/test_model_names.py)."""

from torch import nn


class TinyNet(nn.Module):
    """conv–BN–ReLU stem, ``depth`` stride-2 conv–BN–SiLU blocks of ``width``× channels, a linear head."""

    def __init__(self, num_classes: int, in_chans: int, width: float, depth: int):
        super().__init__()
        c = max(1, round(16 * width))
        self.width, self.depth = width, depth
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        block = lambda: nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.SiLU())  # noqa: E731
        self.blocks = nn.Sequential(*[block() for _ in range(depth)])
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def build(num_classes: int, in_chans: int = 3, width: float = 1.0, depth: int = 2) -> nn.Module:
    return TinyNet(num_classes, in_chans, width, depth)


def build_rgb(num_classes: int, width: float = 1.0) -> nn.Module:
    """A factory without ``in_chans``: the project rebuilds its first convolution for other inputs."""
    return TinyNet(num_classes, 3, width, 1)


class MlpHeadNet(nn.Module):
    """Two conv–ReLU blocks (the second stride 2), then an MLP head whose Hardswish acts on flat (B, F) features: a
    site that an activation needing a spatial map (LSLU) cannot take."""

    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(16, 12), nn.Hardswish(), nn.Linear(12, num_classes))

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


def build_mlp_head(num_classes: int, in_chans: int = 3) -> nn.Module:
    return MlpHeadNet(num_classes, in_chans)


def not_a_model(num_classes: int):
    return {"num_classes": num_classes}


NOT_CALLABLE = 3


class DataDependentNet(TinyNet):
    """TinyNet whose head depends on the input's values: ``torch.export`` cannot trace it (no MLflow model)."""

    def forward(self, x):
        features = self.blocks(self.stem(x)).mean((2, 3))
        return self.head(features) if features.sum() > 0 else -self.head(features)


def build_data_dependent(num_classes: int, in_chans: int = 3) -> nn.Module:
    return DataDependentNet(num_classes, in_chans, 1.0, 1)
