"""Where a sweep's Optuna study lives: an Optuna RDB storage, so ``optuna-dashboard <storage>`` shows the sweep.

Default: ``optuna.db`` (SQLite) beside a local MLflow store, i.e. in the folder that holds ``mlruns.db`` or the file
store's folder. A remote tracking store (an MLflow server) says nothing of a database the driver could use (the
server's PostgreSQL is behind it, and MLflow's own database cannot hold Optuna's tables: both keep an
``alembic_version`` table), so there the study stays in memory unless ``--optuna-storage URL`` names one. The searcher
runs in the driver only, so a SQLite file on the driver's disk serves a cluster too.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from cluster.preflight import ClusterError

MEMORY = "memory"  # --optuna-storage memory: keep the study in the driver's memory (Optuna's in-memory storage)
OPTION = "--optuna-storage"
DB_NAME = "optuna.db"


def local_store_dir(tracking_uri: str) -> Path | None:
    """The folder of a local MLflow store: the SQLite database's folder, or the file store's own; None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :]).parent
    if tracking_uri.startswith("file:"):
        return Path(url2pathname(urlparse(tracking_uri).path)).parent
    if "://" not in tracking_uri:  # a plain directory (resolve_tracking_uri makes it a file: URI)
        return Path(tracking_uri).expanduser().resolve().parent
    return None


def resolve_optuna_storage(given: str | None, tracking_uri: str) -> tuple[str | None, str | None]:
    """``(storage URL or None for in memory, a console note or None)``. A relative SQLite path is made absolute, so
    a resumed driver started from another directory reconnects to the same file (the searcher pickles the URL)."""
    if given == MEMORY:
        return None, None
    if given:
        return _absolute_sqlite(_checked(given)), None
    folder = local_store_dir(tracking_uri)
    if folder is None:
        return None, (
            f"optuna study: in memory (the tracking store {tracking_uri} is remote; "
            f"pass {OPTION} URL, e.g. postgresql://USER:PASSWORD@DBHOST:5432/optuna, to keep it for "
            "optuna-dashboard)"
        )
    return f"sqlite:///{(folder / DB_NAME).resolve()}", None


def study_line(name: str, where: str) -> str:
    """The console line that says where the study is (``where``: a redacted URL, or ``memory``)."""
    if where == MEMORY:
        return f"optuna study {name}: in memory"
    return f"optuna study {name} in {where}; watch it with: optuna-dashboard {_short(where)}"


def _short(url: str) -> str:
    """A SQLite file in the working directory by its name, as ``make ui`` shows the MLflow store."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and Path(url[len(prefix) :]).parent == Path.cwd().resolve():
        return f"{prefix}{Path(url[len(prefix) :]).name}"
    return url


def redacted(url: str) -> str:
    """The URL without its password (what the parent run's tag and the console show)."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)  # URL.set(password=None) would keep it: None there means "unchanged"
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False
    )


def _checked(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise ClusterError(
            OPTION,
            f"expected an SQLAlchemy database URL (sqlite:///optuna.db, "
            f"postgresql://USER:PASSWORD@HOST:5432/DB, mysql://…) or {MEMORY!r}, "
            f"got {url!r}",
        ) from None
    return url


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix and not url[len(prefix) :].startswith((":memory:", "file:")):
        return f"{prefix}{Path(url[len(prefix) :]).expanduser().resolve()}"
    return url


def open_study_error(url: str, exc: Exception) -> ClusterError:
    """The storage refused to open or create the study (unreachable server, missing driver, unwritable file)."""
    return ClusterError(
        OPTION,
        f"cannot open the Optuna storage {redacted(url)}: {type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}",
    )
