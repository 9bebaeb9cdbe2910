"""Fleet mode under the engine's mocks: what `vllm-gcp:fleet` plans, what it never plans (SSH
steps, a VM, a secret in the template), and the grants, the rollout and the load balancer's
settings it relies on."""

from __future__ import annotations

import base64
import difflib
from typing import Any

import pytest

from components.fleet import AUTOHEALING_INITIAL_DELAY_SECONDS
from components.host_bundle import (
    DRAIN_LIMIT_SECONDS,
    DRAIN_SETTLE_SECONDS,
    FLEET_ATTRIBUTES,
    VLLM_METRICS_URL,
)
from components.host_paths import HEALTH_PATH
from components.load_balancer import BACKEND_TIMEOUT_SECONDS
from components.network import HEALTH_CHECK_RANGES
from tests.harness import (
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_PRIVATE_IP,
    MOCK_PUBLIC_IP,
    MOCK_TLS_KEY,
    Plan,
    is_secret_value,
    plain_strings,
    run_program,
    stack_config,
    unwrap,
)
from tools.plan import StackInput, host_files, secret_names

TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
SECRET = "gcp:secretmanager/secret:Secret"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
SECRET_READER = "gcp:secretmanager/secretIamMember:SecretIamMember"
FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"
BACKEND = "gcp:compute/regionBackendService:RegionBackendService"
HEALTH_CHECK = "gcp:compute/regionHealthCheck:RegionHealthCheck"
ADDRESS = "gcp:compute/address:Address"
SUBNETWORK = "gcp:compute/subnetwork:Subnetwork"
FIREWALL = "gcp:compute/firewall:Firewall"
LOCAL_COMMAND = "command:local:Command"
PROXY_SUBNET = "10.43.0.0/23"
ZONES = ["us-central1-a", "us-central1-c"]
FLEET = {"vllm-gcp:fleet": {"replicas": 2, "zones": ZONES}}
PRIVATE = {
    "vllm-gcp:network": {"exposure": "private"},
    "vllm-gcp:access": {"apiCidrs": ["10.0.0.0/8"], "sshCidrs": ["10.20.0.5/32"]},
    "vllm-gcp:mirror": {"dockerRemote": True, "aptRemote": True},
    "vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights-bucket/mistral"},
    "vllm-gcp:host": {"image": "projects/offline-plan/global/images/vllm-host-2404-nvidia-580"},
}
HF_SECRET = {"huggingFaceToken": MOCK_HF_TOKEN}


def fleet_plan(*overrides: dict[str, Any]) -> Plan:
    return run_program(stack_config("prod", FLEET, *overrides), stack="prod", secrets=HF_SECRET)


@pytest.fixture(scope="module")
def public() -> Plan:
    return fleet_plan()


@pytest.fixture(scope="module")
def private() -> Plan:
    return fleet_plan(PRIVATE)


def bundle(text: str) -> dict[str, str]:
    """components/host_bundle.py file_bundle, read back."""
    files = {}
    for line in text.splitlines():
        name, encoded = line.split(" ")
        files[name] = base64.b64decode(encoded).decode()
    return files


def test_a_fleet_plans_a_group_and_a_load_balancer_and_no_vm_or_ssh_step(public: Plan) -> None:
    types = {r.type for r in public.resources}
    assert {TEMPLATE, GROUP, BACKEND, FORWARDING_RULE} <= types
    assert "gcp:compute/instance:Instance" not in types
    assert "command:remote:Command" not in types
    assert [r.name for r in public.of_type(LOCAL_COMMAND)] == ["vllm-rollout"]
    assert sorted(r.name for r in public.of_type(HEALTH_CHECK)) == [
        "vllm-autohealing",
        "vllm-external-health",
    ]


