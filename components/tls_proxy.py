"""The TLS proxy: Nginx on the host in front of vLLM, with the certificate for the chosen mode.

Certificates by `tls.mode`: `self-signed` (a CA and a server certificate made by the stack with
pulumi-tls; the CA's PEM is an output for Kibana to trust), `letsencrypt` (certbot on the host,
HTTP-01 through Nginx on port 80, renewed by certbot's timer) or `provided` (secret PEMs from the
stack configuration, already checked by config.py). The site, which holds the API token, and any
private key reach the host only on stdin, as one secret bundle the remote step unpacks.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from components import certificate_renewal
from components.config import AccessConfig, TlsConfig
from components.host_paths import TLS_DIR, VLLM_LOOPBACK_PORT
from components.remote_access import host_step
from components.templates import render

SITE_TEMPLATE = "nginx-site.conf"
CONFIGURE_SCRIPT = "configure_proxy.sh"
LETSENCRYPT_SCRIPT = "letsencrypt.sh"

# Where the remote steps put things on the host (Debian/Ubuntu Nginx layout).
SITE_PATH = "/etc/nginx/sites-available/vllm-gcp.conf"
SITE_ENABLED_PATH = "/etc/nginx/sites-enabled/vllm-gcp.conf"
DEFAULT_SITE_ENABLED_PATH = "/etc/nginx/sites-enabled/default"  # also claims port 80
ACME_BOOTSTRAP_SITE_PATH = "/etc/nginx/sites-enabled/vllm-gcp-acme.conf"
ACCESS_LOG = "/var/log/nginx/vllm-gcp-access.log"
ACME_WEBROOT = "/var/www/vllm-gcp-acme"
CERTIFICATE_PATH = f"{TLS_DIR}/server.crt"
CERTIFICATE_KEY_PATH = f"{TLS_DIR}/server.key"
LETSENCRYPT_LIVE_DIR = "/etc/letsencrypt/live"

SITE_TIMEOUT_MINUTES = 10
LETSENCRYPT_TIMEOUT_MINUTES = 20  # DNS check, ACME challenge and issuance

# The proxy's limits (README: "The TLS proxy").
# Past anything Kibana waits: 120 s for the OpenAI connector's non-streamed calls, 180 s for the
# Security AI Assistant's, xpack.actions.responseTimeout (300 s as kibanaSettings sets it).
PROXY_TIMEOUT = "900s"
CLIENT_MAX_BODY_SIZE = "32m"  # >= 16 MB prompts
FAILED_AUTH_RATE = "30r/m"  # sustained wrong-token attempts per client address
FAILED_AUTH_BURST = 10  # wrong-token attempts answered 401 before 429 starts

# Self-signed certificates. The server certificate renews by the calendar
# (components/certificate_renewal.py); the CA that Kibana trusts lives ten years, so renewals
# need no change in Kibana.
CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = certificate_renewal.SERVER_VALIDITY_DAYS * 24

MAX_API_KEY_LENGTH = 200  # what the site's map_hash_bucket_size holds
# RFC 6750 b64token: the only characters the template can take literally inside a quoted string.
_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.-]+$")
_LISTEN = re.compile(r"^([0-9.]+:)?[0-9]{1,5}$")
_SIZE = re.compile(r"^[0-9]+[km]?$")


@dataclass(frozen=True)
class SiteSettings:
    """Everything the Nginx site depends on; the defaults are the host's values.

    The real-Nginx tests render the site from these settings with paths and ports of their own,
    so they check the very text the host gets.
    """

    api_key: str
    server_name: str
    certificate_path: str = CERTIFICATE_PATH
    certificate_key_path: str = CERTIFICATE_KEY_PATH
    api_cidrs: Sequence[str] = ("0.0.0.0/0",)
    https_listen: str = "443"
    http_listen: str = "80"
    upstream: str = f"127.0.0.1:{VLLM_LOOPBACK_PORT}"
    access_log: str = ACCESS_LOG
    acme_webroot: str = ACME_WEBROOT
    proxy_timeout: str = PROXY_TIMEOUT
    client_max_body_size: str = CLIENT_MAX_BODY_SIZE
    failed_auth_rate: str = FAILED_AUTH_RATE
    failed_auth_burst: int = FAILED_AUTH_BURST


def access_rules(api_cidrs: Sequence[str]) -> str:
    """`allow` lines for each range then `deny all`, or nothing where the API is open to all."""
    networks = [ipaddress.ip_network(cidr) for cidr in api_cidrs]
    if any(network.prefixlen == 0 for network in networks):
        return "    # access.apiCidrs includes 0.0.0.0/0: every source may connect."
    lines = [f"    allow {network};" for network in networks]
    return "\n".join([*lines, "    deny all;"])


def render_site(settings: SiteSettings) -> str:
    """The Nginx site for these settings (scripts/nginx-site.conf rendered)."""
    if not _BEARER_TOKEN.match(settings.api_key) or len(settings.api_key) > MAX_API_KEY_LENGTH:
        raise ValueError(
            f"the API key must be a bearer token of at most {MAX_API_KEY_LENGTH} characters "
            "(letters, digits, -._~+/ and =)"
        )
    if not _SERVER_NAME.match(settings.server_name):
        raise ValueError(f"{settings.server_name!r} is not a host name or IPv4 address")
    for listen in (settings.https_listen, settings.http_listen, settings.upstream):
        if not _LISTEN.match(listen):
            raise ValueError(f"{listen!r} is not a port or address:port")
    if not _SIZE.match(settings.client_max_body_size):
        raise ValueError(f"{settings.client_max_body_size!r} is not an Nginx size")
    paths = (
        settings.certificate_path,
        settings.certificate_key_path,
        settings.access_log,
        settings.acme_webroot,
    )
    for path in paths:
        if not path.startswith("/") or re.search(r"[\s;{}'\"$]", path):
            raise ValueError(f"{path!r} is not an absolute path Nginx can take unquoted")
    return render(
        SITE_TEMPLATE,
        {
            "API_KEY": settings.api_key,
            "SERVER_NAME": settings.server_name,
            "CERTIFICATE": settings.certificate_path,
            "CERTIFICATE_KEY": settings.certificate_key_path,
            "ACCESS_RULES": access_rules(settings.api_cidrs),
            "HTTPS_LISTEN": settings.https_listen,
            "HTTP_LISTEN": settings.http_listen,
            "UPSTREAM": settings.upstream,
            "ACCESS_LOG": settings.access_log,
            "ACME_WEBROOT": settings.acme_webroot,
            "PROXY_TIMEOUT": settings.proxy_timeout,
            "CLIENT_MAX_BODY_SIZE": settings.client_max_body_size,
            "FAILED_AUTH_RATE": settings.failed_auth_rate,
            "FAILED_AUTH_BURST": str(settings.failed_auth_burst),
        },
    )


@dataclass(frozen=True)
class ProxyPaths:
    """Where configure_proxy.sh installs the files it receives, and the sites it manages."""

    site: str = SITE_PATH
    site_enabled: str = SITE_ENABLED_PATH
    default_site_enabled: str = DEFAULT_SITE_ENABLED_PATH
    certificate: str = CERTIFICATE_PATH
    certificate_key: str = CERTIFICATE_KEY_PATH
    acme_webroot: str = ACME_WEBROOT


HOST_PROXY_PATHS = ProxyPaths()


def configure_script(paths: ProxyPaths = HOST_PROXY_PATHS) -> str:
    """scripts/configure_proxy.sh rendered for these paths."""
    return render(
        CONFIGURE_SCRIPT,
        {
            "SITE_PATH": _in_double_quotes(paths.site),
            "SITE_ENABLED_PATH": _in_double_quotes(paths.site_enabled),
            "DEFAULT_SITE_ENABLED_PATH": _in_double_quotes(paths.default_site_enabled),
            "CERTIFICATE_PATH": _in_double_quotes(paths.certificate),
            "CERTIFICATE_KEY_PATH": _in_double_quotes(paths.certificate_key),
            "ACME_WEBROOT": _in_double_quotes(paths.acme_webroot),
        },
    )


def letsencrypt_script(domain: str, email: str, address: str) -> str:
    """scripts/letsencrypt.sh rendered for this domain, contact and expected address."""
    return render(
        LETSENCRYPT_SCRIPT,
        {
            "DOMAIN": _in_double_quotes(domain),
            "EMAIL": _in_double_quotes(email),
            "ADDRESS": _in_double_quotes(address),
            "ACME_WEBROOT": _in_double_quotes(ACME_WEBROOT),
            "BOOTSTRAP_SITE_PATH": _in_double_quotes(ACME_BOOTSTRAP_SITE_PATH),
        },
    )


def bundle(files: Mapping[str, str]) -> str:
    """The stdin of configure_proxy.sh: one `<name> <base64 of the content>` line per file."""
    return "".join(
        f"{name} {base64.b64encode(content.encode()).decode()}\n" for name, content in files.items()
    )


def _in_double_quotes(value: str) -> str:
    """The value escaped for a place between double quotes in the shell templates."""
    return re.sub(r'([\\"$`])', r"\\\1", value)


@dataclass(frozen=True)
class TlsProxyArgs:
    tls: TlsConfig
    access: AccessConfig
    connection: remote.ConnectionArgs
    instance_id: pulumi.Input[str]
    host_ready: pulumi.Resource  # the startup script's marker step
    api_key: pulumi.Output[str]  # secret bearer token
    address: pulumi.Output[str]  # the IP clients reach
    provided_certificate: pulumi.Output[str] | None  # secret PEM, provided mode
    provided_private_key: pulumi.Output[str] | None  # secret PEM, provided mode


class TlsProxy(pulumi.ComponentResource):
    """Nginx with TLS and the bearer-token check in front of vLLM on 127.0.0.1:8000."""

    endpoint_host: pulumi.Output[str]
    ca_certificate: pulumi.Output[str] | None
    site: remote.Command

    def __init__(
        self, name: str, args: TlsProxyArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:tls_proxy:TlsProxy", name, None, opts)
        domain = args.tls.domain
        self.endpoint_host = pulumi.Output.from_input(domain) if domain else args.address
        self.ca_certificate = None
        steps_before_site: list[pulumi.Resource] = [args.host_ready]
        files: dict[str, pulumi.Output[str]] = {}
        certificate_path, certificate_key_path = CERTIFICATE_PATH, CERTIFICATE_KEY_PATH

        if args.tls.mode == "self-signed":
            certificate, private_key = self._self_signed(name, args)
            files = {"certificate": certificate, "private_key": private_key}
        elif args.tls.mode == "provided":
            if args.provided_certificate is None or args.provided_private_key is None:
                raise ValueError("tls.mode provided needs tlsCertificate and tlsPrivateKey")
            files = {
                "certificate": args.provided_certificate,
                "private_key": pulumi.Output.secret(args.provided_private_key),
            }
        else:
            if domain is None or args.tls.email is None:
                raise ValueError("tls.mode letsencrypt needs tls.domain and tls.email")
            steps_before_site.append(self._letsencrypt(name, args, domain, args.tls.email))
            certificate_path = f"{LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem"
            certificate_key_path = f"{LETSENCRYPT_LIVE_DIR}/{domain}/privkey.pem"

        api_cidrs = list(args.access.api_cidrs)
        site_text = pulumi.Output.all(args.api_key, self.endpoint_host).apply(
            lambda values: render_site(
                SiteSettings(
                    api_key=values[0],
                    server_name=values[1],
                    certificate_path=certificate_path,
                    certificate_key_path=certificate_key_path,
                    api_cidrs=api_cidrs,
                )
            )
        )
        names = ["site", *files]
        stdin = pulumi.Output.secret(
            pulumi.Output.all(site_text, *files.values()).apply(
                lambda contents: bundle(dict(zip(names, contents, strict=True)))
            )
        )
        self.site = host_step(
            f"{name}-nginx-site",
            connection=args.connection,
            script=configure_script(),
            as_root=True,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=SITE_TIMEOUT_MINUTES,
            stdin=stdin,
            depends_on=steps_before_site,
        )
        self.register_outputs(
            {
                "endpoint_host": self.endpoint_host,
                "ca_certificate": self.ca_certificate,
                "site": self.site.id,
            }
        )

    def _self_signed(
        self, name: str, args: TlsProxyArgs
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """A stack-made CA and a server certificate for the address (and domain); sets the CA."""
        child = pulumi.ResourceOptions(parent=self)
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"vllm-gcp {pulumi.get_stack()} CA", organization="vllm-gcp"
            ),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            opts=child,
        )
        period = certificate_renewal.renewal_period(certificate_renewal.utc_today())
        pulumi.log.info(
            f"The self-signed server certificate renews at the first `pulumi up` on or after "
            f"{period.renews_on} (UTC); run one before {period.renew_before}.",
            self,
        )
        # A new key with each renewal. replacement_trigger acts from the second period a stack
        # sees (the engine ignores a trigger whose old value is null: shouldTriggerReplace in
        # pulumi's step_generator.go); the subject below renews the certificate from the first.
        server_key = tls.PrivateKey(
            f"{name}-server-key",
            algorithm="ECDSA",
            ecdsa_curve="P256",
            opts=pulumi.ResourceOptions(parent=self, replacement_trigger=period.label),
        )
        request = tls.CertRequest(
            f"{name}-server-csr",
            private_key_pem=server_key.private_key_pem,
            # The period in the subject: every subject attribute, and then the request PEM the
            # certificate signs, is replace-on-change in the TLS provider (resource_cert_request.go,
            # resource_locally_signed_cert.go), so a new period makes a new certificate.
            subject=tls.CertRequestSubjectArgs(
                common_name=self.endpoint_host,
                organization="vllm-gcp",
                organizational_unit=period.label,
            ),
            ip_addresses=[args.address],
            dns_names=[args.tls.domain] if args.tls.domain else None,
            opts=child,
        )
        server_cert = tls.LocallySignedCert(
            f"{name}-server-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca.cert_pem,
            validity_period_hours=SERVER_VALIDITY_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
            opts=child,
        )
        self.ca_certificate = ca.cert_pem
        return server_cert.cert_pem, pulumi.Output.secret(server_key.private_key_pem)

    def _letsencrypt(
        self, name: str, args: TlsProxyArgs, domain: str, email: str
    ) -> remote.Command:
        """certbot on the host: checks DNS, obtains the certificate, leaves renewal to its timer."""
        script = args.address.apply(lambda address: letsencrypt_script(domain, email, address))
        return host_step(
            f"{name}-letsencrypt",
            connection=args.connection,
            script=script,
            as_root=True,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=LETSENCRYPT_TIMEOUT_MINUTES,
            depends_on=[args.host_ready],
        )
