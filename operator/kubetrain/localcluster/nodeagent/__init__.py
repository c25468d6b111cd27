"""The local node agent: kubetrain's stand-in for a kubelet on the local cluster.

It registers Node objects that look like GPU nodes, runs the containers of Pods bound to
them as local processes (the image is ignored; the command must exist here), gives them
service-account credentials, volumes and an /etc/hosts in private mount namespaces,
provisions the ``kubetrain-local`` StorageClass, and reports status as a kubelet does.
See ``NodeAgent`` and ``python -m kubetrain.localcluster.nodeagent --help``.
"""

from kubetrain.localcluster.nodeagent.agent import NodeAgent, NodeAgentError
from kubetrain.localcluster.nodeagent.config import GPU_RESOURCE, NodeSpec, default_pool, load_pool
from kubetrain.localcluster.nodeagent.provisioner import STORAGE_CLASS
from kubetrain.localcluster.nodeagent.runtime import stop_recorded

__all__ = [
    "GPU_RESOURCE",
    "STORAGE_CLASS",
    "NodeAgent",
    "NodeAgentError",
    "NodeSpec",
    "default_pool",
    "load_pool",
    "stop_recorded",
]
