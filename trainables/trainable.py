"""The Ray Tune function trainable: a thin layer around ``loop.Training``.

Each epoch it logs to the trial's MLflow run, then reports to Tune with a checkpoint. The last epoch
finishes the MLflow run *before* its report, because Tune may stop the actor right after it.
A restored trial loads the checkpoint, reopens the same MLflow run and continues at the next epoch;
one restarted without a checkpoint finds its run by trial id, so a trial never has two runs.
Epochs MLflow could not take during a server outage travel in the checkpoint until they are sent.
Each result names the Ray node it was trained on (``node_id``; the run's ``ray_node_id`` tag: the latest),
so a trial moved off a lost node shows it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import time
from pathlib import Path

import ray
import torch
import yaml
from ray import tune

from trainables.config import TrialConfig
from trainables.deploy import DEPLOY_WEIGHTS_TAG, EMA_WEIGHTS, MODEL_WEIGHTS, SystemMetrics, log_deploy_model
from trainables.insertion import format_site_table, functional_note
from trainables.loop import Diverged, Training
from trainables.metrics import act_metrics, convergence_metrics
from trainables.retry import fail_fast_http, retry
from trainables.mlflow_client import mlflow_client
from trainables.tracking import SweepContext, TrialRun, error_line, fail, run_name

STATE_FILE = "state.pt"
log = logging.getLogger(__name__)


def train_trial(config: dict, sweep: SweepContext, make_training=Training) -> None:
    """One trial: ``make_training(cfg)`` (a ``loop.Training``, or the one-shot search's supernet) trained epoch by
    epoch."""
    cfg = TrialConfig.from_flat(config)
    fail_fast_http()
    # Ray logs "Checkpoint successfully created at: …" for every report; the epoch line below says enough.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # "Started monitoring …" per trial
    context = tune.get_context()
    trial_id = context.get_trial_id()
    torch.set_num_threads(max(1, int(context.get_trial_resources().required_resources.get("CPU", 1))))
    try:
        training = make_training(cfg)
    except Exception as exc:  # the model or the data could not be built (often the user's code): a FAILED run says why
        _fail(lambda: TrialRun.open(sweep, cfg, trial_id, "", None).run_id, sweep, exc)
        raise
    run_id, unsent = _restore(training)
    node_id = ray.get_runtime_context().get_node_id()
    title = training.run_title or run_name(cfg, training.mask, trial_id)
    shape = "x".join(map(str, input_shape(training)))  # with num_classes: what export rebuilds the network with
    tags = {
        "ray_node_id": node_id,
        "input_shape": shape,
        "num_classes": str(training.data.num_classes),
        "amp_dtype": training.amp_dtype,  # bf16, fp16 or off (a CPU trial)
    }
    run = TrialRun.open(
        sweep,
        cfg,
        trial_id,
        training.mask,
        sites_csv(training),
        run_id=run_id,
        unsent=unsent,
        tags=tags,
        summary=model_summary(training, title),
        record={**training.stats, "lslu_sites": training.lslu_sites},  # known before training
        name=training.run_title,
    )
    fixed = {
        "mlflow_run_id": run.run_id,
        "mask": training.mask,
        "lslu_sites": training.lslu_sites,
        "node_id": node_id,
        **training.stats,
    }
    system = SystemMetrics(sweep.tracking_uri, run.run_id, resume=run_id is not None).start()
    try:
        _train(training, run, trial_id, fixed, system, sweep)
    except Exception as exc:
        system.stop()  # its last sample goes in before the run ends FAILED (the finally's stop is then a no-op)
        _fail(lambda: run.run_id, sweep, exc)
        raise
    finally:
        system.stop()


def _fail(run_id, sweep: SweepContext, exc: Exception) -> None:
    """Mark the trial's run (``run_id()`` finds or opens it) FAILED with ``exc``; the trial then raises it."""
    try:
        fail(mlflow_client(sweep.tracking_uri), run_id(), exc)
    except Exception as mlflow_exc:  # the server may be what failed: the trial's own error is the one to raise
        log.warning("could not mark the trial's run failed: %s", mlflow_exc)


def _restore(training: Training) -> tuple[str | None, list | None]:
    """A restored trial's state from Tune's checkpoint; its MLflow run id and the epochs MLflow did not take yet."""
    checkpoint = tune.get_checkpoint()
    if not checkpoint:
        return None, None
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location=training.device, weights_only=False)
    training.load_state_dict(state["training"])
    return state["mlflow_run_id"], state.get("mlflow_unsent")


