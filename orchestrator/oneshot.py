"""The one-shot insertion search (``search.strategy: oneshot``, DESIGN.md §6): three phases under one parent run.

1. **supernet**: one Ray Tune trial (``trainables.trainable.train_supernet``) trains base activation and LSLU side by
   side at every eligible site, one uniformly sampled mask per step; its child run is named ``supernet``.
2. **mask_search**: a Ray task with a trial's resources scores ``eval_masks`` masks on the supernet's last checkpoint
   (``orchestrator/mask_search.py``); the parent run gets ``mask_search.csv`` and ``mask_search.png``.
3. **retrain**: the ``candidates`` best masks train from scratch as ordinary trials (the sweep's scheduler applies);
   their standalone results are the sweep's answer, as a black-box sweep's trials are.

Each phase's Tune experiment lives inside the sweep's directory (``<sweep>/supernet``, ``<sweep>/retrain``), and
the manifest records each phase as it finishes, so ``lslu-sweep resume`` restores the phase that was running and
never repeats a finished one. The parent run also gets ``oneshot_kendall_tau`` (the supernet's ranking of the
candidates against their standalone ranking) and ``oneshot_cost_trainings`` (supernet, mask search and retraining,
in full trainings of the sweep's trial).
"""

from __future__ import annotations

import math

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from cluster import storage as st
from orchestrator import summary
from orchestrator.experiments import fit
from orchestrator.figures import log_figure
from orchestrator.mask_search import candidates, kendall_tau, mask_search_csv, search_masks
from orchestrator.search import make_scheduler
from orchestrator.sweep_plots import pareto_figure
from search_spaces.oneshot import MASK_SCORES
from search_spaces.schema import Sweep
from trainables.mlflow_client import mlflow_client
from trainables.tracking import SweepContext
from trainables.trainable import train_supernet, train_trial


class PhaseInterrupted(Exception):
    """A phase's Tune run ended with trials unfinished (Ctrl+C): the sweep is saved for ``resume``."""

    def __init__(self, phase: str, pending: int):
        super().__init__(phase, pending)
        self.phase, self.pending = phase, pending


class PhaseFailed(RuntimeError):
    """The supernet trial failed, or the mask search did: the phases after it cannot run."""


def run_phases(
    sweep: Sweep, ctx: SweepContext, exp_dir: str, manifest: dict, save, *, max_failures: int, callbacks, echo
):
    """Run the phases the manifest does not record as done (``save()`` writes it after each); returns the
    retraining's ResultGrid and its Tune directory. Raises ``PhaseInterrupted`` when a phase stops with trials
    unfinished."""
    phases = manifest.setdefault("phases", {})
    s, client = sweep.spec.search, mlflow_client(ctx.tracking_uri)
    if "supernet" not in phases:
        epochs = s.supernet_epochs or sweep.base.epochs
        echo(
            f"one-shot phase 1/3: the supernet trains {epochs} epochs (base activation and {sweep.base.insert_act} "
            "at every eligible site, one sampled mask per step)"
        )
        config = {**sweep.fixed_values(), "policy": "all", "epochs": epochs}
        trainable = tune.with_parameters(train_supernet, sweep=ctx, max_sites=s.max_sites)
        grid = _fit(sweep, ctx, exp_dir, "supernet", trainable, config, FIFOScheduler(), max_failures, callbacks)
        result = grid[0]
        if result.error is not None or result.checkpoint is None:
            raise PhaseFailed(
                f"the supernet trial failed: {summary.failure_line(result.error) if result.error else ''}"
            )
        phases["supernet"] = {
            "checkpoint": _uri(exp_dir, result.checkpoint.path),
            "config": config,
            "epochs": epochs,
            "run_id": result.metrics.get("mlflow_run_id", ""),
        }
        save()
    if "mask_search" not in phases:
        try:
            phases["mask_search"] = _mask_search(sweep, ctx, phases["supernet"], client, echo)
        except KeyboardInterrupt:  # Ctrl+C: the search starts again on resume (its task dies with the driver)
            raise PhaseInterrupted("mask_search", 0) from None
        save()
    chosen = phases["mask_search"]["candidates"]
    echo(f"one-shot phase 3/3: {len(chosen)} candidate mask(s) retrained from scratch: {', '.join(chosen)}")
    config = {**sweep.fixed_values(), "policy": "mask", "mask": tune.grid_search(chosen)}
    trainable = tune.with_parameters(train_trial, sweep=ctx)
    grid = _fit(sweep, ctx, exp_dir, "retrain", trainable, config, make_scheduler(sweep), max_failures, callbacks)
    return grid, st.join(exp_dir, "retrain")


def _fit(
    sweep: Sweep, ctx: SweepContext, exp_dir: str, phase: str, trainable, config, scheduler, max_failures, callbacks
):
    """One phase's Tune run: restored where an earlier driver started it, else new."""
    r, s = sweep.spec.resources, sweep.spec.search
    trainable = tune.with_resources(trainable, {"cpu": r.cpu, "gpu": r.gpu})
    path = st.join(exp_dir, phase)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        from orchestrator.driver import run_config, trial_dirname

        tuner = tune.Tuner(
            trainable,
            param_space=config,
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                num_samples=1,
                max_concurrent_trials=s.max_concurrent,
                reuse_actors=s.reuse_actors,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=run_config(sweep, phase, exp_dir, ctx.tracking_uri, max_failures, callbacks),
        )
    grid = fit(tuner)
    pending = sum(t.status not in ("TERMINATED", "ERROR") for t in tune.ExperimentAnalysis(path).trials)
    if pending:
        raise PhaseInterrupted(phase, pending)
    return grid


