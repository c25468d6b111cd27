"""The local control plane's pure parts and its failure path, with stand-in binaries."""

from __future__ import annotations

import base64
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from kubernetes import client, config

from kubetrain.localcluster import ClusterError, ControlPlane, find_binary, pki
from kubetrain.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from kubetrain.localcluster.kueue import configuration
from kubetrain.localcluster.ports import free_ports, is_listening
from kubetrain.localcluster.processes import pid_is, stop_pid
from kubetrain.operator.settings import Settings


def test_kubeconfig_round_trips_through_the_kubernetes_client(tmp_path: Path) -> None:
    ca = pki.new_ca()
    admin = pki.issue(ca, "someone", organizations=("system:masters",), client=True)
    path = write_kubeconfig(
        tmp_path / "kc" / "kubeconfig",
        build_kubeconfig("https://127.0.0.1:6443", ca.cert_pem, admin, namespace="team-a"),
    )

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = yaml.safe_load(path.read_text())
    cluster = loaded["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.cert_pem
    assert loaded["contexts"][0]["context"]["namespace"] == "team-a"

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == "https://127.0.0.1:6443"
    assert Path(configuration.cert_file).read_bytes() == admin.cert_pem


def test_issued_certificates_carry_identity_and_names() -> None:
    ca = pki.new_ca()
    pair = pki.issue(
        ca,
        "system:kube-scheduler",
        organizations=("group-a",),
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=system:kube-scheduler,O=group-a"
    assert cert.issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
        assert not is_listening(port)


def test_missing_binary_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"etcd not found .*make setup"):
        find_binary("etcd", tmp_path)


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


_HEALTHY_ETCD = """
    import http.server, sys
    url = next(a for a in sys.argv if a.startswith("--listen-client-urls=")).split("=", 1)[1]
    port = int(url.rsplit(":", 1)[1])
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b'{"health":"true"}')
        def log_message(self, *args):
            pass
    print("stand-in etcd serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "etcd", _HEALTHY_ETCD)
    for name in ("kube-controller-manager", "kube-scheduler"):
        _stand_in(bin_dir, name, "import time\ntime.sleep(60)\n")
    return bin_dir


def test_a_component_that_exits_early_is_named_with_its_log_tail(
    tmp_path: Path, stand_ins: Path
) -> None:
    _stand_in(
        stand_ins,
        "kube-apiserver",
        """
        import sys
        print("line one of the log")
        print("E1122 flag --etcd-servers: could not reach etcd", flush=True)
        sys.exit(3)
        """,
    )
    plane = ControlPlane(tmp_path / "cluster", bin_dir=stand_ins)
    with pytest.raises(ClusterError) as raised:
        plane.start(timeout=20)

    message = str(raised.value)
    assert message.startswith("kube-apiserver exited with code 3 before it became ready")
    assert "E1122 flag --etcd-servers: could not reach etcd" in message
    assert "kube-apiserver.log" in message
    # etcd had started and become ready: the failure stopped it again.
    etcd_log = (tmp_path / "cluster" / "logs" / "etcd.log").read_text()
    assert "stand-in etcd serving" in etcd_log
    assert plane.processes == []
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_a_component_that_never_gets_ready_times_out_and_is_stopped(
    tmp_path: Path, stand_ins: Path
) -> None:
    _stand_in(
        stand_ins, "kube-apiserver", "import time\nprint('stuck', flush=True)\ntime.sleep(60)\n"
    )
    plane = ControlPlane(tmp_path / "cluster", bin_dir=stand_ins)
    with pytest.raises(ClusterError, match=r"kube-apiserver did not become ready in time"):
        plane.start(timeout=3)
    assert plane.processes == []


def test_stop_pid_terminates_then_kills_and_spares_other_executables() -> None:
    polite = subprocess.Popen(["sleep", "60"])
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    try:
        assert pid_is(polite.pid, "sleep")
        assert not stop_pid(polite.pid, "/not/this/binary")  # PID reused by another program
        assert polite.poll() is None

        assert stop_pid(polite.pid, "sleep", grace_seconds=5) is False
        assert polite.wait(5) == -signal.SIGTERM
        assert stop_pid(stubborn.pid, sys.executable, grace_seconds=0.5) is True
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        for proc in (polite, stubborn):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_local_kueue_waits_for_pods_ready_with_room_for_a_graceful_restart() -> None:
    """waitForPodsReady on, as Kueue v0.19 has it: a start timed well under the tests' jobs,
    a recovery that outlasts the workers' grace period (a failed worker stops the group)."""
    wait = configuration(1, 2, 3, 4)["waitForPodsReady"]
    seconds = {k: int(wait[k].removesuffix("s")) for k in ("timeout", "recoveryTimeout")}
    assert 0 < seconds["timeout"] <= 30
    assert seconds["recoveryTimeout"] > Settings().termination_grace_period_seconds + 30
    assert wait["requeuingStrategy"]["timestamp"] == "Eviction"
    assert "backoffLimitCount" not in wait["requeuingStrategy"]  # never deactivated here
