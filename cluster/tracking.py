"""The MLflow tracking store a sweep logs to.

Default: a SQLite store in the working directory (``sqlite:///mlruns.db``, artifacts in ``./mlartifacts``),
or ``MLFLOW_TRACKING_URI``. Trials run in their own working directories, so local paths are made absolute
before they are handed to them. On a multi-node cluster only a server every node can reach will do
(``cluster/mlflow_server.sh``): ``is_local_store`` and ``probe_server`` tell the preflight checks. The client every
process opens the store with is ``trainables.mlflow_client`` (trials need it too).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{db.expanduser().resolve()}"
    if "://" not in uri:  # a plain directory: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; None (the server decides) for anything else."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (relative to the working directory where it can be)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if db.parent == Path.cwd().resolve():
            tracking_uri = f"sqlite:///{db.name}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000 --workers 1"


SERVER_HINT = (
    "start an MLflow server on PostgreSQL that every node can reach, e.g. "
    "`MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@DBHOST:5432/mlflow "
    "cluster/mlflow_server.sh --host 0.0.0.0` "
    "(see the README, 'MLflow tracking server'), then pass `--tracking-uri http://SERVER_HOST:5000` "
    "(or set MLFLOW_TRACKING_URI)"
)


def is_local_store(tracking_uri: str) -> bool:
    """A store that lives in the driver's filesystem (SQLite or MLflow's file store)."""
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def probe_server(tracking_uri: str, timeout_s: float = 10.0) -> str | None:
    """None if the MLflow server at ``tracking_uri`` answers an API call from here, else why not."""
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode(errors="replace")
        if exc.code == 403 and "Host header" in body:
            host = urllib.request.urlparse(tracking_uri).netloc
            return f"the server refuses the Host header {host!r}: start it with --allowed-hosts {host}"
        return None  # it answered: authentication and the like are MLflow's to report
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"
