"""A finished sweep's tables, logged on its parent run beside ``results.csv``.

- ``report.md`` / ``report.csv``: the paper-style table (papers/000 Tables 2-4). Finished trials are grouped by what
  the sweep varied (its searched keys, ``seed`` excepted: the seeds are what each group averages over), with the
  mean ± std of each objective and of what the papers report (accuracy, loss, params, FLOPs, latency, s/epoch).
- ``pareto.csv``: the trials no other trial beats in every objective (two or more objectives).
- ``site_importance.csv``: per site of a searched mask, how often it is on among the top quartile of trials (by the
  first objective) and among all, beside Optuna's importance of its ``site_<i>`` value.

``lslu-sweep report NAME`` rebuilds the report from the parent run's ``sweep.yaml`` and ``results.csv``, prints it
and logs it again; NAME is a sweep (its newest finished run) or a Tune experiment name (``<sweep>-<date>``).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator.summary import OFF, finished, frame_csv, pareto_rows, ranked, trained_values
from orchestrator.sweep_plots import param_importances
from search_spaces.schema import Sweep, parse_sweep
from trainables.mlflow_client import mlflow_client

REPORT_METRICS = ("best_val_acc", "min_val_loss", "params_m", "flops_g", "latency_ms", "train_s_per_epoch")
AVERAGED = "seed"  # not a group key: the report averages over it
TEXT_COLUMNS = (
    "mask",
    "config.mask",
    "config.stages",
    "config.paths",
    "config.data_dir",
    "trial_id",
    "mlflow_run_id",
    "reason",
)


class ReportError(ValueError):
    pass


def group_keys(sweep: Sweep) -> list[str]:
    return [k for k in sweep.spec.space if k != AVERAGED]


def report_frame(sweep: Sweep, rows: list[dict]) -> pd.DataFrame:
    """One row per group of finished trials: the group's values, ``trials``, and ``<metric>_mean`` / ``<metric>_std``
    (sample std; NaN for a single trial), groups in the order the space lists its choices."""
    keys, metrics = group_keys(sweep), report_metrics(sweep)
    records = [
        {**trained_values(sweep, row, keys), **{m: row.get(m) for m in metrics}} for row in finished(rows, sweep.metric)
    ]
    if not records:
        return pd.DataFrame(columns=[*keys, "trials"])
    frame = pd.DataFrame(records)
    frame[metrics] = frame[metrics].apply(pd.to_numeric, errors="coerce")
    groups = frame.groupby(keys, sort=False, dropna=False) if keys else [((), frame)]
    out = []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        entry = {**dict(zip(keys, values)), "trials": len(group)}
        for m in metrics:
            entry[f"{m}_mean"] = group[m].mean()
            entry[f"{m}_std"] = group[m].std(ddof=1) if len(group) > 1 else math.nan
        out.append(entry)
    return pd.DataFrame(sorted(out, key=lambda e: [_order(sweep, k, e[k]) for k in keys]))


def report_metrics(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys([*(m for m, _ in sweep.objectives), *REPORT_METRICS]))


def report_markdown(sweep: Sweep, table: pd.DataFrame, title: str) -> str:
    """The table as Markdown, each value ``mean ± std`` (the mean alone where the group's trials agree or there is
    one)."""
    keys, metrics = group_keys(sweep), report_metrics(sweep)
    header = [*keys, "trials", *metrics]
    lines = [f"# {title}", "", _caption(sweep, table), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, e in table.iterrows():
        cells = (
            [_cell(e[k]) for k in keys]
            + [str(int(e["trials"]))]
            + [_mean_std(e[f"{m}_mean"], e[f"{m}_std"]) for m in metrics]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def site_importance_frame(sweep: Sweep, rows: list[dict]) -> pd.DataFrame | None:
    """Per site of the searched mask: path, stage, channels, downsampling, the share of top-quartile trials and of all
    finished trials with it on, and Optuna's fANOVA importance of its ``site_<i>`` (NaN with too few trials)."""
    if not sweep.site_count:
        return None
    done = ranked(finished(rows, sweep.metric), sweep.metric, sweep.mode)
    if not done:
        return None
    top = done[: math.ceil(len(done) / 4)]
    importances = param_importances(sweep, rows) or {}
    on = lambda trials, i: sum(r["config.mask"][i] == "1" for r in trials) / len(trials)  # noqa: E731
    return pd.DataFrame(
        [
            {
                "site": f"site_{s.index}",
                "path": s.path,
                "stage": s.stage,
                "channels": s.channels,
                "downsampling": s.downsampling,
                "on_in_top_quartile": on(top, s.index),
                "on_in_all": on(done, s.index),
                "importance": importances.get(f"site_{s.index}", math.nan),
                "top_quartile_trials": len(top),
                "trials": len(done),
            }
            for s in sweep.sites
        ]
    )


def pareto_frame(sweep: Sweep, rows: list[dict]) -> pd.DataFrame | None:
    """The Pareto front (two or more objectives): trial, objectives, mask and searched values, best first."""
    if len(sweep.objectives) < 2:
        return None
    front = pareto_rows(rows, sweep.objectives)
    if not front:
        return None
    columns = [
        "trial_id",
        *(m for m, _ in sweep.objectives),
        "mask",
        "lslu_sites",
        *(f"config.{k}" for k in sweep.spec.space if k != "mask"),
        "mlflow_run_id",
    ]
    return pd.DataFrame(front)[list(dict.fromkeys(c for c in columns if c in front[0]))]


