"""What the Kibana and Elasticsearch stand-ins share: a threaded HTTP server on 127.0.0.1 that
can stop and start again on its port, API keys (`Authorization: ApiKey <key>`) that can be
revoked, and the requests it received, in order."""

from __future__ import annotations

import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ElasticStandIn:
    """The base of StandInKibana and StandInElasticsearch: `with Sub(keys={...}) as s:`."""

    PRODUCT: ClassVar[str]

    keys: Mapping[str, str]  # API key -> privilege; copied, see `revoke`
    tls: tuple[str, str] | None = None  # (certificate PEM, key PEM) to serve HTTPS
    stall_seconds: float = 0.0  # hold every answer this long (a hung product)
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _port: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.keys = dict(self.keys)  # revoking one must not touch the caller's mapping

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError(f"the stand-in {self.PRODUCT} is not started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        self.stop()

    def handler_type(self) -> type[BaseHTTPRequestHandler]:
        """The product's request handler; `start` gives a subclass of it this stand-in as its
        `stand_in`."""
        raise NotImplementedError

    def stall(self) -> None:
        """Wait stall_seconds, or until the stand-in stops."""
        if self.stall_seconds:
            self._stopping.wait(self.stall_seconds)

    def start(self) -> Self:
        """Listen (again) on 127.0.0.1, on the port of the last start if there was one."""
        if self._server is not None:
            raise RuntimeError(f"the stand-in {self.PRODUCT} is already running")
        handler = type("Handler", (self.handler_type(),), {"stand_in": self})
        server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        server.daemon_threads = True
        server.block_on_close = False
        if self.tls is not None:
            server.socket = tls_context(*self.tls).wrap_socket(server.socket, server_side=True)
        self._server = server
        self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until `start()`; what it holds is kept."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def revoke(self, key: str) -> None:
        """Invalidate an API key, as `DELETE /_security/api_key` does: 401 from now on."""
        if not isinstance(self.keys, dict):
            raise TypeError("keys were not copied into a dict")
        del self.keys[key]

    def keys_used(self) -> list[str]:
        """The API key each recorded request carried, in order ("" without ApiKey)."""
        used: list[str] = []
        for request in self.requests:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            used.append(key if scheme == "ApiKey" else "")
        return used


def tls_context(certificate_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server context for the certificate and key PEMs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        certificate = Path(directory) / "server.crt"
        key = Path(directory) / "server.key"
        certificate.write_text(certificate_pem)
        key.write_text(key_pem)
        context.load_cert_chain(certificate, key)
    return context
