"""The paper-style report of a finished sweep, its Pareto and site-importance tables, and `lslu-sweep report NAME`,
checked against independent calculations over hand-made trial rows (no Ray: the rows are what
``summary.trial_rows`` gives)."""

import io
import itertools
import math
import random
import statistics
import textwrap

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import summary
from orchestrator.cli import main
from orchestrator.report import OFF, log_sweep_tables, report_frame, report_markdown, site_importance_frame
from orchestrator.runs import open_parent_run
from search_spaces.schema import parse_sweep

TABLE2 = """
name: table2_mini
trial: {model: digits_cnn, insert_act: lslu, n: 2, epochs: 2}
space:
  act: [relu, silu, gelu]
  policy: [none, all]
  seed: [0, 1, 2]
search: {algorithm: grid, scheduler: none}
"""


def _sweep(text):
    text = textwrap.dedent(text)
    return parse_sweep(yaml.safe_load(text), text, "sweep.yaml")


def _table2_rows():
    """One row per grid point; accuracy depends on act and policy, plus seed noise; one extra trial diverged."""
    rng = random.Random(0)
    rows = []
    for k, (act, policy, seed) in enumerate(itertools.product(["relu", "silu", "gelu"], ["none", "all"], [0, 1, 2])):
        base = {"relu": 90.0, "silu": 91.0, "gelu": 92.0}[act] + (1.5 if policy == "all" else 0.0)
        rows.append(
            {
                "trial_id": f"t{k:02d}",
                "status": "completed",
                "mlflow_run_id": f"run{k}",
                "mask": "1111" if policy == "all" else "0000",
                "config.act": act,
                "config.policy": policy,
                "config.seed": seed,
                "config.n": 2,
                "best_val_acc": base + rng.uniform(-0.5, 0.5),
                "min_val_loss": rng.uniform(0.1, 0.3),
                "params_m": 0.05 if policy == "none" else 0.06,
                "flops_g": 0.001,
                "latency_ms": rng.uniform(0.2, 0.4),
                "train_s_per_epoch": rng.uniform(1, 2),
            }
        )
    rows.append({**rows[0], "trial_id": "bad", "status": "diverged", "best_val_acc": float("nan")})
    return rows


