"""The sweep driver: from a validated sweep file to a finished Ray Tune experiment logged in MLflow.

    run_sweep(load_sweep("quickstart"))      # what `lslu-sweep run quickstart` does
    resume_sweep("quickstart")                # what `lslu-sweep resume quickstart` does

The driver writes ``lslu_sweep.json`` beside Tune's own experiment state; ``resume`` reads it back to
continue the same parent run and the same trial runs.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from ray import tune

from cluster import storage as st
from cluster.local import connect, is_embedded
from cluster.preflight import check_cluster, node_capacities
from cluster.tracking import resolve_tracking_uri
from orchestrator import summary
from orchestrator.experiments import MANIFEST, fit, resume_command, tracking_option, unfinished_experiment
from orchestrator.progress import SweepReporter
from orchestrator.report import log_sweep_tables
from orchestrator.runs import RunCloser, close_leftover_runs, open_parent_run, open_stores
from orchestrator.search import make_scheduler, make_searcher
from orchestrator.study_storage import MEMORY, open_study_error, redacted, resolve_optuna_storage, study_line
from orchestrator.figures import complete_figures, figure_queue
from orchestrator.sweep_plots import log_sweep_plots
from orchestrator.ui import browse_lines
from search_spaces.schema import SpecError, Sweep, parse_sweep
from search_spaces.smoke import SMOKE_CPU
from search_spaces.sweep_warnings import warning_lines
from trainables.mlflow_client import mlflow_client
from trainables.trainable import train_trial
from trainables.tracking import SweepContext


@dataclass
class SweepOutcome:
    name: str  # the Tune experiment name, also the parent run's name: <sweep>-<date>
    path: str  # the Tune experiment directory
    context: SweepContext
    rows: list[dict]
    best: dict | None
    text: str  # what the driver printed at the end
    interrupted: bool = False  # the driver stopped before every trial ended (Ctrl+C): resume it
    results: object = None  # Ray Tune's ResultGrid


def run_sweep(
    sweep: Sweep,
    *,
    tracking_uri: str | None = None,
    storage: str | None = None,
    address: str | None = None,
    smoke_test: bool = False,
    callbacks: tuple = (),
    optuna_storage: str | None = None,
    echo=print,
) -> SweepOutcome:
    """``optuna_storage``: the Optuna RDB storage URL of the sweep's study, or ``"memory"``; by default ``optuna.db``
    beside a local tracking store, in memory with a remote one (orchestrator/study_storage.py)."""
    for line in warning_lines(sweep):  # values that do nothing (LSLU with n = 0, an empty space), as validate says
        echo(line)
    if smoke_test:
        sweep = sweep.shrunk()
    else:
        sweep.check_data()  # a data_dir without the data: refused before Ray starts
    tracking_uri = resolve_tracking_uri(tracking_uri)
    study_storage, study_note = resolve_optuna_storage(optuna_storage, tracking_uri)  # a bad URL: before Ray
    storage_path = st.resolve_storage(storage)
    warm = functools.partial(open_stores, tracking_uri, study_storage)  # while an embedded Ray starts
    ray_description = connect(address, runtime_env=sweep.spec.runtime_env, meanwhile=warm)
    nodes = check_cluster(tracking_uri, storage_path)  # refuses before MLflow or Tune do anything
    where = _where(ray_description, nodes)
    if smoke_test:
        sweep = _fit_smoke_resources(sweep, echo)
    check_resources(sweep, where, echo)
    max_failures = default_max_failures(sweep, nodes)
    if nodes > 1 and sweep.spec.search.max_failures is None:
        echo(
            f"search.max_failures: {max_failures} (a cluster of {nodes} nodes: a trial whose node is lost "
            "continues on another from its last checkpoint)"
        )
    elif nodes > 1 and max_failures == 0:
        echo("note: search.max_failures is 0, so a trial whose node is lost fails")
    name = f"{sweep.name}{'-smoke' if smoke_test else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    oneshot = sweep.spec.search.strategy == "oneshot"  # its mask search keeps its own study (orchestrator/oneshot.py)
    searcher = None if oneshot else _open_searcher(sweep, study_storage, name)  # a storage it cannot open: refused
    study_tags = {"optuna_study": name, "optuna_storage": redacted(study_storage) if study_storage else MEMORY}
    ctx = open_parent_run(tracking_uri, sweep, name, smoke_test, extra_tags={} if oneshot else study_tags)
    if oneshot:
        echo(
            f"sweep {name}: one-shot insertion search ({sweep.spec.search.candidates} candidates retrained) on "
            f"{where}; tracking {tracking_uri}"
        )
    else:
        echo(f"sweep {name}: {sweep.spec.search.num_samples} trials on {where}; tracking {tracking_uri}")
        echo(study_note or study_line(name, study_tags["optuna_storage"]))
    exp_dir = st.join(storage_path, name)
    manifest = {
        "name": name,
        "sweep_file": sweep.file,
        "sweep_dir": str(Path(sweep.file).parent.resolve()),  # where runtime_env's relative paths start
        "source": sweep.source,
        "smoke_test": smoke_test,
        "context": asdict(ctx),
        "optuna_storage": study_tags["optuna_storage"],  # what resume says; the searcher pickles the URL
        "strategy": sweep.spec.search.strategy,  # oneshot: its phases are recorded here as each finishes
    }
    st.write_text(st.join(exp_dir, MANIFEST), json.dumps(manifest, indent=2))
    if oneshot:
        return _run_oneshot(sweep, name, exp_dir, ctx, manifest, max_failures, callbacks, echo)
    tuner = tune.Tuner(
        _trainable(sweep, ctx),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(sweep),
            num_samples=sweep.spec.search.num_samples,
            reuse_actors=sweep.spec.search.reuse_actors,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(sweep, name, storage_path, tracking_uri, max_failures, callbacks),
    )
    return _finish(sweep, name, exp_dir, ctx, fit(tuner), echo)


def _open_searcher(sweep: Sweep, study_storage: str | None, name: str):
    try:
        return make_searcher(sweep, storage=study_storage, study_name=name)
    except Exception as exc:  # sqlalchemy's OperationalError, a missing driver's ImportError, …: the option's fault
        if study_storage is None:
            raise
        raise open_study_error(study_storage, exc) from exc


def default_max_failures(sweep: Sweep, nodes: int) -> int:
    """``search.max_failures``, or when the file leaves it out: 3 on a cluster of several nodes, 0 on one."""
    given = sweep.spec.search.max_failures
    return given if given is not None else (3 if nodes > 1 else 0)


def resume_sweep(
    name: str, *, storage: str | None = None, tracking_uri: str | None = None, address: str | None = None, echo=print
) -> SweepOutcome:
    """Continue an interrupted sweep: Tune restores its trials, the searcher's state and the callbacks;
    runs are reused."""
    exp_dir, manifest = unfinished_experiment(name, storage, tracking_uri)
    sweep = parse_sweep(
        yaml.safe_load(manifest["source"]),
        manifest["source"],
        manifest["sweep_file"],
        base_dir=manifest.get("sweep_dir"),
    )  # relative paths as in the run, from any directory
    if manifest["smoke_test"]:
        sweep = sweep.shrunk()
    ctx = SweepContext(**manifest["context"])
    if tracking_uri and resolve_tracking_uri(tracking_uri) != ctx.tracking_uri:
        ctx = SweepContext(**{**manifest["context"], "tracking_uri": resolve_tracking_uri(tracking_uri)})
    ray_description = connect(address, runtime_env=sweep.spec.runtime_env)
    nodes = check_cluster(ctx.tracking_uri, st.resolve_storage(storage))
    where = _where(ray_description, nodes)
    if manifest["smoke_test"]:
        sweep = _fit_smoke_resources(sweep, echo)
    check_resources(sweep, where, echo)
    mlflow_client(ctx.tracking_uri).update_run(ctx.parent_run_id, status="RUNNING")
    exp_name = manifest["name"]
    echo(f"resuming sweep {exp_name} on {where}")
    if manifest.get("strategy") == "oneshot":  # the phases the manifest does not record as done
        max_failures = default_max_failures(sweep, nodes)
        return _run_oneshot(sweep, exp_name, exp_dir, ctx, manifest, max_failures, (), echo)
    if "optuna_storage" in manifest:  # the restored searcher reconnects to the storage it pickled
        echo(study_line(exp_name, manifest["optuna_storage"]))
    tuner = tune.Tuner.restore(exp_dir, trainable=_trainable(sweep, ctx), resume_unfinished=True, resume_errored=True)
    return _finish(sweep, exp_name, exp_dir, ctx, fit(tuner), echo)


def _where(ray_description: str, node_count: int) -> str:
    return ray_description if node_count <= 1 else f"{ray_description} ({node_count} nodes)"


def _fit_smoke_resources(sweep: Sweep, echo) -> Sweep:
    """A smoke test runs where it is started: each trial takes at most one CPU, and a GPU (share) only where the
    cluster has one. A preset's own request (e.g. 4 CPUs and a GPU) would leave its trials pending forever on a
    laptop: Tune waits for resources that never come. Returns the shrunk sweep with those resources (a new one)."""
    import ray

    r, total = sweep.spec.resources, ray.cluster_resources()
    cpu, gpu = min(r.cpu, SMOKE_CPU, total.get("CPU", 1.0)), min(r.gpu, total.get("GPU", 0.0))
    if (cpu, gpu) != (r.cpu, r.gpu):
        echo(
            f"smoke test: each trial takes {cpu:g} CPU and {gpu:g} GPU here "
            f"(the sweep file asks {r.cpu:g} CPU, {r.gpu:g} GPU)"
        )
        return sweep.with_resources(cpu, gpu)
    return sweep


def check_resources(sweep: Sweep, where: str, echo) -> None:
    """A trial whose resources fit on no node would pend forever, Tune saying only that no node type can fulfil
    the request. On the embedded local Ray, which no node will join, that is refused as the sweep file's error;
    on a cluster, which an autoscaler may grow, it is a warning."""
    r, nodes = sweep.spec.resources, node_capacities()
    if any(cpu >= r.cpu and gpu >= r.gpu for cpu, gpu in nodes):
        return
    have = "; ".join(f"{cpu:g} CPU, {gpu:g} GPU" for cpu, gpu in nodes) or "no alive node"
    what = f"each trial asks {r.cpu:g} CPU and {r.gpu:g} GPU, but no node of {where} has that ({have})"
    if is_embedded():
        raise SpecError(
            sweep.file,
            "resources",
            f"{what}, so every trial would wait forever; ask for at most what "
            "this machine has, or join a cluster that has it (--address)",
        )
    echo(f"warning: {what}; the trials wait until a node that has it joins (Ray's autoscaler, if the cluster has one)")


def run_config(sweep: Sweep, name: str, storage_path: str, tracking_uri: str, max_failures: int, callbacks):
    """The Tune run of a sweep, or of a one-shot phase. A trial keeps only its latest checkpoint (its full training
    state, ~130 MB for ResNet-18): what a restored trial continues from, and what ``RunCloser`` takes the weights of a
    scheduler-stopped trial from. Tune saves its experiment state every ``num_to_keep`` checkpoints of a trial, so a
    restore finds the checkpoint the state names."""
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        callbacks=[RunCloser(tracking_uri), *callbacks],
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        progress_reporter=SweepReporter(sweep),
        verbose=1,
    )


def trial_dirname(trial) -> str:
    """Short trial directories (Tune's default packs every config value into the name)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _trainable(sweep: Sweep, ctx: SweepContext):
    r = sweep.spec.resources
    return tune.with_resources(tune.with_parameters(train_trial, sweep=ctx), {"cpu": r.cpu, "gpu": r.gpu})


def unfinished_trials(path: str, num_samples: int) -> int:
    """Trials not yet ended (plus those not yet created) in Tune's saved experiment state."""
    trials = tune.ExperimentAnalysis(path).trials
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials) + max(0, num_samples - len(trials))


