"""PWLU, the piecewise linear unit (papers/003), learned with statistic-based realignment.

N intervals split ``[B_L, B_R]`` uniformly (d = (B_R − B_L)/N); ``Y_P`` holds the N+1 values at the grid
points; ``K_L``, ``K_R`` are the slopes outside. Training form (eq. 1–4), with idx = floor((x − B_L)/d):

    x <  B_L:  (x − B_L)·K_L + Y_P[0]
    x >= B_R:  (x − B_R)·K_R + Y_P[N]
    otherwise: (x − B_idx)·K_idx + Y_P[idx],   B_idx = B_L + idx·d,  K_idx = (Y_P[idx+1] − Y_P[idx])/d

idx is held constant in the backward pass, as the paper's gradient table (Table 1) does, so autograd's
gradients with respect to x, B_L, B_R, K_L, K_R and Y_P are exactly the table's.

Eval mode uses the §4.3 inference form ``x·S[idx'] + O[idx']`` with idx' = clip(floor((x − B_L)/d), −1, N),
S = [K_L, K_0 … K_{N−1}, K_R], O = [Y_P[0] − B_L·K_L, Y_P[i] − B_i·K_i …, Y_P[N] − B_R·K_R].

Two phases (§3.3). Phase I: the unit is ReLU (its parameters are not in the graph, so they get no
gradient) and, in training mode, collects the running mean and std of its input with momentum 0.9 (eq. 5).
``realign()`` resets the unit from those statistics (eq. 6: B_L = μ − 3σ, B_R = μ + 3σ, K_L = 0, K_R = 1,
Y_P = ReLU(grid)) and switches to phase II, where it is learned by gradient. The statistics and the
phase are buffers, so they are in the state dict and survive a checkpoint.

Choices the paper leaves open: the running statistics start at the first batch's values (starting from 0
and 1, as BatchNorm does, would bias a short phase I by 0.9^steps); std is the unbiased sample std
(torch's default; with thousands of elements per batch the difference is immaterial); σ is floored at
``MIN_STD`` at realignment so a dead input (σ = 0) cannot give an empty range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations.registry import register_act

GRANULARITIES = ("layer", "channel")
STATS_MOMENTUM = 0.9  # eq. 5: μ ← 0.9·μ + 0.1·mean(x)
SIGMAS = 3.0  # eq. 6: the 3-sigma rule
MIN_STD = 1e-5
PHASE_COLLECT, PHASE_LEARN = 1, 2


class PWLU(nn.Module):
    def __init__(
        self, channels: int | None = None, intervals: int = 16, granularity: str = "layer", warmup_epochs: int = 5
    ):
        super().__init__()
        if not isinstance(warmup_epochs, int) or isinstance(warmup_epochs, bool) or warmup_epochs < 1:
            raise ValueError(f"pwlu needs warmup_epochs >= 1 (an int; phase I needs a batch), got {warmup_epochs!r}")
        if not isinstance(intervals, int) or isinstance(intervals, bool) or intervals < 1:
            raise ValueError(f"pwlu needs intervals >= 1 (an int), got {intervals!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"pwlu granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if granularity == "channel" and (not isinstance(channels, int) or channels < 1):
            raise ValueError(
                f"pwlu granularity 'channel' needs channels >= 1 (the site's channel count), got {channels!r}"
            )
        self.channels, self.intervals, self.granularity = channels, intervals, granularity
        self.warmup_epochs = warmup_epochs  # epochs of phase I before ``on_epoch_start`` realigns
        shape = () if granularity == "layer" else (channels,)
        self.left = nn.Parameter(torch.zeros(shape))  # B_L
        self.right = nn.Parameter(torch.zeros(shape))  # B_R
        self.points = nn.Parameter(torch.zeros(*shape, intervals + 1))  # Y_P at the N+1 grid points
        self.slope_left = nn.Parameter(torch.zeros(shape))  # K_L
        self.slope_right = nn.Parameter(torch.zeros(shape))  # K_R
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_std", torch.ones(shape))
        self.register_buffer("stats_batches", torch.zeros((), dtype=torch.long))  # phase-I batches seen
        self.register_buffer("phase", torch.tensor(PHASE_COLLECT))
        self._learning = False  # mirrors `phase`, so forward() needs no device sync to branch on it
        with torch.no_grad():
            self._reset_to_relu(torch.zeros(shape), torch.ones(shape))  # the paper's ReLU init (§3.3), on [-3, 3]

    def no_weight_decay(self) -> set[str]:
        """PWLU's parameters define the activation's shape; decay would pull it towards 0 (timm convention)."""
        return {"left", "right", "points", "slope_left", "slope_right"}

    def learnable_state(self) -> dict[str, float]:
        """The boundaries B_L, B_R (channel means for channel granularity) as ``pwlu_left``, ``pwlu_right``."""
        return {"pwlu_left": self.left.detach().mean().item(), "pwlu_right": self.right.detach().mean().item()}

    def on_epoch_start(self, epoch: int, epochs: int) -> bool:
        """Phase II starts once the warm-up epochs are done; only a unit still in phase I is reset, so this is right
        after a checkpoint restore too (the phase is a buffer in the state dict). True when it realigned."""
        if epoch < self.warmup_epochs or self.realigned:
            return False
        self.realign()
        return True

    @property
    def realigned(self) -> bool:
        """True in phase II (after ``realign()``)."""
        return self._learning

    # ---- phases -------------------------------------------------------------------------------------

    @torch.no_grad()
    def realign(self) -> "PWLU":
        """Eq. 6 from the running statistics, then phase II. Raises if phase I saw no training batch."""
        if int(self.stats_batches) == 0:
            raise RuntimeError(
                "PWLU.realign() needs the input statistics of phase I, but no training batch has passed "
                "through this unit yet (run training-mode forward passes first)"
            )
        self._reset_to_relu(self.running_mean, self.running_std.clamp_min(MIN_STD))
        self.phase.fill_(PHASE_LEARN)
        self._learning = True
        return self

    def _reset_to_relu(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        left, right = mu - SIGMAS * sigma, mu + SIGMAS * sigma
        self.left.copy_(left)
        self.right.copy_(right)
        self.slope_left.zero_()
        self.slope_right.fill_(1.0)
        self.points.copy_(F.relu(self._grid(self.left, self.right)))

    def _grid(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """B_0 … B_N, shape (..., N+1)."""
        k = torch.arange(self.intervals + 1, dtype=left.dtype, device=left.device)
        return left.unsqueeze(-1) + k * ((right - left) / self.intervals).unsqueeze(-1)

    @torch.no_grad()
    def _collect(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if not (self.granularity == "channel" and d == 1)]
        mean, std = x.mean(dim=dims), x.std(dim=dims)
        first = self.stats_batches == 0  # a tensor, so no device sync
        m = STATS_MOMENTUM
        self.running_mean.copy_(torch.where(first, mean, m * self.running_mean + (1 - m) * mean))
        self.running_std.copy_(torch.where(first, std, m * self.running_std + (1 - m) * std))
        self.stats_batches += 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._learning = int(self.phase) == PHASE_LEARN

    # ---- forward ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._learning:
            if self.training:
                self._collect(x)
            return F.relu(x)
        return self.training_form(x) if self.training else self.inference_form(x)

    def _per_element(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A per-layer () or per-channel (C,) parameter, shaped to broadcast against x (N, C, ...)."""
        return p if self.granularity == "layer" else p.view(1, -1, *([1] * (x.dim() - 2)))

    def _lookup(self, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """table[..., idx] element-wise: table is (W,) or (C, W); idx holds column indices shaped like x."""
        if self.granularity == "channel":
            width = table.shape[-1]
            idx = idx + self._per_element(torch.arange(table.shape[0], device=idx.device) * width, idx)
        return table.reshape(-1)[idx]

    def _interval_index(
        self, x: torch.Tensor, left: torch.Tensor, d: torch.Tensor, low: int, high: int
    ) -> torch.Tensor:
        """clip(floor((x − B_L)/d), low, high) as a constant long tensor (NaN inputs map to `low`)."""
        idx = torch.floor((x.detach() - left.detach()) / d.detach())
        return torch.nan_to_num(idx, nan=float(low)).clamp(low, high).long()

    def training_form(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1–4, differentiable in x and every parameter, with idx constant."""
        n = self.intervals
        left, right = self._per_element(self.left, x), self._per_element(self.right, x)
        d = (right - left) / n
        idx = self._interval_index(x, left, d, 0, n - 1)
        y_idx, y_next = self._lookup(self.points, idx), self._lookup(self.points, idx + 1)
        b_idx = left + idx * d
        k_idx = (y_next - y_idx) / d
        inside = (x - b_idx) * k_idx + y_idx
        below = (x - left) * self._per_element(self.slope_left, x) + self._per_element(self.points[..., 0], x)
        above = (x - right) * self._per_element(self.slope_right, x) + self._per_element(self.points[..., n], x)
        out = torch.where(x < left, below, torch.where(x >= right, above, inside))
        return out.to(x.dtype)

    def inference_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """§4.3: slopes S and offsets O for idx' = −1 … N, shape (..., N+2) (column j holds idx' = j − 1)."""
        n = self.intervals
        d = (self.right - self.left) / n
        grid = self._grid(self.left, self.right)
        k = (self.points[..., 1:] - self.points[..., :-1]) / d.unsqueeze(-1)  # K_0 … K_{N−1}
        slopes = torch.cat([self.slope_left.unsqueeze(-1), k, self.slope_right.unsqueeze(-1)], dim=-1)
        offsets = torch.cat(
            [
                (self.points[..., 0] - self.left * self.slope_left).unsqueeze(-1),
                self.points[..., :-1] - grid[..., :-1] * k,
                (self.points[..., n] - self.right * self.slope_right).unsqueeze(-1),
            ],
            dim=-1,
        )
        return slopes, offsets

    def inference_form(self, x: torch.Tensor) -> torch.Tensor:
        """x·S[idx'] + O[idx'], one multiply–add per element."""
        slopes, offsets = self.inference_tables()
        left = self._per_element(self.left, x)
        d = (self._per_element(self.right, x) - left) / self.intervals
        column = self._interval_index(x, left, d, -1, self.intervals) + 1
        return (x * self._lookup(slopes, column) + self._lookup(offsets, column)).to(x.dtype)

    def extra_repr(self) -> str:
        channels = f"channels={self.channels}, " if self.granularity == "channel" else ""
        return (
            f"{channels}intervals={self.intervals}, granularity={self.granularity}, phase={2 if self._learning else 1}"
        )


def realign_pending(model: nn.Module) -> list[str]:
    """``realign()`` every PWLU of ``model`` still in phase I; returns their paths. Idempotent."""
    done = []
    for path, module in model.named_modules():
        if isinstance(module, PWLU) and not module.realigned:
            module.realign()
            done.append(path)
    return done


def _warmup_ends(cfg) -> tuple[str, str] | None:
    if cfg.pwlu_warmup_epochs >= cfg.epochs:
        return "pwlu_warmup_epochs", (
            f"must be below epochs ({cfg.epochs}), or PWLU never leaves its ReLU phase; got {cfg.pwlu_warmup_epochs}"
        )
    return None


@register_act(
    "pwlu",
    builds=PWLU,
    config={"intervals": "pwlu_intervals", "granularity": "granularity", "warmup_epochs": "pwlu_warmup_epochs"},
    check=_warmup_ends,
)
def pwlu(channels=None, inplace=False, intervals: int = 16, granularity: str = "layer", warmup_epochs: int = 5):
    return PWLU(channels, intervals=intervals, granularity=granularity, warmup_epochs=warmup_epochs)
