"""A trial's deploy form as an MLflow model (DESIGN.md §5 "Models"), and MLflow's system metrics on its run.

The deploy form is ``fuse_model`` of the trained network (eval mode, BatchNorms folded into LSLU's convs, VanillaNet
fused) on the CPU, in float32. It is logged with ``mlflow.pytorch.log_model`` as a ``torch.export`` program (MLflow's
``pt2`` format: it loads without the project's code, unlike a pickle), with a tensor signature whose batch dimension
is free, a two-sample input example and the trial's config as the model's metadata. LSLU's own kernels are off while
exporting: ``torch.export`` traces PyTorch's ops, not a compiled or Triton kernel.

MLflow's ``log_model`` finds its store through the process's tracking URI and its experiment through the active run;
a trial logs to an explicit run id with an explicit client, so the LoggedModel is created here in the run's
experiment and ``log_model`` is given its id, the run id and (for the call) the trial's tracking URI.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainables.activations.lslu.dispatch import eager_kernels
from trainables.models.stats import fuse_model

MODEL_NAME = "model"  # the LoggedModel's name: one per trial run
MODEL_WEIGHTS, EMA_WEIGHTS = "model_final.pt", "model_ema_final.pt"  # a finished trial's weights-only artifacts
DEPLOY_WEIGHTS_TAG = "deploy_weights"  # on a run with an EMA: which of the two its deploy form is (deploys_ema)
EXAMPLE_BATCH = 2  # a batch of 1 would pin the exported batch dimension to 1
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default is 10 s; $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides both


def deploy_form(model: nn.Module) -> nn.Module:
    """The network as it is deployed: fused, eval mode, float32, contiguous, on the CPU."""
    return fuse_model(model).float().cpu().to(memory_format=torch.contiguous_format)


def example_input(input_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A random ``(EXAMPLE_BATCH, *input_shape)`` batch, the same for the same seed."""
    return torch.randn(EXAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(seed))


def export_program(deploy: nn.Module, example: torch.Tensor):
    """``torch.export`` of the deploy form with a free batch dimension, traced through PyTorch's own ops."""
    with eager_kernels(), torch.no_grad():
        return torch.export.export(deploy, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))


def log_deploy_model(
    client, experiment_id: str, run_id: str, model: nn.Module, input_shape: tuple[int, ...], config: dict
) -> str:
    """Log ``model``'s deploy form as the run's MLflow model; returns the LoggedModel's id."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.entities import LoggedModelStatus
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    deploy = deploy_form(model)
    example = example_input(input_shape)
    with eager_kernels(), torch.no_grad():
        out = deploy(example)
    signature = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, *input_shape), "images")]),
        Schema([TensorSpec(np.dtype("float32"), (-1, *out.shape[1:]), "logits")]),
    )
    logged = client.create_logged_model(
        experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags={"mlflow.modelFlavor": "pytorch", "model": str(config.get("model"))},
    )
    try:
        with using_tracking_uri(client.tracking_uri), eager_kernels():
            mlflow.pytorch.log_model(
                deploy,
                name=MODEL_NAME,
                model_id=logged.model_id,
                run_id=run_id,
                signature=signature,
                input_example=example.numpy(),
                metadata={"config": config, "input_shape": list(input_shape)},
                serialization_format="pt2",
                # given, so MLflow neither infers them in a subprocess nor reloads the model to try the example (~1 s)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                validate_serving_input=False,
            )
    except BaseException:  # torch.export could not trace it: no half-made model stays on the run
        client.delete_logged_model(logged.model_id)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


@contextlib.contextmanager
def using_tracking_uri(uri: str):
    """The process's MLflow tracking URI is ``uri`` inside the block (``log_model`` reads only that one)."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # a later MLflow without the helper: set it for the process (a trial logs to one store)
        mlflow.set_tracking_uri(uri)
        yield
        return
    with _use_tracking_uri(uri):
        yield


class SystemMetrics:
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py on an NVIDIA node) on one
    trial run, from ``start()`` to ``stop()``. MLflow publishes a sample only after a full interval; a trial shorter
    than that still gets one, published when it stops. Never raises: system metrics must not stop a trial."""

    def __init__(self, tracking_uri: str, run_id: str, resume: bool):
        self.monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            class _Counting(SystemMetricsMonitor):
                published = 0

                def publish_metrics(self, metrics):
                    super().publish_metrics(metrics)
                    self.published += 1

            self.monitor = _Counting(
                run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume, tracking_uri=tracking_uri
            )
        except Exception as exc:  # psutil missing, or MLflow's API changed
            _warn(f"no system metrics for run {run_id}: {exc}")

    def start(self) -> "SystemMetrics":
        if self.monitor is not None:
            self.monitor.start()
        return self

    def stop(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            if not monitor.published:  # the trial was shorter than one interval
                for part in monitor.monitors:  # the start's sample (psutil's first CPU reading is 0) gives way to
                    part.clear_metrics()  # one taken now: CPU use since then, i.e. over the trial
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as exc:
            _warn(f"system metrics: {exc}")


def _warn(message: str) -> None:
    import logging

    logging.getLogger(__name__).warning(message)
