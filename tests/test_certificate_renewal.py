"""The self-signed server certificate renews by the calendar: the clock moved forward."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from unittest import mock

import pytest

from components import certificate_renewal as renewal
from tests.harness import Plan, run_program, stack_config

CSR = "tls:index/certRequest:CertRequest"
SERVER_KEY = "vllm-server-key"


def plan_on(day: date, stack: str = "prod") -> Plan:
    with mock.patch.object(renewal, "utc_today", return_value=day):
        return run_program(stack_config(stack), stack=stack)


def inputs_by_resource(plan: Plan) -> dict[tuple[str, str], Any]:
    return {(r.type, r.name): r.inputs for r in plan.resources}


def options_by_resource(plan: Plan) -> dict[tuple[str, str], Any]:
    return {(r.type, r.name): r.options for r in plan.resources}


def test_periods_follow_each_other_without_gaps() -> None:
    first = renewal.renewal_period(renewal.RENEWAL_EPOCH)
    assert first.start == renewal.RENEWAL_EPOCH
    second = renewal.renewal_period(first.renews_on)
    assert second.start == first.renews_on
    assert renewal.renewal_period(first.renews_on - timedelta(days=1)) == first
    assert renewal.RENEWAL_PERIOD_DAYS + renewal.RENEWAL_WINDOW_DAYS == 365


def test_a_certificate_made_on_any_day_outlives_the_window_that_renews_it() -> None:
    # Every creation day over six years: the first up of the next period comes before the
    # certificate could expire, with at least the renewal window to spare.
    day = renewal.RENEWAL_EPOCH
    for _ in range(6 * 365):
        period = renewal.renewal_period(day)
        assert period.start <= day < period.renews_on
        expires = day + timedelta(days=renewal.SERVER_VALIDITY_DAYS)
        assert expires >= period.renew_before
        assert (expires - period.renews_on).days >= renewal.RENEWAL_WINDOW_DAYS
        day += timedelta(days=1)


def test_the_label_changes_only_at_a_period_boundary() -> None:
    labels = [
        renewal.renewal_period(renewal.RENEWAL_EPOCH + timedelta(days=n)).label
        for n in range(3 * renewal.RENEWAL_PERIOD_DAYS)
    ]
    changes = [n for n in range(1, len(labels)) if labels[n] != labels[n - 1]]
    assert changes == [renewal.RENEWAL_PERIOD_DAYS, 2 * renewal.RENEWAL_PERIOD_DAYS]


@pytest.fixture(scope="module")
def early() -> Plan:
    return plan_on(date(2026, 11, 2))  # the first day of a period


def test_time_alone_changes_nothing_within_a_period(early: Plan) -> None:
    late = plan_on(date(2027, 10, 2))  # its last day
    assert inputs_by_resource(late) == inputs_by_resource(early)
    assert options_by_resource(late) == options_by_resource(early)


def test_the_first_up_of_the_next_period_renews_the_certificate_and_its_key(
    early: Plan,
) -> None:
    renewed = plan_on(date(2027, 10, 3))
    before, after = inputs_by_resource(early), inputs_by_resource(renewed)
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    # The request's subject names the period: the TLS provider replaces it, then the
    # certificate it signs (same CA key and certificate, so Kibana's trust holds).
    assert changed == {(CSR, "vllm-server-csr")}
    subject = renewed.named("vllm-server-csr").plain["subject"]
    assert subject["organizationalUnit"] == "vllm-gcp renewal period 2027-10-03"
    old_options, new_options = options_by_resource(early), options_by_resource(renewed)
    changed_options = {key for key in old_options if old_options[key] != new_options[key]}
    assert changed_options == {("tls:index/privateKey:PrivateKey", SERVER_KEY)}
    assert renewed.named(SERVER_KEY).options.replacement_trigger == subject["organizationalUnit"]


def test_the_ca_is_never_part_of_a_renewal(early: Plan) -> None:
    ca_key, ca = early.named("vllm-ca-key"), early.named("vllm-ca")
    assert ca_key.options.replacement_trigger is None
    assert "organizationalUnit" not in ca.plain["subject"]
