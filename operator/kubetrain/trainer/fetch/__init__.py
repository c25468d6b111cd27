"""The fetch stage: remote datasets and models into the shared cache before training.

``python -m kubetrain.trainer.fetch`` runs once per job, in a CPU-only Pod, and reads its
``FetchPlan`` (``kubetrain.api.fetch``) from ``KUBETRAIN_FETCH``. Object stores and web
servers (``objects``) land in cache entries keyed by URI and revision (``cache``); Hugging
Face Hub repositories land in the Hub's own cache layout (``hub``).
"""
