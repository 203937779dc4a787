"""A sweep's own figures, logged on its parent run beside ``results.csv``.

Every per-sweep plot lives here: ``PLOTS`` maps an artifact name to a function ``(sweep, rows) -> figure
or None`` (None: this sweep cannot show it, e.g. fewer than two finished trials, or not two objectives).
``rows`` are ``summary.trial_rows``. Plots that rank trials use the sweep's first objective.

The parallel-coordinates figure draws each trial's values as the report shows them (``summary.trained_values``):
a conditional key (``when``) a trial did not sample at the fixed value it trained with, an activation setting its
activations do not read (LSLU's ``n`` in a PWLU trial) at "— not read" below its axis. Optuna's importance only
weighs keys every finished trial sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib import cm, colors  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator.summary import OFF, config_of, finished, pareto_rows, trained_values  # noqa: E402
from search_spaces.schema import Sweep  # noqa: E402
from orchestrator.figures import log_figure  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)  # `report` prints its table alone, not "A new study created…"
IMPORTANCE_MIN_TRIALS = 3
OFF_Y = -0.1  # where an activation setting a trial does not read (OFF) sits, below its axis
OFF_LABEL = f"{OFF} not read"


@dataclass(frozen=True)
class Axis:
    """One searched value as a plot axis: its values per row, and how they are placed between 0 and 1."""

    name: str
    values: list
    choices: list | None = None  # categorical: the order on the axis
    log: bool = False


def searched_axes(sweep: Sweep, rows: list[dict], *, trained: bool = False) -> list[Axis]:
    """One axis per searched key; a searched mask (``sites``) gives one 0/1 axis per site, ``site_<i>``.
    A conditional key's value is None in the rows that did not sample it (what Optuna's importance weighs), or with
    ``trained`` each row's value as the report shows it (``summary.trained_values``: the fixed value it kept, OFF for
    a setting the trial's activations do not read); a fixed value outside a categorical's choices joins its axis."""
    space = sweep.spec.space
    if trained:
        shown = [trained_values(sweep, r, space) for r in rows]
    else:
        shown = [{k: r[f"config.{k}"] for k in sweep.active_keys(config_of(r))} for r in rows]
    axes = []
    for key, dist in space.items():
        values = [s.get(key) for s in shown]
        if dist.type == "sites":
            axes += [Axis(f"site_{i}", [int(m[i]) for m in values], [0, 1]) for i in range(sweep.site_count)]
        elif dist.type == "categorical":
            choices = list(dist.choices)
            choices += [v for v in _unique(values) if v not in (None, OFF) and repr(v) not in map(repr, choices)]
            axes.append(Axis(key, values, choices))
        else:
            axes.append(Axis(key, values, log=dist.log))
    return axes


def parallel_coordinates_figure(sweep: Sweep, rows: list[dict]):
    """Each finished trial as a line across the searched values to the metric, coloured by the metric; the best in
    red."""
    rows = finished(rows, sweep.metric)
    if len(rows) < 2:
        return None
    metric, mode = sweep.metric, sweep.mode
    axes = [*searched_axes(sweep, rows, trained=True), Axis(metric, [r[metric] for r in rows])]
    placed = [_place(axis) for axis in axes]
    scores = [r[metric] for r in rows]
    norm = colors.Normalize(min(scores), max(scores))
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"]
    best = (max if mode == "max" else min)(range(len(rows)), key=scores.__getitem__)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(axes) + 2), 4.6))
    xs = list(range(len(axes)))
    for k in sorted(range(len(rows)), key=lambda k: k == best):  # the best trial drawn last, on top
        ys = [p[0][k] for p in placed]
        if k == best:
            ax.plot(xs, ys, color="red", linewidth=3.2, alpha=0.9, zorder=3, label=f"best: trial {rows[k]['trial_id']}")
        ax.plot(xs, ys, color=cmap(norm(scores[k])), linewidth=1.6, alpha=0.9, zorder=4 if k == best else 2)
    for x, (_, ticks) in zip(xs, placed):
        ax.axvline(x, color="0.3", linewidth=0.8, zorder=1)
        for y, label in ticks:
            ax.text(
                x + 0.04,
                y,
                label,
                fontsize=7,
                va="center",
                ha="left",
                color="0.2",
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.7),
            )
    ax.set_xticks(
        xs, [a.name for a in axes], rotation=30 if len(axes) > 6 else 0, ha="right" if len(axes) > 6 else "center"
    )
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(axes) - 0.5)
    ax.set_ylim(OFF_Y - 0.06 if any(OFF in a.values for a in axes) else -0.06, 1.06)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, pad=0.02)
    ax.legend(loc="upper left", bbox_to_anchor=(0, 1.12), fontsize=8, frameon=False)
    ax.set_title(f"{sweep.name}: {len(rows)} finished trials, {metric} ({mode})", fontsize=10, pad=22)
    fig.tight_layout()
    return fig


def param_importances(sweep: Sweep, rows: list[dict]) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each searched value (``site_<i>`` per site) for the first objective, over the
    finished trials; None with too few trials or a constant metric. A conditional key counts only if every trial
    sampled it."""
    metric = sweep.metric
    rows = finished(rows, metric)
    distributions = _distributions(sweep)
    if len(rows) < IMPORTANCE_MIN_TRIALS or not distributions or len({r[metric] for r in rows}) < 2:
        return None
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for axis_values in zip(*(a.values for a in searched_axes(sweep, rows)), (r[metric] for r in rows)):
        *params, value = axis_values
        sampled = {name: v for name, v in zip(distributions, params) if v is not None}
        study.add_trial(
            optuna.trial.create_trial(params=sampled, distributions={n: distributions[n] for n in sampled}, value=value)
        )
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except ValueError:  # no key that every trial sampled
        return None


