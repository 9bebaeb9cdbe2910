"""The endpoint's TLS certificate and key, by `tls.mode`, for whatever terminates TLS.

- `self-signed`: a CA made by the stack (ten years: Kibana's trust outlives renewals) and a server
  certificate for the endpoint's address (and `tls.domain`), renewed by the calendar
  (components/certificate_renewal.py). The CA's PEM is the `caCertificate` output.
- `provided`: the secret PEMs of the stack configuration, already checked by components/config.
- `letsencrypt`: none here; certbot on the host obtains it (single-VM mode only).

The single VM's Nginx takes them in its site step (components/tls_proxy.py); a fleet's load
balancer and its replicas' Nginx take them too (components/fleet.py, load_balancer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components import certificate_renewal
from components.config import TlsConfig

CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = certificate_renewal.SERVER_VALIDITY_DAYS * 24
# These resources were the TLS proxy's before this component existed: the aliases keep them.
FORMER_PARENT_TYPE = "vllm-gcp:tls_proxy:TlsProxy"


@dataclass(frozen=True)
class PemPair:
    certificate: pulumi.Output[str]
    private_key: pulumi.Output[str]  # secret


@dataclass(frozen=True)
class ServerCertificateArgs:
    tls: TlsConfig
    address: pulumi.Input[str]  # the IP clients reach (the certificate's IP SAN)
    provided_certificate: pulumi.Output[str] | None  # secret PEM, provided mode
    provided_private_key: pulumi.Output[str] | None  # secret PEM, provided mode


class ServerCertificate(pulumi.ComponentResource):
    """The certificate (with its chain) and key the endpoint presents; None in letsencrypt mode."""

    endpoint_host: pulumi.Output[str]  # the domain, else the address
    certificate: pulumi.Output[str] | None
    private_key: pulumi.Output[str] | None  # secret
    ca_certificate: pulumi.Output[str] | None  # the stack's CA, self-signed mode only

    def __init__(
        self, name: str, args: ServerCertificateArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:certificates:ServerCertificate", name, None, opts)
        domain = args.tls.domain
        address = pulumi.Output.from_input(args.address)
        self.endpoint_host = pulumi.Output.from_input(domain) if domain else address
        self.certificate = self.private_key = self.ca_certificate = None
        if args.tls.mode == "self-signed":
            self._self_signed(name, args)
        elif args.tls.mode == "provided":
            if args.provided_certificate is None or args.provided_private_key is None:
                raise ValueError("tls.mode provided needs tlsCertificate and tlsPrivateKey")
            self.certificate = args.provided_certificate
            self.private_key = pulumi.Output.secret(args.provided_private_key)
        self.register_outputs(
            {
                "endpointHost": self.endpoint_host,
                "certificate": self.certificate,
                "caCertificate": self.ca_certificate,
            }
        )

    def pem_pair(self) -> PemPair:
        """The certificate and its key, for what cannot obtain its own (a fleet's load balancer
        and replicas): none in letsencrypt mode, which the configuration refuses for a fleet."""
        if self.certificate is None or self.private_key is None:
            raise ValueError("tls.mode letsencrypt makes no certificate in the stack")
        return PemPair(self.certificate, self.private_key)

    def _self_signed(self, name: str, args: ServerCertificateArgs) -> None:
        """A stack-made CA and a server certificate for the address (and domain)."""
        moved = [pulumi.Alias(parent=pulumi.create_urn(name, FORMER_PARENT_TYPE))]
        child = pulumi.ResourceOptions(parent=self, aliases=moved)
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
            opts=pulumi.ResourceOptions(
                parent=self, aliases=moved, replacement_trigger=period.label
            ),
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
        self.certificate = server_cert.cert_pem
        self.private_key = pulumi.Output.secret(server_key.private_key_pem)
