"""What a finished sweep amounts to: one row per trial, the best trial, the Pareto front of a multi-objective
sweep, and a runnable best config."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from search_spaces.schema import Sweep
from trainables.activations import config_fields, list_acts
from trainables.config import TrialConfig
from trainables.metrics import EMA_METRICS, EPOCH_METRICS, FINAL_METRICS, record_of
from trainables.tracking import error_line

OFF = "—"  # an activation setting a trial's activations do not read (LSLU's n in a PWLU trial)


def trial_rows(result_grid) -> list[dict[str, Any]]:
    """One row per trial: ids, status, the resolved config (mask folded), the insertion mask its policy gave,
    and every reported metric (the last epoch's, and the end-of-trial record with the θ/ω convergence values)."""
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = TrialConfig.from_flat(result.config).params()  # a mapping: config.data_args.<key>
        status, reason = metrics.get("status"), metrics.get("reason", "")
        if result.error is not None:
            status, reason = "failed", failure_line(result.error)
        elif status in (None, "running"):
            status = "stopped_early"
        # a trial that failed before its first report has no metrics: its id is the end of its directory's name
        trial_id = metrics.get("trial_id") or (Path(result.path).name.rsplit("_", 1)[-1] if result.path else "")
        row = {
            "trial_id": trial_id,
            "status": status,
            "reason": reason,
            "epochs_run": metrics.get("epoch", 0),
            "mlflow_run_id": metrics.get("mlflow_run_id", ""),
            "mask": metrics.get("mask", ""),
        }
        row.update({f"config.{k}": v for k, v in config.items()})
        row.update({m: metrics.get(m) for m in EPOCH_METRICS + EMA_METRICS + FINAL_METRICS})
        row.update(record_of(metrics))
        rows.append(row)
    return rows


def failure_line(error: BaseException) -> str:
    """A failed trial's error in one line: the trial's own exception (Ray wraps it in a RayTaskError)."""
    return error_line(getattr(error, "cause", None) or error)


def failed_lines(rows: list[dict]) -> list[str]:
    """The console's line per failed trial: its id and why."""
    return [f"  trial {r['trial_id']} failed: {r['reason']}" for r in rows if r["status"] == "failed"]


def finished(rows: list[dict], *metrics: str) -> list[dict]:
    """The trials whose ``metrics`` count: completed or stopped by the scheduler, with a finite value of each."""
    return [
        r for r in rows if r["status"] in ("completed", "stopped_early") and all(_finite(r.get(m)) for m in metrics)
    ]


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    candidates = finished(rows, metric)
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda r: r[metric])


def best_theta_omega_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The best trial that has θ/ω to show (LSLU sites: its results hold ``theta_conv/…``, what the trial's
    ``theta_omega.png`` draws), or None."""
    return best_row([r for r in rows if any(k.startswith("theta_conv/") for k in r)], metric, mode)


def ranked(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first by ``metric``; trials without a result (diverged, failed) last, in their original order."""
    done = sorted(finished(rows, metric), key=lambda r: r[metric], reverse=mode == "max")
    chosen = {id(r) for r in done}
    return done + [r for r in rows if id(r) not in chosen]


