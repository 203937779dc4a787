"""Names of what a trial reports (DESIGN.md §4), and the θ/ω metric keys ``theta/<path>/<i>``.

One module so the trainable, the search-file validator and the plots agree on every name.
"""
from __future__ import annotations

# Reported to Ray Tune and logged to MLflow every epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "best_val_acc", "min_val_loss", "epoch_time_s", "lr")
EMA_METRICS = ("ema_val_loss", "ema_val_acc")  # also every epoch, when the trial keeps an EMA of its weights
# Recorded once, at the end of a trial.
FINAL_METRICS = ("params_m", "flops_g", "latency_ms", "lslu_sites", "train_s_per_epoch", "best_epoch")
# What a sweep may optimize or schedule on, and its natural direction.
OBJECTIVES = {"val_acc": "max", "best_val_acc": "max", "val_loss": "min", "min_val_loss": "min", "train_loss": "min",
              "params_m": "min", "flops_g": "min", "latency_ms": "min", "lslu_sites": "min"}
STATUSES = ("running", "completed", "stopped_early", "diverged", "oom", "failed")
CONVERGENCE_EPOCHS = 10  # θ/ω convergence value: mean (and std) over the last 10 epochs (papers/000 §4.2)
PARAMS = ("theta", "omega")


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


def convergence_metrics(act_history: list[dict]) -> dict[str, float]:
    """``theta_conv/<path>/<i>`` and ``theta_conv_std/<path>/<i>`` (same for ω): mean and std of the last
    ``CONVERGENCE_EPOCHS`` epochs of each θ_i, ω_i, the convergence value papers/000 §4.2 reports."""
    import statistics

    recent = act_history[-CONVERGENCE_EPOCHS:]
    out = {}
    for path, params in (recent[-1]["state"].items() if recent else ()):
        for param in PARAMS:
            for i in range(len(params.get(param, []))):
                values = [entry["state"][path][param][i] for entry in recent if path in entry["state"]]
                out[f"{param}_conv/{path}/{i + 1}"] = statistics.fmean(values)
                out[f"{param}_conv_std/{path}/{i + 1}"] = statistics.pstdev(values)
    return out


def act_metrics(state: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Flatten ``learnable_act_state`` output into ``{theta/<path>/<i>: value}``."""
    return {act_metric_key(param, path, i + 1): v
            for path, params in state.items() for param in PARAMS for i, v in enumerate(params.get(param, []))}
