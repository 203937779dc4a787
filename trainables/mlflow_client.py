"""The MLflow client every part of a sweep (trials, driver, UI) logs and reads through (DESIGN.md §1, §5).

Below ``cluster/`` and ``orchestrator/``, beside ``trainables/retry.py`` (its retries): the trials need it, and
``trainables/`` imports neither of those. A SQLite store is kept in write-ahead-log mode.
"""

from __future__ import annotations

import functools
import sqlite3

# Set on every SQLite connection of a process that logs (``mlflow_client``): wait for a writer instead of failing at
# once (MLflow sets the same per session, after the connection is made), write-ahead logging, and disk syncs only
# at checkpoints of the log.
SQLITE_PRAGMAS = ("busy_timeout = 20000", "journal_mode = WAL", "synchronous = NORMAL")


def mlflow_client(tracking_uri: str):
    """The ``MlflowClient`` every part of a sweep logs and reads through; a SQLite store is kept in write-ahead-log
    mode."""
    from mlflow.tracking import MlflowClient  # here: the config checks import this module before anything needs MLflow

    if tracking_uri.startswith("sqlite:"):
        _sqlite_write_ahead()
    return MlflowClient(tracking_uri)


@functools.cache
def _sqlite_write_ahead() -> None:
    """From now on every SQLite connection this process opens (MLflow's store among them) sets ``SQLITE_PRAGMAS``.

    In SQLite's default rollback-journal mode each commit syncs the disk several times and a writer shuts out the
    readers, so two trials and the driver's figure thread wait on each other; in WAL mode a commit appends to the log
    and readers go on while one process writes (~0.05 s less per trial inside the trainable, benchmarks/README.md).
    With synchronous=NORMAL a crash of the machine (not of a process) can lose the last commits, never the
    database. The mode stays in the file, and the UI's server uses it too; WAL needs all its processes on one
    machine, as a local store does anyway (a multi-node sweep logs to an MLflow server)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", set_sqlite_pragmas)


def set_sqlite_pragmas(dbapi_connection, _connection_record) -> None:
    """``SQLITE_PRAGMAS`` on a new SQLite connection (SQLAlchemy's ``connect`` event); other databases are left
    alone."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            try:
                cursor.execute(f"PRAGMA {pragma}")
            except sqlite3.OperationalError:  # a read-only file cannot change its mode; reading it works as before
                pass
        cursor.close()
