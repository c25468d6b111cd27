"""A real Kubernetes control plane run as local processes on loopback.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from their Go
modules by ``make setup``, started on free loopback ports. Used by the test fixtures,
``make cluster-up`` and the demo; it plays no part on a real cluster.
"""

from kubetrain.localcluster.controlplane import ClusterError, ControlPlane, find_binary

__all__ = ["ClusterError", "ControlPlane", "find_binary"]
