"""When the stack-made server certificate renews: by the calendar, not by the TLS provider.

pulumi-tls's `early_renewal_hours` is not shown to act under `pulumi up` or refresh
(pulumi/pulumi-tls#39 is open; its only workaround is a forced replace), so renewal cannot rest on
it. Instead time is cut into fixed renewal periods counted from RENEWAL_EPOCH, and the server
certificate names the period it was made in (components/tls_proxy.py puts it in the subject,
which the TLS provider replaces on change). Within a period every plan is the same; the first
`pulumi up` of the next period makes a new certificate, signed by the same CA.

Why it cannot lapse while ups happen: a certificate made on any day of a period starting at S
expires no earlier than S + SERVER_VALIDITY_DAYS = (S + RENEWAL_PERIOD_DAYS) + RENEWAL_WINDOW_DAYS,
so every `pulumi up` in the RENEWAL_WINDOW_DAYS after the next period starts replaces it in time.
Once renewed at the start of a period, a certificate is replaced in its last RENEWAL_WINDOW_DAYS;
only a stack's first certificate, made mid-period, is replaced earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

# Mozilla's "intermediate" profile caps certificate lifespans at 366 days (Server Side TLS
# guidelines 5.7, maximum_certificate_lifespan).
SERVER_VALIDITY_DAYS = 365
RENEWAL_WINDOW_DAYS = 30
RENEWAL_PERIOD_DAYS = SERVER_VALIDITY_DAYS - RENEWAL_WINDOW_DAYS
RENEWAL_EPOCH = date(2025, 1, 1)


@dataclass(frozen=True)
class RenewalPeriod:
    """One renewal period: certificates made in it are replaced from `renews_on`."""

    start: date

    @property
    def renews_on(self) -> date:
        """The first day of the next period: the first `pulumi up` from then renews."""
        return self.start + timedelta(days=RENEWAL_PERIOD_DAYS)

    @property
    def renew_before(self) -> date:
        """No certificate of this period expires before this day (00:00 UTC)."""
        return self.renews_on + timedelta(days=RENEWAL_WINDOW_DAYS)

    @property
    def label(self) -> str:
        return f"vllm-gcp renewal period {self.start.isoformat()}"


def renewal_period(today: date) -> RenewalPeriod:
    """The period `today` (a UTC date) falls in."""
    elapsed = (today - RENEWAL_EPOCH).days
    return RenewalPeriod(
        RENEWAL_EPOCH + timedelta(days=(elapsed // RENEWAL_PERIOD_DAYS) * RENEWAL_PERIOD_DAYS)
    )


def utc_today() -> date:
    """Today in UTC: the one clock the program reads (tests move it)."""
    return datetime.now(UTC).date()