def _train(
    training: Training, run: TrialRun, trial_id: str, fixed: dict, system: SystemMetrics, sweep: SweepContext
) -> None:
    """The epochs still to run, each logged to MLflow and reported to Tune with a checkpoint. The system metrics stop
    before the run ends (Tune may stop the actor right after the last report)."""
    cfg = training.cfg
    while not training.done:
        try:
            metrics = training.run_epoch()
        except (Diverged, torch.cuda.OutOfMemoryError) as exc:
            status, reason = _failure(exc, cfg)
            print(f"trial {trial_id} {status}: {reason}", flush=True)
            final = end_of_trial(training) if status == "diverged" else {}
            system.stop()
            run.finish(status, final, reason)
            tune.report({**fixed, **_no_result(training), "status": status, "reason": reason})
            return
        metrics.update(act_metrics(training.act_history[-1]["state"]))
        run.log_epoch(training.epoch, metrics)
        print(epoch_line(trial_id, training.epoch, cfg.epochs, metrics), flush=True)
        # the record is reported as it stands: the driver closes the run of a trial ASHA stops with it
        status, record = "running", end_of_trial(training)
        if training.done:  # finish the run before the report: Tune may stop the actor right after it
            status = "stopped_early" if training.stop_reason else "completed"
            system.stop()
            if training.ema is not None:  # which weights the deploy form (and `lslu-sweep export`) takes
                weights = EMA_WEIGHTS if training.deploys_ema else MODEL_WEIGHTS
                retry(lambda: run.client.set_tag(run.run_id, DEPLOY_WEIGHTS_TAG, weights), budget_s=30, what="tagging")
            if training.logs_model:
                log_model(training, run, sweep)
            with tempfile.TemporaryDirectory() as files:
                write_final_weights(training, files)
                run.finish(status, record, training.stop_reason, files=files)
        with tempfile.TemporaryDirectory() as d:
            torch.save(
                {"training": training.state_dict(), "mlflow_run_id": run.run_id, "mlflow_unsent": run.unsent_state()},
                Path(d) / STATE_FILE,
            )
            tune.report(
                {
                    **fixed,
                    **metrics,
                    **record,
                    "epoch": training.epoch,
                    "status": status,
                    "mlflow_unsent": len(run.unsent),
                },
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def input_shape(training: Training) -> tuple[int, int, int]:
    """One input sample's shape, (channels, height, width)."""
    return (training.data.in_chans, training.cfg.image_size, training.cfg.image_size)


def log_model(training: Training, run: TrialRun, sweep: SweepContext) -> None:
    """The trained network's deploy form as the run's MLflow model (trainables/deploy.py). A network
    ``torch.export`` cannot trace (a user's model with data-dependent control flow) keeps its trial: the run gets
    tag ``deploy_model_error`` instead, and the weights-only ``model_final.pt`` as always."""
    start = time.perf_counter()
    try:
        model_id = log_deploy_model(
            run.client,
            sweep.experiment_id,
            run.run_id,
            training.deployed_network,
            input_shape(training),
            training.cfg.to_dict(),
        )
    except Exception as exc:
        line = error_line(exc)
        log.warning("could not log the deploy form of run %s as an MLflow model: %s", run.run_id, line)
        retry(lambda: run.client.set_tag(run.run_id, "deploy_model_error", line), budget_s=30, what="tagging the run")
        return
    log.info("logged model %s for run %s in %.2f s", model_id, run.run_id, time.perf_counter() - start)


def epoch_line(trial_id: str, epoch: int, epochs: int, m: dict[str, float]) -> str:
    """The one console line a trial prints per epoch (Ray prefixes it with the worker)."""
    return (
        f"trial {trial_id} epoch {epoch}/{epochs}: train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"val_acc {m['val_acc']:.2f}% (best {m['best_val_acc']:.2f}%)  {m['epoch_time_s']:.1f}s"
    )


def _failure(exc: Exception, cfg: TrialConfig) -> tuple[str, str]:
    if isinstance(exc, Diverged):
        return "diverged", str(exc)
    first_line = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
    return "oom", (
        f"CUDA out of memory at batch_size {cfg.batch_size} (lower it, or give each trial more GPU): {first_line}"
    )


def _no_result(training: Training) -> dict:
    """What a trial that ended without a usable epoch reports (the searcher needs its metric)."""
    return {
        "epoch": training.epoch,
        "train_loss": math.nan,
        "val_loss": math.nan,
        "val_acc": 0.0,
        "best_val_acc": training.best_val_acc,
        "min_val_loss": training.min_val_loss,
    }


def end_of_trial(training: Training) -> dict[str, float]:
    """The papers' record: params_m, flops_g, latency_ms, train_s_per_epoch, min_val_loss, best_val_acc, best_epoch,
    and the convergence value and std of every value the activations report (θ/ω of every LSLU site)."""
    return {**training.summary(), **convergence_metrics(training.act_history)}


def model_summary(training: Training, title: str) -> str:
    """``model_summary.txt``: the config, the mask, the site table and the network. Architecture only, so the run
    gets it when it opens, whether the trial completes or the scheduler stops it."""
    trace = training.site_trace
    sites = trace.sites
    return "\n".join(
        [
            title,
            "",
            "config:",
            yaml.safe_dump(training.cfg.to_dict(), sort_keys=False),
            f"mask: {training.mask}",
            "",
            format_site_table(sites, training.mask, "inserted"),
            functional_note(trace),
            "",
            repr(training.model),
        ]
    )


def write_final_weights(training: Training, folder: str) -> None:
    """The weights-only final checkpoint(s), loadable with ``torch.load(weights_only=True)``."""
    torch.save(
        {k: v.cpu() if torch.is_tensor(v) else v for k, v in training.model.state_dict().items()},
        Path(folder) / MODEL_WEIGHTS,
    )
    if training.ema is not None:
        torch.save(
            {k: v.cpu() if torch.is_tensor(v) else v for k, v in training.ema.state_dict().items()},
            Path(folder) / EMA_WEIGHTS,
        )


def weights_from_checkpoint(checkpoint_dir: str) -> dict:
    """The model weights inside a trial checkpoint (for runs the driver closes)."""
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)
    return state["training"]["model"]


def sites_csv(training: Training) -> str:
    """Every site of the trial's network and what it holds now."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "index",
            "path",
            "stage",
            "channels",
            "downsampling",
            "depth_fraction",
            "layout",
            "eligible",
            "reason",
            "module",
            "inserted",
        ]
    )
    for site, bit in zip(training.site_trace.sites, training.mask):
        module = type(training.model.get_submodule(site.path)).__name__
        writer.writerow(
            [
                site.index,
                site.path,
                site.stage,
                site.channels,
                site.downsampling,
                f"{site.depth_fraction:.3f}",
                site.layout,
                site.eligible,
                site.reason,
                module,
                bit,
            ]
        )
    return out.getvalue()


def train_supernet(config: dict, sweep: SweepContext, max_sites: int | None = None) -> None:
    """Phase 1 of the one-shot insertion search: the supernet trained as a trial (``supernet.SupernetTraining``),
    logged as the child run ``supernet``."""
    from trainables.supernet import SupernetTraining

    train_trial(config, sweep, make_training=lambda cfg: SupernetTraining(cfg, max_sites=max_sites))
