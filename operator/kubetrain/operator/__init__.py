"""The operator: kopf registration, the reconciler, the children it renders and applies.

Nothing here imports a trainer, torch or transformers; the API contract it shares with the
trainers, the SDK and the CLI lives in ``kubetrain.api``.
"""