def _finish(
    sweep: Sweep, name: str, path: str, ctx: SweepContext, result_grid, echo, trials: int | None = None, extra=()
) -> SweepOutcome:
    """``trials``: how many the Tune run at ``path`` was to run (default num_samples); ``extra``: summary lines."""
    client = mlflow_client(ctx.tracking_uri)
    rows = summary.trial_rows(result_grid)
    pending = unfinished_trials(path, sweep.spec.search.num_samples if trials is None else trials)
    if pending:  # open trial runs stay open: `resume` reopens them
        return _interrupted(name, path, ctx, echo, f"{pending} trial(s) unfinished", rows, result_grid)
    try:
        closed = close_leftover_runs(ctx)
        complete_figures(ctx)  # waits for the figure queue, then draws what a restart or an error left out
        best, ranked, statuses, tables = _log_sweep_end(client, ctx, sweep, rows, name)
    except KeyboardInterrupt:  # Ctrl+C after the last trial: `resume` does the end again
        return _interrupted(name, path, ctx, echo, "every trial ended but not the sweep's end", rows, result_grid)
    text = "\n".join(_summary_lines(sweep, name, path, ctx, client, best, ranked, statuses, tables, closed, extra))
    echo(text)
    return SweepOutcome(name, path, ctx, rows, best, text, results=result_grid)


