"""TlsProxy under Pulumi mocks: what it registers per TLS mode, and where the secrets go."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_command import remote

from components.certificates import (
    SERVER_VALIDITY_HOURS,
    ServerCertificate,
    ServerCertificateArgs,
)
from components.config import AccessConfig, TlsConfig
from components.host_bundle import (
    SiteSettings,
    access_rules,
    letsencrypt_script,
    nginx_site,
    proxy_script,
)
from components.render import render
from components.tls_proxy import TlsProxy, TlsProxyArgs
from tests.harness import (
    MOCK_API_KEY,
    MOCK_PUBLIC_IP,
    MOCK_TLS_KEY,
    Plan,
    assert_shell_clean,
    build_components,
    is_secret_value,
    plain_strings,
    unwrap,
)

ROOT = Path(__file__).resolve().parents[1]
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
        address = pulumi.Output.from_input(MOCK_PUBLIC_IP)
        certificate = ServerCertificate(
            "vllm",
            ServerCertificateArgs(
                tls=tls,
                address=address,
                provided_certificate=pulumi.Output.secret(PROVIDED_CERTIFICATE)
                if provided
                else None,
                provided_private_key=pulumi.Output.secret(PROVIDED_KEY) if provided else None,
            ),
        )
        proxy = TlsProxy(
            "vllm",
            TlsProxyArgs(
                tls=tls,
                access=access or AccessConfig(ssh_cidrs=["198.51.100.7/32"]),
                connection=connection,
                instance_id=pulumi.Output.from_input("1234567890"),
                host_ready=host_ready,
                api_key=pulumi.Output.secret(MOCK_API_KEY),
                address=address,
                certificate=certificate,
            ),
        )
        return {
            "endpoint_host": proxy.endpoint_host,
            "ca_certificate": certificate.ca_certificate,
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
    # Renewal by the calendar (tests/test_certificate_renewal.py), not by the TLS provider.
    assert "earlyRenewalHours" not in server
    assert "server_auth" in server["allowedUses"]
    assert built.outputs["ca_certificate"] == ca.outputs["certPem"]
    assert built.outputs["endpoint_host"] == MOCK_PUBLIC_IP


def test_self_signed_with_a_domain_names_it_and_uses_it_as_the_host() -> None:
    built = build(TlsConfig(domain="llm.example.com"))
    request = built.of_type("tls:index/certRequest:CertRequest")[0].plain
    assert request["dnsNames"] == ["llm.example.com"]
    assert request["ipAddresses"] == [MOCK_PUBLIC_IP]
    assert built.outputs["endpoint_host"] == "llm.example.com"
    assert 'server_name "llm.example.com";' in site_bundle(built)["site"]


def test_key_material_and_token_travel_only_in_the_secret_stdin() -> None:
    built = build(TlsConfig())
    files = site_bundle(built)
    assert set(files) == {"site", "certificate", "private_key"}
    assert files["private_key"] == MOCK_TLS_KEY
    assert f'"~^\\QBearer {MOCK_API_KEY}\\E\\z" 1;' in files["site"]
    _no_plain_secret(built, [MOCK_API_KEY, MOCK_TLS_KEY])
    site = built.named("vllm-nginx-site").inputs
    assert site["create"] == site["update"]
    # As root, under the step's time limit (remote_access.step_command; tests/test_host_limits.py).
    assert "exec sudo -n timeout --kill-after=20 540 " in site["create"]
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
    for value in ("DOMAIN='llm.example.com'", "EMAIL='ops@example.com'", MOCK_PUBLIC_IP):
        assert value in acme["create"]
    assert acme["triggers"] == ["1234567890"]
    files = site_bundle(built)
    assert set(files) == {"site"}
    assert 'ssl_certificate "/etc/letsencrypt/live/llm.example.com/fullchain.pem";' in files["site"]
    assert (
        'ssl_certificate_key "/etc/letsencrypt/live/llm.example.com/privkey.pem";' in files["site"]
    )
    assert built.outputs["ca_certificate"] is None


def test_api_cidrs_reach_the_site() -> None:
    access = AccessConfig(api_cidrs=["10.0.0.0/8", "203.0.113.7/32"], ssh_cidrs=["10.1.0.0/16"])
    site = site_bundle(build(TlsConfig(), access))["site"]
    assert '    allow "10.0.0.0/8";\n    allow "203.0.113.7/32";\n    deny "all";' in site
    open_site = site_bundle(build(TlsConfig()))["site"]
    assert "deny" not in open_site


# --- the pure parts -------------------------------------------------------------------------------


def test_access_rules() -> None:
    assert "allow" not in access_rules(["0.0.0.0/0", "10.0.0.0/8"])
    assert access_rules(["10.0.0.0/8"]).splitlines() == [
        '    allow "10.0.0.0/8";',
        '    deny "all";',
    ]


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
        ("client_header_timeout", "10s; include /etc/passwd"),
        ("client_body_timeout", "0s"),
        ("error_log", "relative.log"),
        ("connections_per_address", 0),
    ],
)
def test_render_site_refuses_values_that_would_change_its_meaning(field: str, value: str) -> None:
    settings: dict[str, Any] = {"api_key": "k", "server_name": "203.0.113.10", field: value}
    with pytest.raises(ValueError, match=r"."):
        nginx_site(SiteSettings(**settings))


def test_host_site_has_the_promised_limits() -> None:
    site = nginx_site(SiteSettings(api_key=MOCK_API_KEY, server_name=MOCK_PUBLIC_IP))
    for line in (
        'listen "443" ssl default_server;',
        'listen "80" default_server;',
        "ssl_protocols TLSv1.2 TLSv1.3;",
        'server "127.0.0.1:8000";',
        'proxy_read_timeout "900s";',
        'proxy_send_timeout "900s";',
        'client_max_body_size "32m";',
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "server_tokens off;",
        'ssl_certificate "/etc/vllm-gcp/tls/server.crt";',
    ):
        assert line in site
    assert "$http_authorization" not in site.split("log_format", 1)[1].split(";", 1)[0]


# --- the shell ------------------------------------------------------------------------------------

SCRIPTS: dict[str, Callable[[], str]] = {
    "configure_proxy.sh": proxy_script,
    "letsencrypt.sh": lambda: letsencrypt_script("llm.example.com", "ops@example.com", "1.2.3.4"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_rendered_scripts_pass_shellcheck_and_bash_n(name: str) -> None:
    assert_shell_clean(SCRIPTS[name]())


# --- letsencrypt.sh against recording stand-ins ---------------------------------------------------

STANDIN = ROOT / "tests" / "fakebin" / "standin.sh"
LETSENCRYPT_COMMANDS = ("apt-get", "getent", "nginx", "systemctl", "sleep")
DOMAIN = "llm.example.com"


@dataclass
class AcmeRun:
    returncode: int
    stderr: str
    calls: list[str]


class AcmeHost:
    """A fake host for letsencrypt.sh: stand-ins first on PATH, its paths under a temporary root."""

    def __init__(self, base: Path, certbot_installed: bool = False) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.bin = base / "bin"
        for directory in (self.root, self.state, self.bin):
            directory.mkdir(parents=True)
        commands = (*LETSENCRYPT_COMMANDS, *(("certbot",) if certbot_installed else ()))
        for command in commands:
            (self.bin / command).symlink_to(STANDIN)
        self.path = f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin"
        if shutil.which("certbot", path="/usr/bin:/bin"):
            pytest.skip("a real certbot on this machine would hide the stand-in's")
        self.bootstrap_site = self.root / "etc/nginx/sites-enabled/vllm-gcp-acme.conf"
        self.bootstrap_site.parent.mkdir(parents=True)
        script = render(
            "letsencrypt.sh",
            {
                "DOMAIN": DOMAIN,
                "EMAIL": "ops@example.com",
                "ADDRESS": "1.2.3.4",
                "ACME_WEBROOT": str(self.root / "var/www/vllm-gcp-acme"),
                "BOOTSTRAP_SITE_PATH": str(self.bootstrap_site),
            },
        )
        self.script = base / "letsencrypt.sh"
        self.script.write_text(script)

    def run(self, **knobs: str) -> AcmeRun:
        log = self.state / "calls.log"
        log.unlink(missing_ok=True)
        env = {
            "PATH": self.path,
            "VLLM_GCP_ROOT": str(self.root),
            "FAKE_STATE": str(self.state),
            **knobs,
        }
        result = subprocess.run(
            ["bash", str(self.script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        calls = log.read_text().splitlines() if log.exists() else []
        return AcmeRun(result.returncode, result.stderr, calls)


def test_letsencrypt_installs_certbot_and_pins_the_lineage_to_the_domain(tmp_path: Path) -> None:
    host = AcmeHost(tmp_path)
    run = host.run()
    assert run.returncode == 0, run.stderr
    assert run.calls.count("apt-get -o DPkg::Lock::Timeout=600 update -q") == 1
    assert "apt-get -o DPkg::Lock::Timeout=600 install -y -q certbot" in run.calls
    (certonly,) = [call for call in run.calls if call.startswith("certbot certonly")]
    assert f" --cert-name {DOMAIN} " in certonly
    assert (host.root / f"etc/letsencrypt/live/{DOMAIN}/fullchain.pem").exists()
    assert not host.bootstrap_site.exists()
    assert "systemctl enable --now certbot.timer" in run.calls


def test_letsencrypt_skips_the_install_when_certbot_is_present(tmp_path: Path) -> None:
    run = AcmeHost(tmp_path, certbot_installed=True).run()
    assert run.returncode == 0, run.stderr
    assert not any(call.startswith("apt-get") for call in run.calls)
    assert "certbot present" in run.stderr


def test_letsencrypt_waits_out_apt_locks_held_by_apt_daily(tmp_path: Path) -> None:
    run = AcmeHost(tmp_path).run(FAKE_FAIL="apt-get*update*", FAKE_FAIL_TIMES="3")
    assert run.returncode == 0, run.stderr
    assert run.calls.count("apt-get -o DPkg::Lock::Timeout=600 update -q") == 4
    assert run.calls.count("sleep 30") == 3
    for attempt in range(1, 5):
        assert f"installing certbot (attempt {attempt}/20)" in run.stderr
    assert any(call.startswith("certbot certonly") for call in run.calls)


def test_letsencrypt_gives_up_after_about_ten_minutes_of_apt_failures(tmp_path: Path) -> None:
    run = AcmeHost(tmp_path).run(FAKE_FAIL="apt-get*install*")
    assert run.returncode != 0
    assert run.calls.count("apt-get -o DPkg::Lock::Timeout=600 install -y -q certbot") == 20
    assert run.calls.count("sleep 30") == 19
    assert "could not install certbot with apt after 20 attempts" in run.stderr
    assert not any(call.startswith("certbot") for call in run.calls)


def test_letsencrypt_cuts_off_a_hanging_certbot_and_names_it(tmp_path: Path) -> None:
    host = AcmeHost(tmp_path, certbot_installed=True)
    run = host.run(FAKE_HANG="certbot certonly*", VLLM_GCP_OPERATION_LIMIT_SECONDS="1")
    assert run.returncode == 124
    assert (
        "[letsencrypt] timed out after 1 s: obtaining a certificate for llm.example.com "
        "from Let's Encrypt (HTTP-01)"
    ) in run.stderr
    assert not host.bootstrap_site.exists()  # port 80 is given back to the site even then
