"""The trainer runtime: what runs inside a training container.

Shared by the LoRA and vision trainers: configuration from the Pod's environment
(``config``), progress reports to the Pod's annotation (``reporter``), atomic checkpoints
on the job's volume (``checkpoints``), SIGTERM handling (``signals``), the glue that ties
them to a training loop (``session``), exit codes and the termination message
(``runtime``) and a torchrun-style launcher for several processes per Pod (``launch``).
Only the trainer entry points import torch; the operator never imports this package.
"""