def _interrupted(name: str, path: str, ctx: SweepContext, echo, what: str, rows=(), result_grid=None) -> SweepOutcome:
    figure_queue(ctx.tracking_uri).drain()
    client = mlflow_client(ctx.tracking_uri)
    client.set_tag(ctx.parent_run_id, "sweep_status", "interrupted")
    client.set_terminated(ctx.parent_run_id, "KILLED")
    text = (
        f"\nsweep {name} was interrupted with {what}; its state is saved.\n"
        f"Continue it with: {resume_command(name, path, ctx.tracking_uri)}"
    )
    echo(text)
    return SweepOutcome(name, path, ctx, list(rows), None, text, interrupted=True, results=result_grid)


def _run_oneshot(
    sweep: Sweep, name: str, exp_dir: str, ctx: SweepContext, manifest: dict, max_failures: int, callbacks, echo
) -> SweepOutcome:
    """The one-shot strategy's phases (orchestrator/oneshot.py), then the retrained candidates as the sweep's trials."""
    from orchestrator.oneshot import PhaseFailed, PhaseInterrupted, log_oneshot_results, run_phases

    def save() -> None:
        st.write_text(st.join(exp_dir, MANIFEST), json.dumps(manifest, indent=2))

    try:
        grid, path = run_phases(
            sweep, ctx, exp_dir, manifest, save, max_failures=max_failures, callbacks=callbacks, echo=echo
        )
    except PhaseInterrupted as exc:
        what = f" ({exc.pending} trial(s) unfinished)" if exc.pending else ""
        return _interrupted(name, exp_dir, ctx, echo, f"its {exc.phase} phase unfinished{what}")
    except PhaseFailed as exc:
        close_leftover_runs(ctx)
        client = mlflow_client(ctx.tracking_uri)
        client.set_tag(ctx.parent_run_id, "sweep_status", "failed")
        client.set_tag(ctx.parent_run_id, "error", str(exc))
        client.set_terminated(ctx.parent_run_id, "FAILED")
        text = f"\nsweep {name} failed: {exc}"
        echo(text)
        return SweepOutcome(name, exp_dir, ctx, [], None, text)
    rows = summary.trial_rows(grid)
    extra = log_oneshot_results(sweep, ctx, manifest, rows)
    chosen = len(manifest["phases"]["mask_search"]["candidates"])
    return _finish(sweep, name, path, ctx, grid, echo, trials=chosen, extra=extra)


