"""The TLS proxy of the single VM: Nginx on the host in front of vLLM, installed over SSH.

The certificate comes from components/certificates.py (self-signed, provided), or in letsencrypt
mode from certbot on the host (HTTP-01 through Nginx on port 80, renewed by certbot's timer). The
site (components/host_bundle.py), which holds the API token, and any private key reach the host
only on stdin, as one secret bundle the remote step unpacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.certificates import ServerCertificate
from components.config import AccessConfig, TlsConfig
from components.host_bundle import (
    CERTIFICATE_KEY_PATH,
    CERTIFICATE_PATH,
    LETSENCRYPT_LIVE_DIR,
    SiteSettings,
    file_bundle,
    letsencrypt_script,
    nginx_site,
    proxy_script,
)
from components.remote_access import host_step

SITE_TIMEOUT_MINUTES = 10
LETSENCRYPT_TIMEOUT_MINUTES = 20  # DNS check, ACME challenge and issuance


@dataclass(frozen=True)
class TlsProxyArgs:
    tls: TlsConfig
    access: AccessConfig
    connection: remote.ConnectionArgs
    instance_id: pulumi.Input[str]
    host_ready: pulumi.Resource  # the startup script's marker step
    api_key: pulumi.Output[str]  # secret bearer token
    address: pulumi.Output[str]  # the IP clients reach
    certificate: ServerCertificate  # its certificate and key; none in letsencrypt mode


class TlsProxy(pulumi.ComponentResource):
    """Nginx with TLS and the bearer-token check in front of vLLM on 127.0.0.1:8000."""

    endpoint_host: pulumi.Output[str]
    site: remote.Command

    def __init__(
        self, name: str, args: TlsProxyArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:tls_proxy:TlsProxy", name, None, opts)
        domain = args.tls.domain
        self.endpoint_host = args.certificate.endpoint_host
        steps_before_site: list[pulumi.Resource] = [args.host_ready]
        files: dict[str, pulumi.Output[str]] = {}
        certificate_path, certificate_key_path = CERTIFICATE_PATH, CERTIFICATE_KEY_PATH

        certificate, private_key = args.certificate.certificate, args.certificate.private_key
        if certificate is not None and private_key is not None:
            files = {"certificate": certificate, "private_key": private_key}
        else:
            if domain is None or args.tls.email is None:
                raise ValueError("tls.mode letsencrypt needs tls.domain and tls.email")
            steps_before_site.append(self._letsencrypt(name, args, domain, args.tls.email))
            certificate_path = f"{LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem"
            certificate_key_path = f"{LETSENCRYPT_LIVE_DIR}/{domain}/privkey.pem"

        api_cidrs = list(args.access.api_cidrs)
        site_text = pulumi.Output.all(args.api_key, self.endpoint_host).apply(
            lambda values: nginx_site(
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
                lambda contents: file_bundle(dict(zip(names, contents, strict=True)))
            )
        )
        self.site = host_step(
            f"{name}-nginx-site",
            connection=args.connection,
            script=proxy_script(),
            as_root=True,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=SITE_TIMEOUT_MINUTES,
            stdin=stdin,
            depends_on=steps_before_site,
        )
        self.register_outputs({"endpoint_host": self.endpoint_host, "site": self.site.id})

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
