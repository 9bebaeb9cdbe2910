"""What the host receives, byte for byte: every file the offline plan writes for four stacks, as
recorded in tests/golden/. A change to any of them is either a regression or named here.

Deliberate changes, each recorded with the snapshot it changed:
- one renderer (components/render.py): every shell value is one single-quoted word (startup.sh,
  configure_proxy.sh and letsencrypt.sh used double quotes), every value in the Nginx site a
  double-quoted token, the unit's optional lines composed by the renderer;
- the Docker mirror's login helper is installed by the startup script (the run step no longer
  carries it), and the unit's pull of a missing image takes the registry host and the helper's
  path as arguments;
- the secret filter of the journal lines the steps print lives once, in the host library;
- the rebooting marker's path is passed to the startup script, not spelt out in it;
- the run step's host-side limit is 74 minutes, so a first pull and a copy of the weights fit;
- the proxy holds on its own (issue 13): the site sorts requests by their request line first
  (no query string, one method per route, exact paths), matches the token with an exact,
  case-sensitive regex key, pins its error log at `error`, bounds slow clients (header and body
  timeouts, requests in progress per address) and answers 413 and 503 in JSON; the proxy step
  sizes Nginx's workers in /etc/nginx/nginx.conf (vllm-nginx-site.create.sh).

To record a deliberate change:
    VLLM_GCP_RECORD_GOLDEN=1 venv/bin/pytest -n 0 tests/test_golden_host_files.py
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from unittest import mock

import pytest

from components import certificate_renewal
from tests.harness import ROOT, run_program
from tools.plan import host_files, read_stack, secret_names

GOLDEN = ROOT / "tests" / "golden"
# The plans are made on a fixed day: the server certificate's renewal period is in its request.
PLAN_DAY = date(2026, 12, 1)
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prod": ("prod", ()),
    "dev": ("dev", ()),
    "private": (
        "prod",
        (
            "vllm-gcp:network.exposure=private",
            "vllm-gcp:access.apiCidrs=[10.0.0.0/8]",
            "vllm-gcp:access.sshCidrs=[10.20.0.5/32]",
            "vllm-gcp:model.source=gcs",
            "vllm-gcp:model.gcsUri=gs://weights-bucket/mistral",
            "vllm-gcp:mirror.dockerRemote=true",
            "vllm-gcp:mirror.aptRemote=true",
            "vllm-gcp:host.image=projects/offline-plan/global/images/vllm-host-2404-nvidia-580",
        ),
    ),
    "letsencrypt": (
        "prod",
        (
            "vllm-gcp:tls.mode=letsencrypt",
            "vllm-gcp:tls.domain=llm.example.com",
            "vllm-gcp:tls.email=ops@example.com",
        ),
    ),
}


def planned_files(case: str) -> dict[str, str]:
    stack, settings = CASES[case]
    stack_input = read_stack(stack, settings)
    with mock.patch.object(certificate_renewal, "utc_today", return_value=PLAN_DAY):
        plan = run_program(stack_input.config, stack=stack, secrets=stack_input.secrets)
    return host_files(plan, secret_names(stack_input))


def recorded_files(case: str) -> dict[str, str]:
    directory = GOLDEN / case
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def record(case: str, files: dict[str, str]) -> None:
    directory = GOLDEN / case
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        stale.unlink()
    for name, content in files.items():
        Path(directory / name).write_text(content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_host_receives_the_recorded_bytes(case: str) -> None:
    files = planned_files(case)
    if os.environ.get("VLLM_GCP_RECORD_GOLDEN") == "1":
        record(case, files)
    recorded = recorded_files(case)
    assert sorted(files) == sorted(recorded)
    for name, content in files.items():
        assert content == recorded[name], f"{case}/{name} differs from tests/golden/{case}/{name}"