def _log_sweep_end(client, ctx: SweepContext, sweep: Sweep, rows: list[dict], name: str):
    """What the parent run gets at the end of a finished sweep: results, plots, tables, the best trial, its status."""
    client.set_tag(ctx.parent_run_id, "sweep_status", "finished")
    metric, mode = sweep.metric, sweep.mode
    best, ranked = summary.best_row(rows, metric, mode), summary.ranked(rows, metric, mode)
    client.log_text(ctx.parent_run_id, summary.results_csv(ranked), "results.csv")
    log_sweep_plots(client, ctx.parent_run_id, sweep, rows)
    tables = log_sweep_tables(client, ctx.parent_run_id, sweep, rows, name)
    if best:
        client.log_text(ctx.parent_run_id, summary.best_config_yaml(sweep, best), "best_config.yaml")
        client.log_metric(
            ctx.parent_run_id, f"best_{metric}" if not metric.startswith("best_") else metric, best[metric]
        )
        client.set_tag(ctx.parent_run_id, "best_trial_run_id", best["mlflow_run_id"])
        theta = summary.best_theta_omega_row(rows, metric, mode)
        if theta:  # the best trial with θ/ω to show: the ui hint links its figure
            client.set_tag(ctx.parent_run_id, "theta_omega_run_id", theta["mlflow_run_id"])
        _register_best(client, ctx, name, best["mlflow_run_id"])
    statuses = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    client.set_tag(ctx.parent_run_id, "trial_statuses", json.dumps(statuses))
    client.set_terminated(ctx.parent_run_id, "FINISHED" if best else "FAILED")
    return best, ranked, statuses, tables


