"""The real Nginx (/usr/sbin/nginx) running the site the host gets, on loopback.

The site is rendered by `components.host_bundle.nginx_site`, the function the component uses;
only the settings differ (paths in a temporary directory, free ports, the upstream's port), never
the text. The certificate is issued for 127.0.0.1 and localhost by a test CA.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from components.host_bundle import SiteSettings, nginx_site
from tools.standins.pki import loopback_pki

__all__ = ["NGINX", "NginxProxy", "free_port", "main_config"]

NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
_START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main_config(
    directory: Path,
    site_path: Path,
    *,
    error_level: str = "info",
    worker_processes: int = 2,
    worker_connections: int = 1024,
) -> str:
    """An nginx.conf around the site, like Debian's: its http-level defaults that could interfere
    (TLS 1.0/1.1 allowed, gzip on) are kept, so the site must override them itself. The main
    error log's level and the workers' sizes are the tests' to choose."""
    return f"""
worker_processes {worker_processes};
pid {directory}/nginx.pid;
error_log {directory}/error.log {error_level};
events {{
    worker_connections {worker_connections};
}}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {directory}/default-access.log;
    gzip on;
    client_body_temp_path {directory}/temp/body;
    proxy_temp_path {directory}/temp/proxy;
    fastcgi_temp_path {directory}/temp/fastcgi;
    uwsgi_temp_path {directory}/temp/uwsgi;
    scgi_temp_path {directory}/temp/scgi;
    include {site_path};
}}
"""


class NginxProxy:
    """Context manager: Nginx with the rendered site in front of 127.0.0.1:<upstream_port>.

    https_url / http_url are the TLS and plain-HTTP listeners; ca_path is the CA that signed the
    server certificate (for `ssl` / httpx `verify=` / the openai client's http_client).
    Extra keyword arguments override other SiteSettings fields (e.g. failed_auth_burst);
    `main` holds main_config's keyword arguments (the main error log's level, worker sizes).
    The site's servers and the main context write to the same error.log, as on the host.
    """

    def __init__(
        self,
        upstream_port: int,
        api_key: str = "test-key",
        api_cidrs: Sequence[str] = ("0.0.0.0/0",),
        server_name: str = "localhost",
        main: dict[str, Any] | None = None,
        **site_overrides: Any,
    ) -> None:
        self.upstream_port = upstream_port
        self.api_key = api_key
        self.server_name = server_name
        self.directory = Path(tempfile.mkdtemp(prefix="vllm-gcp-nginx-"))
        # Nginx's workers (nobody, when the tests run as root) write temp files and read the
        # webroot here.
        self.directory.chmod(0o755)
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.directory / "temp" / name).mkdir(parents=True)
            (self.directory / "temp" / name).chmod(0o777)
        (self.directory / "acme").mkdir()
        self.ca_path, certificate_path, key_path = loopback_pki().write(self.directory)
        self.https_port = free_port()
        self.http_port = free_port()
        self.https_url = f"https://127.0.0.1:{self.https_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        base = SiteSettings(
            api_key=api_key,
            server_name=server_name,
            certificate_path=str(certificate_path),
            certificate_key_path=str(key_path),
            api_cidrs=tuple(api_cidrs),
            https_listen=f"127.0.0.1:{self.https_port}",
            http_listen=f"127.0.0.1:{self.http_port}",
            upstream=f"127.0.0.1:{upstream_port}",
            access_log=str(self.directory / "access.log"),
            error_log=str(self.directory / "error.log"),
            acme_webroot=str(self.directory / "acme"),
        )
        self.settings = dataclasses.replace(base, **site_overrides)
        self.site_text = nginx_site(self.settings)
        self.site_path = self.directory / "vllm-gcp.conf"
        self.site_path.write_text(self.site_text)
        self.config_path = self.directory / "nginx.conf"
        self.config_path.write_text(main_config(self.directory, self.site_path, **(main or {})))
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self, *extra: str) -> list[str]:
        return [
            NGINX,
            "-p",
            str(self.directory),
            "-e",
            str(self.directory / "error.log"),
            "-c",
            str(self.config_path),
            *extra,
        ]

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on this configuration."""
        # The nginx binary with the arguments this class builds, no shell (also in __enter__).
        command = self._command("-t")
        return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603

    def __enter__(self) -> NginxProxy:
        checked = self.check()
        if checked.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        self._process = subprocess.Popen(  # noqa: S603 (nginx, as in check)
            self._command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                message = self.error_log()
                self._cleanup()
                raise RuntimeError(f"nginx exited at start:\n{message}")
            if _accepts(self.https_port) and _accepts(self.http_port):
                return self
            time.sleep(0.02)
        self.__exit__(None, None, None)
        raise RuntimeError("nginx did not start listening in time")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (httpx `verify=`, `ssl.wrap_socket`)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def error_log(self) -> str:
        return _read(self.directory / "error.log")

    def access_log(self) -> str:
        return _read(self.directory / "access.log")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