def importance_figure(sweep: Sweep, rows: list[dict]):
    """How much each searched value explains the metric: Optuna's fANOVA over the finished trials."""
    importances = param_importances(sweep, rows)
    if not importances:
        return None
    metric, count = sweep.metric, len(finished(rows, sweep.metric))
    names = sorted(importances, key=importances.get)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.35 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="C0")
    for y, n in enumerate(names):
        ax.text(importances[n], y, f" {importances[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1 * max(importances.values()) or 1)
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title(f"{sweep.name}: parameter importance over {count} finished trials", fontsize=10)
    fig.tight_layout()
    return fig


def pareto_figure(sweep: Sweep, rows: list[dict]):
    """Two objectives: every finished trial, the first objective against the second (papers/000 Fig. 6a: accuracy
    against latency), the Pareto front joined in red and each front trial labelled with its count of inserted sites."""
    if len(sweep.objectives) != 2:
        return None
    (y_metric, y_mode), (x_metric, x_mode) = sweep.objectives
    done = finished(rows, y_metric, x_metric)
    if len(done) < 2:
        return None
    front = sorted(pareto_rows(done, sweep.objectives), key=lambda r: r[x_metric])
    on_front = {id(r) for r in front}
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    others = [r for r in done if id(r) not in on_front]
    ax.scatter(
        [r[x_metric] for r in others],
        [r[y_metric] for r in others],
        color="0.6",
        s=28,
        label="dominated trials",
        zorder=2,
    )
    ax.plot(
        [r[x_metric] for r in front],
        [r[y_metric] for r in front],
        color="red",
        marker="o",
        drawstyle="steps-post" if (x_mode == "min") == (y_mode == "max") else "default",
        linewidth=1.5,
        label=f"Pareto front ({len(front)})",
        zorder=3,
    )
    for r in front:
        ax.annotate(_sites_label(r), (r[x_metric], r[y_metric]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{x_metric} ({'lower' if x_mode == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y_metric} ({'higher' if y_mode == 'max' else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep.name}: {len(done)} finished trials", fontsize=10)
    fig.tight_layout()
    return fig


def _sites_label(row: dict) -> str:
    mask = row.get("mask") or row.get("config.mask") or ""
    return f"{mask.count('1')} sites" if mask else str(row.get("trial_id", ""))


PLOTS = {
    "parallel_coordinates.png": parallel_coordinates_figure,
    "param_importance.png": importance_figure,
    "pareto.png": pareto_figure,
}


def log_sweep_plots(client: MlflowClient, run_id: str, sweep: Sweep, rows: list[dict]) -> list[str]:
    """Log every plot this sweep can show on its parent run; returns the artifact names logged."""
    logged = []
    for name, make in PLOTS.items():
        fig = make(sweep, rows)
        if fig is not None:
            log_figure(client, run_id, fig, name)
            logged.append(name)
    return logged


def _distributions(sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched space as Optuna distributions, keyed like ``searched_axes``."""
    out = {}
    for key, d in sweep.spec.space.items():
        if d.type == "sites":
            out.update(
                {f"site_{i}": optuna.distributions.CategoricalDistribution([0, 1]) for i in range(sweep.site_count)}
            )
        elif d.type == "categorical":
            out[key] = optuna.distributions.CategoricalDistribution(d.choices)
        elif d.type == "int":
            out[key] = optuna.distributions.IntDistribution(d.low, d.high, log=d.log, step=1 if d.log else d.step)
        else:
            out[key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log, step=None if d.log else d.step)
    return out


def _place(axis: Axis) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] for the axis' values, and the (position, label) ticks to write beside it; a setting
    a trial's activations do not read (OFF) sits at OFF_Y, labelled OFF_LABEL."""
    if OFF in axis.values:
        read = [v for v in axis.values if v != OFF]
        placed, ticks = _place(Axis(axis.name, read, axis.choices, axis.log)) if read else ([], [])
        spots = iter(placed)
        return [OFF_Y if v == OFF else next(spots) for v in axis.values], [*ticks, (OFF_Y, OFF_LABEL)]
    if axis.choices is not None:
        span = max(1, len(axis.choices) - 1)
        index = {repr(c): i for i, c in enumerate(axis.choices)}
        return [index[repr(v)] / span for v in axis.values], [(i / span, str(c)) for i, c in enumerate(axis.choices)]
    # log-scaled unless a value is not positive (a fixed 0 that trials not sampling the key kept)
    scale = math.log10 if axis.log and min(axis.values) > 0 else float
    lo, hi = scale(min(axis.values)), scale(max(axis.values))
    if hi == lo:
        return [0.5] * len(axis.values), [(0.5, _fmt(min(axis.values)))]
    return (
        [(scale(v) - lo) / (hi - lo) for v in axis.values],
        [(0.0, _fmt(min(axis.values))), (1.0, _fmt(max(axis.values)))],
    )


def _unique(values: list) -> list:
    """``values`` without repeats (by repr: 1 and 1.0 stay apart, as the axis' index keeps them), in order."""
    return list({repr(v): v for v in values}.values())


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
