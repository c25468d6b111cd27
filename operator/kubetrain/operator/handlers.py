"""kopf registration, and nothing else: every handler hands its event to the Controller.

kopf watches the TrainingJobs; the children are watched by the Controller's own watches,
which the API server filters by label (kopf filters labels in the client)."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.operator import channel_tls, metrics
from kubetrain.operator.controller import Controller
from kubetrain.operator.kube import Cluster
from kubetrain.operator.leader import LeaderElector
from kubetrain.operator.render import TRAINER_POLICY
from kubetrain.operator.reports import ReportServer, TokenReviewer, bare_context, server_context
from kubetrain.operator.settings import Settings, load_settings
from kubetrain.operator.watching import NamespaceFilter

log = logging.getLogger(__name__)

CHANNEL_LABEL = "kubetrain.io/report-channel"
"""On the leading replica's Pod: the report channel's Service selects it."""


def _api_client(kubeconfig: str | None, pool: int) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


@kopf.on.startup()
def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    """Build the controller from the options __main__ put in the memo."""
    if "settings" not in memo:  # started by `kopf run -m kubetrain.operator.handlers`
        path = os.environ.get("KUBETRAIN_CONFIG_FILE")
        memo["settings"] = load_settings(Path(path) if path else None)
    operator_settings: Settings = memo["settings"]
    settings.peering.standalone = True  # replicas coordinate through a Lease instead
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    workers = int(memo.get("workers", 8))
    api = memo["api_client"] = _api_client(memo.get("kubeconfig"), pool=workers * 2 + 2)
    cluster = Cluster(api)
    if not cluster.has_admission_policy(TRAINER_POLICY):
        # Without it every trainer could patch any Pod of its namespace.
        raise kopf.PermanentError(
            f"the ValidatingAdmissionPolicy {TRAINER_POLICY} (and its binding) is not "
            "installed: it holds each trainer to its own Pod. Install it with the chart, or "
            "kubectl apply -f config/trainer-policy.yaml"
        )
    if operator_settings.kueue_enabled and not cluster.serves_workloads():
        # Its Workload watch would never sync, and no job would be reconciled.
        raise kopf.PermanentError(
            "kueueEnabled is set, but the API server does not serve Kueue's Workloads "
            "(kueue.x-k8s.io/v1beta2): install Kueue v0.17 or later, or turn the integration "
            "off (chart value kueue.enabled)"
        )
    channel = operator_settings.report_channel_listen
    namespace = memo.get("lease_namespace") or os.environ.get("POD_NAMESPACE") or "default"
    context = _channel_context(memo, operator_settings, namespace) if channel else None
    controller = Controller(cluster, operator_settings, workers=workers)
    memo["controller"] = controller
    if memo.get("standalone"):
        standalone = threading.Event()
        standalone.set()
        controller.active = standalone
    else:

        def elected() -> None:
            controller.resync()
            if channel:
                cluster.label_own_pod(CHANNEL_LABEL, "serving")
                # A former leader that died holding the label would keep receiving reports.
                selector = operator_settings.replica_selector
                stale = cluster.unlabel_other_pods(CHANNEL_LABEL, selector)
                if stale:
                    log.info("cleared %s from former leaders' Pods: %s", CHANNEL_LABEL,
                             ", ".join(stale))  # fmt: skip

        def lost() -> None:
            if channel:
                cluster.label_own_pod(CHANNEL_LABEL, None)

        if channel:  # left by this Pod's previous container, which may have led
            cluster.label_own_pod(CHANNEL_LABEL, None)
        elector = LeaderElector(
            api,
            namespace,
            memo.get("lease_name") or "kubetrain-operator",
            f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
            lease_seconds=operator_settings.lease_seconds,
            on_elected=elected,
            on_lost=lost,
        )
        controller.active = elector.leading
        cluster.fence = elector.leading.is_set  # no write leaves a replica that does not lead
        memo["elector"] = elector
        elector.start()
    controller.watch_children(api, NamespaceFilter(memo.get("namespaces") or ()))
    controller.start()  # its workers wait for the children's first lists
    if channel and context is not None:
        server = ReportServer(
            channel,
            context,
            TokenReviewer(client.AuthenticationV1Api(api)),
            controller.accept_report,
            controller.active.is_set,
            warn=controller.report_refused,
        )
        server.start()
        memo["report_server"] = server
        log.info("report channel on https://%s (trainers use %s)", channel,
                 operator_settings.report_channel_url)  # fmt: skip
    metrics.JOB_SERIES.cap = operator_settings.metrics_max_jobs
    if operator_settings.metrics_port:
        start_http_server(operator_settings.metrics_port, operator_settings.metrics_address)
    log.info("kubetrain operator started with %d workers", workers)


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use the same credentials as the operator's own client."""
    configuration = memo["api_client"].configuration
    if configuration.refresh_api_key_hook is not None:  # e.g. a rotated in-cluster token
        configuration.refresh_api_key_hook(configuration)
    keys = configuration.api_key or {}
    token = keys.get("BearerToken") or keys.get("authorization") or ""
    # The in-cluster config writes "bearer <token>" (lowercase), a kubeconfig "Bearer <token>".
    scheme, space, rest = token.partition(" ")
    if space and scheme.lower() == "bearer":
        token = rest
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme="Bearer" if token else None,
        token=token or None,
    )


