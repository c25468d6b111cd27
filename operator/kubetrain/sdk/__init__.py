"""kubetrain's Python SDK: TrainingJobs with the calls of a managed training API.

``Client`` creates, lists, watches, stops, resumes and cancels TrainingJobs and estimates
their cost; every error it raises is a ``KubetrainError``::

    import kubetrain

    with kubetrain.Client(namespace="nlp") as client:
        job = client.create(
            model_type="llm",
            dataset="hf://datasets/tatsu-lab/alpaca",
            llm={"baseModel": "meta-llama/Llama-2-7b-hf", "lora": {"rank": 16}},
            training={"epochs": 3, "learningRate": 2e-4},
            gpu_type="a100",
            workers=2,
        )
        done = client.wait_for_completion(job.metadata.name, timeout=6 * 3600)
        print(done.status.phase, done.status.metrics)

A request written for a managed-training API converts as it is (``create_from_request``,
or ``convert_request`` to see the TrainingJob first; docs/migrating.md has the mapping)::

    client.create_from_request(
        dataset_name="road-signs",
        export_name="road-signs-20260512-120000",
        pipeline_type="yolox",
        config={"epochs": 50, "image_size": 640},
        gpu_type="a10g",
    )
"""

from kubetrain.sdk.client import STOP_REASON_ANNOTATION, Client
from kubetrain.sdk.cost import CatalogueFallbackWarning, CostEstimate
from kubetrain.sdk.errors import (
    Cause,
    ConflictError,
    KubetrainError,
    NotFoundError,
    PermissionDeniedError,
    PollTimeoutError,
    ValidationError,
)
from kubetrain.sdk.migrate import ConversionWarning, ConvertedRequest, convert_request
from kubetrain.sdk.query import SORT_KEYS, JobPage
from kubetrain.sdk.results import Cancelled, JobEvent

__all__ = [
    "SORT_KEYS",
    "STOP_REASON_ANNOTATION",
    "Cancelled",
    "CatalogueFallbackWarning",
    "Cause",
    "Client",
    "ConflictError",
    "ConversionWarning",
    "ConvertedRequest",
    "CostEstimate",
    "JobEvent",
    "JobPage",
    "KubetrainError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollTimeoutError",
    "ValidationError",
    "convert_request",
]
