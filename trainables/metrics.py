"""Names of what a trial reports (DESIGN.md §4), and the keys of what its activations report of themselves.

One module so the trainable, the search-file validator and the plots agree on every name. An activation names its
own values (``learnable_state()``, e.g. ``theta/1``); a trial logs them per site as ``theta/<path>/1`` (a name without
``/`` as ``<name>/<path>``), and at its end, for a value of a series (``<family>/<i>``), its convergence value and std
as ``theta_conv/<path>/1`` and ``theta_conv_std/<path>/1`` (papers/000 §4.2).
"""

from __future__ import annotations

# Reported to Ray Tune and logged to MLflow every epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "best_val_acc", "min_val_loss", "epoch_time_s", "lr")
EMA_METRICS = ("ema_val_loss", "ema_val_acc")  # also every epoch, when the trial keeps an EMA of its weights
# Recorded once, at the end of a trial.
FINAL_METRICS = ("params_m", "flops_g", "latency_ms", "lslu_sites", "train_s_per_epoch", "best_epoch")
CONVERGENCE_SUFFIXES = ("_conv", "_conv_std")  # the value's name + these: its convergence value and std, end of trial


def record_of(result: dict) -> dict:
    """The end-of-trial record in a trial's result: ``FINAL_METRICS`` and the θ/ω convergence values. Every epoch
    reports it as it stands, so a trial the scheduler stops has it in its last result."""
    return {k: v for k, v in result.items() if k in FINAL_METRICS or is_convergence_key(k)}


def is_convergence_key(key: str) -> bool:
    family, slash, _ = key.partition("/")
    return bool(slash) and family.endswith(CONVERGENCE_SUFFIXES)


def lslu_sites(cfg, mask: str) -> int:
    """``lslu_sites``: how many sites the trial's policy gave LSLU (an objective of the insertion search)."""
    return mask.count("1") if cfg.insert_act == "lslu" and cfg.inserts else 0


# What a sweep may optimize or schedule on, and its natural direction.
OBJECTIVES = {
    "val_acc": "max",
    "best_val_acc": "max",
    "val_loss": "min",
    "min_val_loss": "min",
    "train_loss": "min",
    "params_m": "min",
    "flops_g": "min",
    "latency_ms": "min",
    "lslu_sites": "min",
}
STATUSES = ("running", "completed", "stopped_early", "diverged", "oom", "failed")
CONVERGENCE_EPOCHS = 10  # θ/ω convergence value: mean (and std) over the last 10 epochs (papers/000 §4.2)


def act_metric_key(name: str, path: str, family_suffix: str = "") -> str:
    """The key of an activation's value ``name`` at the site ``path``: ``theta/1`` → ``theta/<path>/1``,
    ``pwlu_left`` → ``pwlu_left/<path>``; ``family_suffix`` goes after the family (``_conv``:
    ``theta_conv/<path>/1``)."""
    family, slash, index = name.partition("/")
    return f"{family}{family_suffix}/{path}" + (f"/{index}" if slash else "")


def parse_act_metric_key(key: str) -> tuple[str, str] | None:
    """Inverse of ``act_metric_key`` for a per-epoch key: ``(path, name)``, e.g. ``("layer1.0.act", "theta/1")``;
    None for a key without a site (``val_acc``), a convergence key or a malformed one."""
    parts = key.split("/")
    if len(parts) not in (2, 3) or not all(parts) or is_convergence_key(key) or parts[0] == "system":
        return None
    if len(parts) == 3 and not parts[2].isdigit():
        return None
    return parts[1], "/".join([parts[0], *parts[2:]])


def convergence_metrics(act_history: list[dict]) -> dict[str, float]:
    """``theta_conv/<path>/<i>`` and ``theta_conv_std/<path>/<i>``: the ``convergence`` of every value of a series
    (a name ``<family>/<i>``, as LSLU's θ_i and ω_i) the last epoch reported, over the last epochs that reported it."""
    recent = act_history[-CONVERGENCE_EPOCHS:]
    out = {}
    for path, values in recent[-1]["state"].items() if recent else ():
        for name in filter(lambda name: "/" in name, values):
            series = [entry["state"][path][name] for entry in recent if name in entry["state"].get(path, {})]
            mean_key, std_key = (act_metric_key(name, path, suffix) for suffix in CONVERGENCE_SUFFIXES)
            out[mean_key], out[std_key] = convergence(series)
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


def act_metrics(state: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten ``learnable_act_state`` output into ``{theta/<path>/<i>: value, pwlu_left/<path>: value, ...}``."""
    return {act_metric_key(name, path): v for path, values in state.items() for name, v in values.items()}
