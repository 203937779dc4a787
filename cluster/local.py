"""Where a sweep runs: the embedded local Ray by default, or an existing cluster by address."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# Set before Ray is imported or MLflow starts: no auth token for the embedded cluster, and nothing phoned home
# (these machines are often offline, where telemetry only adds timeouts).
QUIET_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # The driver reads each finished trial's sites.csv back to draw its figures: no progress bar per trial.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Checkpointing every epoch with num_to_keep forces a cheap state snapshot each time; short epochs warn about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's classic console, which takes the driver's trial table (orchestrator/progress.py); the new one
    # prints every trial's whole config and result.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ray folds worker lines that differ only in numbers ("[repeated 3x across cluster]"): that would swallow
    # most of the trials' one-line-per-epoch progress. Read when Ray is imported.
    "RAY_DEDUP_LOGS": "0",
}


EMBEDDED = "an embedded local Ray"
_embedded = False  # this process started the Ray it uses (connect() without an address): no node will join it


def prepare_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def connect(
    address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None, meanwhile=None
) -> str:
    """Start or join Ray; returns a description of where the sweep runs.

    Without an address (and without ``RAY_ADDRESS``) an embedded local Ray starts: ``address="local"``,
    because a bare ``ray.init()`` can try to join a stale cluster recorded in /tmp/ray.
    ``runtime_env`` (the sweep file's, paths absolute) is Ray's: the user's code and packages on every worker.
    A Ray already running in this process keeps the runtime_env it was started with.
    ``meanwhile`` (a function of no arguments) runs in a thread while an embedded Ray starts, which is mostly
    waiting on its own processes; it is not run on a cluster, whose checks come first (cluster/preflight.py).
    """
    global _embedded
    prepare_env()
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        where = EMBEDDED if _embedded else "the Ray instance already running in this process"
        return where + (" (started before: the sweep file's runtime_env is not applied to it)" if runtime_env else "")
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        _embedded = False
        return f"the Ray cluster at {address}"
    # No dashboard, so nothing reads the metrics Ray's processes would export: their collection only takes CPU
    # from the trials (~1 s of the dashboard agent's per 32 short trials, benchmarks/README.md).
    with ThreadPoolExecutor(max_workers=1) as pool:
        if meanwhile is not None:
            pool.submit(meanwhile)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env=runtime_env,
            _system_config={"enable_metrics_collection": False},
        )
    _embedded = True
    return EMBEDDED


def is_embedded() -> bool:
    """Whether the Ray this process uses is the embedded local one, whose nodes are all there is
    (a cluster may grow)."""
    return _embedded
