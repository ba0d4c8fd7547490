"""Prometheus metrics, collected at scrape time from counters the data path already keeps.

The hot path only increments plain integers; this collector turns them into labelled series when
/metrics is read, so metrics cost nothing per command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.state import ServiceState

if TYPE_CHECKING:
    from service.prefetching import TenantPrefetch

_TENANT_COUNTERS = {
    "hits": ("foresight_cache_hits_total", "Reads answered from memory."),
    "misses": ("foresight_cache_misses_total", "Reads not in memory (read through to the origin if any)."),
    "evictions": ("foresight_evictions_total", "Keys evicted to stay within the tenant budget."),
    "expired": ("foresight_expired_keys_total", "Keys removed because their TTL passed."),
    # What happened to prefetched entries in the store; the engine's own counters are foresight_prefetch_*.
    "prefetch_inserted": ("foresight_cache_prefetch_inserted_total", "Entries inserted by a prefetch."),
    "prefetch_used": ("foresight_cache_prefetch_hits_total", "Prefetched entries read before eviction."),
    "prefetch_evicted_unused": ("foresight_cache_prefetch_evicted_unused_total",
                                "Prefetched entries evicted without a read."),
}

_SHARED_TIER_COUNTERS = {
    "hits": "Memory misses the shared tier answered (no origin read).",
    "misses": "Memory misses the shared tier did not hold.",
    "errors": "Shared tier calls that failed or timed out (reads then went to the origin).",
    "fills": "Origin values this node put into the shared tier.",
    "fills_skipped": "Origin values not offered to the shared tier because too many were on their way.",
    "writes": "Clients' writes and deletes this node sent to the shared tier.",
    "invalidations_sent": "Messages that told the other nodes to drop keys.",
    "invalidations_received": "Messages from other nodes that dropped keys here.",
    "resubscribes": "Times the invalidation subscription came back after a gap (memory was emptied).",
    "renewals": "Times the invalidation subscription moved to a fresh connection (a credential's lifetime).",
}


class ServiceCollector(Collector):
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        tenants = list(self.state.tenants)
        for attr, (name, doc) in _TENANT_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["tenant"])
            for t in tenants:
                family.add_metric([t.name], getattr(t.store.stats, attr))
            yield family
        per_tenant = {
            "foresight_origin_fetches_total": ("Origin reads started.", lambda t: t.origin_fetches),
            "foresight_origin_errors_total": ("Origin reads that failed or timed out.", lambda t: t.origin_errors),
            "foresight_rate_limited_total": ("Commands refused by the rate quota.", lambda t: t.rate_limited),
            "foresight_script_runs_total": ("Lua scripts run (EVAL, EVALSHA).",
                                            lambda t: t.scripts.stats.runs if t.scripts else 0),
            "foresight_scripts_stopped_total": ("Scripts stopped at the time limit (script_time_limit_ms).",
                                                lambda t: t.scripts.stats.stopped if t.scripts else 0),
            "foresight_scripts_out_of_memory_total": ("Scripts that ran out of the tenant's script memory.",
                                                      lambda t: t.scripts.stats.out_of_memory if t.scripts else 0),
            "foresight_scripts_refused_total": ("Scripts refused (-BUSY) while the tenant's script time budget was "
                                                "spent (script_budget_ms_per_s).",
                                                lambda t: t.scripts.stats.refused if t.scripts else 0),
        }
        for name, (doc, read) in per_tenant.items():
            family = CounterMetricFamily(name, doc, labels=["tenant"])
            for t in tenants:
                family.add_metric([t.name], read(t))
            yield family
        gauges = {
            "foresight_memory_used_bytes": ("Bytes charged to the tenant's budget.", lambda t: t.store.used),
            "foresight_memory_budget_bytes": ("The tenant's memory budget.", lambda t: t.store.budget),
            "foresight_keys": ("Keys resident in the tenant's store.", lambda t: len(t.store)),
            "foresight_script_memory_bytes": ("Memory the tenant's Lua runtime holds.",
                                              lambda t: t.scripts.memory_used if t.scripts else 0),
        }
        for name, (doc, read) in gauges.items():
            gauge = GaugeMetricFamily(name, doc, labels=["tenant"])
            for t in tenants:
                gauge.add_metric([t.name], read(t))
            yield gauge
        yield from self._prefetch_metrics()
        counters = self.state.connections
        yield GaugeMetricFamily("foresight_resp_connections", "Open RESP connections.", value=counters.current)
        commands = self.state.commands_processed()
        yield CounterMetricFamily("foresight_resp_commands_total", "RESP commands processed.", value=commands)
        refused = CounterMetricFamily(
            "foresight_connections_refused_total", "Connections closed as they were accepted, over a per-address or "
            "total cap (http_max_connections_per_source, http_max_connections; on RESP with TLS, "
            "resp_max_unauthenticated_per_source and resp_max_clients counted before the handshake).",
            labels=["listener"])
        for listener, slots in self.state.connection_caps.items():
            refused.add_metric([listener], slots.refused_total)
        yield refused
        yield from self._shared_tier_metrics()
        yield from self._audit_metrics()
        yield from self._tls_metrics()

    def _tls_metrics(self) -> Iterator[Metric]:
        tls = self.state.tls
        if tls is None:
            return
        if tls.not_after is not None:
            yield GaugeMetricFamily("foresight_tls_certificate_expiry_timestamp_seconds",
                                    "When the certificate the listeners serve expires (Unix time). Nodes renew it "
                                    "daily for 30 days: alert when it is less than 7 days away.", value=tls.not_after)
        yield CounterMetricFamily("foresight_tls_reloads_total",
                                  "Times a renewed certificate went live without a restart.", value=tls.reloads)

    def _audit_metrics(self) -> Iterator[Metric]:
        audit = self.state.audit
        if audit is None or audit.shipper is None:
            return
        yield CounterMetricFamily("foresight_audit_shipped_files_total",
                                  "Rotated audit files this process copied to FORESIGHT_AUDIT_SHIP_URL.",
                                  value=audit.shipper.shipped_files)
        yield GaugeMetricFamily("foresight_audit_unshipped_files",
                                "Rotated audit files the last shipping pass could not copy (kept on disk, retried "
                                "each minute): alert when it stays above 0.", value=audit.unshipped)

    def _shared_tier_metrics(self) -> Iterator[Metric]:
        tier = self.state.tenants.shared
        if tier is None:
            return
        for attr, doc in _SHARED_TIER_COUNTERS.items():
            yield CounterMetricFamily(f"foresight_shared_tier_{attr}_total", doc, value=getattr(tier.stats, attr))
        yield GaugeMetricFamily("foresight_shared_tier_up", "1 while the shared tier's last call succeeded.",
                                value=int(tier.connected))

    def _prefetch_metrics(self) -> Iterator[Metric]:
        running = self.state.prefetch.running if self.state.prefetch is not None else {}
        # metric name -> (help, where the per-tenant value lives)
        counters: dict[str, tuple[str, Callable[[TenantPrefetch], float]]] = {
            "issued": ("Prefetches started.", lambda tp: tp.engine.coordinator.stats.issued),
            "used": ("Prefetched keys read (as hits) soon after.", lambda tp: tp.engine.coordinator.stats.used),
            "late": ("Prefetched keys read as a miss first: while the prefetch was on its way, or after it was "
                     "evicted unread.", lambda tp: tp.engine.coordinator.stats.late),
            "late_in_flight": ("Of the late ones, those whose fetch was still running when they were read: aimed "
                               "too near (the stride lead tuner moves out on them).",
                               lambda tp: tp.engine.coordinator.stats.late_in_flight),
            "wasted": ("Prefetches nobody read within the horizon.", lambda tp: tp.engine.coordinator.stats.wasted),
            "model_seconds": ("Time the prefetcher spent predicting and training.", lambda tp: tp.engine.step_seconds),
            "model_batches": ("Prediction batches run.", lambda tp: tp.engine.steps),
            "logged": ("Reads the access log recorded and the worker settled (under load, a sample: a worker that "
                       "is behind records only the reads it settles and predicts from).",
                       lambda tp: tp.engine.log.drained),
            "log_overflows": ("Drains that found the access log's ring full: reads fell off it unsettled (a step that "
                              "outlasted the ring).", lambda tp: tp.engine.log.saturated),
            "predicted": ("Reads the prefetcher predicted from.", lambda tp: tp.engine.predicted),
            "fast_answered": ("Predicted reads whose issued proposals came from the engine's own stride prefetcher, "
                              "which scored better live than the prefetcher's later answers.",
                              lambda tp: tp.engine.fast_answered),
            "unpredicted": ("Reads the worker settled but did not predict from: the workers were at their CPU share.",
                            lambda tp: tp.engine.unpredicted),
            "issue_lag_reads": ("Reads that came after a predicted read before its proposals were issued, summed "
                                "over predicted reads (over foresight_prefetch_predicted_total: the mean lag).",
                                lambda tp: tp.engine.issue_lag_reads),
            "failures": ("Prediction steps that failed (a prefetcher process that died is started afresh).",
                         lambda tp: tp.engine.failures),
        }
        for metric, (doc, value) in counters.items():
            family = CounterMetricFamily(f"foresight_prefetch_{metric}_total", doc, labels=["tenant", "arm"])
            for name, tp in running.items():
                family.add_metric([name, tp.arm], value(tp))
            yield family
        lead = GaugeMetricFamily("foresight_prefetch_stride_lead",
                                 "Reads ahead the tenant's stride answers aim now (tuned live unless "
                                 "FORESIGHT_PREFETCH_TUNE_LEAD is false).", labels=["tenant", "arm"])
        for name, tp in running.items():
            if (aim := tp.engine.stride_lead) is not None:
                lead.add_metric([name, tp.arm], aim)
        yield lead
        hosts = self.state.prefetch.processes if self.state.prefetch is not None else []
        tenants = GaugeMetricFamily("foresight_prefetch_process_tenants",
                                    "Tenants whose prefetcher computes in each prefetch child process.",
                                    labels=["process"])
        resident = GaugeMetricFamily("foresight_prefetch_process_resident_bytes",
                                     "Resident memory of each running prefetch child process (its tenants' models "
                                     "and tables; FORESIGHT_PREFETCH_MAX_KEYS bounds the tables).",
                                     labels=["process"])
        for index, host in enumerate(hosts):
            tenants.add_metric([str(index)], len(host.members))
            rss = host.resident_bytes()
            if rss is not None:
                resident.add_metric([str(index)], rss)
        yield tenants
        yield resident


def render(state: ServiceState) -> bytes:
    """The Prometheus text exposition of this process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(state))
    return generate_latest(registry)
