"""Ctrl+C after a Tune run: the SIGINT handler Tune installs for its run does not outlive it (experiments.fit), so
a Ctrl+C in the driver's own work after it (the one-shot's mask search, the end of a sweep) interrupts the driver."""

import os
import signal
import time

import pytest
from ray import tune

from cluster.tracking import resolve_tracking_uri
from orchestrator.experiments import fit, tracking_option


def _trainable(config):
    tune.report({"x": 1.0})


def test_a_ctrl_c_after_a_tune_run_interrupts_the_driver(ray_local, tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fit(tune.Tuner(_trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="signals", verbose=0)))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs between bytecodes: well before this ends
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_printed_commands_name_the_store_only_where_it_is_not_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_option(resolve_tracking_uri(None)) == ""
    assert tracking_option("sqlite:////elsewhere/mlruns.db") == " --tracking-uri sqlite:////elsewhere/mlruns.db"