def test_the_template_holds_the_bundle_and_no_secret(public: Plan) -> None:
    template = public.one(TEMPLATE)
    metadata = unwrap(template.inputs["metadata"])
    assert set(metadata) == {
        "startup-script",
        *FLEET_ATTRIBUTES,
        "ssh-keys",
        "enable-oslogin",
        "block-project-ssh-keys",
    }
    assert not any(is_secret_value(value) for value in template.inputs["metadata"].values())
    text = "\n".join(plain_strings(template.inputs))
    for secret in (MOCK_API_KEY, MOCK_HF_TOKEN, MOCK_TLS_KEY, "PRIVATE KEY"):
        assert secret not in text
    assert "--tunnel" not in text
    # The boot script names the two secret versions it reads, and nothing else of them.
    boot = metadata["startup-script"]
    assert "projects/test-project/secrets/vllm-prod-env/versions/1" in boot
    assert "projects/test-project/secrets/vllm-prod-proxy/versions/1" in boot


def test_the_secrets_live_in_secret_manager_as_secret_versions(public: Plan) -> None:
    versions = {v.name: v.inputs["secretData"] for v in public.of_type(SECRET_VERSION)}
    assert set(versions) == {"vllm-env-secret-version", "vllm-proxy-secret-version"}
    assert all(is_secret_value(data) for data in versions.values())
    env = unwrap(versions["vllm-env-secret-version"])
    assert f"VLLM_API_KEY={MOCK_API_KEY}" in env.splitlines()
    assert f"HF_TOKEN={MOCK_HF_TOKEN}" in env.splitlines()
    proxy = bundle(unwrap(versions["vllm-proxy-secret-version"]))
    assert set(proxy) == {"site", "certificate", "private_key"}
    # The replicas' own long-lived certificate: not the stack's, which renews.
    assert proxy["private_key"] == MOCK_TLS_KEY
    assert proxy["certificate"] == unwrap(public.named("vllm-backend-cert").outputs["certPem"])
    assert f"Bearer {MOCK_API_KEY}" in proxy["site"].replace("\\", "")


def test_the_replicas_account_may_read_exactly_its_two_secrets(public: Plan) -> None:
    readers = public.of_type(SECRET_READER)
    secrets = {s.inputs["secretId"] for s in public.of_type(SECRET)}
    assert secrets == {"vllm-prod-env", "vllm-prod-proxy"}
    assert {(r.plain["secretId"], r.plain["role"], r.plain["member"]) for r in readers} == {
        (
            f"projects/test-project/secrets/{secret}",
            "roles/secretmanager.secretAccessor",
            "serviceAccount:vllm-prod-host@test-project.iam.gserviceaccount.com",
        )
        for secret in secrets
    }
    # No project-wide Secret Manager role.
    project_roles = {r.plain["role"] for r in public.of_type("gcp:projects/iAMMember:IAMMember")}
    assert not any("secretmanager" in role for role in project_roles)
    apis = {s.plain["service"] for s in public.of_type("gcp:projects/service:Service")}
    assert "secretmanager.googleapis.com" in apis


def test_the_group_rolls_new_replicas_in_before_old_ones_go(public: Plan) -> None:
    group = public.one(GROUP)
    inputs = group.plain
    assert inputs["distributionPolicyZones"] == ZONES
    assert inputs["distributionPolicyTargetShape"] == "BALANCED"
    assert inputs["targetSize"] == 2
    policy = inputs["updatePolicy"]
    # A regional group's fixed surge and unavailability are each 0 or at least its zone count.
    assert policy["maxSurgeFixed"] == len(ZONES)
    assert policy["maxUnavailableFixed"] == 0
    assert policy["instanceRedistributionType"] == "NONE"
    assert policy["replacementMethod"] == "SUBSTITUTE"
    assert policy["minimalAction"] == "REPLACE"
    assert inputs["autoHealingPolicies"]["initialDelaySec"] == AUTOHEALING_INITIAL_DELAY_SECONDS
    assert inputs["versions"] == [
        {"name": "current", "instanceTemplate": public.one(TEMPLATE).outputs["selfLink"]}
    ]
    # Nothing else changes the group's size: no field is left to drift.
    assert tuple(group.options.ignore_changes) == ()


