"""The report channel's CA is made once and kept: only the serving certificate is renewed,
well before it expires or when the channel's host names change, under the same CA."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading

from kubetrain.operator.channel_tls import (
    CERT_VALIDITY,
    RENEW_CERT_BEFORE,
    ChannelTLS,
    channel_hosts,
    issue,
    load_into,
    renewal,
)
from kubetrain.operator.reports import bare_context

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
HOSTS = channel_hosts("https://kubetrain-reports.kubetrain-system.svc:8443")


def test_the_hosts_are_the_services_names() -> None:
    assert HOSTS == [
        "kubetrain-reports.kubetrain-system.svc",
        "kubetrain-reports.kubetrain-system.svc.cluster.local",
    ]
    assert channel_hosts("https://127.0.0.1:9443") == ["127.0.0.1"]


def test_a_fresh_pair_needs_nothing_until_the_certificate_nears_its_end() -> None:
    tls = issue(HOSTS, NOW)
    assert renewal(tls, HOSTS, NOW) == "none"
    assert (
        renewal(tls, HOSTS, NOW + CERT_VALIDITY - RENEW_CERT_BEFORE - datetime.timedelta(1))
        == "none"
    )
    assert (
        renewal(tls, HOSTS, NOW + CERT_VALIDITY - RENEW_CERT_BEFORE + datetime.timedelta(1))
        == "cert"
    )


def test_a_renewed_certificate_keeps_the_ca() -> None:
    tls = issue(HOSTS, NOW)
    later = NOW + CERT_VALIDITY - datetime.timedelta(days=30)
    renewed = issue(HOSTS, later, tls)
    assert (renewed.ca_pem, renewed.ca_key_pem) == (tls.ca_pem, tls.ca_key_pem)
    assert renewed.cert_pem != tls.cert_pem
    assert renewal(renewed, HOSTS, later) == "none"


def test_other_host_names_or_a_broken_secret_are_noticed() -> None:
    tls = issue(HOSTS, NOW)
    assert renewal(tls, ["kubetrain-reports.other.svc"], NOW) == "cert"
    assert renewal(None, HOSTS, NOW) == "ca"
    assert ChannelTLS.from_secret_data({"tls.crt": "eA=="}) is None  # ca.crt etc. missing
    assert ChannelTLS.from_secret_data(tls.secret_data()) == tls
    foreign = issue(HOSTS, NOW)  # a certificate of another CA
    mixed = ChannelTLS(tls.ca_pem, tls.ca_key_pem, foreign.cert_pem, foreign.key_pem)
    assert renewal(mixed, HOSTS, NOW) == "cert"


def test_a_client_holding_only_the_ca_verifies_the_served_certificate() -> None:
    tls = issue(["127.0.0.1"], datetime.datetime.now(datetime.UTC))
    server = bare_context()
    load_into(server, tls)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        client = ssl.create_default_context(cadata=tls.ca_pem)  # as the trainer builds it
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            assert wrapped.version() in ("TLSv1.2", "TLSv1.3")
        thread.join(10)
