"""The Ray Tune function trainable: a thin layer around ``loop.Training``.

Each epoch it logs to the trial's MLflow run, then reports to Tune with a checkpoint. The last epoch
finishes the MLflow run *before* its report, because Tune may stop the actor right after it.
A restored trial loads the checkpoint, reopens the same MLflow run and continues at the next epoch;
one restarted without a checkpoint finds its run by trial id, so a trial never has two runs.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import traceback
from pathlib import Path

import torch
from ray import tune

from trainables.config import TrialConfig
from trainables.insertion import list_sites
from trainables.loop import Diverged, Training
from trainables.metrics import act_metrics
from trainables.tracking import SweepContext, TrialRun, end, run_name

STATE_FILE = "state.pt"


def train_trial(config: dict, sweep: SweepContext) -> None:
    cfg = TrialConfig.from_flat(config)
    # Ray logs "Checkpoint successfully created at: …" for every report; the epoch line below says enough.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    torch.set_num_threads(max(1, int(context.get_trial_resources().required_resources.get("CPU", 1))))
    training = Training(cfg)
    checkpoint, run_id = tune.get_checkpoint(), None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=training.device, weights_only=False)
        training.load_state_dict(state["training"])
        run_id = state["mlflow_run_id"]
    run = TrialRun.open(sweep, cfg, trial_id, training.mask, sites_csv(training), run_id=run_id)
    title = run_name(cfg, training.mask, trial_id)
    fixed = {"mlflow_run_id": run.run_id, "mask": training.mask, "lslu_sites": training.lslu_sites}
    try:
        while not training.done:
            try:
                metrics = training.run_epoch()
            except Diverged as exc:
                print(f"trial {trial_id} diverged: {exc}", flush=True)
                run.finish("diverged", training.summary(), title, reason=str(exc))
                tune.report({**fixed, **_diverged_metrics(training), "status": "diverged", "reason": str(exc)})
                return
            metrics.update(act_metrics(training.act_history[-1]["state"]))
            run.log_epoch(training.epoch, metrics)
            print(epoch_line(trial_id, training.epoch, cfg.epochs, metrics), flush=True)
            final = training.summary() if training.done else {}
            if training.done:
                run.finish("completed", final, title)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"training": training.state_dict(), "mlflow_run_id": run.run_id}, Path(d) / STATE_FILE)
                status = "completed" if training.done else "running"
                tune.report({**fixed, **metrics, **final, "epoch": training.epoch, "status": status},
                            checkpoint=tune.Checkpoint.from_directory(d))
    except Exception:
        end(run.client, run.run_id, "failed", traceback.format_exc())
        raise


def epoch_line(trial_id: str, epoch: int, epochs: int, m: dict[str, float]) -> str:
    """The one console line a trial prints per epoch (Ray prefixes it with the worker)."""
    return (f"trial {trial_id} epoch {epoch}/{epochs}: train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_acc {m['val_acc']:.2f}% (best {m['best_val_acc']:.2f}%)  {m['epoch_time_s']:.1f}s")


def _diverged_metrics(training: Training) -> dict:
    nan = math.nan
    return {"epoch": training.epoch, "train_loss": nan, "val_loss": nan, "val_acc": 0.0,
            "best_val_acc": training.best_val_acc, "min_val_loss": training.min_val_loss}


def sites_csv(training: Training) -> str:
    """Every site of the trial's network and what it holds now."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "path", "channels", "module", "inserted"])
    for site, bit in zip(list_sites(training.model), training.mask):
        module = type(training.model.get_submodule(site.path)).__name__
        writer.writerow([site.index, site.path, site.channels, module, bit])
    return out.getvalue()
