"""TlsProxy under Pulumi mocks: what it registers per TLS mode, and where the secrets go."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_command import remote

from components.config import AccessConfig, TlsConfig
from components.templates import SCRIPTS_DIR
from components.tls_proxy import (
    SERVER_VALIDITY_HOURS,
    SiteSettings,
    TlsProxy,
    TlsProxyArgs,
    access_rules,
    configure_script,
    letsencrypt_script,
    render_site,
)
from tests.harness import (
    MOCK_API_KEY,
    MOCK_PUBLIC_IP,
    MOCK_TLS_KEY,
    Plan,
    build_components,
    is_secret_value,
    plain_strings,
    unwrap,
)

ROOT = Path(__file__).resolve().parents[1]
SHELLCHECK = ROOT / "venv" / "bin" / "shellcheck"
PROVIDED_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nprovided\n-----END CERTIFICATE-----\n"
PROVIDED_KEY = "-----BEGIN PRIVATE KEY-----\nprovided-key\n-----END PRIVATE KEY-----\n"
COMMAND = "command:remote:Command"


def site_bundle(built: Plan) -> dict[str, str]:
    """The files the site step sends the host, by name (its stdin, a secret)."""
    stdin = built.named("vllm-nginx-site").inputs["stdin"]
    assert is_secret_value(stdin)
    files = {}
    for line in unwrap(stdin).splitlines():
        name, payload = line.split(" ", 1)
        files[name] = base64.b64decode(payload).decode()
    return files


def build(tls: TlsConfig, access: AccessConfig | None = None, provided: bool = False) -> Plan:
    def declare() -> dict[str, object]:
        connection = remote.ConnectionArgs(host=MOCK_PUBLIC_IP, user="vllm", private_key="k")
        host_ready = remote.Command("vllm-host-ready", connection=connection, create="true")
        proxy = TlsProxy(
            "vllm",
            TlsProxyArgs(
                tls=tls,
                access=access or AccessConfig(ssh_cidrs=["198.51.100.7/32"]),
                connection=connection,
                instance_id=pulumi.Output.from_input("1234567890"),
                host_ready=host_ready,
                api_key=pulumi.Output.secret(MOCK_API_KEY),
                address=pulumi.Output.from_input(MOCK_PUBLIC_IP),
                provided_certificate=pulumi.Output.secret(PROVIDED_CERTIFICATE)
                if provided
                else None,
                provided_private_key=pulumi.Output.secret(PROVIDED_KEY) if provided else None,
            ),
        )
        return {
            "endpoint_host": proxy.endpoint_host,
            "ca_certificate": proxy.ca_certificate,
            "site_id": proxy.site.id,
        }

    return build_components(declare)


def _no_plain_secret(built: Plan, secrets: list[str]) -> None:
    for resource in built.resources:
        for text in plain_strings(resource.inputs):
            for secret in secrets:
                assert secret.strip() not in text, (resource.type, resource.name)


def test_self_signed_makes_a_ca_and_a_server_certificate_for_the_address() -> None:
    built = build(TlsConfig())
    types = [r.type for r in built.resources]
    assert types.count("tls:index/privateKey:PrivateKey") == 2
    (ca,) = built.of_type("tls:index/selfSignedCert:SelfSignedCert")
    assert ca.inputs["isCaCertificate"] is True
    request = built.of_type("tls:index/certRequest:CertRequest")[0].plain
    assert request["ipAddresses"] == [MOCK_PUBLIC_IP]
    assert not request.get("dnsNames")
    server = built.of_type("tls:index/locallySignedCert:LocallySignedCert")[0].inputs
    assert server["validityPeriodHours"] == SERVER_VALIDITY_HOURS <= 366 * 24
    assert 0 < server["earlyRenewalHours"] < server["validityPeriodHours"]
    assert "server_auth" in server["allowedUses"]
    assert built.outputs["ca_certificate"] == ca.outputs["certPem"]
    assert built.outputs["endpoint_host"] == MOCK_PUBLIC_IP


def test_self_signed_with_a_domain_names_it_and_uses_it_as_the_host() -> None:
    built = build(TlsConfig(domain="llm.example.com"))
    request = built.of_type("tls:index/certRequest:CertRequest")[0].plain
    assert request["dnsNames"] == ["llm.example.com"]
    assert request["ipAddresses"] == [MOCK_PUBLIC_IP]
    assert built.outputs["endpoint_host"] == "llm.example.com"
    assert "server_name llm.example.com;" in site_bundle(built)["site"]


def test_key_material_and_token_travel_only_in_the_secret_stdin() -> None:
    built = build(TlsConfig())
    files = site_bundle(built)
    assert set(files) == {"site", "certificate", "private_key"}
    assert files["private_key"] == MOCK_TLS_KEY
    assert f'"Bearer {MOCK_API_KEY}" 1;' in files["site"]
    _no_plain_secret(built, [MOCK_API_KEY, MOCK_TLS_KEY])
    site = built.named("vllm-nginx-site").inputs
    assert site["create"] == site["update"]
    assert site["create"].startswith("sudo -n bash -c ")
    assert site["triggers"] == ["1234567890"]
    assert site["addPreviousOutputInEnv"] is False


def test_no_certbot_and_no_acme_step_outside_letsencrypt() -> None:
    for tls in (TlsConfig(), TlsConfig(mode="provided", domain="llm.example.com")):
        built = build(tls, provided=tls.mode == "provided")
        assert [r.name for r in built.of_type(COMMAND)] == ["vllm-host-ready", "vllm-nginx-site"]
        assert not any("certbot" in s for r in built.resources for s in plain_strings(r.inputs))


def test_provided_mode_installs_the_configured_pems() -> None:
    built = build(TlsConfig(mode="provided", domain="llm.example.com"), provided=True)
    assert not [r for r in built.resources if r.type.startswith("tls:")]
    files = site_bundle(built)
    assert files["certificate"] == PROVIDED_CERTIFICATE
    assert files["private_key"] == PROVIDED_KEY
    assert built.outputs["ca_certificate"] is None
    assert built.outputs["endpoint_host"] == "llm.example.com"
    _no_plain_secret(built, [PROVIDED_KEY, MOCK_API_KEY])


def test_letsencrypt_runs_certbot_before_the_site_and_uses_its_paths() -> None:
    built = build(TlsConfig(mode="letsencrypt", domain="llm.example.com", email="ops@example.com"))
    assert not [r for r in built.resources if r.type.startswith("tls:")]
    acme = built.named("vllm-letsencrypt").inputs
    assert "certbot certonly" in acme["create"]
    for value in ('DOMAIN="llm.example.com"', 'EMAIL="ops@example.com"', MOCK_PUBLIC_IP):
        assert value in acme["create"]
    assert acme["triggers"] == ["1234567890"]
    files = site_bundle(built)
    assert set(files) == {"site"}
    assert "ssl_certificate /etc/letsencrypt/live/llm.example.com/fullchain.pem;" in files["site"]
    assert "ssl_certificate_key /etc/letsencrypt/live/llm.example.com/privkey.pem;" in files["site"]
    assert built.outputs["ca_certificate"] is None


def test_api_cidrs_reach_the_site() -> None:
    access = AccessConfig(api_cidrs=["10.0.0.0/8", "203.0.113.7/32"], ssh_cidrs=["10.1.0.0/16"])
    site = site_bundle(build(TlsConfig(), access))["site"]
    assert "    allow 10.0.0.0/8;\n    allow 203.0.113.7/32;\n    deny all;" in site
    open_site = site_bundle(build(TlsConfig()))["site"]
    assert "deny all;" not in open_site


# --- the pure parts -------------------------------------------------------------------------------


def test_access_rules() -> None:
    assert "allow" not in access_rules(["0.0.0.0/0", "10.0.0.0/8"])
    assert access_rules(["10.0.0.0/8"]).splitlines() == ["    allow 10.0.0.0/8;", "    deny all;"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", 'x" 1; default 1; "'),
        ("api_key", "has space"),
        ("api_key", "a" * 201),
        ("server_name", "a;b"),
        ("https_listen", "443 ssl; include /etc/passwd"),
        ("certificate_path", "relative.pem"),
        ("access_log", "/var/log/$x"),
        ("client_max_body_size", "lots"),
    ],
)
def test_render_site_refuses_values_that_would_change_its_meaning(field: str, value: str) -> None:
    settings: dict[str, Any] = {"api_key": "k", "server_name": "203.0.113.10", field: value}
    with pytest.raises(ValueError, match=r"."):
        render_site(SiteSettings(**settings))


def test_host_site_has_the_promised_limits() -> None:
    site = render_site(SiteSettings(api_key=MOCK_API_KEY, server_name=MOCK_PUBLIC_IP))
    for line in (
        "listen 443 ssl default_server;",
        "listen 80 default_server;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "server 127.0.0.1:8000;",
        "proxy_read_timeout 900s;",
        "proxy_send_timeout 900s;",
        "client_max_body_size 32m;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "server_tokens off;",
        "ssl_certificate /etc/vllm-gcp/tls/server.crt;",
    ):
        assert line in site
    assert "$http_authorization" not in site.split("log_format", 1)[1].split(";", 1)[0]


# --- the shell ------------------------------------------------------------------------------------

SCRIPTS: dict[str, Callable[[], str]] = {
    "configure_proxy.sh": configure_script,
    "letsencrypt.sh": lambda: letsencrypt_script("llm.example.com", "ops@example.com", "1.2.3.4"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_pass_shellcheck_and_bash_n(name: str, tmp_path: Path) -> None:
    rendered = tmp_path / name
    rendered.write_text(SCRIPTS[name]())
    for path in (SCRIPTS_DIR / name, rendered):
        subprocess.run(["bash", "-n", str(path)], check=True)
        checked = subprocess.run(
            [str(SHELLCHECK), "-S", "warning", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout
