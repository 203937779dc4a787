"""The MLflow tracking store a sweep logs to.

Default: a SQLite store in the working directory (``sqlite:///mlruns.db``, artifacts in ``./mlartifacts``),
or ``MLFLOW_TRACKING_URI``. Trials run in their own working directories, so local paths are made absolute
before they are handed to them.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return f"sqlite:///{db.expanduser().resolve()}"
    if "://" not in uri:  # a plain directory: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; None (the server decides) for anything else."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (relative to the working directory where it can be)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if db.parent == Path.cwd().resolve():
            tracking_uri = f"sqlite:///{db.name}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000 --workers 1"
