"""The reconciler: pure decisions (plan), the work queue, the watch cache and the executor."""