def _mask_search(sweep: Sweep, ctx: SweepContext, supernet: dict, client, echo) -> dict:
    """Phase 2 on a worker with a trial's resources; its table and front logged on the parent run."""
    s, r = sweep.spec.search, sweep.spec.resources
    echo(
        f"one-shot phase 2/3: scoring up to {s.eval_masks} masks on the supernet ({s.algorithm}, objectives "
        f"{', '.join(m for m, _ in sweep.objectives)})"
    )
    first = ["".join(str(p[f"site_{i}"]) for i in range(sweep.site_count)) for p in sweep.points if "site_0" in p]
    task = ray.remote(_search_on_worker).options(num_cpus=r.cpu, num_gpus=r.gpu)
    found = ray.get(
        task.remote(
            supernet["checkpoint"],
            supernet["config"],
            s.max_sites,
            sweep.objectives,
            s.algorithm,
            s.eval_masks,
            s.seed,
            first,
        )
    )
    rows = found["rows"]
    picked = candidates(rows, sweep.objectives, s.candidates)
    chosen = [row["mask"] for row in picked]
    client.log_text(ctx.parent_run_id, mask_search_csv(rows, chosen), "mask_search.csv")
    client.set_tag(ctx.parent_run_id, "mask_search_node_id", found["node_id"])  # where it ran: the Ray node
    plot_rows = [
        {"status": "completed", "trial_id": i, **r, **{m: r[MASK_SCORES[m]] for m, _ in sweep.objectives}}
        for i, r in enumerate(rows)
    ]
    fig = pareto_figure(sweep, plot_rows)
    if fig is not None:
        fig.axes[0].set_title(f"{sweep.name}: {len(rows)} masks scored on the supernet", fontsize=10)
        log_figure(client, ctx.parent_run_id, fig, "mask_search.png")
    metrics = [m for m, _ in sweep.objectives]
    how = f"the best by {metrics[0]}" if len(metrics) == 1 else f"from the Pareto front over {', '.join(metrics)}"
    echo(
        f"mask search: {len(rows)} masks scored in {found['seconds']:.0f} s"
        f"{' (every feasible mask)' if found['exhaustive'] else ''}; candidates, {how} (scored on the supernet): "
        + ", ".join(f"{row['mask']} ({', '.join(f'{m} {row[MASK_SCORES[m]]:.4g}' for m in metrics)})" for row in picked)
    )
    return {
        "candidates": chosen,
        "supernet_scores": {row["mask"]: row[MASK_SCORES[metrics[0]]] for row in picked},
        "scored": len(rows),
        "exhaustive": found["exhaustive"],
        "cost_trainings": found["cost_trainings"],
    }


def _search_on_worker(checkpoint_uri: str, *args) -> dict:
    import torch

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    with tune.Checkpoint(checkpoint_uri).as_directory() as d:
        return {**search_masks(d, *args), "node_id": ray.get_runtime_context().get_node_id()}


def log_oneshot_results(sweep: Sweep, ctx: SweepContext, manifest: dict, rows: list[dict]) -> list[str]:
    """``oneshot_kendall_tau`` and ``oneshot_cost_trainings`` on the parent run; the console lines that say them."""
    phases, metric = manifest["phases"], sweep.metric
    scores = phases["mask_search"]["supernet_scores"]
    done = [r for r in summary.finished(rows, metric) if r["mask"] in scores]
    tau = kendall_tau([scores[r["mask"]] for r in done], [r[metric] for r in done])
    epochs = sweep.base.epochs
    retrained = sum(r["epochs_run"] or 0 for r in rows) / epochs
    supernet = phases["supernet"]["epochs"] / epochs
    cost = supernet + phases["mask_search"]["cost_trainings"] + retrained
    client = mlflow_client(ctx.tracking_uri)
    metrics = {  # τ is NaN where it is undefined: fewer than two candidates finished, or one side ties throughout
        "oneshot_kendall_tau": tau,
        "oneshot_cost_trainings": cost,
        "oneshot_masks_scored": phases["mask_search"]["scored"],
    }
    for key, value in metrics.items():
        client.log_metric(ctx.parent_run_id, key, value)
    client.set_tag(ctx.parent_run_id, "oneshot_supernet_run_id", phases["supernet"]["run_id"])
    return [
        f"one-shot: {cost:.2f} training-equivalents (supernet {supernet:.2f}, mask search "
        f"{phases['mask_search']['cost_trainings']:.2f} over {phases['mask_search']['scored']} masks, retraining "
        f"{retrained:.2f}); Kendall tau of the supernet's ranking of the candidates against their standalone "
        f"{metric}: {'undefined (fewer than two finished, or ties)' if math.isnan(tau) else f'{tau:.2f}'}"
    ]


def _uri(exp_dir: str, path: str) -> str:
    """A checkpoint path as Tune gives it (on its storage filesystem) as a URI any node can open."""
    scheme = exp_dir.split("://", 1)[0] if "://" in exp_dir else ""
    return f"{scheme}://{path.lstrip('/')}" if scheme else path