def test_the_rollout_waits_on_each_new_template_and_the_backend_on_the_rollout(
    public: Plan,
) -> None:
    rollout = public.one(LOCAL_COMMAND)
    template = public.one(TEMPLATE)
    assert unwrap(rollout.inputs["triggers"]) == [template.outputs["selfLink"], 2]
    script = unwrap(rollout.inputs["create"])
    assert "wait-until --version-target-reached" in script
    assert "wait-until --stable" in script
    backend = public.one(BACKEND)
    assert any(urn.endswith("::vllm-rollout") for urn in backend.options.dependencies)


def test_what_cannot_exist_twice_goes_before_its_replacement(public: Plan) -> None:
    rule = public.one(FORWARDING_RULE)
    proxy_only = public.named("vllm-proxy-only-subnet")
    assert rule.options.delete_before_replace
    assert proxy_only.options.delete_before_replace


def test_a_renewal_of_the_stacks_certificate_reaches_the_load_balancer_only(public: Plan) -> None:
    # The load balancer presents the stack's certificate; the replicas serve their own.
    ssl = public.one("gcp:compute/regionSslCertificate:RegionSslCertificate")
    stack_certificate = public.named("vllm-server-cert").outputs["certPem"]
    assert unwrap(ssl.inputs["certificate"]) == unwrap(stack_certificate)
    version = unwrap(public.named("vllm-proxy-secret-version").inputs["secretData"])
    assert unwrap(stack_certificate) not in bundle(version)["certificate"]
    backend = public.named("vllm-backend-cert").plain
    assert backend["validityPeriodHours"] >= 10 * 365 * 24


def test_the_load_balancer_waits_900_seconds_and_balances_by_requests(public: Plan) -> None:
    backend = public.one(BACKEND).plain
    assert backend["timeoutSec"] == BACKEND_TIMEOUT_SECONDS
    assert backend["protocol"] == "HTTPS"
    assert backend["localityLbPolicy"] == "LEAST_REQUEST"
    assert backend["loadBalancingScheme"] == "EXTERNAL_MANAGED"
    rule = public.one(FORWARDING_RULE).plain
    assert rule["loadBalancingScheme"] == "EXTERNAL_MANAGED"
    assert rule["networkTier"] == "STANDARD"
    assert rule["portRange"] == "443"


def test_public_replicas_are_reached_from_the_proxies_and_health_checkers_only(
    public: Plan,
) -> None:
    rules = {r.name: r.plain for r in public.of_type(FIREWALL)}
    assert set(rules) == {"vllm-allow-lb-https", "vllm-allow-ssh"}
    assert set(rules["vllm-allow-lb-https"]["sourceRanges"]) == {PROXY_SUBNET, *HEALTH_CHECK_RANGES}
    assert rules["vllm-allow-lb-https"]["allows"] == [{"protocol": "tcp", "ports": ["443"]}]
    proxy_only = [s for s in public.of_type(SUBNETWORK) if s.plain.get("purpose")]
    assert [(s.plain["purpose"], s.plain["ipCidrRange"]) for s in proxy_only] == [
        ("REGIONAL_MANAGED_PROXY", PROXY_SUBNET)
    ]
    # No external IP on a replica; Cloud NAT is their way out.
    interfaces = public.one(TEMPLATE).plain["networkInterfaces"]
    assert not any(i.get("accessConfigs") for i in interfaces)
    # Cloud NAT for the stack's own subnet, not every subnet of the VPC.
    nat = public.one("gcp:compute/routerNat:RouterNat").plain
    assert nat["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    assert nat["subnetworks"] == [
        {
            "name": "https://compute/subnetworks/vllm-subnet",
            "sourceIpRangesToNats": ["ALL_IP_RANGES"],
        }
    ]


