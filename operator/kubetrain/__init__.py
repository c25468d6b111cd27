"""kubetrain: a Kubernetes operator for GPU model training."""

__version__ = "0.1.0"