def _register_best(client, ctx: SweepContext, name: str, run_id: str) -> None:
    """The best trial's model as a new version of the registered model named after the sweep (tag
    ``registered_model_version`` on the parent run). A failure is a warning: the sweep's results stand without it."""
    from orchestrator.export import register_best_model

    try:
        version = register_best_model(client, ctx.experiment_id, ctx.sweep_name, name, run_id)
    except Exception as exc:
        print(f"warning: could not register the best trial's model under {ctx.sweep_name!r}: {exc}", flush=True)
        return
    client.set_tag(ctx.parent_run_id, "registered_model_version", f"{ctx.sweep_name}/{version.version}")


def _summary_lines(
    sweep: Sweep, name: str, path: str, ctx: SweepContext, client, best, ranked, statuses, tables, closed: int, extra=()
) -> list[str]:
    """The driver's closing words: the trial table, the counts, the best trial, where to look next."""
    metric = sweep.metric
    lines = ["", summary.table(sweep, ranked), ""]
    lines.append(
        f"trials: {len(ranked)} ({', '.join(f'{n} {s}' for s, n in statuses.items())})"
        + (f"; {closed} run(s) left open were marked failed" if closed else "")
    )
    lines += summary.failed_lines(ranked)
    if best:
        lines.append(f"best trial {best['trial_id']}: {metric} = {best[metric]:.4g}")
        lines.append(summary.best_config_line(sweep, best))
    else:
        lines.append("no trial finished with a result")
    if "pareto.csv" in tables:
        front = tables["pareto.csv"]
        lines.append(
            f"Pareto front over {', '.join(m for m, _ in sweep.objectives)}: {len(front)} trial(s) "
            f"({', '.join(map(str, front['trial_id']))}); pareto.csv and pareto.png on the parent run"
        )
    lines += extra
    if best:
        lines.append(
            f"Paper-style table (grouped, mean ± std over seeds): lslu-sweep report {name}"
            + tracking_option(ctx.tracking_uri)
        )
    lines += [
        "",
        "Browse the results in the MLflow UI:",
        *browse_lines(ctx.tracking_uri, client.get_run(ctx.parent_run_id)),
        f"Ray Tune's state of this sweep: {path}",
    ]
    return lines
