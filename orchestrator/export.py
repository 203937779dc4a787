"""A trial's deploy form beyond the trial: rebuilt from its run, registered for the sweep, exported to a file.

- ``trained_model``: the trial's network rebuilt from its run (``config.yaml``, ``model_final.pt`` and the
  ``input_shape`` / ``num_classes`` tags the trial sets), in eval mode: the reference every deploy form is checked
  against.
- ``register_best_model``: the end of a sweep registers its best trial's MLflow model under the sweep's name, a new
  version per sweep (a best trial the scheduler stopped has no logged model yet: it is logged here first).
- ``export_run``: ``lslu-sweep export RUN_OR_SWEEP``: the deploy form as a ``torch.export`` program (``.pt2``) or
  ONNX (with the ``onnx`` extra), loaded back and compared with the trained model on a random batch.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import torch
import yaml

from trainables.activations.lslu.dispatch import eager_kernels
from trainables.deploy import (
    DEPLOY_WEIGHTS_TAG,
    MODEL_WEIGHTS,
    deploy_form,
    example_input,
    export_program,
    log_deploy_model,
    using_tracking_uri,
)

TOLERANCE = 1e-4  # max abs difference between the exported and the trained model's outputs
FORMATS = ("pt2", "onnx")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger(__name__)


class ExportError(ValueError):
    pass


def trial_run(client, name: str, tracking_uri: str):
    """The trial run ``name`` names: a trial's run id, or a sweep (run id, run name or sweep name, as
    ``lslu-sweep report`` finds it) for its best trial."""
    from orchestrator.report import ReportError, find_sweep_run

    run = None
    if _RUN_ID.fullmatch(name):
        try:
            run = client.get_run(name)
        except Exception:  # not a run id after all: try it as a name
            run = None
    if run is None:
        try:
            run = find_sweep_run(client, name, tracking_uri)
        except ReportError as exc:
            raise ExportError(str(exc)) from None
    if "mlflow.parentRunId" in run.data.tags:
        return run
    best = run.data.tags.get("best_trial_run_id")
    if not best:
        raise ExportError(f"sweep run {run.info.run_name} has no best trial (tag best_trial_run_id): did it finish?")
    return client.get_run(best)


def trained_model(client, run):
    """The trial's trained network (eval mode, CPU), one input sample's shape and its config, rebuilt from its run
    (its deployed weights: the EMA's where tag deploy_weights names them)."""
    from trainables.config import TrialConfig
    from trainables.loop import build_network

    tags, run_id = run.data.tags, run.info.run_id
    if "input_shape" not in tags or "num_classes" not in tags:
        raise ExportError(
            f"run {run_id} has no input_shape / num_classes tags (a run logged before they were "
            "recorded): it cannot be rebuilt"
        )
    file = tags.get(DEPLOY_WEIGHTS_TAG, MODEL_WEIGHTS)  # a trial whose EMA scored higher deploys the EMA's
    with tempfile.TemporaryDirectory() as d:
        try:
            config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", d)).read_text())
            weights = torch.load(client.download_artifacts(run_id, file, d), map_location="cpu", weights_only=True)
        except Exception as exc:  # MLflow raises its own types for a missing artifact
            raise ExportError(
                f"run {run_id} ({run.info.run_name}) has no config.yaml and {file} to rebuild "
                f"its model from (status {tags.get('status', '?')}): {exc}"
            ) from None
    shape = tuple(int(s) for s in tags["input_shape"].split("x"))
    model, _ = build_network(TrialConfig.from_flat(config), int(tags["num_classes"]), shape[0])
    model.load_state_dict(weights)
    if callable(getattr(model, "set_act_learn", None)) and tags.get("status") == "completed":
        model.set_act_learn(1.0)  # VanillaNet's deep training ends in the first third; λ is not in the weights
    return model.eval(), shape, config


def logged_model_id(client, run_id: str) -> str | None:
    """The id of the newest complete (READY) MLflow model the run logged, or None. Not the run's outputs: they keep
    a model whose ``log_model`` failed after MLflow linked it, even once the model is deleted."""
    from mlflow.entities import LoggedModelStatus

    run = client.get_run(run_id)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    return max(ready, key=lambda m: m.creation_timestamp).model_id if ready else None


def register_best_model(client, experiment_id: str, sweep_name: str, sweep_run_name: str, run_id: str):
    """A new version of registered model ``sweep_name`` from the best trial's MLflow model; returns it."""
    from mlflow.exceptions import MlflowException

    model_id = logged_model_id(client, run_id)
    if model_id is None:  # e.g. ASHA stopped the best trial: the driver closed its run without a model
        model, shape, config = trained_model(client, client.get_run(run_id))
        model_id = log_deploy_model(client, experiment_id, run_id, model, shape, config)
    try:
        client.create_registered_model(
            sweep_name,
            description=f"The best trial of each `{sweep_name}` sweep (one version per sweep), its deploy form",
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with using_tracking_uri(client.tracking_uri):  # MLflow resolves a models:/ source through the process's URI
        return client.create_model_version(
            sweep_name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={"sweep_run": sweep_run_name},
            await_creation_for=0,
        )


def export_run(client, run, fmt: str = "pt2", output: str | None = None) -> tuple[str, float]:
    """Write the run's deploy form to ``output`` (default ``<run name>.<fmt>``); returns the path and the max abs
    difference between the file's and the trained model's outputs on a random batch."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    model, shape, _ = trained_model(client, run)
    path = Path(output or f"{run.info.run_name}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    deploy, example = deploy_form(model), example_input(shape)
    x = example_input(shape, seed=1)  # not the traced example
    with eager_kernels(), torch.no_grad():
        reference = model(x)
    if fmt == "pt2":
        torch.export.save(export_program(deploy, example), str(path))
        with torch.no_grad():
            got = torch.export.load(str(path)).module()(x)
    else:
        got = _export_onnx(deploy, example, x, path)
    return str(path), float((got - reference).abs().max())


def _export_onnx(deploy, example: torch.Tensor, x: torch.Tensor, path: Path) -> torch.Tensor:
    """ONNX through ``torch.onnx.export(dynamo=True)``; the file is run back with onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"--format onnx needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
            "pip install 'lslu-sweep[onnx]'"
        ) from None
    with eager_kernels(), torch.no_grad():
        program = torch.onnx.export(
            deploy,
            (example,),
            dynamo=True,
            verbose=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.AUTO},),
        )
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
