"""``python -m kubetrain``: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import kopf

from kubetrain.operator import handlers
from kubetrain.operator.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain", description="The kubetrain operator.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    parser.add_argument("--config", type=Path, help="operator config file (YAML; GPU catalogue)")
    parser.add_argument("-n", "--namespace", action="append", help="watch only these namespaces")
    parser.add_argument(
        "--standalone", action="store_true", help="no leader election: the only replica"
    )
    parser.add_argument(
        "--lease-namespace", help="namespace of the leader-election Lease (default: $POD_NAMESPACE)"
    )
    parser.add_argument("--lease-name", default="kubetrain-operator", help="leader-election Lease")
    parser.add_argument("--workers", type=int, default=8, help="reconcile threads")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (0 disables)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="probe URL")
    parser.add_argument("--status-interval-seconds", type=float, help="status write throttle")
    parser.add_argument("--resync-seconds", type=float, help="re-evaluation period")
    parser.add_argument(
        "--report-interval-seconds", type=float, help="how often trainers report progress"
    )
    parser.add_argument("--report-channel-listen", help="host:port of the report channel")
    parser.add_argument("--report-channel-url", help="the channel's URL as trainers reach it")
    parser.add_argument("--report-channel-tls-dir", help="tls.crt, tls.key and ca.crt")
    parser.add_argument(
        "--report-channel-interval-seconds", type=float, help="how often trainers push"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per event
    settings = load_settings(
        args.config,
        metrics_port=args.metrics_port,
        status_interval_seconds=args.status_interval_seconds,
        resync_seconds=args.resync_seconds,
        report_interval_seconds=args.report_interval_seconds,
        report_channel_listen=args.report_channel_listen,
        report_channel_url=args.report_channel_url,
        report_channel_tls_dir=args.report_channel_tls_dir,
        report_channel_interval_seconds=args.report_channel_interval_seconds,
    )
    memo = kopf.Memo(
        settings=settings,
        workers=args.workers,
        kubeconfig=args.kubeconfig,
        standalone=args.standalone,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        namespaces=args.namespace or [],
    )
    assert handlers  # registered on import
    asyncio.run(
        kopf.operator(
            standalone=True,  # kopf's own peering is off: replicas elect a leader by Lease
            namespaces=args.namespace or [],
            clusterwide=not args.namespace,
            liveness_endpoint=args.liveness or None,
            memo=memo,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
