"""The runtime's training session, reporting throughput in images per second."""

from __future__ import annotations

from kubetrain.api.report import ProgressReport, ReportedModel, TrainerState
from kubetrain.trainer.session import TrainingSession

THROUGHPUT_UNIT = "images/s"


class VisionSession(TrainingSession):
    """A ``TrainingSession`` whose reports count images, not tokens."""

    def build_report(
        self, state: TrainerState, *, message: str = "", model: ReportedModel | None = None
    ) -> ProgressReport:
        report = super().build_report(state, message=message, model=model)
        return report.model_copy(update={"throughput_unit": THROUGHPUT_UNIT})