def log_sweep_tables(
    client: MlflowClient, run_id: str, sweep: Sweep, rows: list[dict], title: str
) -> dict[str, pd.DataFrame]:
    """Log report.md/.csv, pareto.csv and site_importance.csv (those this sweep has) on the parent run; returns them by
    name."""
    table = report_frame(sweep, rows)
    tables = {
        "report.csv": table,
        "pareto.csv": pareto_frame(sweep, rows),
        "site_importance.csv": site_importance_frame(sweep, rows),
    }
    tables = {name: t for name, t in tables.items() if t is not None}
    for name, frame in tables.items():
        client.log_text(run_id, frame_csv(frame), name)
    client.log_text(run_id, report_markdown(sweep, table, title), "report.md")
    return tables


def report_sweep(name: str, tracking_uri: str) -> str:
    """``lslu-sweep report NAME``: the paper-style table of a finished sweep, logged again on its parent run."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        raise ReportError(
            f"no MLflow store at {tracking_uri[len('sqlite:///') :]}; name the sweeps' store with --tracking-uri"
        )
    client = mlflow_client(tracking_uri)
    run = find_sweep_run(client, name, tracking_uri)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as d:
        try:
            source = Path(client.download_artifacts(run_id, "sweep.yaml", d)).read_text()
            results = client.download_artifacts(run_id, "results.csv", d)
        except Exception as exc:  # MLflow raises its own exception types for a missing artifact
            raise ReportError(
                f"sweep {run.info.run_name} has no results.csv yet (interrupted? `lslu-sweep resume "
                f"{run.info.run_name}` finishes it): {exc}"
            ) from None
        rows = read_results(results)
    sweep = parse_sweep(yaml.safe_load(source), source, run.data.tags.get("sweep_file", "sweep.yaml"))
    tables = log_sweep_tables(client, run_id, sweep, rows, run.info.run_name)
    text = report_markdown(sweep, tables["report.csv"], run.info.run_name)
    return text + f"\nlogged report.md and report.csv on the parent run {run_id} (experiment {run.info.experiment_id})"


def read_results(path: str) -> list[dict]:
    """``results.csv`` back as rows: masks and ids stay text (``0101`` is not the number 101)."""
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    text = [c for c in TEXT_COLUMNS if c in frame.columns]
    frame[text] = frame[text].fillna("")
    return frame.to_dict("records")


def find_sweep_run(client: MlflowClient, name: str, tracking_uri: str) -> Run:
    """The parent run named ``name`` (a Tune experiment name), else the newest finished sweep of experiment ``name``:
    its newest full sweep if it has one (smoke tests share the experiment), else its newest smoke test."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    quoted = name.replace("'", "\\'")
    parents = [
        r
        for r in (client.search_runs(experiments, f"attributes.run_name = '{quoted}'") if experiments else [])
        if "mlflow.parentRunId" not in r.data.tags and "sweep" in r.data.tags
    ]
    if parents:
        return parents[0]
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        runs = client.search_runs(
            [exp.experiment_id], "tags.sweep_status = 'finished'", order_by=["attributes.start_time DESC"]
        )
        runs = sorted(
            (r for r in runs if "mlflow.parentRunId" not in r.data.tags),
            key=lambda r: r.data.tags.get("smoke_test") == "true",
        )  # stable: newest first within each
        if runs:
            return runs[0]
        raise ReportError(f"sweep {name} has no finished run in {tracking_uri} (resume an interrupted one first)")
    known = sorted({e.name for e in client.search_experiments()} - {"Default"})
    raise ReportError(
        f"no sweep or sweep run named {name!r} in {tracking_uri}; sweeps there: {', '.join(known) or 'none'}"
    )


def _caption(sweep: Sweep, table: pd.DataFrame) -> str:
    keys = group_keys(sweep)
    by = f"grouped by {', '.join(keys)}" if keys else "all trials together"
    seeds = " (the seeds)" if AVERAGED in sweep.spec.space else ""
    objectives = ", ".join(f"{m} ({mode})" for m, mode in sweep.objectives)
    unused = any((table[k] == OFF).any() for k in keys if k in table)
    conditional = f" {OFF}: a value the trials' activations do not read (n without LSLU)." if unused else ""
    return (
        f"{int(table['trials'].sum()) if len(table) else 0} finished trials, {by}; "
        f"mean ± std over each group's trials{seeds}. "
        f"Objectives: {objectives}.{conditional}"
    )


def _cell(value) -> str:
    """A group's value, a float rounded as the means are."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _mean_std(mean: float, std: float) -> str:
    if not isinstance(mean, (int, float)) or math.isnan(mean):
        return OFF
    return f"{mean:.4g}" if math.isnan(std) or std == 0 else f"{mean:.4g} ± {std:.2g}"


def _order(sweep: Sweep, key: str, value) -> tuple:
    """Sort groups as the sweep file lists a categorical's choices (ReLU, SiLU, GELU as in Table 2), numbers
    ascending."""
    if value == OFF:
        return (2, 0, "")
    dist = sweep.spec.space[key]
    if dist.type == "categorical":
        matches = [i for i, c in enumerate(dist.choices) if c == value and type(c) is type(value)] or [
            i for i, c in enumerate(dist.choices) if str(c) == str(value)
        ]
        return (0, matches[0] if matches else len(dist.choices), str(value))
    return (1, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