def _channel_context(memo: kopf.Memo, settings: Settings, namespace: str) -> ssl.SSLContext:
    """The channel's serving TLS: from reportChannelTlsDir, or from the Secret the operator
    keeps (made at first start, renewed in place); the CA goes into ``settings`` for trainers."""
    if settings.report_channel_tls_dir:
        return server_context(Path(settings.report_channel_tls_dir))
    if not settings.report_channel_secret:
        raise kopf.PermanentError(
            "reportChannelListen is set without reportChannelSecret or reportChannelTlsDir: "
            "trainers send bearer tokens on the channel, so it is served over TLS only"
        )
    try:
        hosts = channel_tls.channel_hosts(settings.report_channel_url)
        core = client.CoreV1Api(memo["api_client"])
        tls = channel_tls.ensure(core, namespace, settings.report_channel_secret, hosts)
    except (ValueError, RuntimeError) as err:
        raise kopf.PermanentError(str(err)) from None
    settings.report_channel_ca = tls.ca_pem
    context = bare_context()
    channel_tls.load_into(context, tls)

    def new_ca(pem: str) -> None:
        settings.report_channel_ca = pem  # trainers started from now on get it

    keeper = channel_tls.Keeper(
        core, namespace, settings.report_channel_secret, hosts,
        context=context, current=tls, on_ca=new_ca,
    )  # fmt: skip
    keeper.start()
    memo["channel_tls"] = keeper
    return context


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    """Hand over first, then wind down, each step within what is left of shutdownSeconds:
    the Lease and the channel's label go before anything slow, so a standby takes over at
    its next look, well inside the Pod's termination grace."""
    settings: Settings | None = memo.get("settings")
    deadline = time.monotonic() + (settings.shutdown_seconds if settings else 20.0)

    def left() -> float:
        return max(deadline - time.monotonic(), 0.1)

    elector: LeaderElector | None = memo.get("elector")
    if elector is not None:
        elector.release()
        if settings is not None and settings.report_channel_listen:
            Cluster(memo["api_client"]).label_own_pod(
                CHANNEL_LABEL, None, timeout=(1.0, min(2.0, left()))
            )
    server: ReportServer | None = memo.get("report_server")
    if server is not None:
        server.stop(timeout=min(2.0, left()))
    keeper: channel_tls.Keeper | None = memo.get("channel_tls")
    if keeper is not None:
        keeper.stop(timeout=min(1.0, left()))
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        controller.stop(deadline)
    if elector is not None:
        elector.stop(timeout=min(1.0, left()))
    log.info("shut down (%.1fs of shutdownSeconds left)", deadline - time.monotonic())


@kopf.on.event(GROUP, VERSION, PLURAL)
def training_job(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo["controller"].job_event(event)


@kopf.on.probe(id="queued")
def queued(memo: kopf.Memo, **_: Any) -> int:
    """Jobs waiting for a reconcile, shown on the liveness endpoint."""
    controller: Controller | None = memo.get("controller")
    return len(controller.queue) if controller else 0


@kopf.on.probe(id="leaderElection")
def leader_election(memo: kopf.Memo, **_: Any) -> str | None:
    """Whether this replica leads; an elector that ended by itself fails the liveness probe
    (kopf answers 500), so the kubelet restarts a replica that could never lead again."""
    elector: LeaderElector | None = memo.get("elector")
    if elector is None:
        return None  # standalone, or not started yet
    if not elector.alive():
        raise kopf.PermanentError(f"leader election has ended: {elector.error!r}")
    return "leading" if elector.leading.is_set() else "standing by"
