"""The endpoint the operator tools talk to, and why a connection to it failed.

Shared by the smoke test and the load benchmark, so neither imports the other. The endpoint is a
stack's outputs or an explicit URL, key and model:

    --stack NAME                        reads `pulumi stack output --json --show-secrets`
    --endpoint URL --api-key KEY --model NAME [--ca-cert PATH] [--host-header HOST]

The API key may come from VLLM_GCP_API_KEY instead of --api-key, which keeps it out of the shell
history and the process list; with --stack it overrides the stack's key, with a warning where
the two differ. `--host-header` sends that Host (and TLS server name) while
connecting to the URL's address, as `curl --resolve` does: for a domain whose DNS is not set yet.
`explain_connection_error` turns a failure to connect into its likely cause.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx
import httpx2

API_KEY_ENV = "VLLM_GCP_API_KEY"
PULUMI_ENV = "VLLM_GCP_PULUMI"  # the pulumi command; tests stand one in
FIREWALL_HINT = (
    "check that your address is in access.apiCidrs (the firewall) and that the host is running"
)
CA_HINT = "certificate not trusted: pass --ca-cert (the stack's caCertificate output)"
# SSL verify code for a certificate that does not name the host (X509_V_ERR_HOSTNAME_MISMATCH).
HOSTNAME_MISMATCH = 62


class EndpointError(Exception):
    """The endpoint cannot be determined; the message says why and what to pass."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # https://<host>/v1
    api_key: str
    model: str
    ca_cert: Path | None = None
    host_header: str | None = None
    # What the operator should know about how the endpoint was resolved, one sentence each.
    warnings: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """scheme://host[:port], the base URL without /v1."""
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, "", "", ""))

    @property
    def server_name(self) -> str:
        """The name the server certificate must carry: the Host header's, else the URL's."""
        return self.host_header or (urlsplit(self.base_url).hostname or "")

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.base_url)
        default_port = 443 if parts.scheme == "https" else 80
        return parts.hostname or "", parts.port or default_port

    def ssl_context(self) -> ssl.SSLContext:
        """Trust the given CA only, else the system's and certifi's roots."""
        if self.ca_cert is not None:
            return ssl.create_default_context(cafile=str(self.ca_cert))
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=certifi.where())
        return context

    def headers(self) -> dict[str, str]:
        return {"Host": self.host_header} if self.host_header else {}

    def request_extensions(self) -> dict[str, Any]:
        """httpx (and httpx2) per-request extensions: the TLS server name for --host-header."""
        return {"sni_hostname": self.host_header} if self.host_header else {}


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("endpoint (either --stack or --endpoint, --api-key, --model)")
    group.add_argument(
        "--stack", help="read endpoint, apiKey, model and caCertificate from a stack"
    )
    group.add_argument("--endpoint", help="the base URL, e.g. https://203.0.113.10/v1")
    group.add_argument("--api-key", help=f"the bearer token (or set {API_KEY_ENV})")
    group.add_argument("--model", help="the served model name")
    group.add_argument("--ca-cert", type=Path, help="PEM file of the CA to trust for this endpoint")
    group.add_argument(
        "--host-header", help="send this Host (and TLS server name) to the URL's address"
    )


def normalise_base_url(url: str) -> str:
    """https://host[:port]/v1 from a base URL, an origin or the connector URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise EndpointError(f"--endpoint {url!r} is not a URL such as https://203.0.113.10/v1")
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        path = path.removesuffix(suffix)
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def stack_outputs(stack: str) -> dict[str, Any]:
    """The stack's outputs, secrets in plain text (read from `pulumi stack output`)."""
    pulumi = os.environ.get(PULUMI_ENV) or shutil.which("pulumi")
    if not pulumi:
        raise EndpointError(
            "--stack needs the pulumi CLI on PATH; or pass --endpoint and --api-key"
        )
    command = [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack]
    # The operator's own pulumi CLI (VLLM_GCP_PULUMI or PATH), with fixed arguments and no shell.
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise EndpointError(
            f"pulumi stack output failed for stack {stack!r}: {result.stderr.strip()}"
        )
    try:
        outputs = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise EndpointError(f"pulumi stack output printed no JSON: {error}") from None
    if not isinstance(outputs, dict):
        raise EndpointError("pulumi stack output printed no JSON object")
    return dict(outputs)


