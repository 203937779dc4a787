"""The permuting adapter that puts a channel-wise activation (LSLU and its depthwise conv, a per-channel PWLU, …) at
a site whose tensors are channels-last, (B, H, W, C), as in ConvNeXt's MLP (DESIGN.md §3): permute to (B, C, H, W),
apply, permute back.

The wrapped activation is ``inner``; what the activation contract asks of it (``learnable_state``,
``on_epoch_start``, ``fuse``) is found on ``inner`` and reported under the adapter's path (``introspect``).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelsLast(nn.Module):
    is_site_adapter = True  # what the activation contract asks of ``inner`` is reported under this module's path

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"ChannelsLast({type(self.inner).__name__}) needs a (B, H, W, C) tensor, got shape {tuple(x.shape)}"
            )
        return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    @torch.no_grad()
    def fuse(self) -> "ChannelsLast":
        if callable(getattr(self.inner, "fuse", None)):
            self.inner.fuse()
        return self
