"""What a finished sweep amounts to: one row per trial, the best trial, and a runnable best config."""
from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd
import yaml

from search_spaces.schema import Sweep
from trainables.config import TrialConfig
from trainables.metrics import EMA_METRICS, EPOCH_METRICS, FINAL_METRICS


def trial_rows(result_grid) -> list[dict[str, Any]]:
    """One row per trial: ids, status, the resolved config (mask folded) and every reported metric."""
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = TrialConfig.from_flat(result.config).to_dict()
        status = metrics.get("status")
        if result.error is not None:
            status = "failed"
        elif status in (None, "running"):
            status = "stopped_early"
        row = {"trial_id": metrics.get("trial_id", ""), "status": status, "epochs_run": metrics.get("epoch", 0),
               "mlflow_run_id": metrics.get("mlflow_run_id", "")}
        row.update({f"config.{k}": v for k, v in config.items()})
        row.update({m: metrics.get(m) for m in EPOCH_METRICS + EMA_METRICS + FINAL_METRICS})
        rows.append(row)
    return rows


def finished(rows: list[dict], metric: str) -> list[dict]:
    """The trials whose ``metric`` counts: completed or stopped by the scheduler, with a finite value."""
    return [r for r in rows if r["status"] in ("completed", "stopped_early") and _finite(r.get(metric))]


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    candidates = finished(rows, metric)
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda r: r[metric])


def ranked(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first by ``metric``; trials without a result (diverged, failed) last, in their original order."""
    done = sorted(finished(rows, metric), key=lambda r: r[metric], reverse=mode == "max")
    chosen = {id(r) for r in done}
    return done + [r for r in rows if id(r) not in chosen]


def best_config_yaml(sweep: Sweep, best: dict) -> str:
    """A one-trial sweep file that reruns the best trial: ``lslu-sweep run best_config.yaml``."""
    trial = {k[len("config."):]: v for k, v in best.items() if k.startswith("config.")}
    spec = {"name": f"{sweep.name}-best", "trial": trial,
            "search": {"algorithm": "random", "metric": sweep.spec.search.metric, "mode": sweep.spec.search.mode,
                       "num_samples": 1, "max_concurrent": 1, "scheduler": "none"},
            "resources": sweep.spec.resources.model_dump()}
    header = f"# lslu-sweep run best_config.yaml\n# The best trial ({best['trial_id']}) of sweep {sweep.name}.\n"
    return header + yaml.safe_dump(spec, sort_keys=False)


def results_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    pd.DataFrame(rows).to_csv(out, index=False)
    return out.getvalue()


def table(rows: list[dict], searched: list[str], metric: str) -> str:
    """The printed summary: one line per trial, the searched values and the headline metrics."""
    cols = ["trial_id", "status", "epochs_run"] + [f"config.{k}" for k in searched] + ["val_acc", metric]
    cols = list(dict.fromkeys(c for c in cols if any(c in r for r in rows)))
    frame = pd.DataFrame(rows, columns=cols).rename(columns=lambda c: c.removeprefix("config."))
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
