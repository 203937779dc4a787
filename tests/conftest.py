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
