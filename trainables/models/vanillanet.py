"""VanillaNet-5 … 13 (papers/000 Table 3; the VanillaNet paper's dims and strides), built in house.

Kept close to the authors' module layout (``stem1``, ``stem2``, ``stages.i.{conv1,conv2,act}``, ``cls1``,
``cls2``) so their checkpoints map onto it, with two changes DESIGN.md §3 asks for:
- every nonlinearity is a named module: the deep-training leaky ReLUs are ``DeepTrainAct`` modules;
- the series activation's base may be relu, silu or gelu (``act``); ``act_num`` is its series length n.

Deep training (VanillaNet §3.1): between the two 1×1 convs of each block sits A'(x) = (1−λ)·relu(x) + λ·x,
i.e. a leaky ReLU with negative slope λ. λ rises from 0 to 1 over the first epochs (each ``DeepTrainAct``'s
``on_epoch_start``, which the loop calls; ``set_act_learn`` sets it by hand): the nonlinearity anneals away, and at
λ = 1 ``fuse()`` merges the two convs.
λ travels in the state dict, so a checkpoint restores it.

``DeepTrainAct`` is not an insertion site: it is the deep-training schedule and vanishes in the deploy form.
The sites are VanillaNet's series activations (stem and every stage), the ones papers/000 replaces with LSLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations.lslu import BASES, activation_conv
from trainables.fusion import fold_bn, fold_own_bn_, merge_1x1
from trainables.insertion import register_site_type
from trainables.models.registry import register_model

# (dims, strides) of the authors' vanillanet_5 … vanillanet_13 (dims are multiples of 128·4 at width 1).
ARCHS = {
    5: ([4, 8, 16, 32], [2, 2, 2]),
    6: ([4, 8, 16, 32, 32], [2, 2, 2, 1]),
    7: ([4, 4, 8, 16, 32, 32], [1, 2, 2, 2, 1]),
    8: ([4, 4, 8, 16, 16, 32, 32], [1, 2, 2, 1, 2, 1]),
    9: ([4, 4, 8, 16, 16, 16, 32, 32], [1, 2, 2, 1, 1, 2, 1]),
    10: ([4, 4, 8, 16, 16, 16, 16, 32, 32], [1, 2, 2, 1, 1, 1, 2, 1]),
    11: ([4, 4, 8, 16, 16, 16, 16, 16, 32, 32], [1, 2, 2, 1, 1, 1, 1, 2, 1]),
    12: ([4, 4, 8, 16, 16, 16, 16, 16, 16, 32, 32], [1, 2, 2, 1, 1, 1, 1, 1, 2, 1]),
    13: ([4, 4, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32], [1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1]),
}
DIM_UNIT = 128  # dims above × 128 = the paper's 512, 1024, 2048, 4096


@register_site_type
class VanillaAct(nn.Module):
    """VanillaNet's series activation: ``bn(depthwise_conv(f(x)))`` with a (2n+1)² kernel.

    With a ReLU base this equals LSLU with θ=1, ω=0 frozen (``create_act("lslu", learnable=False)``).
    """

    def __init__(self, channels: int, act_num: int = 3, base: str = "relu"):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"VanillaNet's activation base {base!r} is not one of {', '.join(BASES)}")
        self.channels, self.act_num, self.base = channels, act_num, base
        self.weight = nn.Parameter(torch.empty(channels, 1, 2 * act_num + 1, 2 * act_num + 1))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias: nn.Parameter | None = None
        self.bn: nn.Module = nn.BatchNorm2d(channels, eps=1e-6)
        self._cpu_memo: dict = {}  # the CPU inference kernel's operands while the weights are unchanged

    def forward(self, x):
        y = activation_conv(x, self.weight, self.bias, self.base, self._cpu_memo)  # routed as LSLU's site (dispatch.py)
        return y if self.bias is not None else self.bn(y)

    @torch.no_grad()
    def fuse(self) -> "VanillaAct":
        if self.bias is None:
            fold_own_bn_(self)
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels}, act_num={self.act_num}, base={self.base}"


def deep_training_lambda(epoch: int, epochs: int, deep_train_epochs: int = 0) -> float:
    """λ for the epoch about to run (0-based): 0 → 1 over ``deep_train_epochs`` (0: a third of the epochs)."""
    span = deep_train_epochs or max(1, round(epochs / 3))
    return min(1.0, epoch / span)


class DeepTrainAct(nn.Module):
    """(1−λ)·relu(x) + λ·x = leaky_relu(x, negative_slope=λ); λ rises from 0 to 1 during deep training.

    λ is a Python float (no device sync per forward) kept in the state dict as extra state, so a
    checkpoint restores it; an EMA copy gets it from the trained model's module when ``on_epoch_start`` changes it.
    """

    def __init__(self, deep_train_epochs: int = 0):
        super().__init__()
        self.act_learn = 0.0
        self.deep_train_epochs = deep_train_epochs  # epochs for λ to rise 0 → 1 (0: a third of the epochs)

    def on_epoch_start(self, epoch: int, epochs: int) -> bool:
        """λ for the epoch about to run; True when it changed."""
        value = deep_training_lambda(epoch, epochs, self.deep_train_epochs)
        changed, self.act_learn = value != self.act_learn, value
        return changed

    def forward(self, x):
        return F.leaky_relu(x, self.act_learn)

    def get_extra_state(self) -> dict:
        return {"act_learn": self.act_learn}

    def set_extra_state(self, state: dict) -> None:
        self.act_learn = float(state["act_learn"])

    def extra_repr(self) -> str:
        return f"act_learn={self.act_learn:.3f}"


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm2d(cout, eps=1e-6))


def _folded(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    return fold_bn(seq[0].weight, seq[0].bias, seq[1])


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, act_num: int, stride: int, base: str, deep_train_epochs: int = 0):
        super().__init__()
        self.conv1 = _conv_bn(dim, dim)
        self.deep_act = DeepTrainAct(deep_train_epochs)
        self.conv2 = _conv_bn(dim, dim_out)
        self.pool = nn.Identity() if stride == 1 else nn.MaxPool2d(stride)
        self.act = VanillaAct(dim_out, act_num, base)

    def forward(self, x):
        x = self.conv(x) if hasattr(self, "conv") else self.conv2(self.deep_act(self.conv1(x)))
        return self.act(self.pool(x))

    @torch.no_grad()
    def fuse(self) -> None:
        inner_w, inner_b = _folded(self.conv1)
        outer_w, outer_b = _folded(self.conv2)
        weight, bias = merge_1x1(outer_w, outer_b, inner_w, inner_b)
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1).to(weight)
        self.conv.weight.copy_(weight)
        self.conv.bias.copy_(bias)
        del self.conv1, self.deep_act, self.conv2
        if hasattr(self.act, "fuse"):
            self.act.fuse()


class VanillaNet(nn.Module):
    def __init__(
        self,
        dims: list[int],
        strides: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        act_num: int = 3,
        act: str = "relu",
        dropout: float = 0.0,
        cifar_stem: bool = False,
        deep_train_epochs: int = 0,
    ):
        super().__init__()
        stem_conv = dict(kernel=3, stride=1, padding=1) if cifar_stem else dict(kernel=4, stride=4, padding=0)
        self.stem1 = _conv_bn(in_chans, dims[0], **stem_conv)
        self.stem_act = DeepTrainAct(deep_train_epochs)
        self.stem2 = nn.Sequential(*_conv_bn(dims[0], dims[0]), VanillaAct(dims[0], act_num, act))
        self.stages = nn.ModuleList(
            Block(dims[i], dims[i + 1], act_num, strides[i], act, deep_train_epochs) for i in range(len(strides))
        )
        self.cls1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout), *_conv_bn(dims[-1], num_classes))
        self.cls_act = DeepTrainAct(deep_train_epochs)
        self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))
        self.lslu_stage_paths = [f"stages.{i}" for i in range(len(strides))]
        self.apply(_init_weights)

    @property
    def fused(self) -> bool:
        return hasattr(self, "stem")

    def set_act_learn(self, value: float) -> None:
        """Deep training's λ for every DeepTrainAct, set by hand (the deploy architecture, tests)."""
        for m in self.modules():
            if isinstance(m, DeepTrainAct):
                m.act_learn = float(value)

    def forward(self, x):
        if self.fused:
            x = self.stem(x)
        else:
            x = self.stem2(self.stem_act(self.stem1(x)))
        for stage in self.stages:
            x = stage(x)
        x = self.cls(x) if self.fused else self.cls2(self.cls_act(self.cls1(x)))
        return x.flatten(1)

    @torch.no_grad()
    def fuse(self) -> "VanillaNet":
        """The deploy form: BNs folded, each pair of 1×1 convs merged, series activations fused (in place).

        Exact only once deep training is over (λ = 1, every DeepTrainAct the identity).
        """
        if self.fused:
            return self
        lams = {m.act_learn for m in self.modules() if isinstance(m, DeepTrainAct)}
        if lams != {1.0}:
            raise ValueError(
                f"fuse() needs deep training finished (act_learn = 1 everywhere), got act_learn {sorted(lams)}"
            )
        inner_w, inner_b = _folded(self.stem1)
        outer_w, outer_b = fold_bn(self.stem2[0].weight, self.stem2[0].bias, self.stem2[1])
        weight, bias = merge_1x1(outer_w, outer_b, inner_w, inner_b)
        conv = self.stem1[0]
        conv.weight = nn.Parameter(weight)
        conv.bias = nn.Parameter(bias)
        act = self.stem2[2]
        if hasattr(act, "fuse"):
            act.fuse()
        self.stem = nn.Sequential(conv, act)
        for stage in self.stages:
            stage.fuse()
        inner_w, inner_b = fold_bn(self.cls1[2].weight, self.cls1[2].bias, self.cls1[3])
        outer_w, outer_b = self.cls2[0].weight, self.cls2[0].bias
        weight, bias = merge_1x1(outer_w, outer_b, inner_w, inner_b)
        head = nn.Conv2d(weight.shape[1], weight.shape[0], 1).to(weight)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        self.cls = nn.Sequential(self.cls1[0], self.cls1[1], head)
        del self.stem1, self.stem_act, self.stem2, self.cls1, self.cls_act, self.cls2
        return self


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _factory(depth: int):
    def build(
        num_classes: int,
        in_chans: int = 3,
        cifar_stem: bool = False,
        width: float = 1.0,
        act: str = "relu",
        act_num: int = 3,
        dropout: float = 0.0,
        deep_train_epochs: int = 0,
    ):
        units, strides = ARCHS[depth]
        dims = [max(1, round(u * DIM_UNIT * width)) for u in units]
        return VanillaNet(
            dims,
            strides,
            num_classes,
            in_chans,
            act_num=act_num,
            act=act,
            dropout=dropout,
            cifar_stem=cifar_stem,
            deep_train_epochs=deep_train_epochs,
        )

    build.__name__ = f"vanillanet_{depth}"
    return build


for _depth in ARCHS:
    # VanillaNet's series length is LSLU's n; deep training's span is a trial field too
    register_model(f"vanillanet_{_depth}", config={"act_num": "n", "deep_train_epochs": "deep_train_epochs"})(
        _factory(_depth)
    )
