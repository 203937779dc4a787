"""What a sweep's start costs: the driver and the trials import no more than they use, and the stores' schemas can be
made while Ray starts (their timings: benchmarks/README.md, bench_sweep.py --peer)."""

import sqlite3
import subprocess
import sys

from orchestrator.runs import open_stores


def test_the_driver_and_the_trainable_import_without_timm():
    """timm (with torchvision, dynamo and sympy behind it) loads only when a timm model is built."""
    code = "import sys, orchestrator.driver, trainables.trainable; print(sorted(m for m in sys.modules if 'timm' in m))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_timm_activations_are_sites_once_timm_is_imported():
    from timm.layers import GELU

    from trainables.site_types import is_site_module

    assert is_site_module(GELU()) and not is_site_module(__import__("torch").nn.Identity())


def test_open_stores_makes_the_tracking_and_study_schemas(tmp_path):
    mlflow_db, optuna_db = tmp_path / "mlruns.db", tmp_path / "optuna.db"
    open_stores(f"sqlite:///{mlflow_db}", f"sqlite:///{optuna_db}")
    tables = lambda path: {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}  # noqa: E731
    assert {"experiments", "runs", "metrics"} <= tables(mlflow_db)
    assert {"studies", "trials"} <= tables(optuna_db)


def test_a_store_that_cannot_be_opened_is_left_to_the_sweep_to_report(tmp_path):
    open_stores(f"sqlite:///{tmp_path}/mlruns.db", f"sqlite:///{tmp_path}/no/such/folder/optuna.db")  # no raise
    assert (tmp_path / "mlruns.db").exists() and not (tmp_path / "no").exists()
