"""The TLS proxy: Nginx on the host in front of vLLM, with the certificate for the chosen mode.

Certificates by `tls.mode`: `self-signed` (a CA and a server certificate made by the stack with
pulumi-tls; the CA's PEM is an output for Kibana to trust), `letsencrypt` (certbot on the host,
HTTP-01 through Nginx on port 80, renewed by certbot's timer) or `provided` (secret PEMs from the
stack configuration, already checked by components/config). The site (components/host_bundle.py),
which holds the API token, and any private key reach the host only on stdin, as one secret
bundle the remote step unpacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from components import certificate_renewal
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

# Self-signed certificates. The server certificate renews by the calendar
# (components/certificate_renewal.py); the CA that Kibana trusts lives ten years, so renewals
# need no change in Kibana.
CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = certificate_renewal.SERVER_VALIDITY_DAYS * 24


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