def test_report_groups_by_the_varied_keys_and_averages_over_seeds():
    sweep, rows = _sweep(TABLE2), _table2_rows()
    table = report_frame(sweep, rows)
    # groups in the file's order of choices, seed averaged away; the diverged trial counts nowhere
    assert list(zip(table["act"], table["policy"])) == list(
        itertools.product(["relu", "silu", "gelu"], ["none", "all"])
    )
    assert list(table["trials"]) == [3] * 6
    for _, group in table.iterrows():
        accs = [
            r["best_val_acc"]
            for r in rows[:-1]
            if (r["config.act"], r["config.policy"]) == (group["act"], group["policy"])
        ]
        assert group["best_val_acc_mean"] == pytest.approx(statistics.mean(accs))
        assert group["best_val_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert group["params_m_mean"] == pytest.approx(0.06 if group["policy"] == "all" else 0.05)

    text = report_markdown(sweep, table, "table2_mini-20260101-000000")
    lines = text.splitlines()
    assert lines[0] == "# table2_mini-20260101-000000"
    assert "18 finished trials, grouped by act, policy; mean ± std over each group's trials (the seeds)" in text
    assert lines[4].startswith("| act | policy | trials | best_val_acc | min_val_loss | params_m |")
    first = table.iloc[0]
    assert lines[6].startswith(
        f"| relu | none | 3 | {first['best_val_acc_mean']:.4g} ± {first['best_val_acc_std']:.2g} |"
    )
    assert len(lines) == 6 + 6


def test_a_conditional_key_groups_the_trials_that_did_not_sample_it_apart():
    sweep = _sweep("""
        name: cond
        trial: {epochs: 6}
        space:
          insert_act: [lslu, pwlu]
          n: {type: int, low: 1, high: 2, when: {insert_act: lslu}}
          seed: [0, 1]
        search: {algorithm: grid, scheduler: none}
    """)
    rows = [
        {
            "trial_id": f"t{k}",
            "status": "completed",
            "config.insert_act": act,
            "config.n": n,
            "config.seed": seed,
            "best_val_acc": float(10 * k),
        }
        for k, (act, n, seed) in enumerate(
            [("lslu", 1, 0), ("lslu", 1, 1), ("lslu", 2, 0), ("pwlu", 1, 0), ("pwlu", 1, 1)]
        )
    ]
    table = report_frame(sweep, rows)
    assert [(a, n, t) for a, n, t in zip(table["insert_act"], table["n"], table["trials"])] == [
        ("lslu", 1, 2),
        ("lslu", 2, 1),
        ("pwlu", OFF, 2),
    ]
    assert list(table["best_val_acc_mean"]) == [5.0, 20.0, 35.0]
    assert math.isnan(table["best_val_acc_std"][1])  # one trial: no spread
    assert "| lslu | 2 | 1 | 20 |" in report_markdown(sweep, table, "cond")


def test_each_trial_shows_the_values_it_trained_with_and_floats_rounded():
    # dropout is sampled by PWLU trials only: the LSLU trials trained with the fixed 0.05, which the report shows;
    # n is searched for every trial, but a PWLU trial does not read it: "—", and its trials group together
    sweep = _sweep("""
        name: used
        trial: {epochs: 6, dropout: 0.05}
        space:
          insert_act: [lslu, pwlu]
          n: {type: int, low: 1, high: 2}
          dropout: {type: categorical, choices: [0.1], when: {insert_act: pwlu}}
          lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
        search: {algorithm: random, num_samples: 4, scheduler: none}
    """)
    trials = [("lslu", 1, 0.05), ("lslu", 2, 0.05), ("pwlu", 1, 0.1), ("pwlu", 2, 0.1)]
    rows = [
        {
            "trial_id": f"t{k}",
            "status": "completed",
            "config.insert_act": act,
            "config.n": n,
            "config.dropout": dropout,
            "config.lr": 0.0031622776601683794,
            "best_val_acc": 90.0 + k / 3,
        }
        for k, (act, n, dropout) in enumerate(trials)
    ]
    table = report_frame(sweep, rows)
    assert list(zip(table["insert_act"], table["n"], table["dropout"], table["trials"])) == [
        ("lslu", 1, 0.05, 1),
        ("lslu", 2, 0.05, 1),
        ("pwlu", OFF, 0.1, 2),
    ]
    text = report_markdown(sweep, table, "used")
    assert (
        "| lslu | 1 | 0.05 | 0.003162 | 1 | 90 |" in text and "| pwlu | — | 0.1 | 0.003162 | 2 | 90.83 ± 0.24 |" in text
    )
    assert "—: a value the trials' activations do not read (n without LSLU)." in text


def test_the_console_trial_table_shows_each_trial_what_the_report_shows():
    # the quickstart's shape: n is sampled by LSLU trials only, dropout by PWLU trials only (fixed 0.05 otherwise);
    # the rows are trial_rows', which carry every config field, n = 2 (the fixed value) in a PWLU trial too
    sweep = _sweep("""
        name: console
        trial: {epochs: 6, n: 2, dropout: 0.05}
        space:
          insert_act: [lslu, pwlu]
          n: {type: int, low: 1, high: 3, when: {insert_act: lslu}}
          dropout: {type: categorical, choices: [0.1, 0.2], when: {insert_act: pwlu}}
        search: {algorithm: random, num_samples: 4, scheduler: none}
    """)
    trials = [("lslu", 3, 0.05), ("pwlu", 2, 0.2), ("lslu", 1, 0.05), ("pwlu", 2, 0.1)]
    rows = [
        {
            "trial_id": f"t{k}",
            "status": "completed",
            "epochs_run": 6,
            "config.insert_act": act,
            "config.n": n,
            "config.dropout": dropout,
            "val_acc": 90.0 + k,
            "best_val_acc": 90.0 + k,
        }
        for k, (act, n, dropout) in enumerate(trials)
    ]
    lines = summary.table(sweep, rows).splitlines()
    assert lines[0].split() == "trial_id status epochs_run insert_act n dropout val_acc best_val_acc".split()
    printed = [line.split()[3:6] for line in lines[1:]]
    assert printed == [["lslu", "3", "0.05"], ["pwlu", OFF, "0.2"], ["lslu", "1", "0.05"], ["pwlu", OFF, "0.1"]]
    # the report's rule, not a copy of it: its groups hold the same values
    report = report_frame(sweep, rows)
    assert {tuple(str(v) for v in e) for e in zip(report["insert_act"], report["n"], report["dropout"])} == {
        tuple(p) for p in printed
    }
    # the best trial's line leaves out what its activations do not read; a failed trial's metrics are blank
    best = {**rows[1], "mask": "0110", "config.lr": 0.0060000759}
    assert (
        summary.best_config_line(sweep, best)
        == "best config: insert_act=pwlu, dropout=0.2, mask=0110 (the sites its policy chose)"
    )
    failed = {
        "trial_id": "t9",
        "status": "failed",
        "epochs_run": 0,
        "config.insert_act": "lslu",
        "config.n": 1,
        "val_acc": None,
    }
    assert summary.table(sweep, [*rows, failed]).splitlines()[-1].split() == ["t9", "failed", "0", "lslu", "1", "0.05"]


MASKED = """
name: masked
trial: {model: digits_cnn, n: 1, epochs: 2}
space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  mask: {type: sites}
search: {algorithm: nsga2, metric: [best_val_acc, latency_ms], num_samples: 12}
"""


def _masked_rows(count=12):
    """Accuracy rises with site 1 on and falls with site 3 on; latency grows with the sites on."""
    rng = random.Random(1)
    rows = []
    for k in range(count):
        mask = "".join(rng.choice("01") for _ in range(4))
        rows.append(
            {
                "trial_id": f"t{k}",
                "status": "completed",
                "mlflow_run_id": f"run{k}",
                "mask": mask,
                "config.mask": mask,
                "config.lr": 10 ** rng.uniform(-3, -2),
                "config.policy": "mask",
                "lslu_sites": mask.count("1"),
                "best_val_acc": 80 + 10 * int(mask[1]) - 5 * int(mask[3]) + rng.uniform(0, 1),
                "latency_ms": 1 + 0.2 * mask.count("1") + rng.uniform(0, 0.05),
            }
        )
    return rows


def test_site_importance_counts_sites_on_in_the_top_quartile():
    sweep, rows = _sweep(MASKED), _masked_rows()
    table = site_importance_frame(sweep, rows)
    top = sorted(rows, key=lambda r: -r["best_val_acc"])[:3]  # a quarter of 12
    assert list(table["site"]) == ["site_0", "site_1", "site_2", "site_3"]
    assert list(table["path"]) == [s.path for s in sweep.sites]
    assert list(table["on_in_top_quartile"]) == [sum(r["mask"][i] == "1" for r in top) / 3 for i in range(4)]
    assert list(table["on_in_all"]) == [sum(r["mask"][i] == "1" for r in rows) / 12 for i in range(4)]
    assert table["on_in_top_quartile"][1] == 1.0 and table["on_in_top_quartile"][3] == 0.0
    # Optuna's fANOVA importances (the same numbers as param_importance.png): site_1 explains most of the accuracy
    importance = dict(zip(table["site"], table["importance"]))
    assert max(importance, key=importance.get) == "site_1"


def test_pareto_table_and_report_are_logged_and_lslu_sweep_report_prints_them(tracking_uri, capsys):
    sweep, rows = _sweep(MASKED), _masked_rows()
    ctx = open_parent_run(tracking_uri, sweep, "masked-20260101-000000", smoke_test=False)
    client = MlflowClient(tracking_uri)
    tables = log_sweep_tables(client, ctx.parent_run_id, sweep, rows, "masked-20260101-000000")
    assert {a.path for a in client.list_artifacts(ctx.parent_run_id)} >= {
        "report.md",
        "report.csv",
        "pareto.csv",
        "site_importance.csv",
    }
    front = {
        r["trial_id"]
        for r in rows
        if not any(o["best_val_acc"] > r["best_val_acc"] and o["latency_ms"] < r["latency_ms"] for o in rows)
    }
    logged = pd.read_csv(
        client.download_artifacts(ctx.parent_run_id, "pareto.csv", "."), dtype={"mask": str, "trial_id": str}
    )
    assert set(logged["trial_id"]) == set(tables["pareto.csv"]["trial_id"]) == front
    assert list(logged["best_val_acc"]) == sorted(logged["best_val_acc"], reverse=True)
    assert all(len(m) == 4 for m in logged["mask"])  # a mask stays text: 0011 is not the number 11

    # `lslu-sweep report` reads the parent run's results.csv back: a finished sweep, by sweep name or by run name
    table2 = _sweep(TABLE2)
    t2 = open_parent_run(tracking_uri, table2, "table2_mini-20260101-000000", smoke_test=False)
    client.log_text(t2.parent_run_id, summary.results_csv(_table2_rows()), "results.csv")
    client.set_tag(t2.parent_run_id, "sweep_status", "finished")
    for name in ("table2_mini", "table2_mini-20260101-000000"):
        assert main(["report", name, "--tracking-uri", tracking_uri]) == 0
        out = capsys.readouterr().out
        expected = report_markdown(table2, report_frame(table2, _table2_rows()), "table2_mini-20260101-000000")
        assert out.startswith(expected)
        assert f"logged report.md and report.csv on the parent run {t2.parent_run_id}" in out
    # a newer smoke test of the same sweep file does not hide the full sweep from `report <sweep>`
    smoke = open_parent_run(tracking_uri, table2, "table2_mini-smoke-20260102-000000", smoke_test=True)
    client.log_text(smoke.parent_run_id, summary.results_csv(_table2_rows()[:2]), "results.csv")
    client.set_tag(smoke.parent_run_id, "sweep_status", "finished")
    assert main(["report", "table2_mini", "--tracking-uri", tracking_uri]) == 0
    assert capsys.readouterr().out.startswith(expected)
    logged = client.download_artifacts(t2.parent_run_id, "report.md", "t2")
    assert open(logged).read() == expected
    report_csv = pd.read_csv(io.StringIO(open(client.download_artifacts(t2.parent_run_id, "report.csv", "t2")).read()))
    assert len(report_csv) == 6 and list(report_csv["trials"]) == [3] * 6

    assert main(["report", "no_such_sweep", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert "no sweep or sweep run named 'no_such_sweep'" in err and "table2_mini" in err and "masked" in err
    # a sweep that never finished has nothing to report yet
    assert main(["report", "masked", "--tracking-uri", tracking_uri]) == 2
    assert "sweep masked has no finished run" in capsys.readouterr().err


def test_pareto_figure_draws_the_front_in_red_over_every_finished_trial():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from orchestrator.sweep_plots import PLOTS

    sweep, rows = _sweep(MASKED), _masked_rows()
    front = sorted(
        (
            r
            for r in rows
            if not any(o["best_val_acc"] > r["best_val_acc"] and o["latency_ms"] < r["latency_ms"] for o in rows)
        ),
        key=lambda r: r["latency_ms"],
    )
    fig = PLOTS["pareto.png"](sweep, rows)
    try:
        ax = fig.axes[0]
        (line,) = [ln for ln in ax.get_lines() if to_rgba(ln.get_color()) == to_rgba("red")]
        assert list(line.get_xdata()) == [r["latency_ms"] for r in front]
        assert list(line.get_ydata()) == [r["best_val_acc"] for r in front]
        (others,) = ax.collections  # the dominated trials
        assert len(others.get_offsets()) == len(rows) - len(front)
        assert ax.get_xlabel().startswith("latency_ms") and ax.get_ylabel().startswith("best_val_acc")
        assert {t.get_text() for t in ax.texts} == {f"{r['mask'].count('1')} sites" for r in front}
    finally:
        plt.close(fig)
    assert PLOTS["pareto.png"](_sweep(TABLE2), _table2_rows()) is None  # one objective: no Pareto plot