@contextmanager
def resolve_endpoint(args: argparse.Namespace) -> Generator[Endpoint]:
    """The endpoint the arguments name; a stack's CA is in a temporary file while it is in use."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if args.stack:
        if args.endpoint:
            raise EndpointError("give either --stack or --endpoint, not both")
        outputs = stack_outputs(args.stack)
        missing = [key for key in ("endpoint", "apiKey", "model") if not outputs.get(key)]
        if missing:
            raise EndpointError(
                f"stack {args.stack!r} has no output {', '.join(missing)}: has `pulumi up` run?"
            )
        with tempfile.TemporaryDirectory(prefix="vllm-gcp-ca-") as directory:
            ca_cert = args.ca_cert
            if ca_cert is None and outputs.get("caCertificate"):
                ca_cert = Path(directory) / "ca.pem"
                ca_cert.write_text(str(outputs["caCertificate"]))
            stack_key = str(outputs["apiKey"])
            warnings: tuple[str, ...] = ()
            if not args.api_key and api_key and api_key != stack_key:
                warnings = (
                    f"{API_KEY_ENV} is set and differs from the apiKey output of stack "
                    f"{args.stack!r}: using {API_KEY_ENV}; unset it to use the stack's key",
                )
            yield Endpoint(
                base_url=normalise_base_url(str(outputs["endpoint"])),
                api_key=api_key or stack_key,
                model=args.model or str(outputs["model"]),
                ca_cert=ca_cert,
                host_header=args.host_header,
                warnings=warnings,
            )
        return
    missing_args = [
        flag
        for flag, value in (
            ("--endpoint", args.endpoint),
            ("--api-key", api_key),
            ("--model", args.model),
        )
        if not value
    ]
    if missing_args:
        raise EndpointError(f"give --stack NAME, or {', '.join(missing_args)}")
    if args.ca_cert is not None and not args.ca_cert.is_file():
        raise EndpointError(f"--ca-cert {args.ca_cert} is not a file")
    yield Endpoint(
        base_url=normalise_base_url(args.endpoint),
        api_key=str(api_key),
        model=args.model,
        ca_cert=args.ca_cert,
        host_header=args.host_header,
    )


# ------------------------------------------------------------------------------------------------
# Why a connection failed


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# One return per cause, in the order they are told apart.
def explain_connection_error(error: BaseException, endpoint: Endpoint) -> str:  # noqa: PLR0911
    """The likely cause of a failure to connect, from the exception and its causes.

    httpx raises for the benchmark's client, httpx2 (the `openai` client's HTTP library) for the
    smoke test's API calls: both kinds of timeout are recognised.
    """
    host, port = endpoint.address
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            if cause.verify_code == HOSTNAME_MISMATCH:
                return (
                    f"the certificate does not name {endpoint.server_name}: use the stack's "
                    "endpoint, or --host-header with the name it was issued for"
                )
            if endpoint.ca_cert is not None:
                return (
                    f"certificate not trusted by --ca-cert {endpoint.ca_cert}: is it this "
                    f"stack's caCertificate? ({cause.verify_message})"
                )
            return CA_HINT
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}:{port}: is Nginx running on the host?"
        if isinstance(cause, httpx.ReadTimeout | httpx2.ReadTimeout):
            return (
                f"{host}:{port} took the request but its answer stopped for longer than the read "
                "timeout: the model is busy or slow; allow it more time"
            )
        if isinstance(cause, TimeoutError | httpx.TimeoutException | httpx2.TimeoutException):
            return f"no answer from {host}:{port} in time: {FIREWALL_HINT}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {host}: check the endpoint URL (or the domain's DNS record)"
    return f"cannot reach {host}:{port} ({error}): {FIREWALL_HINT}"
