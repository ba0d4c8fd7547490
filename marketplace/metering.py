"""Hourly usage to a marketplace: each purchase's reads, in whole units, billed exactly once.

The service counts each tenant's reads (hits + misses) since it started. Each run turns the growth of that
counter since the last confirmed record into whole units, carrying the remainder. A record is first written
to the purchase's Vault record as *pending*, then sent, then confirmed; a pending record is resent unchanged
until the marketplace confirms it (both AWS's and Azure's metering APIs are idempotent for an identical
record), so a crash at any point neither loses nor double-bills an hour. A counter whose process started
anew (or, from a service that does not say when, a counter that went down) is all new usage (reads between
the last run and the restart are the one thing that cannot be recovered). A record the marketplace will no
longer take (older than its window) is settled as *lost*: logged at ERROR and reported, never resent forever
in a batch it would block. Each cloud supplies only the call that sends a batch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol

from marketplace.records import PendingUsage, PurchaseRecord, PurchaseRecords, RecordT, Subscription
from onboarding.errors import OnboardingError, ServiceFailure
from onboarding.tenants import Onboarder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metered:
    tenant: str
    timestamp: dt.datetime
    quantity: int
    status: str  # the marketplace's word for the outcome, or Unprocessed (resent next run)


@dataclass
class MeteringReport:
    metered: list[Metered] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # tenant -> why
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    status: str
    settled: bool  # True: billed, or refused for good (confirm it); False: send it again next run
    lost: bool = False  # settled without being billed because it came too late: the operator must hear of it


Batch = list[tuple[str, RecordT, PendingUsage]]


class UsageSender(Protocol[RecordT]):
    batch_size: int

    def send(self, batch: Batch[RecordT]) -> dict[str, Answer]:
        """Send one batch; an answer per tenant the marketplace answered for. Raises OnboardingError when
        the whole call failed (every record stays pending)."""


class UsageMeter(Generic[RecordT]):
    def __init__(
        self,
        records: PurchaseRecords[RecordT],
        onboarder: Onboarder,
        requests_per_unit: int,
        sender: UsageSender[RecordT],
    ) -> None:
        self.records = records
        self.onboarder = onboarder
        self.requests_per_unit = requests_per_unit
        self.sender = sender

    def run(
        self, now: dt.datetime | None = None, tenants: Iterable[str] | None = None, final: bool = False
    ) -> MeteringReport:
        """Meter every purchase (or `tenants`) once per hour slot (see `_slot`). `final` is the last record before
        an entitlement ends: it takes the current hour's slot, which no regular record has used yet."""
        now = now or dt.datetime.now(dt.UTC)
        report = MeteringReport()
        usage = self._usage()
        pending: Batch[RecordT] = []
        for tenant in tenants if tenants is not None else self.records.tenants():
            record = self.records.get(tenant)
            if record is None:
                report.skipped[tenant] = "no purchase record"
                continue
            prepared = self._prepare(tenant, record, usage.get(tenant), now, final, report)
            if prepared is not None:
                pending.append((tenant, record, prepared))
        size = self.sender.batch_size
        for start in range(0, len(pending), size):
            self._send(pending[start : start + size], report)
        return report

    def _usage(self) -> dict[str, Counter]:
        if self.onboarder.admin is None:
            raise ServiceFailure(
                "meter usage", "needs the service's admin API: set FORESIGHT_ADMIN_URL and FORESIGHT_ADMIN_TOKEN"
            )
        tenants = self.onboarder.admin.list_tenants()
        return {t["name"]: Counter(int(t.get("hits", 0)) + int(t.get("misses", 0)), t.get("counting_since"))
                for t in tenants}

    def _prepare(
        self,
        tenant: str,
        record: RecordT,
        counter: Counter | None,
        now: dt.datetime,
        final: bool,
        report: MeteringReport,
    ) -> PendingUsage | None:
        if record.pending is not None:
            return record.pending  # sent before but never confirmed: the very same record again
        slot = _slot(now, record.registered, final)
        why = _not_due(record, slot)
        if why is not None:
            report.skipped[tenant] = why
            return None
        if counter is None:
            report.skipped[tenant] = "the service does not serve this tenant (suspended or not loaded)"
            return None
        seen, since = counter

        def stage(current: RecordT) -> RecordT:
            """Judged again on the record as it is now: another run (a final one, say) may have staged, metered
            or ended it since it was read, and its quantity must follow from what that run confirmed."""
            if current.pending is not None or _not_due(current, slot) is not None:
                return current
            restarted = seen < current.requests_seen or (
                since is not None and current.counting_since is not None and since != current.counting_since)
            grown = seen if restarted else seen - current.requests_seen
            quantity, remainder = divmod(current.unbilled_requests + grown, self.requests_per_unit)
            prepared = PendingUsage(timestamp=slot, quantity=quantity, requests_seen=seen, remainder=remainder,
                                    counting_since=since)
            return current.model_copy(update={"pending": prepared})

        staged = self.records.update(tenant, stage)
        if staged.pending is None:
            report.skipped[tenant] = _not_due(staged, slot) or "metered by another run"
        return staged.pending  # another run's staged record if it won the race

    def _send(self, batch: Batch[RecordT], report: MeteringReport) -> None:
        try:
            answers = self.sender.send(batch)
        except OnboardingError as err:
            report.errors.append(f"{err} ({len(batch)} records stay pending)")
            return
        for tenant, _, usage in batch:
            answer = answers.get(tenant)
            if answer is None:
                report.metered.append(Metered(tenant, usage.timestamp, usage.quantity, "Unprocessed"))
                continue
            if answer.lost:
                log.error("usage of %s for the hour from %s (%d units) is lost: the marketplace refused it as %s",
                          tenant, f"{usage.timestamp:%Y-%m-%d %H:%M}", usage.quantity, answer.status)
                report.errors.append(f"usage of {tenant} for the hour from {usage.timestamp:%Y-%m-%d %H:%M} "
                                     f"({usage.quantity} units) is lost: refused as {answer.status}")
            if answer.settled:
                self._confirm(tenant, usage, report)
            report.metered.append(Metered(tenant, usage.timestamp, usage.quantity, answer.status))

    def _confirm(self, tenant: str, usage: PendingUsage, report: MeteringReport) -> None:
        def commit(current: RecordT) -> RecordT:
            if current.pending != usage:
                return current  # confirmed by another run already
            return current.model_copy(
                update={
                    "requests_seen": usage.requests_seen,
                    "counting_since": usage.counting_since,
                    "unbilled_requests": usage.remainder,
                    "last_metered": usage.timestamp,
                    "pending": None,
                }
            )

        try:
            self.records.update(tenant, commit)
        except OnboardingError as err:  # stays pending: resent (identically, so not billed twice) next run
            report.errors.append(str(err))


class Counter(NamedTuple):
    """A tenant's read counter in the service, and when the service process that counts it started."""

    reads: int
    since: float | None


def _not_due(record: PurchaseRecord, slot: dt.datetime) -> str | None:
    """Why `record` gets no new record for `slot`, or None when it does."""
    if record.subscription is Subscription.ENDED:
        return "subscription ended"
    if record.last_metered is not None and record.last_metered >= slot:
        return f"already metered for the hour from {slot:%H:%M}"
    return None


def _slot(now: dt.datetime, registered: dt.datetime, final: bool) -> dt.datetime:
    """The hour a record is stamped with. A regular run reports the hour that just ended (run it a few minutes
    past the hour), never one before the purchase existed; the final record takes the current hour. Azure
    accepts one event per resource, dimension and hour, so distinct slots are what let the final record in."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    if final:
        return hour
    return max(hour - dt.timedelta(hours=1), registered.replace(minute=0, second=0, microsecond=0))
