"""A small fault-injecting HTTP proxy for tests: sits between the job and the S3 endpoint.

It listens on 127.0.0.1, forwards every request to the upstream endpoint (moto's server) and,
for requests matching a :class:`Rule`, injects a fault instead: a ``503 SlowDown`` with S3's XML
error body, an abrupt connection reset (RST), or a delay before forwarding. Rules apply to the
first ``times`` matching requests (after letting ``skip`` of them through), or to all of them.
Counters say how many faults were actually injected, so a test can check its faults happened.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message>"
            b"<RequestId>FAULTPROXY</RequestId></Error>")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length"}


@dataclass
class Rule:
    """One kind of fault for the requests it matches.

    kind : ``"503"``, ``"reset"`` or ``"delay"`` (a delay then forwards the request)
    method : HTTP method to match (None: any)
    path_contains : substring of the request path to match (None: any)
    times : inject into this many matching requests (None: every one)
    skip : let this many matching requests through first
    """

    kind: str
    method: str | None = None
    path_contains: str | None = None
    times: int | None = None
    skip: int = 0
    delay_s: float = 0.0
    matched: int = 0
    injected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fires(self, method: str, path: str) -> bool:
        if self.method and method != self.method:
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        with self._lock:
            self.matched += 1
            if self.matched <= self.skip:
                return False
            if self.times is not None and self.injected >= self.times:
                return False
            self.injected += 1
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # resets are on purpose: stay quiet
        pass


class FaultProxy:
    """``with FaultProxy(upstream, [Rule(...)]) as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, upstream: str, rules: list[Rule] | None = None):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: list[Rule] = list(rules or [])
        self.requests = 0
        self._count = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self) -> None:
                with proxy._count:
                    proxy.requests += 1
                body = self._body()
                for rule in proxy.rules:
                    if not rule.fires(self.command, self.path):
                        continue
                    if rule.kind == "delay":
                        time.sleep(rule.delay_s)
                    elif rule.kind == "reset":
                        self._reset()
                        return
                    elif rule.kind == "503":
                        self.send_response_only(503, "Slow Down")
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOWDOWN)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(SLOWDOWN)
                        return
                    else:
                        raise ValueError(f"unknown fault kind {rule.kind}")
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faultproxy")

    def injected(self, kind: str | None = None) -> int:
        return sum(r.injected for r in self.rules if kind is None or r.kind == kind)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
