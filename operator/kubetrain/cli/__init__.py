"""The ``kubectl train`` plugin: TrainingJobs from the command line, with live progress.

Installed as the console script ``kubectl-train``; kubectl runs it for ``kubectl train``.
"""
