"""Where a sweep's Optuna study lives (orchestrator/study_storage.py), and a searcher on an RDB storage restored in a
new process, as `lslu-sweep resume` restores it after the driver was restarted (no Ray cluster)."""

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cluster.preflight import ClusterError
from orchestrator.search import MAX_SITES_CONSTRAINT, TUNE_TRIAL_ID, make_searcher
from orchestrator.study_storage import redacted, resolve_optuna_storage, study_line
from search_spaces.schema import parse_sweep

SWEEP = """
    name: stored
    trial: {model: digits_cnn, n: 1, epochs: 1}
    space:
      mask: {type: sites}
      lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
    search: {algorithm: tpe, num_samples: 8, max_sites: 1, seed: 2, points_to_evaluate: [{lr: 5.0e-3}]}
"""


def _sweep():
    text = textwrap.dedent(SWEEP)
    return parse_sweep(yaml.safe_load(text), text, "stored.yaml")


def _objective(config):
    return {"best_val_acc": sum(config[f"site_{i}"] for i in range(4)) + config["lr"]}


def test_the_default_storage_is_optuna_db_beside_a_local_tracking_store(tmp_path):
    assert resolve_optuna_storage(None, f"sqlite:///{tmp_path / 'mlruns.db'}") == (
        f"sqlite:///{tmp_path / 'optuna.db'}",
        None,
    )
    assert resolve_optuna_storage(None, (tmp_path / "mlruns").as_uri()) == (f"sqlite:///{tmp_path / 'optuna.db'}", None)


def test_a_tracking_server_keeps_the_study_in_memory_and_says_how_to_keep_it(tmp_path):
    storage, note = resolve_optuna_storage(None, "http://head:5000")
    assert storage is None and "--optuna-storage URL" in note and "http://head:5000" in note and "\n" not in note
    assert resolve_optuna_storage("postgresql://u:pw@db:5432/optuna", "http://head:5000") == (
        "postgresql://u:pw@db:5432/optuna",
        None,
    )


def test_the_option_is_taken_as_given_memory_and_relative_sqlite_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert resolve_optuna_storage("memory", local) == (None, None)
    # absolute: a resumed driver started elsewhere reconnects to the same file
    assert resolve_optuna_storage("sqlite:///studies/o.db", local) == (f"sqlite:///{tmp_path / 'studies/o.db'}", None)
    with pytest.raises(ClusterError) as refused:
        resolve_optuna_storage("optuna.db", local)
    assert str(refused.value).startswith("--optuna-storage: expected an SQLAlchemy database URL")
    assert "'optuna.db'" in str(refused.value)


def test_the_recorded_url_has_no_password(tmp_path, monkeypatch):
    assert redacted("postgresql://mlflow:s3cret@db:5432/optuna") == "postgresql://mlflow@db:5432/optuna"
    assert redacted("sqlite:////data/optuna.db") == "sqlite:////data/optuna.db"
    monkeypatch.chdir(tmp_path)
    line = study_line("q-1", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert line.endswith("optuna-dashboard sqlite:///optuna.db") and str(tmp_path) in line


FIRST_DRIVER = """
import pickle, sys
from ray.tune.search import SearchGenerator
from tests.test_study_storage import _objective, _sweep
from orchestrator.search import make_searcher

storage, out = sys.argv[1], sys.argv[2]
open(f"{out}/tuner.pkl", "wb").write(pickle.dumps(make_searcher(_sweep(), storage=storage, study_name="stored-1")))
gen = SearchGenerator(pickle.loads(open(f"{out}/tuner.pkl", "rb").read()))
for i in range(3):
    gen.searcher.on_trial_complete(f"t{i}", _objective(gen.searcher.suggest(f"t{i}")))
assert gen.searcher.suggest("t3")  # still running at the save
gen.save_to_dir(out, session_str="s")
assert gen.searcher.suggest("t4")  # asked after the last save, then the driver dies: no Tune trial will tell it
"""


@pytest.mark.slow  # a second Python process that imports Ray Tune: ~20 s
def test_a_restored_searcher_in_a_new_process_tells_the_same_study_in_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    root = Path(__file__).parent.parent
    subprocess.run(
        [sys.executable, "-c", FIRST_DRIVER, storage, str(tmp_path)],
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    from ray.tune.search import SearchGenerator

    gen = SearchGenerator(pickle.loads((tmp_path / "tuner.pkl").read_bytes()))  # what Tuner.restore loads
    gen.restore_from_dir(str(tmp_path))
    searcher = gen.searcher.searcher
    gen.searcher.on_trial_complete("t3", _objective(searcher._running["t3"].params))
    for i in range(4, 8):
        gen.searcher.on_trial_complete(f"t{i}", _objective(gen.searcher.suggest(f"t{i}")))

    study = optuna.load_study(study_name="stored-1", storage=storage)
    trained = [t for t in study.trials if TUNE_TRIAL_ID in t.user_attrs]
    states = {s: sum(t.state == s for t in study.trials) for s in TrialState}
    # t0…t7 once each, all complete; the sample asked after the save failed; the rest rejected over max_sites
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in trained if t.state == TrialState.COMPLETE) == [
        f"t{i}" for i in range(8)
    ]
    assert states[TrialState.FAIL] == 1 and states[TrialState.RUNNING] == 0
    # every other finished trial is a sample rejected over max_sites (before the save or after it: the restored
    # counter knows only the former)
    rejected = [t for t in study.trials if t.state == TrialState.COMPLETE and TUNE_TRIAL_ID not in t.user_attrs]
    assert states[TrialState.COMPLETE] == 8 + len(rejected) and len(rejected) >= searcher.rejected
    assert all(t.constraints[MAX_SITES_CONSTRAINT] > 0 for t in rejected)
    # the policy's point was asked once: the searcher restored from tuner.pkl did not enqueue it again
    assert sum("fixed_params" in t.system_attrs for t in study.trials) == 1
    assert study.best_value == max(t.values[0] for t in trained if t.state == TrialState.COMPLETE)


def test_an_existing_study_is_not_given_its_points_again(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_searcher(_sweep(), storage=storage, study_name="again")
    make_searcher(_sweep(), storage=storage, study_name="again")
    study = optuna.load_study(study_name="again", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.WAITING]


def test_a_study_on_postgresql_in_a_database_of_its_own(postgres):
    """The cluster's case: --optuna-storage names a database beside MLflow's on the tracking PostgreSQL."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("DROP DATABASE IF EXISTS optuna")
        conn.execute("CREATE DATABASE optuna")
    url, _ = resolve_optuna_storage(f"postgresql://{postgres.USER}@127.0.0.1:{postgres.port}/optuna", "http://h:5000")
    limiter = make_searcher(_sweep(), storage=url, study_name="pg-1")
    for i in range(3):
        limiter.on_trial_complete(f"t{i}", _objective(limiter.suggest(f"t{i}")))
    restored = pickle.loads(pickle.dumps(limiter))  # reconnects from the URL it pickled
    restored.on_trial_complete("t3", _objective(restored.suggest("t3")))
    study = optuna.load_study(study_name="pg-1", storage=url)
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in study.trials if TUNE_TRIAL_ID in t.user_attrs) == [
        "t0",
        "t1",
        "t2",
        "t3",
    ]
