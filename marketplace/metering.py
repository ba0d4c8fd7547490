"""Hourly usage to a marketplace: each purchase's reads, in whole units, billed exactly once.

The service counts each tenant's reads (hits + misses) since it started. Each run turns the growth of that
counter since the last confirmed record into whole units, carrying the remainder. A record is first written
to the purchase's Vault record as *pending*, then sent, then confirmed; a pending record is resent unchanged
until the marketplace confirms it (both AWS's and Azure's metering APIs are idempotent for an identical
record), so a crash at any point neither loses nor double-bills an hour. A counter whose process started
anew (or, from a service that does not say when, a counter that went down) is all new usage (reads between
the last run and the restart are the one thing that cannot be recovered). A record the marketplace will no
longer take (older than its window, or refused for good) is settled as *lost*: logged at ERROR and reported,
never resent forever in a batch it would block. Every record still pending after a run, and every one settled
without being billed, is in the run's `errors`, so `meter` exits 6. Each record bills an interval that starts
where the purchase's previous record ended (at its registration for the first), stamped no earlier than the
registration. A deployment on a shared tier counts every node's reads in the tier, so any node's admin API answers
for all of them; without one, the counters must all come from one service node (see `_unusable`). Each cloud
supplies only the call that sends a batch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol

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
    lost: bool = False  # settled without being billed (too late, refused for good): the operator must hear of it


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
        records: dict[str, RecordT] = {}
        for tenant in tenants if tenants is not None else self.records.tenants():
            record = self.records.get(tenant)
            if record is None:
                report.skipped[tenant] = "no purchase record"
            else:
                records[tenant] = record
        unusable = _unusable(usage, records)
        pending: Batch[RecordT] = []
        for tenant, record in records.items():
            if tenant in unusable and record.pending is None:  # a pending record needs no counter: resent below
                report.errors.append(unusable[tenant])
                continue
            prepared = self._prepare(tenant, record, usage.get(tenant), now, final, report)
            if prepared is not None:
                pending.append((tenant, record, prepared))
        size = self.sender.batch_size
        for start in range(0, len(pending), size):
            self._send(pending[start : start + size], report)
        return report

    def _usage(self) -> dict[str, Counter | None]:
        """Each served tenant's counter; None where the service could not read it now (its shared tier failed)."""
        if self.onboarder.admin is None:
            raise ServiceFailure(
                "meter usage", "needs the service's admin API: set FORESIGHT_ADMIN_URL and FORESIGHT_ADMIN_TOKEN"
            )
        return {t["name"]: _counter(t) for t in self.onboarder.admin.list_tenants()}

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
        seen, since = counter.reads, counter.since

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
                                    counting_since=since, start=_interval_start(current), end=_interval_end(slot, now))
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
            answer = answers.get(tenant, Answer("Unprocessed", settled=False))
            what = f"usage of {tenant} for the hour from {usage.timestamp:%Y-%m-%d %H:%M} ({usage.quantity} units)"
            if answer.lost:
                log.error("%s is lost: the marketplace refused it as %s", what, answer.status)
                report.errors.append(f"{what} is lost: refused as {answer.status}")
            elif not answer.settled:
                log.warning("%s stays pending (resent next run): %s", what, answer.status)
                report.errors.append(f"{what} stays pending: {answer.status}")
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
                    "metered_until": usage.end or current.metered_until,
                    "pending": None,
                }
            )

        try:
            self.records.update(tenant, commit)
        except OnboardingError as err:  # stays pending: resent (identically, so not billed twice) next run
            report.errors.append(str(err))


def utc_stamp(moment: dt.datetime) -> str:
    """A time as the marketplaces' APIs take it: UTC, whole seconds, `Z`."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Counter(NamedTuple):
    """A tenant's read counter in the service, and when it began: a counter with another `since` began at 0."""

    reads: int
    since: float | None
    deployment: bool = False  # every node's reads (a shared tier), not one process's


def _counter(row: Mapping[str, Any]) -> Counter | None:
    """The counter the admin API bills by (`usage`; null when its tier could not say); a service from before
    `usage` gives its process's hits and misses."""
    if "usage" not in row:
        return Counter(int(row.get("hits", 0)) + int(row.get("misses", 0)), row.get("counting_since"))
    usage = row["usage"]
    if usage is None:
        return None
    return Counter(int(usage["reads"]), float(usage["since"]), usage.get("scope") == "deployment")


