"""The report channel's CA and serving certificate, kept by the operator in one Secret.

The operator makes them itself (a chart cannot: Helm's ``lookup`` sees nothing under Argo CD
or ``helm template``, so every render would make a new CA and break the trainers that run
with the old one in their env). Every replica gets or creates the one Secret at start-up; a
create race is settled by the API server (409: read the winner's). The CA is made once and
kept for years; the serving certificate is renewed under the same CA well before it
expires, or when the channel's host names change, so running trainers keep verifying it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
CERT_VALIDITY = datetime.timedelta(days=365)
RENEW_CERT_BEFORE = datetime.timedelta(days=90)
"""A serving certificate with less than this left is issued anew (same CA)."""
RENEW_CA_BEFORE = datetime.timedelta(days=400)
"""A CA with less than this left is made anew (trainers started before fall back to their
Pod's annotation until they restart): once in nine years."""
ATTEMPTS = 5
"""Reads and writes of the Secret before giving up when other replicas keep changing it."""
CA_NAME = "kubetrain-report-channel-ca"
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of trainers' nodes may lag a little

Now = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class ChannelTLS:
    """PEM text of the CA (certificate and key) and of the serving certificate and key."""

    ca_pem: str
    ca_key_pem: str
    cert_pem: str
    key_pem: str

    def secret_data(self) -> dict[str, str]:
        plain = {"ca.crt": self.ca_pem, "ca.key": self.ca_key_pem,
                 "tls.crt": self.cert_pem, "tls.key": self.key_pem}  # fmt: skip
        return {k: base64.b64encode(v.encode()).decode() for k, v in plain.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str] | None) -> ChannelTLS | None:
        """What a Secret holds, or None when a part is missing or unreadable."""
        try:
            text = {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}
            return cls(text["ca.crt"], text["ca.key"], text["tls.crt"], text["tls.key"])
        except (KeyError, ValueError):
            return None


def channel_hosts(url: str) -> list[str]:
    """The names the serving certificate must carry for trainers reaching ``url``."""
    host = urlsplit(url).hostname or ""
    if not host:
        raise ValueError(f"reportChannelUrl {url!r} names no host")
    hosts = [host]
    if host.endswith(".svc"):
        hosts.append(f"{host}.cluster.local")
    return hosts


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def issue(hosts: list[str], now: datetime.datetime, ca: ChannelTLS | None = None) -> ChannelTLS:
    """A serving certificate for ``hosts``, signed by ``ca`` (kept) or by a new CA."""
    if ca is None:
        ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        ca_pem, ca_key_pem = _cert_pem(ca_cert), _key_pem(ca_key)
    else:
        ca_pem, ca_key_pem = ca.ca_pem, ca.ca_key_pem
        ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
        loaded = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the report channel's CA key is not an EC key")
        ca_key = loaded
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ChannelTLS(ca_pem, ca_key_pem, _cert_pem(cert), _key_pem(key))


Renewal = Literal["none", "cert", "ca"]


def renewal(tls: ChannelTLS | None, hosts: list[str], now: datetime.datetime) -> Renewal:
    """What must be made anew: nothing, the serving certificate (same CA), or everything."""
    if tls is None:
        return "ca"
    try:
        ca = x509.load_pem_x509_certificate(tls.ca_pem.encode())
        serialization.load_pem_private_key(tls.ca_key_pem.encode(), password=None)
        cert = x509.load_pem_x509_certificate(tls.cert_pem.encode())
    except ValueError:
        return "ca"
    if ca.not_valid_after_utc - now < RENEW_CA_BEFORE:
        return "ca"
    if cert.issuer != ca.subject or cert.not_valid_after_utc - now < RENEW_CERT_BEFORE:
        return "cert"
    try:
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return "cert"
    carried = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    carried |= {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    return "none" if set(hosts) <= carried else "cert"


def ensure(
    core: client.CoreV1Api, namespace: str, name: str, hosts: list[str], now: Now = _utcnow
) -> ChannelTLS:
    """The channel's TLS from Secret ``namespace/name``: created when missing, renewed when
    due, otherwise exactly what it holds (so every replica and restart serves the same CA)."""
    for _ in range(ATTEMPTS):
        try:
            secret: Any = core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise _refused(err, "get", namespace, name) from None
            made = issue(hosts, now())
            body: Any = {
                "metadata": {"name": name, "labels": _LABELS},
                "type": "kubernetes.io/tls",
                "data": made.secret_data(),
            }
            try:
                core.create_namespaced_secret(namespace, body)
            except ApiException as conflict:
                if conflict.status == 409:  # another replica made it first: use theirs
                    continue
                raise _refused(conflict, "create", namespace, name) from None
            log.info("made the report channel's CA and certificate: %s/%s", namespace, name)
            return made
        current = ChannelTLS.from_secret_data(secret.data)
        due = renewal(current, hosts, now())
        if due == "none" and current is not None:
            return current
        made = issue(hosts, now(), current if due == "cert" else None)
        secret.data = made.secret_data()
        try:  # guarded by the resourceVersion read: a replica that renewed first wins
            core.replace_namespaced_secret(name, namespace, secret)
        except ApiException as conflict:
            if conflict.status == 409:
                continue
            raise _refused(conflict, "update", namespace, name) from None
        what = "certificate" if due == "cert" else "CA and certificate"
        log.info("renewed the report channel's %s: %s/%s", what, namespace, name)
        return made
    raise RuntimeError(
        f"the Secret {namespace}/{name} (report channel TLS) changed under every one of "
        f"{ATTEMPTS} attempts to read and write it"
    )


_LABELS = {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/component": "report-channel"}
"""No app.kubernetes.io/instance: Argo CD tracks (and prunes) by that label; the Secret is
the operator's, not the chart's."""


def _refused(err: ApiException, verb: str, namespace: str, name: str) -> RuntimeError:
    hint = (
        f": the operator's Role must allow {verb} on secrets/{name} in {namespace}"
        if err.status == 403
        else ""
    )
    return RuntimeError(
        f"cannot {verb} the report channel's Secret {namespace}/{name}: "
        f"{err.status} {err.reason}{hint}"
    )


def load_into(context: ssl.SSLContext, tls: ChannelTLS) -> None:
    """Serve ``tls``'s certificate on ``context`` (new handshakes use it at once).

    ``load_cert_chain`` reads only files: they live for the call, in a private directory.
    """
    with tempfile.TemporaryDirectory(prefix="kubetrain-channel-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_text(tls.cert_pem)
        key.touch(mode=0o600)
        key.write_text(tls.key_pem)
        context.load_cert_chain(cert, key)


class Keeper:
    """Checks the Secret every ``interval`` seconds from a thread: serves a certificate
    renewed (here or by another replica) at once, and hands a new CA to ``on_ca``."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        name: str,
        hosts: list[str],
        *,
        context: ssl.SSLContext,
        current: ChannelTLS,
        on_ca: Callable[[str], None],
        interval: float = 3600.0,
    ) -> None:
        self.core, self.namespace, self.name, self.hosts = core, namespace, name, hosts
        self.context, self.current, self.on_ca, self.interval = context, current, on_ca, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="channel-tls", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def check(self) -> None:
        tls = ensure(self.core, self.namespace, self.name, self.hosts)
        if tls.cert_pem != self.current.cert_pem:
            load_into(self.context, tls)
        if tls.ca_pem != self.current.ca_pem:
            self.on_ca(tls.ca_pem)
        self.current = tls

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as err:  # the next check tries again; the old cert still serves
                log.warning("report channel TLS: %s", err)
