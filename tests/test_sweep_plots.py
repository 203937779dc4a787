"""The sweep's figures on its parent run: parallel coordinates and parameter importance, from summary rows."""

import math
import random

import matplotlib.pyplot as plt
import pytest
import yaml
from matplotlib.colors import to_rgba
from mlflow.tracking import MlflowClient

from orchestrator import summary, sweep_plots
from orchestrator.runs import open_parent_run
from search_spaces.schema import parse_sweep


SPACE = """
name: plots
trial: {model: digits_cnn, epochs: 6}
space:
  n: {type: int, low: 1, high: 3}
  dropout: {type: float, low: 0.0, high: 0.3}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  mask: {type: sites}
"""


@pytest.fixture(scope="module")
def quickstart():
    """A quickstart-like sweep: n (int), dropout (float), lr (log float) and the mask over digits_cnn's 4 sites."""
    return parse_sweep(yaml.safe_load(SPACE), SPACE, "plots.yaml")


def _rows(count, seed=0):
    """Trials whose best_val_acc depends on lr alone (peak at 3e-3), plus one that diverged."""
    rng = random.Random(seed)
    rows = []
    for k in range(count):
        lr = 10 ** rng.uniform(-3, -2)
        rows.append(
            {
                "trial_id": f"t{k}",
                "status": "completed" if k % 3 else "stopped_early",
                "config.n": rng.randint(1, 3),
                "config.dropout": rng.uniform(0, 0.3),
                "config.lr": lr,
                "config.mask": "".join(rng.choice("01") for _ in range(4)),
                "best_val_acc": 99.0 - 30 * abs(math.log10(lr) - math.log10(3e-3)) + rng.uniform(0, 0.01),
            }
        )
    rows.append({**rows[0], "trial_id": "nan", "status": "diverged", "best_val_acc": float("nan")})
    return rows


def test_parallel_coordinates_places_each_trial_on_every_searched_axis(quickstart):
    rows = _rows(6)
    fig = sweep_plots.parallel_coordinates_figure(quickstart, rows)
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "n",
            "dropout",
            "lr",
            "site_0",
            "site_1",
            "site_2",
            "site_3",
            "best_val_acc",
        ]
        trials = [line for line in ax.get_lines() if len(line.get_xdata()) == 8]  # not the axes' own vertical lines
        red = [line for line in trials if to_rgba(line.get_color()) == to_rgba("red")]
        assert len(red) == 1 and len(trials) == 6 + 1  # one line per finished trial, the best one underlined in red
        finished = rows[:6]
        best = max(finished, key=lambda r: r["best_val_acc"])
        assert red[0].get_label() == f"best: trial {best['trial_id']}"

        def scaled(key, value, f=float):
            values = [f(r[key]) for r in finished]
            return (f(value) - min(values)) / (max(values) - min(values))

        expected = [
            scaled("config.n", best["config.n"]),
            scaled("config.dropout", best["config.dropout"]),
            scaled("config.lr", best["config.lr"], math.log10),
            *(int(b) for b in best["config.mask"]),
            1.0,
        ]
        assert list(red[0].get_ydata()) == pytest.approx(expected)
    finally:
        plt.close(fig)


def test_importance_finds_the_parameter_the_metric_depends_on(quickstart):
    fig = sweep_plots.importance_figure(quickstart, _rows(24))
    try:
        ax = fig.axes[0]
        bars = {label.get_text(): bar.get_width() for label, bar in zip(ax.get_yticklabels(), ax.patches)}
        assert set(bars) == {"n", "dropout", "lr", "site_0", "site_1", "site_2", "site_3"}
        assert sum(bars.values()) == pytest.approx(1.0)
        assert max(bars, key=bars.get) == "lr" and bars["lr"] > 0.5
    finally:
        plt.close(fig)


def test_too_few_trials_give_no_figure(quickstart):
    assert sweep_plots.parallel_coordinates_figure(quickstart, _rows(1)) is None  # one finished trial and one diverged
    assert sweep_plots.importance_figure(quickstart, _rows(2)) is None


def test_sweep_plots_are_logged_on_the_parent_run(tracking_uri, quickstart):
    ctx = open_parent_run(tracking_uri, quickstart, "quickstart-20260101-000000", smoke_test=False)
    client = MlflowClient(tracking_uri)
    assert sweep_plots.log_sweep_plots(client, ctx.parent_run_id, quickstart, _rows(8)) == [
        "parallel_coordinates.png",
        "param_importance.png",
    ]
    logged = {a.path for a in client.list_artifacts(ctx.parent_run_id)}
    assert {"parallel_coordinates.png", "param_importance.png"} <= logged


CONDITIONAL = """
name: conditional
trial: {model: digits_cnn, epochs: 6, n: 2, dropout: 0.05}
space:
  insert_act: [lslu, pwlu]
  n: {type: int, low: 1, high: 3, when: {insert_act: lslu}}
  dropout: {type: categorical, choices: [0.1, 0.2], when: {insert_act: pwlu}}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def test_parallel_coordinates_draws_what_each_trial_trained_with_as_the_report_shows_it():
    # n is read by LSLU trials only ("— not read" in a PWLU one, below the axis); dropout is sampled by PWLU trials
    # only, the LSLU ones trained with the fixed 0.05: a value on its axis beside the choices
    sweep = parse_sweep(yaml.safe_load(CONDITIONAL), CONDITIONAL, "conditional.yaml")
    trials = [("lslu", 3, 0.05), ("pwlu", 2, 0.2), ("lslu", 1, 0.05), ("pwlu", 2, 0.1)]
    rows = [
        {
            "trial_id": f"t{k}",
            "status": "completed",
            "config.insert_act": act,
            "config.n": n,
            "config.dropout": dropout,
            "config.lr": 10 ** (-3 + k / 3),  # a third of the log axis apart, as the metric
            "best_val_acc": 90.0 + k,
        }
        for k, (act, n, dropout) in enumerate(trials)
    ]
    axes = {a.name: a for a in sweep_plots.searched_axes(sweep, rows, trained=True)}
    assert axes["n"].values == [3, summary.OFF, 1, summary.OFF]
    assert axes["dropout"].values == [0.05, 0.2, 0.05, 0.1] and axes["dropout"].choices == [0.1, 0.2, 0.05]
    fig = sweep_plots.parallel_coordinates_figure(sweep, rows)
    try:
        ax = fig.axes[0]
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 5]
        drawn = {tuple(line.get_ydata()) for line in lines}
        off = sweep_plots.OFF_Y
        expected = {(0.0, 1.0, 1.0, 0.0, 0.0), (1.0, off, 0.5, 1 / 3, 1 / 3), (0.0, 0.0, 1.0, 2 / 3, 2 / 3)}
        expected.add((1.0, off, 0.0, 1.0, 1.0))
        assert {tuple(round(y, 9) for y in ys) for ys in drawn} == {tuple(round(y, 9) for y in e) for e in expected}
        labels = {(round(t.get_position()[0]), t.get_text()) for t in ax.texts}
        assert {(1, "1"), (1, "3"), (1, f"{summary.OFF} not read")} <= labels  # n: the LSLU values, then unread
        assert {(2, "0.1"), (2, "0.2"), (2, "0.05")} <= labels and not any("sampled" in t for _, t in labels)
        assert ax.get_ylim()[0] < off  # the unread category is inside the figure
    finally:
        plt.close(fig)
    # Optuna's importance still weighs only what the trials sampled (a conditional key out, lr and insert_act in)
    assert set(sweep_plots.param_importances(sweep, rows)) == {"insert_act", "lr"}
