"""Prometheus metrics: recorded when ``[metrics] listen`` is set (cheap), and served."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Protocol

from s3pull.config import MetricsConfig
from s3pull.errors import UnsafeKey
from s3pull.mirror import Applied
from s3pull.status import Stats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Metrics", "Recorder"]

log = logging.getLogger(__name__)

_LAG_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_DURATION_BUCKETS: Final = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)


class _Counter(Protocol):
    def labels(self, *values: str) -> _Counter: ...
    def inc(self, amount: float = 1) -> None: ...


class _Gauge(Protocol):
    def labels(self, *values: str) -> _Gauge: ...
    def set(self, value: float) -> None: ...


class _Histogram(Protocol):
    def labels(self, *values: str) -> _Histogram: ...
    def observe(self, amount: float) -> None: ...


class _Unrecorded:
    """Every metric while nothing will serve it: recording one costs a call."""

    def labels(self, *values: str) -> _Unrecorded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class Metrics:
    """Every metric s3pull exports, in a registry of its own.

    Without ``enabled`` (no ``[metrics] listen``) nothing is recorded and prometheus_client
    is not even imported: it costs a daemon 30-60 ms of start-up and about 1 MB for numbers
    nobody can read. A reload that adds ``[metrics]`` starts them from zero (``serve``), as
    a restart would; Prometheus reads that as a counter reset.
    """

    def __init__(self, enabled: bool = True) -> None:
        unrecorded = _Unrecorded()
        self.changes: _Counter = unrecorded
        self.bytes: _Counter = unrecorded
        self.errors: _Counter = unrecorded
        self.refused: _Counter = unrecorded
        self.trigger_runs: _Counter = unrecorded
        self.trigger_seconds: _Histogram = unrecorded
        self.queue_lag: _Histogram = unrecorded
        self.reconcile_seconds: _Histogram = unrecorded
        self.held_back: _Gauge = unrecorded
        self.on_change_runs: _Counter = unrecorded
        self.in_flight: _Gauge = unrecorded
        self.registry: CollectorRegistry | None = None
        if enabled:
            self._record()

    def _record(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.changes = Counter(
            "s3pull_changes_applied",
            "Changes applied to mirrors, by outcome.",
            ["mirror", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "s3pull_downloaded_bytes",
            "Bytes written to mirrors and batches.",
            ["mirror"],
            registry=r,
        )
        self.errors = Counter(
            "s3pull_errors",
            "Failures, by cause (s3, sqs, disk, parse, trigger, results, ...).",
            ["cause"],
            registry=r,
        )
        self.refused = Counter(
            "s3pull_refused_keys", "Keys refused as unsafe.", ["mirror"], registry=r
        )
        self.trigger_runs = Counter(
            "s3pull_trigger_runs", "Trigger runs, by result.", ["trigger", "result"], registry=r
        )
        self.trigger_seconds = Histogram(
            "s3pull_trigger_duration_seconds",
            "Time from marker handled to run finished.",
            ["trigger"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_lag = Histogram(
            "s3pull_queue_lag_seconds",
            "From a message's SentTimestamp to its change applied.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "s3pull_reconcile_duration_seconds",
            "Full reconciles, per mirror.",
            ["mirror"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.held_back = Gauge(
            "s3pull_deletions_held_back",
            "Deletions the last reconcile kept back (max_delete, an empty listing).",
            ["mirror"],
            registry=r,
        )
        self.on_change_runs = Counter(
            "s3pull_on_change_runs",
            "Mirror on_change command runs, by result (succeeded, failed, timed-out).",
            ["mirror", "result"],
            registry=r,
        )
        self.in_flight = Gauge("s3pull_messages_in_flight", "Messages being worked on.", registry=r)
        return r

    def serve(self, config: MetricsConfig) -> None:
        """Serve /metrics in Prometheus text format from a background thread."""
        from prometheus_client import start_http_server

        registry = self._record() if self.registry is None else self.registry
        start_http_server(config.port, addr=config.host, registry=registry)
        log.info("serving metrics on http://%s/metrics", config.listen)


class Recorder:
    """Feeds what mirrors report into the status counters and the Prometheus metrics."""

    def __init__(self, stats: Stats, metrics: Metrics) -> None:
        self.stats = stats
        self.metrics = metrics

    def applied(self, mirror: str, key: str, applied: Applied) -> None:
        self.stats.change(mirror, key, applied.outcome, applied.size)
        self.stats.cleared(mirror, key)
        self.metrics.changes.labels(mirror, applied.outcome).inc()
        if applied.size:
            self.metrics.bytes.labels(mirror).inc(applied.size)

    def refused(self, mirror: str, refusal: UnsafeKey) -> None:
        self.stats.refusal(mirror, refusal.key, refusal.reason)
        self.stats.cleared(mirror, refusal.key)  # refused for good: nothing to retry
        self.metrics.refused.labels(mirror).inc()

    def source_refused(self, key: str, reason: str) -> None:
        """A message or record from a source not accepted (topic, eventSource, bucket)."""
        self.stats.refusal("source", key, reason)
        self.metrics.refused.labels("source").inc()

    def error(self, cause: str, message: str) -> None:
        self.stats.error(message)
        self.metrics.errors.labels(cause).inc()
        if cause == "reconcile":  # "<mirror>: could not be reconciled" (reconcile.bootstrap)
            mirror, _, problem = message.partition(": ")
            if mirror not in self.stats.reconcile_failures:  # keep the count it left
                self.stats.reconcile_result(mirror, problem)

    def failed(self, where: str, key: str, cause: str, exc: BaseException) -> None:
        """A change failed and will be retried: ``key`` (a key of mirror ``where``, or a
        batch of ``trigger:<name>``) counts as failing in ``status`` until it applies."""
        error = str(exc) or type(exc).__name__
        self.error(cause, f"{where}: {key}: {error}")
        self.stats.failure(where, key, error)

    def trigger_done(self, trigger: str, batch: str, result: str, seconds: float) -> None:
        self.stats.trigger_run(trigger, batch, result, seconds)
        if result != "failed":  # ran, or will never run (skipped, refused)
            self.stats.cleared(f"trigger:{trigger}", batch)
        self.metrics.trigger_runs.labels(trigger, result).inc()
        if result in ("succeeded", "succeeded-empty", "failed"):
            self.metrics.trigger_seconds.labels(trigger).observe(seconds)

    def result_written(self, trigger: str, batch: str, result: str, url: str) -> None:
        self.stats.trigger_result(trigger, batch, result, url, None)

    def result_failed(self, trigger: str, batch: str, url: str, exc: BaseException) -> None:
        """Counted as an error (cause "results"), never as a failing batch: the run
        stands whether or not its result could be written."""
        error = str(exc) or type(exc).__name__
        self.error("results", f"trigger:{trigger}: {batch}: result not written to {url}: {error}")
        self.stats.trigger_result(trigger, batch, None, url, error)

    def reconciled(
        self, mirror: str, downloaded: int, deleted: int, failed: int, seconds: float
    ) -> None:
        self.stats.reconcile(downloaded, deleted, failed, seconds, mirror)
        problem = f"the last reconcile could not download {failed} file(s)" if failed else None
        self.stats.reconcile_result(mirror, problem)
        self.metrics.reconcile_seconds.labels(mirror).observe(seconds)

    def held_back(self, mirror: str, deletions: int, reason: str | None) -> None:
        """A reconcile of ``mirror`` kept ``deletions`` back for an operator (0: none)."""
        self.stats.held_back_result(mirror, deletions, reason)
        self.metrics.held_back.labels(mirror).set(deletions)

    def reconcile_scheduled(self, mirror: str, interval: float, next_at: float | None) -> None:
        self.stats.reconcile_schedule(mirror, interval, next_at)

    def on_change_done(self, mirror: str, result: str, paths: int) -> None:
        """A mirror's on_change command ran; a failure also counts as an error."""
        self.stats.on_change(mirror, result, paths)
        self.metrics.on_change_runs.labels(mirror, result).inc()
        if result != "succeeded":
            self.error("on_change", f"{mirror}: on_change {result}")

    def lag(self, seconds: float) -> None:
        """From a message's SentTimestamp to its change applied."""
        self.stats.lag_seconds = seconds
        self.metrics.queue_lag.observe(seconds)
