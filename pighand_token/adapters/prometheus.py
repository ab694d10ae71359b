"""Prometheus metrics (prometheus-client).

Served by several workers (``pighand-token serve``, or gunicorn), every
worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
server.py or gunicorn.conf.py before any worker starts) and a scrape of any
worker adds them all up; in a single process the metrics live in this
module's registry. Label values are platforms, appids,
tiers, routes and error codes: never a token or a secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter("pighand_http_requests_total", "HTTP requests answered, by route and status.",
                        ["route", "method", "status"], registry=REGISTRY)
TOKEN_LOOKUPS = Counter("pighand_token_lookups_total", "Tokens served, by the tier that answered "
                        "(redis, memory, sql, platform).", ["platform", "tier"], registry=REGISTRY)
PLATFORM_CALLS = Counter("pighand_platform_calls_total", "Calls to a platform, by outcome and platform errcode.",
                         ["platform", "outcome", "errcode"], registry=REGISTRY)
REFRESH_SECONDS = Histogram("pighand_refresh_seconds", "Time to fetch a token from a platform, retries included.",
                            ["platform"], registry=REGISTRY,
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20))
LOCK_WAIT_SECONDS = Histogram("pighand_lock_wait_seconds", "Time spent waiting for a token's lock.",
                              registry=REGISTRY, buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SCHEDULER_TICKS = Counter("pighand_scheduler_ticks_total", "Scheduler ticks: ran, skipped (another worker "
                          "had this interval) or error.", ["outcome"], registry=REGISTRY)
PROXY_CALLS = Counter("pighand_proxy_calls_total", "Calls forwarded by /proxy/..., by platform, route class "
                      "(the API path's first two segments), the platform's HTTP status and its errcode "
                      "(\"\" when none or 0), and whether the call was replayed with a new token.",
                      ["platform", "route", "status", "errcode", "replayed"], registry=REGISTRY)
PROXY_SECONDS = Histogram("pighand_proxy_upstream_seconds", "Time until the platform's answer's headers "
                          "arrived, for forwarded calls (a replay included).", ["platform"], registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SCHEDULER_FAILURES = Counter("pighand_scheduler_refresh_failures_total", "Scheduled refreshes that failed.",
                             registry=REGISTRY)

# Alerts take increase() of these, and a series that first appears at 1 has
# increased by nothing: every outcome is there at 0 from start (in
# multiprocess mode too, since labels() writes the 0 to this process's
# file). Platform calls are not, their errcodes are the platforms' to choose;
# deploy/prometheus/alerts.yml catches a new errcode's first failure instead.
TICK_OUTCOMES = ("ran", "skipped", "error")
for _outcome in TICK_OUTCOMES:
    SCHEDULER_TICKS.labels(_outcome)


# labels() checks and joins its values on every call; each request counts
# twice, so the children are kept (the label sets are few: routes, methods,
# statuses, platforms and tiers).
_HTTP_CHILDREN: dict[tuple[str, str, int], Any] = {}
_LOOKUP_CHILDREN: dict[tuple[str, str], Any] = {}


class PrometheusMetrics:
    def token_lookup(self, platform: str, tier: str) -> None:
        child = _LOOKUP_CHILDREN.get((platform, tier))
        if child is None:
            child = _LOOKUP_CHILDREN[(platform, tier)] = TOKEN_LOOKUPS.labels(platform, tier)
        child.inc()

    def platform_call(self, platform: str, outcome: str, errcode: str, seconds: float) -> None:
        PLATFORM_CALLS.labels(platform, outcome, errcode).inc()

    def refresh(self, platform: str, seconds: float) -> None:
        REFRESH_SECONDS.labels(platform).observe(seconds)

    def lock_wait(self, seconds: float) -> None:
        LOCK_WAIT_SECONDS.observe(seconds)

    def proxy_call(self, platform: str, route: str, status: int, errcode: str, replayed: bool,
                   seconds: float) -> None:
        PROXY_CALLS.labels(platform, route, str(status), errcode, "true" if replayed else "false").inc()
        PROXY_SECONDS.labels(platform).observe(seconds)

    def scheduler_tick(self, outcome: str, failures: int = 0) -> None:
        SCHEDULER_TICKS.labels(outcome).inc()
        if failures:
            SCHEDULER_FAILURES.inc(failures)


# A label value never comes from what a caller may invent: any other method
# counts as OTHER (routes are the app's own, or "unmatched").
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def http_request(route: str, method: str, status: int) -> None:
    if method not in METHODS:
        method = "OTHER"
    child = _HTTP_CHILDREN.get((route, method, status))
    if child is None:
        child = _HTTP_CHILDREN[(route, method, status)] = HTTP_REQUESTS.labels(route, method, str(status))
    child.inc()


class _TokenExpiry(Collector):
    """Seconds until each token expires, read from the shared store at
    scrape time (so it is right whichever worker answers the scrape)."""

    def __init__(self, rows: Callable[[], Iterable[tuple[str, str, float | None, str]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily("pighand_token_expires_in_seconds", "Seconds until the stored token expires.",
                                   labels=["platform", "appid"])
        state = GaugeMetricFamily("pighand_token_state", "1 for the token's current state.",
                                  labels=["platform", "appid", "state"])
        for platform, appid, expires_in, current in self._rows():
            if expires_in is not None:
                expiry.add_metric([platform, appid], expires_in)
            state.add_metric([platform, appid, current], 1)
        yield expiry
        yield state


def exposition(token_rows: Callable[[], Iterable[tuple[str, str, float | None, str]]]) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    live = CollectorRegistry()
    live.register(_TokenExpiry(token_rows))
    return body + generate_latest(live), CONTENT_TYPE_LATEST
