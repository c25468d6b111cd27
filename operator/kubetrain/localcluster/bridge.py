"""The only paths between the host and the real node's network namespace.

The real node (kubelet, containerd, kube-proxy, CoreDNS and every Pod) lives in a network
namespace of its own, so its addresses, routes and firewall rules never touch the host's.
Two small forwarders join it to the control plane on the host's loopback:

- ``egress``: the API server's egress proxy (HTTP CONNECT on a Unix socket, named in its
  ``--egress-selector-config-file`` for the ``cluster`` traffic: kubelets, logs, exec,
  port-forward, Service and Pod proxies, webhooks). It dials loopback on the host, and an
  address of a real node only from inside that node's namespace; every other destination
  is refused, so the API server can never send a packet off this machine.
- ``listen``: a listener inside a namespace that forwards to an address on the host's
  loopback (the API server, for the kubelet, kube-proxy, CoreDNS and in-cluster clients).

Run as ``python -m kubetrain.localcluster.bridge egress|listen ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
_CHUNK = 1 << 16


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace at ``path``.

    Sockets made inside keep that namespace after the thread returns to its own.
    """
    with open("/proc/thread-self/ns/net") as home, open(path) as target:
        if _LIBC.setns(target.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _LIBC.setns(home.fileno(), _CLONE_NEWNET) != 0:
                os._exit(70)  # a thread stuck in the wrong namespace must not go on


def _socket_in(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with in_netns(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()


async def _dial(
    netns: str | None, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, _socket_in, netns)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout=10)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


# -- egress ------------------------------------------------------------------------------


class Routes:
    """Which namespace a destination is dialled from: loopback on the host, the ranges a
    real node recorded in ``path`` (JSON list of {"netns", "cidrs"}) inside its namespace."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def netns_for(self, address: str) -> str | None:
        ip = ipaddress.ip_address(address)
        try:
            routes = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            routes = []
        for route in routes:
            if any(ip in ipaddress.ip_network(cidr) for cidr in route["cidrs"]):
                return str(route["netns"])
        if ip.is_loopback:
            return None
        raise PermissionError(f"{address} is neither loopback nor inside a local node's namespace")


async def _egress_client(
    routes: Routes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method != "CONNECT":
            raise ValueError(f"{method} is not CONNECT")
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        netns = routes.netns_for(host)
        upstream = await _dial(netns, host, int(port))
    except PermissionError as err:
        writer.write(f"HTTP/1.1 403 Forbidden\r\n\r\n{err}\n".encode())
        writer.close()
        return
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as err:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{err}\n".encode())
            writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await _splice((reader, writer), upstream)


async def serve_egress(socket_path: Path, routes_path: Path) -> None:
    routes = Routes(routes_path)
    socket_path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(
        lambda r, w: _egress_client(routes, r, w), path=str(socket_path)
    )
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()


# -- listen ------------------------------------------------------------------------------


def _parse(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def serve_listen(netns: str, listen: str, target: str) -> None:
    """Accept in ``netns`` on ``listen`` and forward to ``target`` on the host."""
    sock = _socket_in(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(_parse(listen))
    sock.listen(128)
    host, port = _parse(target)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await _dial(None, host, port)
        except (TimeoutError, OSError):
            writer.close()
            return
        await _splice((reader, writer), upstream)

    server = await asyncio.start_server(client, sock=sock)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    egress = sub.add_parser("egress", help="the API server's egress proxy")
    egress.add_argument("--socket", type=Path, required=True)
    egress.add_argument("--routes", type=Path, required=True)
    listen = sub.add_parser("listen", help="listen in a namespace, forward to the host")
    listen.add_argument("--netns", required=True, help="path of the network namespace")
    listen.add_argument("--listen", action="append", required=True, help="HOST:PORT inside")
    listen.add_argument("--to", action="append", required=True, help="HOST:PORT on the host")
    args = parser.parse_args(argv)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def finish() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, finish)
        if args.mode == "egress":
            tasks = [asyncio.ensure_future(serve_egress(args.socket, args.routes))]
        else:
            if len(args.listen) != len(args.to):
                raise SystemExit("give one --to for each --listen")
            tasks = [
                asyncio.ensure_future(serve_listen(args.netns, a, b))
                for a, b in zip(args.listen, args.to, strict=True)
            ]
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task in done:
                task.result()  # a server that failed to start: raise its error
            task.cancel()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