def _not_due(record: PurchaseRecord, slot: dt.datetime) -> str | None:
    """Why `record` gets no new record for `slot`, or None when it does."""
    if record.subscription is Subscription.ENDED:
        return "subscription ended"
    if record.last_metered is not None and record.last_metered >= slot:
        return f"already metered for the hour from {slot:%H:%M}"
    return None


def _slot(now: dt.datetime, registered: dt.datetime, final: bool) -> dt.datetime:
    """The time a record is stamped with. A regular run reports the hour that just ended (run it a few minutes
    past the hour); the final record takes the current hour. Azure accepts one event per resource, dimension and
    hour, so distinct slots are what let the final record in. Never before the purchase existed (AWS refuses
    usage outside the license's activation period): the first hour's stamp is the registration's own second, not
    its hour, and its partial hour is billed under it. Whole seconds, as the APIs echo them back."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    slot = hour if final else hour - dt.timedelta(hours=1)
    return max(slot, registered.replace(microsecond=0))


def _interval_start(record: PurchaseRecord) -> dt.datetime:
    """Where the next record's interval starts: where the last confirmed one's ended, or at the registration."""
    if record.metered_until is not None:
        return record.metered_until
    if record.last_metered is not None:  # confirmed before records kept their interval's end
        return record.last_metered.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    return record.registered.replace(microsecond=0)


def _interval_end(slot: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The end of the slot's hour, or now if that is still to come (a final record, a purchase of this hour)."""
    hour_end = slot.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    return max(slot, min(hour_end, now.replace(microsecond=0)))


def _unusable(usage: Mapping[str, Counter | None], records: Mapping[str, PurchaseRecord]) -> dict[str, str]:
    """Tenants whose counter cannot be billed this run, with why (reported: `meter` exits 6; the others are
    metered, and the next run bills what these counted meanwhile):

    - the service's shared tier could not say (its counter is safe there);
    - a counter that began before the one the record last counted: a restart, or a tier's new counter, only ever
      begins later. For a node's own counter (no shared tier), another node answered: each counts its own reads
      since its own start, so reading whichever node a load balancer picked would bill one node's lifetime counter
      as a restart. For a deployment's, a node still serving an earlier tenant of the name (deleted and created
      again, its counter its own) answered before it refreshed;
    - a deployment's counter that went down under the same `since` (a write the tier lost in a failover): billing
      it whole as a restart would bill every read again; the next run bills once it has passed what was billed."""
    unusable = {}
    for tenant, record in records.items():
        if tenant in usage and usage[tenant] is None:
            unusable[tenant] = (
                f"usage of {tenant} not metered: the service could not read the deployment's counters from its "
                "shared tier now (foresight_shared_tier_errors_total); nothing is lost, the next run bills it")
            continue
        counter = usage.get(tenant)
        counted = record.pending.counting_since if record.pending is not None else record.counting_since
        if counter is None or counter.since is None or counted is None:
            continue
        if counter.since < counted and not counter.deployment:
            unusable[tenant] = (
                f"usage of {tenant} not metered: FORESIGHT_ADMIN_URL answered from a service process that started at "
                f"{counter.since:.0f}, before the one that counted its last record ({counted:.0f}), so several "
                "service nodes answer there without a shared tier. Point FORESIGHT_ADMIN_URL at one node's own admin "
                "API, or run the nodes on a shared tier (docs/scale-out.md)")
        elif counter.since < counted:
            unusable[tenant] = (
                f"usage of {tenant} not metered: the deployment's counter that answered began at {counter.since:.6f}, "
                f"before the one its last record counted ({counted:.6f}): a node still serving an earlier tenant of "
                "that name answered (it refreshes within a minute); the next run bills it")
        elif counter.deployment and counter.since == counted and counter.reads < record.requests_seen:
            unusable[tenant] = (
                f"usage of {tenant} not metered: the deployment's counter went down ({counter.reads} reads, "
                f"{record.requests_seen} billed already) under the same start, as when the tier lost writes in a "
                "failover; the next run bills once it has passed what was billed")
    return unusable