def test_a_private_fleet_has_an_internal_load_balancer_and_no_way_out(private: Plan) -> None:
    rule = private.one(FORWARDING_RULE).plain
    assert rule["loadBalancingScheme"] == "INTERNAL_MANAGED"
    assert "networkTier" not in rule
    assert [a.plain["addressType"] for a in private.of_type(ADDRESS)] == ["INTERNAL"]
    assert private.of_type("gcp:compute/routerNat:RouterNat") == []
    egress = {r.name for r in private.of_type(FIREWALL) if r.plain["direction"] == "EGRESS"}
    assert egress == {"vllm-allow-google-apis-egress", "vllm-deny-egress"}
    assert private.outputs["endpoint"] == f"https://{MOCK_PRIVATE_IP}/v1"
    assert private.outputs["publicIp"] is None


def test_the_outputs_name_the_load_balancer_and_the_group(public: Plan) -> None:
    outputs = public.outputs
    assert outputs["endpoint"] == f"https://{MOCK_PUBLIC_IP}/v1"
    assert outputs["connectorUrl"] == f"https://{MOCK_PUBLIC_IP}/v1/chat/completions"
    assert outputs["publicIp"] == MOCK_PUBLIC_IP
    assert outputs["privateIp"] is None
    assert outputs["instanceName"] is None
    assert outputs["zone"] is None
    assert outputs["instanceGroup"] == "https://compute/regions/r/instanceGroups/vllm-group"
    assert "sshPrivateKey" in public.secret_outputs


def test_an_existing_subnet_gets_no_nat_and_a_warning() -> None:
    plan = fleet_plan(
        {"vllm-gcp:network": {"vpc": "projects/p/global/networks/shared", "subnet": "team-a"}}
    )
    assert plan.of_type("gcp:compute/routerNat:RouterNat") == []
    assert any("adds no Cloud NAT" in warning for warning in plan.warnings)


def test_replicas_receive_the_single_vms_files_but_for_what_delivery_needs(public: Plan) -> None:
    names = secret_names(StackInput(config={}))
    single = host_files(run_program(stack_config("prod"), stack="prod", secrets=HF_SECRET), names)
    fleet = host_files(public, names)
    assert fleet["vllm-template.vllm-gcp-host-setup.sh"] == single["vllm-host.startup-script.sh"]
    # The unit, but for the drain's wait for the load balancer's health check (none on one VM).
    drain = f"{VLLM_METRICS_URL} {{}} {DRAIN_LIMIT_SECONDS} "
    assert fleet["vllm-template.vllm-gcp-unit.service"] == single["vllm-run.service"].replace(
        drain.format(0), drain.format(DRAIN_SETTLE_SECONDS)
    )
    assert drain.format(0) in single["vllm-run.service"]
    assert fleet["vllm-env-secret-version.stdin"] == single["vllm-secrets.stdin"]
    # A remote step wraps its script in a here-document; the replica runs the script itself.
    for attribute, step in {
        "vllm-gcp-step-secrets": "vllm-secrets",
        "vllm-gcp-step-run": "vllm-run",
        "vllm-gcp-step-proxy": "vllm-nginx-site",
        "vllm-gcp-step-serving": "vllm-serving",
    }.items():
        script = fleet[f"vllm-template.{attribute}.sh"]
        assert f"\n{script.rstrip()}\n" in single[f"{step}.create.sh"], attribute
    # The site: the single VM's lines, in order, and the load balancer's added.
    single_site = single["vllm-nginx-site.conf"].splitlines()
    fleet_site = fleet["vllm-proxy-secret-version.conf"].splitlines()
    diff = list(difflib.ndiff(single_site, fleet_site))
    assert not [line for line in diff if line.startswith("- ")]
    added = {line[2:].strip() for line in diff if line.startswith("+ ")}
    assert {
        f'set_real_ip_from "{PROXY_SUBNET}";',
        f'set_real_ip_from "{MOCK_PUBLIC_IP}/32";',
        f'location = "{HEALTH_PATH}" {{',
        "keepalive_timeout 620s;",
        *(f'allow "{cidr}";' for cidr in (PROXY_SUBNET, *HEALTH_CHECK_RANGES)),
    } <= added
