"""Names of what a trial reports (DESIGN.md §4), and the θ/ω metric keys ``theta/<path>/<i>``.

One module so the trainable, the search-file validator and the plots agree on every name.
"""
from __future__ import annotations

# Reported to Ray Tune and logged to MLflow every epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "best_val_acc", "min_val_loss", "epoch_time_s", "lr")
# Recorded once, at the end of a trial.
FINAL_METRICS = ("params_m", "lslu_sites", "train_s_per_epoch", "best_epoch")
# What a sweep may optimize or schedule on, and its natural direction.
OBJECTIVES = {"val_acc": "max", "best_val_acc": "max", "val_loss": "min", "min_val_loss": "min", "train_loss": "min",
              "params_m": "min", "lslu_sites": "min"}
STATUSES = ("running", "completed", "stopped_early", "diverged", "failed")
PARAMS = ("theta", "omega")
CONVERGENCE_EPOCHS = 10  # papers/000 §4.2: θ/ω convergence value = mean of the last 10 epochs, with their std


def act_metric_key(param: str, path: str, i: int) -> str:
    """``theta/stages.0.act/1`` for θ_1 of the site at ``stages.0.act`` (1-based, as in papers/000)."""
    return f"{param}/{path}/{i}"


def parse_act_metric_key(key: str) -> tuple[str, str, int] | None:
    """Inverse of ``act_metric_key``; None for any other key."""
    param, _, rest = key.partition("/")
    path, _, i = rest.rpartition("/")
    if param not in PARAMS or not path or not i.isdigit():
        return None
    return param, path, int(i)


def convergence(values: list[float], last: int = CONVERGENCE_EPOCHS) -> tuple[float, float]:
    """Mean and (population) standard deviation of the last ``last`` values: papers/000's convergence value.

    A trial shorter than ``last`` epochs uses all of its epochs.
    """
    if not values:
        raise ValueError("convergence needs at least one value")
    window = values[-last:]
    mean = sum(window) / len(window)
    return mean, (sum((v - mean) ** 2 for v in window) / len(window)) ** 0.5


def act_metrics(state: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Flatten ``learnable_act_state`` output into ``{theta/<path>/<i>: value}``."""
    return {act_metric_key(param, path, i + 1): v
            for path, params in state.items() for param in PARAMS for i, v in enumerate(params.get(param, []))}
