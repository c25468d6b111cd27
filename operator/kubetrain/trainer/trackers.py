"""Experiment trackers (spec.training.reportTo): every per-step record a trainer logs also
goes to TensorBoard event files on the checkpoint volume and to an MLflow tracking server.

One path for every trainer: the records ``TrainingSession.log_record`` writes to the
volume's ``train-log.jsonl`` are the ones the trackers get, so the LoRA and the vision
trainer report the same names. A resumed attempt continues the same MLflow run (its id is
kept on the volume) and appends to the same TensorBoard log directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow-run-id"
WANDB_RUN_FILE = "wandb-run-id"


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Scalars into ``<volume>/tensorboard`` (``tensorboard --logdir`` there)."""

    def __init__(self, volume: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - only when asked

        self.directory = volume / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.directory))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """Metrics into one MLflow run per job, at ``MLFLOW_TRACKING_URI`` (spec.env); the run
    (named after the job, in ``MLFLOW_EXPERIMENT_NAME`` or the job's namespace) survives a
    resume."""

    def __init__(self, volume: Path, job: str, namespace: str) -> None:
        import mlflow  # noqa: PLC0415 - only when asked

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise ValueError(
                "spec.training.reportTo mlflow needs MLFLOW_TRACKING_URI in spec.env "
                "(the tracking server's URL)"
            )
        self.client = mlflow.MlflowClient()
        saved = volume / MLFLOW_RUN_FILE
        if saved.is_file():
            self.run_id = saved.read_text().strip()
        else:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or namespace or "kubetrain"
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
            run = self.client.create_run(
                experiment_id, run_name=job, tags={"kubetrain.io/job": job}
            )
            self.run_id = run.info.run_id
            saved.write_text(self.run_id)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in scalars.items()]
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    """Metrics into one Weights & Biases run per job: ``WANDB_API_KEY`` (from a Secret, in
    spec.env), ``WANDB_PROJECT`` (default: the job's namespace), ``WANDB_ENTITY`` and
    ``WANDB_BASE_URL`` (a self-hosted server) as W&B reads them. The run (named after the
    job, its files under ``<volume>/wandb``) survives a resume: its id is kept on the volume.
    ``WANDB_MODE=offline`` keeps everything on the volume, for ``wandb sync`` later."""

    def __init__(self, volume: Path, job: str, namespace: str) -> None:
        import wandb  # noqa: PLC0415 - only when asked

        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled")
        if not offline and not os.environ.get("WANDB_API_KEY"):
            raise ValueError(
                "spec.training.reportTo wandb needs WANDB_API_KEY in spec.env (from a Secret), "
                "or WANDB_MODE=offline to keep the run on the checkpoint volume"
            )
        saved = volume / WANDB_RUN_FILE
        run_id = saved.read_text().strip() if saved.is_file() else secrets.token_hex(4)
        saved.write_text(run_id)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or namespace or "kubetrain",
            name=job,
            id=run_id,
            resume="allow",
            dir=str(volume),
            tags=["kubetrain"],
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


_TRACKERS: dict[str, Any] = {"tensorboard": None, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The trackers a job asked for; a tracker that fails is logged and dropped, never
    allowed to stop training."""

    def __init__(self, names: list[str], volume: Path, job: str, namespace: str) -> None:
        self.active: list[Tracker] = []
        for name in names:
            try:
                self.active.append(
                    TensorBoard(volume)
                    if name == "tensorboard"
                    else _TRACKERS[name](volume, job, namespace)
                )
            except Exception as err:
                log.warning("cannot report to %s: %s", name, err)

    def log(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if not self.active or not isinstance(step, int):
            return
        scalars = {
            k: float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        for tracker in list(self.active):
            try:
                tracker.log(step, scalars)
            except Exception as err:
                log.warning("reporting to %s failed, dropping it: %s", type(tracker).__name__, err)
                self.active.remove(tracker)

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.close()
            except Exception as err:
                log.warning("closing %s: %s", type(tracker).__name__, err)
        self.active = []
