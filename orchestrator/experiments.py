"""Where a sweep's Ray Tune state lives (``<storage>/<name>-<date>``, with the manifest ``run_sweep`` writes there),
which one ``resume`` continues, the command that continues it, and the Tune run itself (``fit``)."""

from __future__ import annotations

import json
import signal
import threading

from cluster import storage as st
from cluster.tracking import resolve_tracking_uri

MANIFEST = "lslu_sweep.json"


def find_experiment(name: str, storage: str | None = None, finished=None) -> str:
    """``<storage>/<name>`` or, for a sweep name, its newest experiment ``<storage>/<name>-<date>`` (path or URI).
    ``finished(exp_dir)``: whether that sweep ended; the newest that did not is taken (a finished sweep has nothing to
    resume)."""
    root = st.resolve_storage(storage)
    sweeps = [n for n, _ in st.dirs_holding(root, MANIFEST)]  # oldest first
    candidates = [n for n in sweeps if n == name] or [n for n in sweeps if n.startswith(f"{name}-")]
    if not candidates:
        raise FileNotFoundError(
            f"no sweep {name!r} under {root}; sweeps there: {', '.join(sorted(sweeps)) or 'none'} (a sweep's state is "
            "in the --storage its run had, by default ./ray_results where it ran: give resume the same --storage)"
        )
    open_ones = [c for c in candidates if finished is None or not finished(st.join(root, c))]
    if not open_ones:
        raise FileNotFoundError(
            f"sweep {name!r} under {root}: {', '.join(candidates)} finished, nothing to resume "
            f"(lslu-sweep report {candidates[-1]} shows it; lslu-sweep run starts a new one)"
        )
    return st.join(root, open_ones[-1])


def unfinished_experiment(name: str, storage: str | None, tracking_uri: str | None) -> tuple[str, dict]:
    """The newest experiment of ``name`` (``find_experiment``) whose sweep did not finish, and its manifest: its
    parent run is not FINISHED in the tracking store the manifest names (or in ``tracking_uri``)."""
    from trainables.mlflow_client import mlflow_client

    manifests: dict[str, dict] = {}  # by experiment directory: the one taken is read once

    def finished(exp_dir: str) -> bool:
        manifests[exp_dir] = read_manifest(exp_dir)
        context = manifests[exp_dir]["context"]
        uri = resolve_tracking_uri(tracking_uri) if tracking_uri else context["tracking_uri"]
        return mlflow_client(uri).get_run(context["parent_run_id"]).info.status == "FINISHED"

    exp_dir = find_experiment(name, storage, finished)
    return exp_dir, manifests[exp_dir]


def read_manifest(exp_dir: str) -> dict:
    return json.loads(st.read_text(st.join(exp_dir, MANIFEST)))


def resume_command(name: str, exp_dir: str, tracking_uri: str) -> str:
    """``lslu-sweep resume NAME`` with the options that reach this sweep from the folder it ran in (where they are
    not the defaults there)."""
    command = f"lslu-sweep resume {name}"
    root = exp_dir.rstrip("/").rpartition("/")[0]
    if root != st.resolve_storage(None):
        command += f" --storage {root}"
    return command + tracking_option(tracking_uri)


def tracking_option(tracking_uri: str) -> str:
    """`` --tracking-uri URI`` where ``tracking_uri`` is not the default of the folder the command runs in."""
    return f" --tracking-uri {tracking_uri}" if tracking_uri != resolve_tracking_uri(None) else ""


def fit(tuner):
    """``tuner.fit()``, with the process's SIGINT handler as it was before. Tune installs its own for the run, which
    ends the run and puts the old one back only when a Ctrl+C comes; after a run that got none it would swallow the
    next one (in the one-shot's mask search, or the end of a sweep) and stop nothing."""
    kept = [getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name)]
    handlers = {sig: signal.getsignal(sig) for sig in kept}
    try:
        return tuner.fit()
    finally:
        if threading.current_thread() is threading.main_thread():  # where Tune could install one
            for sig, handler in handlers.items():
                if handler is not None:  # None: set outside Python, nothing to put back
                    signal.signal(sig, handler)
