import pytest
import torch

from cluster.local import prepare_env

prepare_env()
torch.set_num_threads(1)  # two cores here: Ray trials take the other


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from cluster.local import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store's default artifact root is ./mlruns: keep it out of the checkout
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 and a free port (Debian's postgresql; `make test` installs it where apt
    works)."""
    from services import Postgres, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed and could not be "
            "(`make test` runs `apt-get install postgresql` where apt works)"
        )
    pytest.importorskip(
        "psycopg", reason="psycopg, the PostgreSQL driver of the MLflow server, is not installed (pip install -e .)"
    )
    pg = Postgres(bindir)
    try:
        yield pg.start()
    finally:
        pg.stop()
