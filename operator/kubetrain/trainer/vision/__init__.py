"""The vision trainer: classification, detection and segmentation on torchvision models.

Built on the shared trainer runtime (reports, checkpoints, SIGTERM, resume), so it behaves
towards the operator exactly like the LoRA trainer. The modules that read the spec and the
dataset (``catalog``, ``options``, ``sources``) import no torch: a bad spec or a dataset that
is too small fails within a second.
"""