def dominates(a: dict, b: dict, objectives: Sequence[tuple[str, str]]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    signs = [1 if mode == "max" else -1 for _, mode in objectives]
    diffs = [sign * (a[m] - b[m]) for (m, _), sign in zip(objectives, signs)]
    return all(d >= 0 for d in diffs) and any(d > 0 for d in diffs)


def pareto_rows(rows: list[dict], objectives: Sequence[tuple[str, str]]) -> list[dict]:
    """The finished trials no other finished trial dominates, best in the first objective first."""
    done = finished(rows, *(m for m, _ in objectives))
    front = [r for r in done if not any(dominates(o, r, objectives) for o in done)]
    return ranked(front, *objectives[0])


def best_config_yaml(sweep: Sweep, best: dict) -> str:
    """A one-trial sweep file that reruns the best trial: ``lslu-sweep run best_config.yaml``."""
    trial = {k[len("config.") :]: v for k, v in best.items() if k.startswith("config.")}
    spec = {
        "name": f"{sweep.name}-best",
        "trial": trial,
        "search": {
            "algorithm": "random",
            "metric": sweep.metric,
            "mode": sweep.mode,
            "num_samples": 1,
            "max_concurrent": 1,
            "scheduler": "none",
        },
        "resources": sweep.spec.resources.model_dump(),
    }
    header = (
        f"# lslu-sweep run best_config.yaml\n"
        f"# The best trial ({best['trial_id']}) of sweep {sweep.name} by {sweep.metric} ({sweep.mode}).\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False)


def results_csv(rows: list[dict]) -> str:
    return frame_csv(pd.DataFrame(rows))


def frame_csv(frame: pd.DataFrame) -> str:
    out = io.StringIO()
    frame.to_csv(out, index=False)
    return out.getvalue()


def table(sweep: Sweep, rows: list[dict]) -> str:
    """The printed summary: one line per trial, the searched values as the report shows them (``trained_values``)
    and the headline metrics (the objectives)."""
    searched = [k for k in sweep.spec.space if any(f"config.{k}" in r for r in rows)]
    shown = [{**r, **{f"config.{k}": v for k, v in trained_values(sweep, r, searched).items()}} for r in rows]
    metrics = ["val_acc", *(m for m, _ in sweep.objectives)]
    cols = ["trial_id", "status", "epochs_run"] + [f"config.{k}" for k in searched] + metrics
    cols = list(dict.fromkeys(c for c in cols if any(c in r for r in shown)))
    frame = pd.DataFrame(shown, columns=cols)
    for m in set(metrics) & set(cols):  # a failed trial's None is a missing number, not the word None
        frame[m] = pd.to_numeric(frame[m], errors="coerce")
    frame = frame.rename(columns=lambda c: c.removeprefix("config."))
    return frame.to_string(index=False, float_format=_short, na_rep="")  # a failed trial has no metrics: blank


def best_config_line(sweep: Sweep, best: dict) -> str:
    """The best trial's searched values as the table shows them (``.4g``; best_config.yaml holds them in full),
    without the activation settings its activations do not read, and the mask its policy chose."""
    keys = [k for k in sweep.spec.space if f"config.{k}" in best and k != "mask"]
    shown = [f"{k}={_short(v)}" for k, v in trained_values(sweep, best, keys).items() if v != OFF]
    return "best config: " + ", ".join([*shown, f"mask={best['mask']} (the sites its policy chose)"])


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trained_values(sweep: Sweep, row: dict, keys: Iterable[str]) -> dict[str, Any]:
    """What a trial trained with for each of ``keys``, as the report, the console table and the parallel-coordinates
    figure show it: a conditional key the trial did not sample kept its fixed value (SpaceSampler); an activation
    setting the trial's activations do not read is ``OFF`` (LSLU's ``n`` in a PWLU trial: no value of it was used)."""
    config = {**sweep.base.params(), **config_of(row)}
    unused = activation_fields() - read_fields(config)
    return {k: OFF if k in unused else config.get(k) for k in keys}


def config_of(row: dict) -> dict:
    """A results row's trial config, without the ``config.`` prefix."""
    return {k[len("config.") :]: v for k, v in row.items() if k.startswith("config.")}


def activation_fields() -> set[str]:
    """The trial-config fields an activation reads (``n``, ``pwlu_intervals``, ``la_alpha``, ``granularity``, …)."""
    return {field for name in list_acts() for field in config_fields(name).values()}


def read_fields(config: dict) -> set[str]:
    """The activation fields a trial's activations read: its inserted activation's and its network's own (all of
    them where one cannot be looked up here, e.g. a plugin the report's process cannot import)."""
    read: set[str] = set()
    for name in {config.get("insert_act"), config.get("act")} - {"native", None}:
        try:
            read |= set(config_fields(name).values())
        except ValueError:
            return activation_fields()
    return read


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
