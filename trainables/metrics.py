"""Names of what a trial reports (DESIGN.md §4), the θ/ω metric keys ``theta/<path>/<i>`` and PWLU's ``pwlu_left/<path>``.

One module so the trainable, the search-file validator and the plots agree on every name.
"""
from __future__ import annotations

# Reported to Ray Tune and logged to MLflow every epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "best_val_acc", "min_val_loss", "epoch_time_s", "lr")
EMA_METRICS = ("ema_val_loss", "ema_val_acc")  # also every epoch, when the trial keeps an EMA of its weights
# Recorded once, at the end of a trial.
FINAL_METRICS = ("params_m", "flops_g", "latency_ms", "lslu_sites", "train_s_per_epoch", "best_epoch")
CONVERGENCE_PREFIXES = ("theta_conv", "theta_conv_std", "omega_conv", "omega_conv_std")  # per LSLU site, end of trial


def record_of(result: dict) -> dict:
    """The end-of-trial record in a trial's result: ``FINAL_METRICS`` and the θ/ω convergence values. Every epoch
    reports it as it stands, so a trial the scheduler stops has it in its last result."""
    return {k: v for k, v in result.items() if k in FINAL_METRICS or k.partition("/")[0] in CONVERGENCE_PREFIXES}


# What a sweep may optimize or schedule on, and its natural direction.
OBJECTIVES = {"val_acc": "max", "best_val_acc": "max", "val_loss": "min", "min_val_loss": "min", "train_loss": "min",
              "params_m": "min", "flops_g": "min", "latency_ms": "min", "lslu_sites": "min"}
STATUSES = ("running", "completed", "stopped_early", "diverged", "oom", "failed")
CONVERGENCE_EPOCHS = 10  # θ/ω convergence value: mean (and std) over the last 10 epochs (papers/000 §4.2)
PARAMS = ("theta", "omega")  # LSLU: theta/<path>/<i>, omega/<path>/<i>
# PWLU: its boundaries B_L, B_R as pwlu_left/<path>, pwlu_right/<path> (state key -> metric prefix)
PWLU_PARAMS = {"left": "pwlu_left", "right": "pwlu_right"}
_PWLU_PREFIXES = {prefix: param for param, prefix in PWLU_PARAMS.items()}


def act_metric_key(param: str, path: str, i: int) -> str:
    """``theta/stages.0.act/1`` for θ_1 of the site at ``stages.0.act`` (1-based, as in papers/000);
    ``pwlu_left/stages.0.act`` for B_L of a PWLU site (one value, i = 1)."""
    if param in PWLU_PARAMS:
        return f"{PWLU_PARAMS[param]}/{path}"
    return f"{param}/{path}/{i}"


def parse_act_metric_key(key: str) -> tuple[str, str, int] | None:
    """Inverse of ``act_metric_key``: ``(param, path, i)``, e.g. ``("left", path, 1)`` for a PWLU key; None for any other key."""
    prefix, _, rest = key.partition("/")
    if prefix in _PWLU_PREFIXES:
        return (_PWLU_PREFIXES[prefix], rest, 1) if rest else None
    path, _, i = rest.rpartition("/")
    if prefix not in PARAMS or not path or not i.isdigit():
        return None
    return prefix, path, int(i)


def convergence_metrics(act_history: list[dict]) -> dict[str, float]:
    """``theta_conv/<path>/<i>`` and ``theta_conv_std/<path>/<i>`` (same for ω): ``convergence`` of each θ_i, ω_i."""
    recent = act_history[-CONVERGENCE_EPOCHS:]
    out = {}
    for path, params in (recent[-1]["state"].items() if recent else ()):
        for param in PARAMS:
            for i in range(len(params.get(param, []))):
                values = [entry["state"][path][param][i] for entry in recent if path in entry["state"]]
                out[f"{param}_conv/{path}/{i + 1}"], out[f"{param}_conv_std/{path}/{i + 1}"] = convergence(values)
    return out


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
    """Flatten ``learnable_act_state`` output into ``{theta/<path>/<i>: value, pwlu_left/<path>: value, ...}``."""
    return {act_metric_key(param, path, i + 1): v
            for path, params in state.items() for param in (*PARAMS, *PWLU_PARAMS) for i, v in enumerate(params.get(param, []))}
